// Port: anything packets enter or leave the switch through (DESIGN.md "Key abstractions").
// "Rx" brings packets into the switch, "Tx" takes them out — always seen from the switch. The
// worker owning a port calls these; nothing here blocks or allocates per packet.
//
//   n = src.Rx(q, batch, max)     // up to max packets, referencing src's buffers
//   k = dst.Tx(q', ptrs)          // dst copies what it takes (first k), counts what it drops
//   src.RxDone(q, batch, k)       // src returns the buffers: the first k as sent, the rest
//                                 //   given back to be received again, or dropped and counted
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/counter.h"
#include "packet/packet.h"

namespace nicmux {

struct PortStats {
  uint64_t rx_packets = 0, rx_bytes = 0;
  uint64_t tx_packets = 0, tx_bytes = 0;
  uint64_t tx_dropped = 0;  // packets Tx could not deliver (no guest buffers, too big, ...)
  uint64_t rx_dropped = 0;  // bad frames and chains from the peer
  bool connected = false;
};

// Counters of one direction of one queue pair. One writer at a time: the worker that owns the
// source queue (rx), or whichever worker holds the destination queue's TxLock (tx).
struct QueueCounters {
  Counter packets, bytes, dropped;
  DropCounters drops;
};

// A file descriptor a sleeping worker waits on. `eventfd`: the worker reads it to clear it after
// waking (a kick); otherwise readability is the work itself (a TAP fd) and the port reads it.
struct NotifyFd {
  int fd;
  bool eventfd;
};

// A short spin lock for a destination queue that more than one worker sends to (the switch
// takes it around Tx only when the queue is shared; an unshared queue costs nothing).
class TxLock {
 public:
  void lock() {
    while (flag_.exchange(true, std::memory_order_acquire)) {
      while (flag_.load(std::memory_order_relaxed)) __builtin_ia32_pause();
    }
  }
  void unlock() { flag_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> flag_{false};
};

class Port {
 public:
  virtual ~Port() = default;

  const std::string& name() const { return name_; }

  // Queue pairs the datapath may use (1..N); a queue that is not running moves nothing.
  virtual uint32_t NumQueuePairs() const = 0;
  virtual size_t Rx(uint32_t q, Batch& out, size_t max) = 0;
  virtual void RxDone(uint32_t q, Batch& batch, size_t sent) = 0;
  // Copies in[0..k) out of the switch; returns k. Packets it had to drop (too big, port down)
  // count as taken; k < in.size() only when the queue ran out of buffers.
  virtual size_t Tx(uint32_t q, std::span<const PacketRef* const> in) = 0;
  // An upper bound of what Tx(q) could take now (0 when it has no buffers).
  virtual size_t TxRoom(uint32_t q) = 0;

  // Idle support: before the worker sleeps it arms notifications and collects the fds to wait
  // on; true when work arrived meanwhile (then it must not sleep). After waking, Disarm.
  virtual bool ArmNotify(std::vector<NotifyFd>* fds) = 0;
  virtual void DisarmNotify() = 0;
  // False when some queue cannot notify (a polling-mode peer): the worker must keep polling.
  virtual bool CanSleep() const = 0;

  virtual PortStats Stats() const = 0;
  // Drops of this port by reason (its rings' and its own), summed over queues.
  virtual uint64_t DropsFor(DropReason r) const = 0;
  // "connected", "waiting" (for a peer), "up", "down": for the control plane.
  virtual std::string State() const = 0;

  TxLock& tx_lock(uint32_t q) { return tx_locks_[q % kMaxQueues]; }
  static constexpr uint32_t kMaxQueues = 8;

  // How many times the port's peer went away (a vhost-user frontend disconnected, a TAP
  // interface vanished): what was learned behind the port before is stale then. The switch's
  // control thread compares it once a second and forgets the port's MAC addresses when it
  // moved. Any thread; a port whose peer cannot go away stays at 0.
  uint64_t link_generation() const { return link_generation_.load(std::memory_order_acquire); }

 protected:
  explicit Port(std::string name) : name_(std::move(name)) {}
  // The peer went away (any thread): bumps link_generation().
  void PeerGone() { link_generation_.fetch_add(1, std::memory_order_release); }

 private:
  std::string name_;
  TxLock tx_locks_[kMaxQueues];
  std::atomic<uint64_t> link_generation_{0};
};

}  // namespace nicmux
