// PackedVring: the device side of a packed virtqueue (virtio 1.2 §2.8), for a driver we do not
// trust. Same interface as SplitVring so the datapath is written once over both layouts.
//
// A descriptor at the device's position is available when its AVAIL bit equals our avail wrap
// counter and its USED bit does not (§2.8.1). A chain continues through NEXT flags; every
// descriptor after the first must be available with the same rule, else the wrap bits are
// inconsistent and the queue is broken (we could not tell where the chain ends). The buffer id
// is taken from the last descriptor (§2.8.6); an id >= size, or one still in flight, breaks
// the queue, as does a chain longer than kMaxChainDescs or one that reaches into slots of
// chains still in flight (the slots in flight never exceed the ring: the used position can
// then never run more than a lap, in any push path). Used descriptors are written in order; the first one's flags are stored last, so
// the driver sees a whole burst at once (§2.8.7 "the device ... flags last").
#pragma once

#include <cstdint>
#include <vector>

#include "base/check.h"
#include "base/counter.h"
#include "base/prefetch.h"
#include "virtio/ring_access.h"
#include "virtio/vring.h"

namespace nicmux::virtio {

class PackedVring {
 public:
  // avail_state is the vhost-user ring base for packed rings: position | wrap counter << 15.
  // The used position starts equal to it (no chain in flight across a restart).
  Result<void> Init(const VringConfig& config, const PackedRingAreas& areas,
                    const GuestMemory* mem, uint16_t avail_state = 1u << 15);
  void SetMemory(const GuestMemory* mem) { mem_ = mem; }

  // As SplitVring::Pop (the bad-chain budget too).
  PopStatus Pop(DescChain* chain, uint32_t* bad_budget = nullptr);
  // Up to n chains. Where the device's position starts a group of kPopBatch descriptors (one
  // 64-byte cache line of the table) and the group is four available one-descriptor chains,
  // they are taken together (PopBatch); anything else goes through Pop(), all of them with
  // one bad-chain budget (as SplitVring::PopBurst).
  uint32_t PopBurst(DescChain* chains, uint32_t n, uint32_t* bad_budget = nullptr);
  static constexpr uint32_t kPopBatch = 4;
  // As SplitVring::Available: counts chains whose descriptors are available, up to limit.
  uint32_t Available(uint32_t limit);
  // As SplitVring::Rewind.
  bool Rewind(std::span<const DescChain> chains);
  // Inline (below): one call per received packet.
  void Push(uint16_t id, uint32_t len);
  // VIRTIO_F_IN_ORDER (§2.8.23): completes chains (in pop order, length 0, nothing pending)
  // with one used descriptor that carries the last buffer id; the driver walks its own ring
  // up to it. False, with nothing done, when IN_ORDER is off or the chains are not the next
  // ones due (a bad chain completed out of turn): then Push() each.
  bool PushInOrderBatch(std::span<const DescChain> chains);
  bool Flush();
  bool EnableKicks();
  void DisableKicks();
  // DisableKicks() unless this ring has already asked for no kicks since Init or the last
  // EnableKicks(): a poller calls it on every round at the cost of a branch. A ring starts
  // with kicks on (the driver's view of the ring memory is unknown), and a driver that is
  // never told otherwise kicks, a system call, for every burst it adds.
  void QuietKicks() {
    if (kicks_on_) DisableKicks();
  }

  // A hint before this ring is polled (the worker, one queue ahead): the descriptor line at
  // the device's position, the one Pop and PopBatch read first and the driver's CPU last
  // wrote. Never faults.
  void Prefetch() const {
    if (broken_) return;
    PrefetchRead(&desc_[avail_pos_], sizeof(VirtqPackedDesc), 1);
  }

  bool broken() const { return broken_; }
  // Why the ring broke (valid while broken() after a MarkBroken; the port logs it).
  DropReason broken_reason() const { return broken_reason_; }
  const DropCounters& drops() const { return drops_; }
  uint16_t avail_state() const {  // vhost-user GET_VRING_BASE
    return static_cast<uint16_t>(avail_pos_ | (avail_wrap_ ? 0x8000 : 0));
  }
  uint16_t used_state() const {  // the next used slot and wrap counter, for checks
    return static_cast<uint16_t>(used_pos_ | (used_wrap_ ? 0x8000 : 0));
  }
  // Nothing in flight: every chain popped is completed and published (a live upgrade's
  // handover point, docs/upgrade.md: the ring's whole state is then avail_state()).
  bool quiescent() const { return pending_ == 0 && in_flight_descs_ == 0 && used_state() == avail_state(); }
  uint32_t size() const { return size_; }
  // The descriptor table's host address and bytes (nullptr before Init): guest memory this
  // process has touched, for a NUMA probe.
  const void* desc_area() const { return desc_; }
  size_t desc_bytes() const { return size_t{size_} * sizeof(VirtqPackedDesc); }
  uint64_t chains_popped() const { return popped_.Get(); }
  uint64_t chains_batched() const { return batched_.Get(); }  // of those, by PopBatch

 private:
  bool IsAvail(uint16_t flags, bool wrap) const {
    return ((flags & kDescFAvail) != 0) == wrap && ((flags & kDescFUsed) != 0) != wrap;
  }
  // n <= size_: every caller advances by slots that were in flight together, which never
  // exceed the ring (Pop's bound), so one subtraction wraps it.
  void Advance(uint16_t* pos, bool* wrap, uint32_t n) const {
    NICMUX_DCHECK(n <= size_);
    uint32_t p = *pos + n;
    if (p >= size_) {
      p -= size_;
      *wrap = !*wrap;
    }
    *pos = static_cast<uint16_t>(p);
  }
  // The batch path of PopBurst: kPopBatch chains into chains[0..kPopBatch) when every check
  // holds, else false with nothing changed (chains[] may be scribbled on) and Pop() decides.
  bool PopBatch(DescChain* chains);
  // Commits a checked one-descriptor chain at the device's position: its ring fields, the id
  // in flight, the position one slot on.
  void TakeOne(DescChain* chain, uint16_t id);
  std::optional<DropReason> WalkIndirect(const VirtqPackedDesc& d, ChainBuilder& builder, uint32_t budget);
  void MarkBroken(DropReason why);

  const GuestMemory* mem_ = nullptr;
  VirtqPackedDesc* desc_ = nullptr;
  VirtqPackedEvent* driver_event_ = nullptr;
  VirtqPackedEvent* device_event_ = nullptr;
  uint32_t size_ = 0;
  bool event_idx_ = false;
  bool indirect_ = false;
  bool in_order_ = false;
  ChainPolicy policy_ = ChainPolicy::kAny;
  bool broken_ = true;  // until Init
  DropReason broken_reason_ = DropReason::kQueueBroken;
  bool kicks_on_ = true;  // see QuietKicks

  uint16_t avail_pos_ = 0;
  bool avail_wrap_ = true;
  uint16_t used_pos_ = 0;
  bool used_wrap_ = true;
  uint16_t signalled_pos_ = 0;  // used_pos_ at the last Flush, for the event check

  uint32_t pending_ = 0;        // used descriptors written since the last Flush
  uint16_t first_slot_ = 0;     // the burst's first used descriptor, whose flags go last
  uint16_t first_flags_ = 0;

  std::vector<uint16_t> descs_of_id_;  // ring slots each in-flight id occupies
  std::vector<uint8_t> in_flight_;
  // Ring slots of every chain in flight: at most size_ (Pop refuses a chain that would pass
  // it), so the used position never runs a lap ahead of where the driver made slots free.
  uint32_t in_flight_descs_ = 0;
  // The most descriptor flags Available() reads per call.
  static constexpr uint32_t kAvailableMaxSlots = 2 * kMaxChainDescs;

  uint64_t bad_seq_ = 0;

  DropCounters drops_;
  Counter popped_;
  Counter batched_;
};

inline void PackedVring::Push(uint16_t id, uint32_t len) {
  NICMUX_CHECK(id < size_ && in_flight_[id]);
  in_flight_[id] = 0;
  in_flight_descs_ -= descs_of_id_[id];
  // UNTRUSTED: a driver that reposts the completions it already sees (every one but the
  // burst's first) can bring the used position round a whole lap before Flush: the first
  // slot's deferred flags go out now, before this push reuses the slot, and a new burst starts.
  if (pending_ != 0 && used_pos_ == first_slot_) [[unlikely]] {
    StoreRelease(desc_[first_slot_].flags, first_flags_);
    pending_ = 0;
  }
  VirtqPackedDesc& d = desc_[used_pos_];
  d.id = Le16::Of(id);
  d.len = Le32::Of(len);
  // A used descriptor has AVAIL == USED == the device's used wrap counter (§2.8.1).
  const uint16_t flags = used_wrap_ ? (kDescFAvail | kDescFUsed) : 0;
  if (pending_ == 0) {
    first_slot_ = used_pos_;
    first_flags_ = flags;
  } else {
    StoreRelease(d.flags, flags);
  }
  ++pending_;
  Advance(&used_pos_, &used_wrap_, descs_of_id_[id]);
}

}  // namespace nicmux::virtio
