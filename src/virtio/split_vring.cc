#include "virtio/split_vring.h"

#include <algorithm>

#include "base/log.h"
#include "virtio/ring_access.h"

namespace nicmux::virtio {

Result<void> SplitVring::Init(const VringConfig& config, const SplitRingAreas& areas,
                              const GuestMemory* mem, uint16_t last_avail_idx) {
  NICMUX_TRY(CheckQueueSize(config.size, false));
  NICMUX_CHECK(mem != nullptr && areas.desc && areas.avail && areas.used);
  // UNTRUSTED: the used idx in the ring; bounded against last_avail_idx.
  uint16_t used = LoadAcquire(areas.used->idx);
  if (static_cast<uint16_t>(last_avail_idx - used) > config.size) {
    return Error("split ring state: used idx " + std::to_string(used) + " is more than the queue size " +
                 std::to_string(config.size) + " behind last_avail_idx " +
                 std::to_string(last_avail_idx));
  }
  mem_ = mem;
  desc_ = areas.desc;
  avail_ = areas.avail;
  used_ = areas.used;
  size_ = config.size;
  mask_ = static_cast<uint16_t>(config.size - 1);
  event_idx_ = config.event_idx();
  indirect_ = config.indirect();
  policy_ = config.policy;
  last_avail_ = avail_shadow_ = last_avail_idx;
  used_idx_ = used;
  pending_ = 0;
  broken_ = false;
  kicks_on_ = true;
  return Ok();
}

void SplitVring::MarkBroken(DropReason why) {
  broken_ = true;
  drops_.Add(why);
  drops_.Add(DropReason::kQueueBroken);
  broken_reason_ = why;  // logged by the owner, which can name the port and queue
}

std::optional<DropReason> SplitVring::Walk(uint16_t head, DescChain* chain) {
  ChainBuilder builder(*mem_, policy_, chain);
  const VirtqDesc* table = desc_;
  uint32_t table_size = size_;
  bool in_indirect = false;
  uint32_t idx = head;
  uint32_t hops = 0;   // in the current table: more hops than entries means a loop
  // Buffer descriptors in the whole chain, empty ones included: at most the queue size
  // (§2.7.5.3.1) and at most kMaxChainDescs (our bound on a walk's cost). The descriptor
  // pointing at an indirect table is not one; its table's entries are.
  const uint32_t max_total = std::min(size_, kMaxChainDescs);
  uint32_t total = 0;
  for (;;) {
    if (++hops > table_size) return DropReason::kDescLoop;
    // One copy out of shared memory; only the copy is looked at (no double fetch).
    VirtqDesc d;
    std::memcpy(&d, &table[idx], sizeof d);
    const uint16_t flags = d.flags.get();
    if (!(flags & kDescFIndirect) && ++total > max_total) return DropReason::kChainTooLong;
    if (flags & kDescFIndirect) {
      // UNTRUSTED: an indirect descriptor; feature, nesting, flags, length and placement are
      // checked before its table is walked (§2.7.5.3.1).
      if (!indirect_) return DropReason::kIndirectNotNegotiated;
      if (in_indirect) return DropReason::kIndirectNested;
      if (flags & kDescFNext) return DropReason::kIndirectWithNext;
      const uint32_t len = d.len.get();
      if (len == 0 || len % sizeof(VirtqDesc) != 0) return DropReason::kIndirectBadLen;
      std::byte* t = mem_->TranslateFast(GuestAddr{d.addr.get()}, len, Access::kRead);
      if (t == nullptr) return DropReason::kIndirectOutsideMemory;
      table = reinterpret_cast<const VirtqDesc*>(t);
      table_size = len / sizeof(VirtqDesc);
      in_indirect = true;
      idx = 0;
      hops = 0;
      continue;
    }
    if (auto bad = builder.Add(d.addr.get(), d.len.get(), (flags & kDescFWrite) != 0)) return bad;
    if (!(flags & kDescFNext)) return std::nullopt;
    // UNTRUSTED: next, bounded by the table it indexes.
    idx = d.next.get();
    if (idx >= table_size) return DropReason::kDescNextOutOfRange;
  }
}

PopStatus SplitVring::Pop(DescChain* chain, uint32_t* bad_budget) {
  // UNTRUSTED: bad chains completed in this call (or this burst). A driver that reposts bad
  // chains as fast as they are completed (a second vCPU following our used ring) would
  // otherwise keep the worker in this loop for ever; past the bound the call ends as if the
  // ring were empty, and the caller flushes and goes on to other queues.
  uint32_t own = kMaxBadChainsPerPop;
  uint32_t& bad_left = bad_budget ? *bad_budget : own;
  for (;;) {
    if (broken_) return PopStatus::kBroken;
    if (bad_left == 0) return PopStatus::kEmpty;
    if (last_avail_ == avail_shadow_) {
      // §2.7.13.3: the driver writes ring entries before avail idx (release); this acquire
      // orders our reads of the entries and their descriptors after it.
      uint16_t idx = LoadAcquire(avail_->idx);
      // UNTRUSTED: avail idx; it may run at most a queue size ahead of us.
      if (static_cast<uint16_t>(idx - last_avail_) > size_) {
        MarkBroken(DropReason::kAvailIdxJump);
        return PopStatus::kBroken;
      }
      avail_shadow_ = idx;
      if (idx == last_avail_) return PopStatus::kEmpty;
    }
    // UNTRUSTED: the head index; must name a descriptor.
    uint16_t head = LoadRelaxed(AvailRing(avail_)[last_avail_ & mask_]);
    if (head >= size_) {
      MarkBroken(DropReason::kHeadOutOfRange);
      return PopStatus::kBroken;
    }
    const uint16_t pos = last_avail_++;
    // The common chain, one direct descriptor, is taken without the general walk; anything
    // else (or a check that fails) goes through Walk(), which reads the descriptor again.
    VirtqDesc d;
    std::memcpy(&d, &desc_[head], sizeof d);
    const uint16_t flags = d.flags.get();
    std::optional<DropReason> bad;
    if ((flags & (kDescFNext | kDescFIndirect)) ||
        !ChainBuilder::SingleSegment(*mem_, policy_, d.addr.get(), d.len.get(), (flags & kDescFWrite) != 0,
                                     chain)) {
      bad = Walk(head, chain);
    }
    if (!bad) {
      chain->id = head;
      chain->num_descs = 1;
      chain->ring_pos = pos;
      chain->bad_seq = bad_seq_;
      popped_.Add();
      return PopStatus::kOk;
    }
    // Every bad chain whose head is valid is completed, a loop too: the head is all the
    // driver needs back, and the walk that found the fault was bounded (kMaxChainDescs).
    drops_.Add(*bad);
    NICMUX_LOG_RATELIMITED(kWarning, "split virtqueue: chain at head %u completed empty: %s",
                           head, DropReasonName(*bad).data());
    Push(head, 0);
    ++bad_seq_;
    --bad_left;
  }
}

uint32_t SplitVring::Available(uint32_t limit) {
  if (broken_) return 0;
  if (last_avail_ == avail_shadow_) avail_shadow_ = LoadAcquire(avail_->idx);
  // UNTRUSTED: the driver's idx; Pop() breaks the queue if it jumped, here it is only clamped.
  uint32_t n = static_cast<uint16_t>(avail_shadow_ - last_avail_);
  if (n > size_) {
    avail_shadow_ = last_avail_;  // let Pop() reload and judge it
    return std::min(size_, limit);
  }
  return std::min(n, limit);
}

bool SplitVring::Rewind(std::span<const DescChain> chains) {
  if (chains.empty()) return true;
  if (chains[0].bad_seq != bad_seq_) return false;
  NICMUX_DCHECK(static_cast<uint16_t>(last_avail_ - chains[0].ring_pos) == chains.size());
  last_avail_ = chains[0].ring_pos;
  // UNTRUSTED: the avail idx last loaded was checked against a jump from where we were then,
  // not from here: loaded again (and checked) before anything is taken past this point.
  avail_shadow_ = last_avail_;
  return true;
}

uint32_t SplitVring::TakeRun(DescChain* chains, uint32_t n) {
  // Members in locals: the stores into chains[] could alias them otherwise.
  const uint16_t first = last_avail_;
  const uint16_t size = static_cast<uint16_t>(size_);
  const uint16_t mask = mask_;
  const VirtqDesc* const desc = desc_;
  const Le16* const ring = AvailRing(avail_);
  const GuestMemory& mem = *mem_;
  const ChainPolicy policy = policy_;
  const uint64_t bad_seq = bad_seq_;
  uint32_t i = 0;
  for (; i < n; ++i) {
    // UNTRUSTED: the head index names a descriptor; the descriptor is one direct buffer that
    // passes SingleSegment's checks (policy, a length above 0, translation). Anything else
    // ends the run, and Pop() judges it (and breaks the queue or completes the chain empty).
    const uint16_t head = LoadRelaxed(ring[static_cast<uint16_t>(first + i) & mask]);
    if (head >= size) break;
    VirtqDesc d;
    std::memcpy(&d, &desc[head], sizeof d);  // one copy out of shared memory
    const uint16_t flags = d.flags.get();
    if ((flags & (kDescFNext | kDescFIndirect)) ||
        !ChainBuilder::SingleSegment(mem, policy, d.addr.get(), d.len.get(), (flags & kDescFWrite) != 0,
                                     &chains[i])) {
      break;
    }
    chains[i].id = head;
    chains[i].num_descs = 1;
    chains[i].ring_pos = static_cast<uint16_t>(first + i);
    chains[i].bad_seq = bad_seq;
  }
  last_avail_ = static_cast<uint16_t>(first + i);
  popped_.Add(i);
  return i;
}

uint32_t SplitVring::PopBurst(DescChain* chains, uint32_t n, uint32_t* bad_budget) {
  uint32_t own = kMaxBadChainsPerPop;
  uint32_t* const budget = bad_budget ? bad_budget : &own;
  uint32_t got = 0;
  while (got < n) {
    // The chains the driver's last loaded avail idx covers (checked against a jump when it
    // was loaded) are taken as a run of one-descriptor chains; Pop() takes the first one that
    // is not (or reloads the idx when the run is used up).
    const uint32_t ready = static_cast<uint16_t>(avail_shadow_ - last_avail_);
    if (ready > 0 && !broken_) {
      const uint32_t took = TakeRun(&chains[got], std::min(ready, n - got));
      got += took;
      if (took > 0) continue;
    }
    if (Pop(&chains[got], budget) != PopStatus::kOk) break;
    ++got;
  }
  return got;
}

void SplitVring::Push(uint16_t id, uint32_t len) {
  NICMUX_DCHECK(id < size_);
  VirtqUsedElem& e = UsedRing(used_)[static_cast<uint16_t>(used_idx_ + pending_) & mask_];
  e.id = Le32::Of(id);
  e.len = Le32::Of(len);
  ++pending_;
}

bool SplitVring::Flush() {
  if (pending_ == 0) return false;
  const uint16_t old_idx = used_idx_;
  used_idx_ = static_cast<uint16_t>(used_idx_ + pending_);
  pending_ = 0;
  // §2.7.8: used ring entries are visible before the used idx that covers them (release).
  StoreRelease(used_->idx, used_idx_);
  // The idx store must be ordered before reading the driver's suppression state, else the
  // driver could re-enable interrupts after our read and miss this batch (§2.7.10).
  FullFence();
  if (event_idx_) return VringNeedEvent(LoadRelaxed(UsedEvent(avail_, size_)), used_idx_, old_idx);
  return (LoadRelaxed(avail_->flags) & kAvailFNoInterrupt) == 0;
}

bool SplitVring::EnableKicks() {
  if (broken_) return false;
  kicks_on_ = true;
  if (event_idx_) {
    StoreRelaxed(AvailEvent(used_, size_), last_avail_);
  } else {
    StoreRelaxed(used_->flags, 0);
  }
  // Publish the request before re-reading avail idx: a chain added meanwhile is seen here or
  // kicks us (§2.7.10).
  FullFence();
  return LoadAcquire(avail_->idx) != last_avail_;
}

void SplitVring::DisableKicks() {
  kicks_on_ = false;
  // With EVENT_IDX the driver kicks only when crossing avail_event, which we leave behind.
  if (!event_idx_) StoreRelaxed(used_->flags, kUsedFNoNotify);
}

}  // namespace nicmux::virtio
