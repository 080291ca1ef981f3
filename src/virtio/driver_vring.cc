#include "virtio/driver_vring.h"

#include <cstring>

#include "virtio/ring_access.h"

namespace nicmux::virtio {
namespace {

Result<void> CheckIndirectArea(const GuestMemory& mem, const DriverRingConfig& c) {
  if (c.max_indirect == 0) return Ok();
  uint64_t bytes = uint64_t{c.size} * c.max_indirect * sizeof(VirtqDesc);
  if (mem.TranslateFast(c.indirect_area, bytes, Access::kWrite) == nullptr) {
    return Error("indirect table area is not inside one memory region");
  }
  return Ok();
}

}  // namespace

// ---------------------------------------------------------------------------- split

Result<void> DriverSplitVring::Init(const GuestMemory& mem, const DriverRingConfig& c, bool clear) {
  auto areas = MapSplitRing(mem, RingAddrSpace::kGuestPhysical, c.ring[0].value,
                            c.ring[1].value, c.ring[2].value, c.size);
  if (!areas) return areas.error();
  NICMUX_TRY(CheckIndirectArea(mem, c));
  mem_ = &mem;
  desc_ = areas->desc;
  avail_ = areas->avail;
  used_ = areas->used;
  size_ = c.size;
  mask_ = static_cast<uint16_t>(c.size - 1);
  event_idx_ = Has(c.features, kFRingEventIdx);
  indirect_area_ = c.indirect_area;
  max_indirect_ = c.max_indirect;
  if (!clear) return Ok();  // broken_ stays true until Restore
  std::memset(static_cast<void*>(desc_), 0, SplitRingLayout::DescBytes(size_));
  std::memset(static_cast<void*>(avail_), 0, SplitRingLayout::AvailBytes(size_));
  std::memset(static_cast<void*>(used_), 0, SplitRingLayout::UsedBytes(size_));
  avail_idx_ = kicked_idx_ = last_used_ = used_shadow_ = 0;
  num_free_ = size_;
  heads_in_flight_ = 0;
  free_head_ = 0;
  next_.resize(size_);
  for (uint32_t i = 0; i < size_; ++i) next_[i] = static_cast<uint16_t>(i + 1);
  chain_len_.assign(size_, 0);
  writable_.assign(size_, 0);
  broken_ = false;
  return Ok();
}

std::optional<uint16_t> DriverSplitVring::Add(std::span<const DriverBuffer> bufs, bool indirect) {
  NICMUX_CHECK(!bufs.empty() && !broken_);
  NICMUX_CHECK(!indirect || bufs.size() <= max_indirect_);
  const uint32_t n = indirect ? 1 : static_cast<uint32_t>(bufs.size());
  if (num_free_ < n) return std::nullopt;
  const uint16_t head = free_head_;
  uint64_t writable = 0;
  for (const DriverBuffer& b : bufs) writable += b.writable ? b.len : 0;

  auto fill = [](VirtqDesc* d, const DriverBuffer& b, bool more, uint16_t next) {
    d->addr = Le64::Of(b.addr.value);
    d->len = Le32::Of(b.len);
    d->flags = Le16::Of(static_cast<uint16_t>((b.writable ? kDescFWrite : 0) | (more ? kDescFNext : 0)));
    d->next = Le16::Of(next);
  };
  if (indirect) {
    GuestAddr table{indirect_area_.value + uint64_t{head} * max_indirect_ * sizeof(VirtqDesc)};
    auto* t = reinterpret_cast<VirtqDesc*>(
        mem_->TranslateFast(table, bufs.size() * sizeof(VirtqDesc), Access::kWrite));
    NICMUX_CHECK(t != nullptr);  // the whole area was checked in Init
    for (size_t i = 0; i < bufs.size(); ++i) {
      fill(&t[i], bufs[i], i + 1 < bufs.size(), static_cast<uint16_t>(i + 1));
    }
    desc_[head].addr = Le64::Of(table.value);
    desc_[head].len = Le32::Of(static_cast<uint32_t>(bufs.size() * sizeof(VirtqDesc)));
    desc_[head].flags = Le16::Of(kDescFIndirect);
    desc_[head].next = Le16::Of(0);
    free_head_ = next_[head];
  } else {
    uint16_t idx = head;
    for (size_t i = 0; i < bufs.size(); ++i) {
      fill(&desc_[idx], bufs[i], i + 1 < bufs.size(), next_[idx]);
      idx = next_[idx];
    }
    free_head_ = idx;
  }
  chain_len_[head] = static_cast<uint16_t>(n);
  writable_[head] = writable;
  num_free_ -= n;
  ++heads_in_flight_;
  StoreRelaxed(AvailRing(avail_)[avail_idx_ & mask_], head);
  ++avail_idx_;
  return head;
}

void DriverSplitVring::Publish() {
  // §2.7.13.3.1: descriptors and ring entries are visible before the idx that covers them.
  StoreRelease(avail_->idx, avail_idx_);
}

bool DriverSplitVring::NeedKick() {
  const uint16_t old_idx = kicked_idx_;
  kicked_idx_ = avail_idx_;
  if (old_idx == avail_idx_) return false;
  // §2.7.13.4: the idx store is ordered before reading the device's suppression state.
  FullFence();
  if (event_idx_) return VringNeedEvent(LoadRelaxed(AvailEvent(used_, size_)), avail_idx_, old_idx);
  return (LoadRelaxed(used_->flags) & kUsedFNoNotify) == 0;
}

PopStatus DriverSplitVring::PopUsed(UsedBuffer* out) {
  if (broken_) return PopStatus::kBroken;
  if (last_used_ == used_shadow_) {
    // §2.7.14: the device writes used entries before the used idx (release); acquire here.
    uint16_t idx = LoadAcquire(used_->idx);
    // UNTRUSTED: the used idx can cover at most what is in flight.
    if (static_cast<uint16_t>(idx - last_used_) > heads_in_flight_) {
      MarkBroken(DropReason::kUsedIdxJump);
      return PopStatus::kBroken;
    }
    used_shadow_ = idx;
    if (idx == last_used_) return PopStatus::kEmpty;
  }
  VirtqUsedElem e;
  std::memcpy(&e, &UsedRing(used_)[last_used_ & mask_], sizeof e);
  // UNTRUSTED: id must be a head we handed out; len at most its writable bytes.
  const uint32_t id = e.id.get();
  if (id >= size_ || chain_len_[id] == 0) {
    MarkBroken(DropReason::kUsedIdOutOfRange);
    return PopStatus::kBroken;
  }
  uint32_t len = e.len.get();
  if (len > writable_[id]) {
    drops_.Add(DropReason::kUsedLenTooLong);
    len = static_cast<uint32_t>(writable_[id]);
  }
  // Return the chain's descriptors to the free list, walking our shadow links only.
  uint16_t last = static_cast<uint16_t>(id);
  for (uint16_t i = 1; i < chain_len_[id]; ++i) last = next_[last];
  next_[last] = free_head_;
  free_head_ = static_cast<uint16_t>(id);
  num_free_ += chain_len_[id];
  chain_len_[id] = 0;
  --heads_in_flight_;
  ++last_used_;
  *out = {static_cast<uint16_t>(id), len};
  return PopStatus::kOk;
}

void DriverSplitVring::DisableCalls() {
  // With EVENT_IDX the device notifies only when crossing used_event, which we leave behind.
  if (!event_idx_) StoreRelaxed(avail_->flags, kAvailFNoInterrupt);
}

bool DriverSplitVring::EnableCalls() {
  if (event_idx_) {
    StoreRelaxed(UsedEvent(avail_, size_), last_used_);
  } else {
    StoreRelaxed(avail_->flags, 0);
  }
  FullFence();
  return LoadAcquire(used_->idx) != last_used_;
}

// ---------------------------------------------------------------------------- packed

Result<void> DriverPackedVring::Init(const GuestMemory& mem, const DriverRingConfig& c, bool clear) {
  auto areas = MapPackedRing(mem, RingAddrSpace::kGuestPhysical, c.ring[0].value,
                             c.ring[1].value, c.ring[2].value, c.size);
  if (!areas) return areas.error();
  NICMUX_TRY(CheckIndirectArea(mem, c));
  mem_ = &mem;
  desc_ = areas->desc;
  driver_event_ = areas->driver_event;
  device_event_ = areas->device_event;
  size_ = c.size;
  event_idx_ = Has(c.features, kFRingEventIdx);
  indirect_area_ = c.indirect_area;
  max_indirect_ = c.max_indirect;
  if (!clear) return Ok();  // broken_ stays true until Restore
  std::memset(static_cast<void*>(desc_), 0, PackedRingLayout::DescBytes(size_));
  std::memset(static_cast<void*>(driver_event_), 0, sizeof(VirtqPackedEvent));
  std::memset(static_cast<void*>(device_event_), 0, sizeof(VirtqPackedEvent));
  avail_pos_ = kicked_pos_ = used_pos_ = 0;
  avail_wrap_ = used_wrap_ = true;  // §2.8.21: both wrap counters start at 1
  added_since_kick_ = 0;
  num_free_ = size_;
  ids_in_flight_ = 0;
  holding_ = false;
  free_ids_.resize(size_);
  for (uint32_t i = 0; i < size_; ++i) free_ids_[i] = static_cast<uint16_t>(size_ - 1 - i);
  slots_of_id_.assign(size_, 0);
  writable_.assign(size_, 0);
  broken_ = false;
  return Ok();
}

std::optional<uint16_t> DriverPackedVring::Add(std::span<const DriverBuffer> bufs, bool indirect) {
  NICMUX_CHECK(!bufs.empty() && !broken_);
  NICMUX_CHECK(!indirect || bufs.size() <= max_indirect_);
  const uint32_t n = indirect ? 1 : static_cast<uint32_t>(bufs.size());
  if (num_free_ < n || free_ids_.empty()) return std::nullopt;
  const uint16_t id = free_ids_.back();
  free_ids_.pop_back();
  uint64_t writable = 0;
  for (const DriverBuffer& b : bufs) writable += b.writable ? b.len : 0;

  const uint16_t first_slot = avail_pos_;
  uint16_t first_flags = 0;
  uint16_t slot = avail_pos_;
  bool wrap = avail_wrap_;
  if (indirect) {
    GuestAddr table{indirect_area_.value + uint64_t{id} * max_indirect_ * sizeof(VirtqPackedDesc)};
    auto* t = reinterpret_cast<VirtqPackedDesc*>(
        mem_->TranslateFast(table, bufs.size() * sizeof(VirtqPackedDesc), Access::kWrite));
    NICMUX_CHECK(t != nullptr);
    for (size_t i = 0; i < bufs.size(); ++i) {
      t[i].addr = Le64::Of(bufs[i].addr.value);
      t[i].len = Le32::Of(bufs[i].len);
      t[i].id = Le16::Of(0);
      t[i].flags = Le16::Of(bufs[i].writable ? kDescFWrite : 0);
    }
    desc_[slot].addr = Le64::Of(table.value);
    desc_[slot].len = Le32::Of(static_cast<uint32_t>(bufs.size() * sizeof(VirtqPackedDesc)));
    desc_[slot].id = Le16::Of(id);
    first_flags = static_cast<uint16_t>(kDescFIndirect | AvailFlags(wrap));
    Advance(&slot, &wrap, 1);
  } else {
    for (size_t i = 0; i < bufs.size(); ++i) {
      VirtqPackedDesc& d = desc_[slot];
      d.addr = Le64::Of(bufs[i].addr.value);
      d.len = Le32::Of(bufs[i].len);
      d.id = Le16::Of(id);
      const uint16_t flags = static_cast<uint16_t>(AvailFlags(wrap) |
                                                   (bufs[i].writable ? kDescFWrite : 0) |
                                                   (i + 1 < bufs.size() ? kDescFNext : 0));
      if (i == 0) {
        first_flags = flags;
      } else {
        StoreRelease(d.flags, flags);
      }
      Advance(&slot, &wrap, 1);
    }
  }
  // §2.8.21.1: the chain's first flags are written after all its other descriptors; the first
  // chain since Publish() holds them back so the device sees the whole batch at once.
  if (!holding_) {
    holding_ = true;
    held_slot_ = first_slot;
    held_flags_ = first_flags;
  } else {
    StoreRelease(desc_[first_slot].flags, first_flags);
  }
  avail_pos_ = slot;
  avail_wrap_ = wrap;
  slots_of_id_[id] = static_cast<uint16_t>(n);
  writable_[id] = writable;
  num_free_ -= n;
  added_since_kick_ += n;
  ++ids_in_flight_;
  return id;
}

void DriverPackedVring::Publish() {
  if (!holding_) return;
  StoreRelease(desc_[held_slot_].flags, held_flags_);
  holding_ = false;
}

bool DriverPackedVring::NeedKick() {
  if (added_since_kick_ == 0) return false;
  const uint16_t old_pos = kicked_pos_;
  kicked_pos_ = avail_pos_;
  added_since_kick_ = 0;
  // §2.8.22: the flags store is ordered before reading the device's event suppression.
  FullFence();
  const uint16_t mode = LoadAcquire(device_event_->flags);  // flags before off_wrap
  if (mode == kRingEventFlagsDisable) return false;
  if (mode == kRingEventFlagsDesc && event_idx_) {
    return PackedNeedEvent(LoadRelaxed(device_event_->off_wrap), old_pos, avail_pos_, avail_wrap_,
                           static_cast<uint16_t>(size_));
  }
  return true;
}

PopStatus DriverPackedVring::PopUsed(UsedBuffer* out) {
  if (broken_) return PopStatus::kBroken;
  if (ids_in_flight_ == 0) return PopStatus::kEmpty;
  // The device stores a used descriptor's flags last (release); acquire here (§2.8.22).
  const uint16_t flags = LoadAcquire(desc_[used_pos_].flags);
  const bool avail = (flags & kDescFAvail) != 0, used = (flags & kDescFUsed) != 0;
  if (avail != used_wrap_ || used != used_wrap_) return PopStatus::kEmpty;
  VirtqPackedDesc d;
  std::memcpy(&d, &desc_[used_pos_], sizeof d);
  // UNTRUSTED: id must be in flight; len at most its writable bytes.
  const uint16_t id = d.id.get();
  if (id >= size_ || slots_of_id_[id] == 0) {
    MarkBroken(DropReason::kUsedIdOutOfRange);
    return PopStatus::kBroken;
  }
  uint32_t len = d.len.get();
  if (len > writable_[id]) {
    drops_.Add(DropReason::kUsedLenTooLong);
    len = static_cast<uint32_t>(writable_[id]);
  }
  Advance(&used_pos_, &used_wrap_, slots_of_id_[id]);
  num_free_ += slots_of_id_[id];
  slots_of_id_[id] = 0;
  free_ids_.push_back(id);
  --ids_in_flight_;
  *out = {id, len};
  return PopStatus::kOk;
}

void DriverPackedVring::DisableCalls() {
  StoreRelaxed(driver_event_->flags, kRingEventFlagsDisable);
}

bool DriverPackedVring::EnableCalls() {
  if (event_idx_) {
    StoreRelaxed(driver_event_->off_wrap,
                 static_cast<uint16_t>(used_pos_ | (used_wrap_ ? 0x8000 : 0)));
    StoreRelease(driver_event_->flags, kRingEventFlagsDesc);  // off_wrap visible first
  } else {
    StoreRelaxed(driver_event_->flags, kRingEventFlagsEnable);
  }
  FullFence();
  const uint16_t flags = LoadAcquire(desc_[used_pos_].flags);
  return ids_in_flight_ != 0 && ((flags & kDescFAvail) != 0) == used_wrap_ &&
         ((flags & kDescFUsed) != 0) == used_wrap_;
}

}  // namespace nicmux::virtio

namespace nicmux::virtio {

// --------------------------------------------------------------------------- live upgrade

Result<void> DriverSplitVring::Save(HandoverRecord* out, const std::string& p) const {
  out->Set(p + "broken", broken_ ? 1 : 0);
  if (broken_) return Ok();
  if (max_indirect_ != 0) return Error(p + ": a ring with indirect tables is not handed over");
  // (Every Add is published by the Kick that follows it; the shared avail->idx is not read
  // here: the device can write it, and must not be able to block an upgrade.)
  out->Set(p + "avail_idx", avail_idx_);
  out->Set(p + "kicked_idx", kicked_idx_);
  out->Set(p + "last_used", last_used_);
  out->Set(p + "used_shadow", used_shadow_);
  out->Set(p + "num_free", num_free_);
  out->Set(p + "in_flight", heads_in_flight_);
  out->Set(p + "free_head", free_head_);
  out->SetList(p + "next", next_);
  out->SetList(p + "chain_len", chain_len_);
  out->SetList(p + "writable", writable_);
  return Ok();
}

Result<void> DriverSplitVring::Restore(const HandoverRecord& in, const std::string& p, uint64_t max_writable) {
  // UNTRUSTED (the old process, maybe another build): one consistent state or an error.
  NICMUX_TRY_ASSIGN(broken, in.Get(p + "broken", 1));
  if (broken) {
    broken_ = true;
    return Ok();
  }
  NICMUX_TRY_ASSIGN(avail, in.Get(p + "avail_idx", 0xffff));
  NICMUX_TRY_ASSIGN(kicked, in.Get(p + "kicked_idx", 0xffff));
  NICMUX_TRY_ASSIGN(last_used, in.Get(p + "last_used", 0xffff));
  NICMUX_TRY_ASSIGN(used_shadow, in.Get(p + "used_shadow", 0xffff));
  NICMUX_TRY_ASSIGN(num_free, in.Get(p + "num_free", size_));
  NICMUX_TRY_ASSIGN(in_flight, in.Get(p + "in_flight", size_));
  NICMUX_TRY_ASSIGN(free_head, in.Get(p + "free_head", size_));
  NICMUX_TRY_ASSIGN(next, in.GetList(p + "next", size_, size_));
  NICMUX_TRY_ASSIGN(chain, in.GetList(p + "chain_len", size_, size_));
  NICMUX_TRY_ASSIGN(writable, in.GetList(p + "writable", size_, max_writable));
  // Every descriptor is free (on the list from free_head) or in exactly one in-flight chain.
  std::vector<uint8_t> seen(size_, 0);
  uint64_t d = free_head;
  for (uint64_t i = 0; i < num_free; ++i) {
    if (d >= size_ || seen[d]) return Error(p + ": the free list is not a list of free descriptors");
    seen[d] = 1;
    d = next[d];
  }
  uint64_t heads = 0, covered = num_free;
  for (uint32_t h = 0; h < size_; ++h) {
    if (chain[h] == 0) continue;
    ++heads;
    d = h;
    for (uint64_t j = 0; j < chain[h]; ++j) {
      if (d >= size_ || seen[d]) return Error(p + ": the chain of head " + std::to_string(h) + " overlaps another");
      seen[d] = 1;
      if (j + 1 < chain[h]) d = next[d];
    }
    covered += chain[h];
  }
  if (covered != size_) return Error(p + ": " + std::to_string(size_ - covered) + " descriptor(s) neither free nor in a chain");
  if (heads != in_flight || static_cast<uint16_t>(avail - last_used) != in_flight ||
      static_cast<uint16_t>(used_shadow - last_used) > in_flight) {
    return Error(p + ": the indexes (avail " + std::to_string(avail) + ", used " + std::to_string(last_used) +
                 ") do not agree with " + std::to_string(heads) + " chain(s) in flight");
  }
  avail_idx_ = static_cast<uint16_t>(avail);
  kicked_idx_ = static_cast<uint16_t>(kicked);
  last_used_ = static_cast<uint16_t>(last_used);
  used_shadow_ = static_cast<uint16_t>(used_shadow);
  num_free_ = static_cast<uint32_t>(num_free);
  heads_in_flight_ = static_cast<uint32_t>(in_flight);
  free_head_ = static_cast<uint16_t>(free_head);
  next_.assign(next.begin(), next.end());
  chain_len_.assign(chain.begin(), chain.end());
  writable_.assign(writable.begin(), writable.end());
  broken_ = false;
  return Ok();
}

Result<void> DriverPackedVring::Save(HandoverRecord* out, const std::string& p) const {
  out->Set(p + "broken", broken_ ? 1 : 0);
  if (broken_) return Ok();
  if (max_indirect_ != 0) return Error(p + ": a ring with indirect tables is not handed over");
  if (holding_) return Error(p + ": chains added but not published");
  out->Set(p + "avail_pos", avail_pos_);
  out->Set(p + "avail_wrap", avail_wrap_ ? 1 : 0);
  out->Set(p + "kicked_pos", kicked_pos_);
  out->Set(p + "added_since_kick", added_since_kick_);
  out->Set(p + "used_pos", used_pos_);
  out->Set(p + "used_wrap", used_wrap_ ? 1 : 0);
  out->Set(p + "num_free", num_free_);
  out->Set(p + "in_flight", ids_in_flight_);
  out->Set(p + "free_ids.n", free_ids_.size());
  out->SetList(p + "free_ids", free_ids_);
  out->SetList(p + "slots_of_id", slots_of_id_);
  out->SetList(p + "writable", writable_);
  return Ok();
}

Result<void> DriverPackedVring::Restore(const HandoverRecord& in, const std::string& p, uint64_t max_writable) {
  // UNTRUSTED (the old process, maybe another build): one consistent state or an error.
  NICMUX_TRY_ASSIGN(broken, in.Get(p + "broken", 1));
  if (broken) {
    broken_ = true;
    return Ok();
  }
  NICMUX_TRY_ASSIGN(avail_pos, in.Get(p + "avail_pos", size_ - 1));
  NICMUX_TRY_ASSIGN(avail_wrap, in.Get(p + "avail_wrap", 1));
  NICMUX_TRY_ASSIGN(kicked_pos, in.Get(p + "kicked_pos", size_ - 1));
  NICMUX_TRY_ASSIGN(added, in.Get(p + "added_since_kick", UINT32_MAX));
  NICMUX_TRY_ASSIGN(used_pos, in.Get(p + "used_pos", size_ - 1));
  NICMUX_TRY_ASSIGN(used_wrap, in.Get(p + "used_wrap", 1));
  NICMUX_TRY_ASSIGN(num_free, in.Get(p + "num_free", size_));
  NICMUX_TRY_ASSIGN(in_flight, in.Get(p + "in_flight", size_));
  NICMUX_TRY_ASSIGN(nfree, in.Get(p + "free_ids.n", size_));
  NICMUX_TRY_ASSIGN(free_ids, in.GetList(p + "free_ids", nfree, size_ - 1));
  NICMUX_TRY_ASSIGN(slots, in.GetList(p + "slots_of_id", size_, size_));
  NICMUX_TRY_ASSIGN(writable, in.GetList(p + "writable", size_, max_writable));
  std::vector<uint8_t> is_free(size_, 0);
  for (uint64_t id : free_ids) {
    if (is_free[id] || slots[id] != 0) return Error(p + ": id " + std::to_string(id) + " free twice or free and in flight");
    is_free[id] = 1;
  }
  uint64_t ids = 0, used_slots = 0;
  for (uint32_t id = 0; id < size_; ++id) {
    if (slots[id] == 0) continue;
    ++ids;
    used_slots += slots[id];
  }
  // The slots between the used and the avail position are exactly those of the ids in flight.
  const uint64_t distance = avail_wrap == used_wrap ? avail_pos - used_pos : avail_pos + size_ - used_pos;
  if (ids != in_flight || ids + nfree != size_ || used_slots + num_free != size_ ||
      (avail_wrap == used_wrap && avail_pos < used_pos) || distance != used_slots) {
    return Error(p + ": positions (avail " + std::to_string(avail_pos) + ", used " + std::to_string(used_pos) +
                 ") do not agree with " + std::to_string(ids) + " id(s) in flight over " + std::to_string(used_slots) +
                 " slot(s)");
  }
  avail_pos_ = static_cast<uint16_t>(avail_pos);
  avail_wrap_ = avail_wrap != 0;
  kicked_pos_ = static_cast<uint16_t>(kicked_pos);
  added_since_kick_ = static_cast<uint32_t>(added);
  used_pos_ = static_cast<uint16_t>(used_pos);
  used_wrap_ = used_wrap != 0;
  num_free_ = static_cast<uint32_t>(num_free);
  ids_in_flight_ = static_cast<uint32_t>(in_flight);
  holding_ = false;
  free_ids_.assign(free_ids.begin(), free_ids.end());
  slots_of_id_.assign(slots.begin(), slots.end());
  writable_.assign(writable.begin(), writable.end());
  broken_ = false;
  return Ok();
}

}  // namespace nicmux::virtio
