// Holds a DPDK driver's munmap (and close, mmap64) until the workers have left its bursts.
//
// Some poll-mode drivers unmap a queue's memory from one of DPDK's own threads while a worker
// may be inside rte_eth_rx_burst / rte_eth_tx_burst on it: DPDK 22.11's net_memif, when its peer
// disconnects, clears its "connected" flag, closes the queues' interrupt eventfds and unmaps
// the peer's regions in the EAL interrupt thread; a burst that passed the flag a moment before
// reads or writes the unmapped ring (SIGSEGV, seen in tests/integration/dpdk_port.sh and
// memif_peer_churn.sh) or writes to a closed fd. A driver gives no event before it does so.
// nicmuxd therefore defines munmap, close and mmap64 itself (exported, so that a driver loaded
// as a plugin binds to them): once the EAL is up, each of them on the EAL interrupt thread
// first waits until every thread that was inside a burst when it was called has left it.
// (docs/dpdk.md "A peer that goes away".)
//
// A burst is a section: BurstSection brackets it with two increments of the calling thread's
// counter (odd: inside). The writer's side pays no fence: the waiting side orders the workers'
// stores with membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) (a full barrier on every running
// thread of the process) before it reads the counters; without membarrier, each section
// entry pays a full fence instead.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "virtio/ring_access.h"  // FullFence

namespace nicmux::dpdk_guard {

struct alignas(64) Slot {
  std::atomic<uint64_t> seq{0};   // odd while its thread is inside a burst
  std::atomic<bool> used{false};  // a live thread owns it
};

// The calling thread's slot (taken on its first burst, given back when it exits).
Slot* ThisThread();
// A full fence is needed at section entry (membarrier is unavailable).
extern std::atomic<bool> g_need_fence;

class BurstSection {
 public:
  BurstSection() : s_(ThisThread()) {
    s_->seq.store(s_->seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    if (g_need_fence.load(std::memory_order_relaxed)) [[unlikely]] {
      virtio::FullFence();
    } else {
      std::atomic_signal_fence(std::memory_order_seq_cst);
    }
  }
  ~BurstSection() { s_->seq.store(s_->seq.load(std::memory_order_relaxed) + 1, std::memory_order_release); }
  BurstSection(const BurstSection&) = delete;
  BurstSection& operator=(const BurstSection&) = delete;

 private:
  Slot* s_;
};

// Arms the hold (after the EAL started; idempotent): registers for membarrier, or falls back to
// fences at section entry.
void Arm();
bool Armed();
// Waits until every thread inside a burst now has left it; nothing when the caller is inside a
// burst itself (it would wait for itself, or two such callers for each other). Returns the
// number of threads waited for. `limit_ms`: a burst still running then is logged and no longer waited for; 0: waited for however long,
// logged every 5 s.
uint32_t WaitForBursts(uint32_t limit_ms);
// Whether this thread's munmap, close and mmap64 wait for bursts: DPDK's interrupt thread once
// armed, or a thread a test marks with HoldOnThisThread.
bool HoldHere();
void HoldOnThisThread(bool on);
// munmaps held (waited for at least one burst) since the start, for `port show`-style reports
// and tests.
uint64_t HeldUnmaps();

}  // namespace nicmux::dpdk_guard
