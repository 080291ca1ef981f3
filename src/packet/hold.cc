#include "packet/hold.h"

#include "packet/packet.h"

namespace nicmux {

MpscTicketRing::MpscTicketRing(uint32_t capacity_pow2) : cells_(new Cell[capacity_pow2]), mask_(capacity_pow2 - 1) {
  NICMUX_CHECK(capacity_pow2 >= 2 && (capacity_pow2 & mask_) == 0);
  for (uint32_t i = 0; i < capacity_pow2; ++i) cells_[i].seq.store(i, std::memory_order_relaxed);
}

void MpscTicketRing::Push(uint32_t v) {
  const uint32_t pos = tail_.fetch_add(1, std::memory_order_relaxed);
  Cell& c = cells_[pos & mask_];
  // Free once the consumer took what was there a lap ago; with fewer than capacity() values
  // in flight it already has, or is storing the sequence number right now.
  while (c.seq.load(std::memory_order_acquire) != pos) __builtin_ia32_pause();
  c.value = v;
  c.seq.store(pos + 1, std::memory_order_release);
}

bool MpscTicketRing::Pop(uint32_t* v) {
  Cell& c = cells_[head_ & mask_];
  if (c.seq.load(std::memory_order_acquire) != head_ + 1) return false;
  *v = c.value;
  c.seq.store(head_ + mask_ + 1, std::memory_order_release);
  ++head_;
  return true;
}

bool MpscTicketRing::Empty() const {
  return cells_[head_ & mask_].seq.load(std::memory_order_acquire) != head_ + 1;
}

namespace {
uint32_t Pow2AtLeast(uint32_t n) {
  uint32_t p = 2;
  while (p < n) p <<= 1;
  return p;
}
}  // namespace

HoldTable* HoldTable::Create(uint32_t slots) { return new HoldTable(slots); }

HoldTable::HoldTable(uint32_t slots) : slots_(slots), ring_(Pow2AtLeast(slots)) {
  NICMUX_CHECK(slots >= 1 && slots <= kMaxSlots);
  free_.reserve(slots);
  for (uint32_t i = slots; i-- > 0;) free_.push_back(i);
}

HoldTable::~HoldTable() = default;  // the pins go: the memory they kept is no longer read

void HoldTable::Abandon() {
  keep_.reset();
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

uint32_t HoldTable::Hold(const PacketRef& p) {
  if (outstanding_ >= limit_ || free_.empty() || !keep_) return kNoHold;
  Pin* pin = pins_.empty() ? nullptr : pins_.back().get();
  if (pin == nullptr || pin->keep != keep_) {
    pins_.push_back(std::make_unique<Pin>(Pin{keep_, 0}));
    pin = pins_.back().get();
  }
  const uint32_t t = free_.back();
  free_.pop_back();
  Slot& s = slots_[t];
  s.state = Slot::kHeld;
  s.id = static_cast<uint16_t>(p.hold_cookie & 0xffff);
  s.index = static_cast<uint8_t>((p.hold_cookie >> 16) & 31);
  s.pin = pin;
  ++pin->n;
  ++outstanding_;
  batch_held_ |= 1u << s.index;
  refs_.fetch_add(1, std::memory_order_relaxed);
  return t;
}

void HoldTable::Unhold(uint32_t t) {
  NICMUX_CHECK(t < slots_.size() && slots_[t].state == Slot::kHeld);
  batch_held_ &= ~(1u << slots_[t].index);
  Free(t);
  // Never the last reference: the owner holds one while it calls Hold and Unhold.
  refs_.fetch_sub(1, std::memory_order_relaxed);
}

void HoldTable::Release(uint32_t t) {
  ring_.Push(t);
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

void HoldTable::Free(uint32_t t) {
  Slot& s = slots_[t];
  Unpin(s.pin);
  s = Slot{};
  free_.push_back(t);
  --outstanding_;
}

void HoldTable::Unpin(Pin* p) {
  if (--p->n != 0) return;
  for (auto it = pins_.begin(); it != pins_.end(); ++it) {
    if (it->get() == p) {
      pins_.erase(it);  // the last hold into that memory is done: it may go now
      return;
    }
  }
}

}  // namespace nicmux
