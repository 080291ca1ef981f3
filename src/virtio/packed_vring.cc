#include "virtio/packed_vring.h"

#include "base/log.h"
#include "virtio/ring_access.h"

namespace nicmux::virtio {

Result<void> PackedVring::Init(const VringConfig& config, const PackedRingAreas& areas,
                               const GuestMemory* mem, uint16_t avail_state) {
  NICMUX_TRY(CheckQueueSize(config.size, true));
  NICMUX_CHECK(mem != nullptr && areas.desc && areas.driver_event && areas.device_event);
  uint16_t pos = avail_state & 0x7fff;
  if (pos >= config.size) {
    return Error("packed ring base " + std::to_string(pos) + " is not below the queue size " +
                 std::to_string(config.size));
  }
  mem_ = mem;
  desc_ = areas.desc;
  driver_event_ = areas.driver_event;
  device_event_ = areas.device_event;
  size_ = config.size;
  event_idx_ = config.event_idx();
  indirect_ = config.indirect();
  in_order_ = config.in_order();
  policy_ = config.policy;
  avail_pos_ = used_pos_ = signalled_pos_ = pos;
  avail_wrap_ = used_wrap_ = (avail_state >> 15) != 0;
  pending_ = 0;
  in_flight_descs_ = 0;
  descs_of_id_.assign(size_, 0);
  in_flight_.assign(size_, 0);
  broken_ = false;
  kicks_on_ = true;
  return Ok();
}

void PackedVring::MarkBroken(DropReason why) {
  broken_ = true;
  drops_.Add(why);
  drops_.Add(DropReason::kQueueBroken);
  broken_reason_ = why;  // logged by the owner, which can name the port and queue
}

std::optional<DropReason> PackedVring::WalkIndirect(const VirtqPackedDesc& d, ChainBuilder& builder,
                                                    uint32_t budget) {
  // UNTRUSTED: an indirect descriptor (§2.8.19): feature, length and placement checked before
  // the table is read; entries are sequential, their NEXT flag is not used.
  if (!indirect_) return DropReason::kIndirectNotNegotiated;
  const uint32_t len = d.len.get();
  if (len == 0 || len % sizeof(VirtqPackedDesc) != 0) return DropReason::kIndirectBadLen;
  // budget: what kMaxChainDescs leaves after the chain's direct descriptors.
  if (len / sizeof(VirtqPackedDesc) > std::min(size_, budget)) return DropReason::kChainTooLong;
  std::byte* t = mem_->TranslateFast(GuestAddr{d.addr.get()}, len, Access::kRead);
  if (t == nullptr) return DropReason::kIndirectOutsideMemory;
  const auto* table = reinterpret_cast<const VirtqPackedDesc*>(t);
  for (uint32_t i = 0; i < len / sizeof(VirtqPackedDesc); ++i) {
    VirtqPackedDesc e;
    std::memcpy(&e, &table[i], sizeof e);
    const uint16_t flags = e.flags.get();
    if (flags & kDescFIndirect) return DropReason::kIndirectNested;
    // Interop: DPDK 22.11's virtio PMD initialises its packed indirect tables with WRITE set
    // on every entry (vring_desc_init_indirect_packed) and leaves it on the virtio-net header
    // entry of transmitted packets. In a queue the device only reads, reading a buffer marked
    // writable is harmless, so the flag is ignored there; where we write, it is required.
    const bool writable = (flags & kDescFWrite) != 0 && policy_ != ChainPolicy::kReadOnly;
    if (auto bad = builder.Add(e.addr.get(), e.len.get(), writable)) return bad;
  }
  return std::nullopt;
}

PopStatus PackedVring::Pop(DescChain* chain, uint32_t* bad_budget) {
  // UNTRUSTED: as in SplitVring::Pop: bad chains completed in this call (or burst), bounded.
  uint32_t own = kMaxBadChainsPerPop;
  uint32_t& bad_left = bad_budget ? *bad_budget : own;
  for (;;) {
    if (broken_) return PopStatus::kBroken;
    if (bad_left == 0) return PopStatus::kEmpty;
    uint16_t slot = avail_pos_;
    bool wrap = avail_wrap_;
    // §2.8.21.1: the driver writes a chain's first flags last (release); this acquire orders
    // our reads of the chain's descriptors after it.
    uint16_t flags = LoadAcquire(desc_[slot].flags);
    if (!IsAvail(flags, wrap)) return PopStatus::kEmpty;
    if (!(flags & (kDescFNext | kDescFIndirect))) {
      // The common chain, one direct descriptor, without the walk below. Any check that fails
      // falls through to the walk (nothing is changed before), which reads the descriptor
      // again and judges what it finds then.
      VirtqPackedDesc d;
      std::memcpy(&d, &desc_[slot], sizeof d);
      const uint16_t id = d.id.get();
      if (id < size_ && !in_flight_[id] && in_flight_descs_ < size_ &&
          ChainBuilder::SingleSegment(*mem_, policy_, d.addr.get(), d.len.get(), (flags & kDescFWrite) != 0,
                                      chain)) {
        TakeOne(chain, id);
        return PopStatus::kOk;
      }
    }

    ChainBuilder builder(*mem_, policy_, chain);
    std::optional<DropReason> bad;
    uint32_t n = 0;
    uint16_t id = 0;
    // UNTRUSTED: how many slots this chain may span. The driver may only make available the
    // slots the device has given back (§2.8.21), so chains in flight never cover more than
    // the ring: a chain reaching past that reuses a slot of one still in flight (it would
    // make the used position run more than a lap and write past the ring; issue 17). And a
    // walk reads at most kMaxChainDescs descriptors. Either bound reached before the chain's
    // end leaves no id to complete it with: the queue is broken.
    const uint32_t free_slots = size_ - in_flight_descs_;
    // Walk the whole extent of the chain even after a bad buffer: completing it needs its id
    // and its length in slots.
    for (;;) {
      if (++n > free_slots) {
        MarkBroken(DropReason::kPackedRingOverrun);
        return PopStatus::kBroken;
      }
      if (n > kMaxChainDescs) {
        MarkBroken(DropReason::kChainTooLong);
        return PopStatus::kBroken;
      }
      VirtqPackedDesc d;
      std::memcpy(&d, &desc_[slot], sizeof d);
      if (flags & kDescFIndirect) {
        if (!bad && (flags & kDescFNext)) bad = DropReason::kIndirectWithNext;
        if (!bad) bad = WalkIndirect(d, builder, kMaxChainDescs - (n - 1));
      } else if (!bad) {
        bad = builder.Add(d.addr.get(), d.len.get(), (flags & kDescFWrite) != 0);
      }
      id = d.id.get();
      if (!(flags & kDescFNext)) break;
      Advance(&slot, &wrap, 1);
      flags = LoadAcquire(desc_[slot].flags);
      // UNTRUSTED: a continuation descriptor must be available in the same lap.
      if (!IsAvail(flags, wrap)) {
        MarkBroken(DropReason::kPackedWrapInconsistent);
        return PopStatus::kBroken;
      }
    }
    // UNTRUSTED: the buffer id indexes our tables and must not be in flight already.
    if (id >= size_) {
      MarkBroken(DropReason::kPackedIdOutOfRange);
      return PopStatus::kBroken;
    }
    if (in_flight_[id]) {
      MarkBroken(DropReason::kPackedIdInFlight);
      return PopStatus::kBroken;
    }
    const uint16_t pos = avail_pos_;
    const bool pos_wrap = avail_wrap_;
    Advance(&avail_pos_, &avail_wrap_, n);
    in_flight_[id] = 1;
    descs_of_id_[id] = static_cast<uint16_t>(n);
    in_flight_descs_ += n;
    if (!bad) {
      chain->id = id;
      chain->num_descs = static_cast<uint16_t>(n);
      chain->ring_pos = pos;
      chain->ring_wrap = pos_wrap;
      chain->bad_seq = bad_seq_;
      popped_.Add();
      return PopStatus::kOk;
    }
    drops_.Add(*bad);
    NICMUX_LOG_RATELIMITED(kWarning, "packed virtqueue: chain with id %u completed empty: %s", id,
                           DropReasonName(*bad).data());
    Push(id, 0);
    ++bad_seq_;
    --bad_left;
  }
}

uint32_t PackedVring::Available(uint32_t limit) {
  if (broken_) return 0;
  uint16_t slot = avail_pos_;
  bool wrap = avail_wrap_;
  uint32_t chains = 0;
  uint32_t in_chain = 0;  // slots so far of the chain being counted
  // UNTRUSTED: only flags are read, at most as many as Pop could consume (the free slots) and
  // at most kAvailableMaxSlots: a ring of long chains costs each caller a bounded walk.
  const uint32_t free_slots = size_ - in_flight_descs_;
  const uint32_t max_slots = std::min(free_slots, kAvailableMaxSlots);
  constexpr uint16_t kMask = kDescFAvail | kDescFUsed | kDescFNext;
  for (uint32_t i = 0; i < max_slots && chains < limit; ++i) {
    // Four one-slot chains in a cache line of the table, one compare each (as PopBatch); any
    // other case goes slot by slot below.
    if (in_chain == 0 && slot % kPopBatch == 0 && slot + kPopBatch <= size_ && i + kPopBatch <= max_slots &&
        limit - chains >= kPopBatch) {
      const uint16_t want = wrap ? kDescFAvail : kDescFUsed;
      uint32_t odd = 0;
      for (uint32_t j = 0; j < kPopBatch; ++j) {
        odd |= static_cast<uint32_t>((LoadAcquire(desc_[slot + j].flags) & kMask) ^ want);
      }
      if (odd == 0) {
        chains += kPopBatch;
        Advance(&slot, &wrap, kPopBatch);
        i += kPopBatch - 1;
        continue;
      }
    }
    const uint16_t flags = LoadAcquire(desc_[slot].flags);
    if (!IsAvail(flags, wrap)) {
      // A chain whose head is available and whose continuation is not is malformed (the
      // driver publishes a chain's head last, §2.8.21.1): it is counted, so that Pop() reaches
      // it and judges it (the queue breaks), rather than every caller waiting for it.
      return in_chain > 0 ? chains + 1 : chains;
    }
    Advance(&slot, &wrap, 1);
    if (!(flags & kDescFNext)) {
      ++chains;
      in_chain = 0;
    } else if (++in_chain >= kMaxChainDescs) {
      return chains + 1;  // longer than Pop() walks: it breaks the queue there
    }
  }
  // At the free slots' end, inside a chain or at an available head: the driver reaches into
  // slots still in flight, an overrun, which Pop() judges too.
  if (chains < limit && max_slots == free_slots &&
      (in_chain > 0 || IsAvail(LoadAcquire(desc_[slot].flags), wrap))) {
    ++chains;
  }
  return chains;
}

bool PackedVring::Rewind(std::span<const DescChain> chains) {
  if (chains.empty()) return true;
  if (chains[0].bad_seq != bad_seq_) return false;
  for (const DescChain& c : chains) {
    NICMUX_CHECK(c.id < size_ && in_flight_[c.id]);
    in_flight_[c.id] = 0;
    in_flight_descs_ -= descs_of_id_[c.id];
  }
  avail_pos_ = chains[0].ring_pos;
  avail_wrap_ = chains[0].ring_wrap;
  return true;
}

void PackedVring::TakeOne(DescChain* chain, uint16_t id) {
  chain->id = id;
  chain->num_descs = 1;
  chain->ring_pos = avail_pos_;
  chain->ring_wrap = avail_wrap_;
  chain->bad_seq = bad_seq_;
  in_flight_[id] = 1;
  descs_of_id_[id] = 1;
  ++in_flight_descs_;
  Advance(&avail_pos_, &avail_wrap_, 1);
  popped_.Add();
}

bool PackedVring::PopBatch(DescChain* chains) {
  constexpr uint32_t kB = kPopBatch;
  // Members the loops use, in locals: the stores into chains[] could alias them otherwise,
  // and every iteration would load them again.
  const uint32_t size = size_;
  const uint16_t pos = avail_pos_;
  const bool wrap = avail_wrap_;
  // The group lies inside the ring (no wrap in the middle) and its four slots are free: the
  // bound Pop() keeps, that chains in flight never cover more than the ring (issue 17).
  if (broken_ || pos + kB > size || in_flight_descs_ + kB > size) return false;
  const VirtqPackedDesc* group = &desc_[pos];
  // §2.8.21.1: each chain's (here: each descriptor's) flags are written last by the driver;
  // the acquire loads order the reads of their bodies below after them.
  uint16_t flags[kB];
#pragma GCC unroll 4
  for (uint32_t i = 0; i < kB; ++i) flags[i] = LoadAcquire(group[i].flags);
  // One compare per descriptor for IsAvail (AVAIL == our wrap counter, USED != it) and for
  // neither NEXT nor INDIRECT. A driver that has made only some of the four available, or a
  // chained or indirect one among them: Pop() takes them one by one (and judges the unusual).
  constexpr uint16_t kMask = kDescFAvail | kDescFUsed | kDescFNext | kDescFIndirect;
  const uint16_t want = wrap ? kDescFAvail : kDescFUsed;
  uint32_t odd = 0;
#pragma GCC unroll 4
  for (uint32_t i = 0; i < kB; ++i) odd |= static_cast<uint32_t>((flags[i] & kMask) ^ want);
  if (odd != 0) return false;
  VirtqPackedDesc d[kB];
  std::memcpy(d, group, sizeof d);  // available, so the driver no longer writes them
  // UNTRUSTED: each buffer checked as Pop()'s one-descriptor path checks it (policy, a length
  // above 0, translation into one region), the four at once: one WRITE flag for all (a queue's
  // buffers all go one way), in the region that answered last. Anything else goes to Pop().
  const bool writable = (flags[0] & kDescFWrite) != 0;
  uint32_t mixed = 0, empty = 0;
  uint64_t addr[kB];
  uint32_t len[kB];
#pragma GCC unroll 4
  for (uint32_t i = 0; i < kB; ++i) {
    addr[i] = d[i].addr.get();
    len[i] = d[i].len.get();
    mixed |= static_cast<uint32_t>((flags[i] ^ flags[0]) & kDescFWrite);
    empty |= len[i] == 0;
  }
  std::byte* host[kB];
  if (mixed == 0 && empty == 0 && policy_ != (writable ? ChainPolicy::kReadOnly : ChainPolicy::kWriteOnly) &&
      mem_->TranslateGroupFast(addr, len, writable ? Access::kWrite : Access::kRead, host)) {
#pragma GCC unroll 4
    for (uint32_t i = 0; i < kB; ++i) {
      chains[i].segs[0] = {host[i], len[i]};
      chains[i].num_segments = 1;
      chains[i].num_readable = writable ? 0 : 1;
      chains[i].readable_bytes = writable ? 0 : len[i];
      chains[i].writable_bytes = writable ? len[i] : 0;
    }
  } else {
    // Buffers in several regions (a guest with memory below and above 4 GiB), both directions
    // in one group, or one to refuse: each on its own, as Pop() would.
    for (uint32_t i = 0; i < kB; ++i) {
      if (!ChainBuilder::SingleSegment(*mem_, policy_, addr[i], len[i], (flags[i] & kDescFWrite) != 0, &chains[i])) {
        return false;
      }
    }
  }
  // UNTRUSTED: ids index our tables: below the size and not in flight. Each is marked in
  // flight as it passes, so a second equal id in the group finds its twin marked; any doubt
  // undoes the marks and goes to Pop(), which breaks the queue for it.
  uint8_t* const in_flight = in_flight_.data();
  uint16_t* const descs_of_id = descs_of_id_.data();
  uint16_t id[kB];
#pragma GCC unroll 4
  for (uint32_t i = 0; i < kB; ++i) {
    id[i] = d[i].id.get();
    if (id[i] >= size || in_flight[id[i]]) {
      while (i-- > 0) in_flight[id[i]] = 0;
      return false;
    }
    in_flight[id[i]] = 1;
    descs_of_id[id[i]] = 1;
  }
  const uint64_t bad_seq = bad_seq_;
#pragma GCC unroll 4
  for (uint32_t i = 0; i < kB; ++i) {
    chains[i].id = id[i];
    chains[i].num_descs = 1;
    chains[i].ring_pos = static_cast<uint16_t>(pos + i);  // inside the ring: no wrap
    chains[i].ring_wrap = wrap;
    chains[i].bad_seq = bad_seq;
  }
  in_flight_descs_ += kB;
  Advance(&avail_pos_, &avail_wrap_, kB);
  popped_.Add(kB);
  batched_.Add(kB);
  return true;
}

uint32_t PackedVring::PopBurst(DescChain* chains, uint32_t n, uint32_t* bad_budget) {
  uint32_t own = kMaxBadChainsPerPop;
  uint32_t* const budget = bad_budget ? bad_budget : &own;
  uint32_t got = 0;
  while (got < n) {
    if (n - got >= kPopBatch && avail_pos_ % kPopBatch == 0 && PopBatch(&chains[got])) {
      got += kPopBatch;
      continue;
    }
    if (Pop(&chains[got], budget) != PopStatus::kOk) break;
    ++got;
  }
  return got;
}

bool PackedVring::PushInOrderBatch(std::span<const DescChain> chains) {
  if (!in_order_ || chains.empty() || pending_ != 0) return false;
  // They must be the next chains the driver expects back, popped back to back: no bad chain
  // completed out of turn before or between them.
  if (chains[0].ring_pos != used_pos_ || chains[0].ring_wrap != used_wrap_ ||
      chains.back().bad_seq != chains[0].bad_seq) {
    return false;
  }
  uint32_t descs = 0;
  for (const DescChain& c : chains) {
    // Popped back to back (the caller's promise): each starts where the previous ended.
    NICMUX_DCHECK(c.ring_pos == static_cast<uint16_t>((used_pos_ + descs) % size_));
    NICMUX_CHECK(c.id < size_ && in_flight_[c.id]);
    in_flight_[c.id] = 0;
    descs += descs_of_id_[c.id];
  }
  // The chains' slots were all in flight at once (Pop's bound), so they span at most one lap:
  // the used position moves less than twice the ring size, and Advance wraps it once.
  NICMUX_CHECK(descs <= in_flight_descs_ && in_flight_descs_ <= size_);
  in_flight_descs_ -= descs;
  VirtqPackedDesc& d = desc_[used_pos_];
  d.id = Le16::Of(chains.back().id);
  d.len = Le32::Of(0);
  first_slot_ = used_pos_;
  first_flags_ = used_wrap_ ? (kDescFAvail | kDescFUsed) : 0;
  pending_ = 1;
  Advance(&used_pos_, &used_wrap_, descs);
  return true;
}

bool PackedVring::Flush() {
  if (pending_ == 0) return false;
  // The burst's first used descriptor becomes visible last, with every id and len before it.
  StoreRelease(desc_[first_slot_].flags, first_flags_);
  pending_ = 0;
  const uint16_t old_pos = signalled_pos_;
  signalled_pos_ = used_pos_;
  // Order the flags store before reading the driver's event suppression (§2.8.10).
  FullFence();
  const uint16_t mode = LoadAcquire(driver_event_->flags);  // flags before off_wrap
  if (mode == kRingEventFlagsDisable) return false;
  if (mode == kRingEventFlagsDesc && event_idx_) {
    return PackedNeedEvent(LoadRelaxed(driver_event_->off_wrap), old_pos, used_pos_, used_wrap_,
                           static_cast<uint16_t>(size_));
  }
  return true;  // ENABLE, or a value we do not know: notifying is always safe
}

bool PackedVring::EnableKicks() {
  if (broken_) return false;
  kicks_on_ = true;
  if (event_idx_) {
    StoreRelaxed(device_event_->off_wrap,
                 static_cast<uint16_t>(avail_pos_ | (avail_wrap_ ? 0x8000 : 0)));
    StoreRelease(device_event_->flags, kRingEventFlagsDesc);  // off_wrap visible first
  } else {
    StoreRelaxed(device_event_->flags, kRingEventFlagsEnable);
  }
  FullFence();
  return IsAvail(LoadAcquire(desc_[avail_pos_].flags), avail_wrap_);
}

void PackedVring::DisableKicks() {
  kicks_on_ = false;
  StoreRelaxed(device_event_->flags, kRingEventFlagsDisable);
}

}  // namespace nicmux::virtio
