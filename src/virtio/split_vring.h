// SplitVring: the device side of a split virtqueue (virtio 1.2 §2.7), for a driver we do not
// trust. Pop() walks each available chain once, copying every descriptor out of shared memory
// before looking at it, and hands back a DescChain of checked host segments. Push() queues a
// used entry; Flush() publishes the burst with one used-idx store and says whether the driver
// wants an interrupt.
//
// Guest errors (DESIGN.md "Errors", kind 1):
//  - a bad chain (buffer outside memory, next out of range, indirect misuse, wrong direction,
//    a loop, more than kMaxChainDescs descriptors) is completed with length 0, counted under
//    its reason, and Pop() goes on: whenever the head is valid the device can give it back;
//  - structural corruption (avail idx moving by more than the queue size, a head out of range)
//    marks the queue broken: Pop() returns kBroken until Init() again.
// Every walk reads at most kMaxChainDescs + 1 descriptors, whatever the driver wrote.
//
// One thread owns a SplitVring (the worker polling it); nothing here locks.
#pragma once

#include <cstdint>

#include "base/counter.h"
#include "base/prefetch.h"
#include "virtio/vring.h"

namespace nicmux::virtio {

class SplitVring {
 public:
  // mem must outlive the ring or be replaced with SetMemory() (under the worker handshake).
  // last_avail_idx is the vhost-user SET_VRING_BASE value; the used index continues from the
  // one in the ring, which must not be more than `size` behind last_avail_idx.
  Result<void> Init(const VringConfig& config, const SplitRingAreas& areas,
                    const GuestMemory* mem, uint16_t last_avail_idx = 0);
  void SetMemory(const GuestMemory* mem) { mem_ = mem; }

  // Next available good chain; bad ones are completed with length 0 on the way, at most
  // *bad_budget of them (each taken from it; nullptr: kMaxBadChainsPerPop for this call), then
  // kEmpty.
  PopStatus Pop(DescChain* chain, uint32_t* bad_budget = nullptr);
  // Up to n chains into chains[0..]; returns how many. All its Pop()s share one bad-chain
  // budget: *bad_budget (nullptr: kMaxBadChainsPerPop for this call).
  uint32_t PopBurst(DescChain* chains, uint32_t n, uint32_t* bad_budget = nullptr);

  // Gives back chains that were popped but not used: `chains` are the most recent pops, in pop
  // order, none pushed. The next Pop() returns chains[0] again. Returns false (and changes
  // nothing) when a bad chain was completed after chains[0] was popped: the caller must then
  // complete them instead.
  bool Rewind(std::span<const DescChain> chains);

  // Chains available now, at most `limit` (an estimate for backpressure: never more than Pop
  // would return, bad chains aside).
  uint32_t Available(uint32_t limit);

  // Queues a used entry for a chain Pop() returned; len is the bytes written into it.
  void Push(uint16_t id, uint32_t len);
  // As PackedVring::PushInOrderBatch, which batches only packed rings (split IN_ORDER
  // batching is not done: §2.7.9 is less explicit about where the one used element goes).
  // Always false: Push() each.
  bool PushInOrderBatch(std::span<const DescChain>) { return false; }
  // Publishes queued used entries. Returns true when the driver should be notified (an
  // interrupt, vhost-user "call"): EVENT_IDX's used_event, else the NO_INTERRUPT flag.
  bool Flush();

  // Notification suppression towards the driver's kicks (§2.7.10). EnableKicks() returns true
  // if chains became available meanwhile, so a poller must not go to sleep.
  bool EnableKicks();
  void DisableKicks();
  // DisableKicks() unless this ring has already asked for no kicks since Init or the last
  // EnableKicks(): a poller calls it on every round at the cost of a branch. A ring starts
  // with kicks on (the driver's view of the ring memory is unknown), and a driver that is
  // never told otherwise kicks, a system call, for every burst it adds.
  void QuietKicks() {
    if (kicks_on_) DisableKicks();
  }

  // A hint before this ring is polled (the worker, one queue ahead): the avail index and the
  // avail ring's next entry, the lines Pop reads first and the driver's CPU last wrote. The
  // descriptor they name waits for the entry's value (a load): not prefetched. Never faults.
  void Prefetch() const {
    if (broken_) return;
    PrefetchRead(&avail_->idx, 2, 1);
    PrefetchRead(&AvailRing(avail_)[last_avail_ & mask_], 2, 1);
  }

  bool broken() const { return broken_; }
  // Why the ring broke (valid while broken() after a MarkBroken; the port logs it).
  DropReason broken_reason() const { return broken_reason_; }
  const DropCounters& drops() const { return drops_; }
  uint16_t last_avail_idx() const { return last_avail_; }  // vhost-user GET_VRING_BASE
  // Nothing in flight: every chain popped is completed and published (a live upgrade's
  // handover point, docs/upgrade.md: the ring's whole state is then last_avail_idx()).
  bool quiescent() const { return pending_ == 0 && used_idx_ == last_avail_; }
  uint32_t size() const { return size_; }
  // The descriptor table's host address and bytes (nullptr before Init): guest memory this
  // process has touched, for a NUMA probe.
  const void* desc_area() const { return desc_; }
  size_t desc_bytes() const { return size_t{size_} * sizeof(VirtqDesc); }
  uint64_t chains_popped() const { return popped_.Get(); }

 private:
  // PopBurst's fast path: up to n chains from last_avail_ on, all already covered by
  // avail_shadow_, taken while each is one direct descriptor that passes the checks; returns
  // how many (0: the first is for Pop() to judge).
  uint32_t TakeRun(DescChain* chains, uint32_t n);
  // UNTRUSTED walk of the chain at head; nullopt when good.
  std::optional<DropReason> Walk(uint16_t head, DescChain* chain);
  void MarkBroken(DropReason why);

  const GuestMemory* mem_ = nullptr;
  VirtqDesc* desc_ = nullptr;
  VirtqAvailHeader* avail_ = nullptr;
  VirtqUsedHeader* used_ = nullptr;
  uint32_t size_ = 0;
  uint16_t mask_ = 0;
  bool event_idx_ = false;
  bool indirect_ = false;
  ChainPolicy policy_ = ChainPolicy::kAny;
  bool broken_ = true;  // until Init
  DropReason broken_reason_ = DropReason::kQueueBroken;
  bool kicks_on_ = true;  // see QuietKicks

  uint16_t last_avail_ = 0;   // next avail ring entry we read
  uint16_t avail_shadow_ = 0; // the driver's avail idx when we last loaded it
  uint16_t used_idx_ = 0;     // published used idx
  uint16_t pending_ = 0;      // used entries written but not published

  uint64_t bad_seq_ = 0;      // bad chains completed by Pop()

  DropCounters drops_;
  Counter popped_;
};

}  // namespace nicmux::virtio
