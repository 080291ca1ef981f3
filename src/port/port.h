// Port: anything packets enter or leave the switch through (DESIGN.md "Key abstractions").
// "Rx" brings packets into the switch, "Tx" takes them out — always seen from the switch. The
// worker owning a port calls these; nothing here blocks or allocates per packet.
//
//   n = src.Rx(q, batch, max)     // up to max packets, referencing src's buffers
//   k = dst.Tx(q', ptrs)          // dst copies what it takes (first k), counts what it drops
//   src.RxDone(q, batch, k)       // src returns the buffers: the first k as sent, the rest
//                                 //   given back to be received again, or dropped and counted
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "base/counter.h"
#include "base/handover.h"
#include "base/result.h"
#include "packet/packet.h"

namespace nicmux {

struct PortStats {
  uint64_t rx_packets = 0, rx_bytes = 0;
  uint64_t tx_packets = 0, tx_bytes = 0;
  uint64_t tx_dropped = 0;  // packets Tx could not deliver (no guest buffers, too big, ...)
  uint64_t rx_dropped = 0;  // bad frames and chains from the peer
  bool connected = false;
  // The counters (not `connected`) added: a live upgrade carries a port's counters over.
  PortStats& operator+=(const PortStats& o) {
    rx_packets += o.rx_packets;
    rx_bytes += o.rx_bytes;
    tx_packets += o.tx_packets;
    tx_bytes += o.tx_bytes;
    tx_dropped += o.tx_dropped;
    rx_dropped += o.rx_dropped;
    return *this;
  }
};

// Counters of one direction of one queue pair. One writer at a time: the worker that owns the
// source queue (rx), or whichever worker holds the destination queue's TxLock (tx).
struct QueueCounters {
  Counter packets, bytes, dropped;
  DropCounters drops;
};

// For a port that keeps an `rxc` and a `txc` QueueCounters per queue (each element of qs
// points to one): their sums, as Port::Stats (connected: true) and Port::DropsFor report them.
template <typename Queues>
PortStats SumQueueStats(const Queues& qs) {
  PortStats st;
  st.connected = true;
  for (const auto& q : qs) {
    st.rx_packets += q->rxc.packets.Get();
    st.rx_bytes += q->rxc.bytes.Get();
    st.rx_dropped += q->rxc.dropped.Get();
    st.tx_packets += q->txc.packets.Get();
    st.tx_bytes += q->txc.bytes.Get();
    st.tx_dropped += q->txc.dropped.Get();
  }
  return st;
}
// Queue pair q's counters alone (zeros past the end), for Port::QueueStats.
template <typename Queues>
PortStats QueueStatsAt(const Queues& qs, uint32_t q) {
  PortStats st;
  if (q >= qs.size()) return st;
  const auto& c = qs[q];
  st.rx_packets = c->rxc.packets.Get();
  st.rx_bytes = c->rxc.bytes.Get();
  st.rx_dropped = c->rxc.dropped.Get();
  st.tx_packets = c->txc.packets.Get();
  st.tx_bytes = c->txc.bytes.Get();
  st.tx_dropped = c->txc.dropped.Get();
  return st;
}
template <typename Queues>
uint64_t SumQueueDrops(const Queues& qs, DropReason r) {
  uint64_t n = 0;
  for (const auto& q : qs) n += q->rxc.drops.Get(r) + q->txc.drops.Get(r);
  return n;
}

// What a port accepts on transmit (Tx): the offloads a packet may still ask for when it reaches
// the port, and how big it may be. Derived from what was negotiated with the peer (a guest's
// GUEST_* features, the TAP's TUNSETOFFLOAD); the switch completes in software whatever a
// packet asks that its destination does not accept (docs/offloads.md). Packs into 64 bits so a
// port can publish it to the workers with one atomic store (Port::SetCaps).
struct PortCaps {
  static constexpr uint8_t kCsum = 1;       // partial checksums (Offload::kNeedsCsum)
  static constexpr uint8_t kCsumValid = 2;  // the "checksum verified" mark (Offload::kCsumValid)
  static constexpr uint8_t kTso4 = 4;       // GsoType::kTcp4
  static constexpr uint8_t kTso6 = 8;       // GsoType::kTcp6
  static constexpr uint8_t kEcn = 16;       // TCP GSO with Offload::kEcn
  static constexpr uint8_t kUso = 32;       // GsoType::kUdpL4
  static constexpr uint8_t kUfo = 64;       // GsoType::kUdp
  // Not the peer's but the port's own: its Tx completes a partial checksum while copying the
  // frame (CopyPacketCompleting), so the switch need not read the bytes first. The peer gets
  // the frame summed, as without kCsum.
  static constexpr uint8_t kCsumOnCopy = 128;

  uint8_t offloads = 0;
  uint16_t mtu = 0;        // the peer's MTU where it told one (0: not known)
  uint32_t max_frame = 0;  // the largest frame Tx takes whole, GSO frames included (0: no limit known)

  bool has(uint8_t f) const { return (offloads & f) == f; }
  // True when a packet with this record may reach the port as it is.
  bool Accepts(const Offload& o) const {
    if (o.needs_csum() && !has(kCsum) && !has(kCsumOnCopy)) return false;
    if (o.csum_valid() && !has(kCsumValid)) return false;
    switch (o.gso_type) {
      case GsoType::kNone: return true;
      case GsoType::kTcp4: return has(kTso4) && (!o.ecn() || has(kEcn));
      case GsoType::kTcp6: return has(kTso6) && (!o.ecn() || has(kEcn));
      case GsoType::kUdp: return has(kUfo);
      case GsoType::kUdpL4: return has(kUso);
      case GsoType::kInvalid: return false;
    }
    return false;
  }
  // True when the switch must do part of what o asks before the port may have it: complete a
  // partial checksum or cut a GSO frame (the checksum-valid mark is no work: a destination's
  // edge drops it where it is not accepted).
  bool MustComplete(const Offload& o) const {
    Offload work = o;
    work.flags &= static_cast<uint8_t>(~Offload::kCsumValid);
    return !Accepts(work);
  }
  // The offload flags by name ("csum", "csum_valid", "tso4", "tso6", "ecn", "uso", "ufo",
  // "sum_on_copy"), in that order.
  std::vector<std::string> Names() const;
  // "csum csum_valid tso4 tso6 ecn" or "none", then ", mtu N" and ", max_frame N" where known.
  std::string ToString() const;
  uint64_t Pack() const { return uint64_t{offloads} | uint64_t{mtu} << 16 | uint64_t{max_frame} << 32; }
  static PortCaps Unpack(uint64_t v) {
    return {static_cast<uint8_t>(v), static_cast<uint16_t>(v >> 16), static_cast<uint32_t>(v >> 32)};
  }
  bool operator==(const PortCaps&) const = default;
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
  // A cache hint from the worker that polls queue q's Rx side, one queue before it does: the
  // first lines Rx(q) will read (a ring's index or descriptors). Only a hint: it may do
  // nothing, must not fault, and changes no state.
  virtual void PrefetchRx(uint32_t q) {}

  // Idle support, per queue pair, by the worker that polls queue q (its Rx side): before it
  // sleeps it arms q's notifications and collects the fds to wait on; true when work arrived
  // meanwhile (then it must not sleep). After waking, Disarm. A worker arms only its own
  // queues, so a kick wakes only the worker that polls the queue.
  virtual bool ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) = 0;
  virtual void DisarmNotify(uint32_t q) = 0;
  // False when queue q cannot notify (a polling-mode peer): its worker must keep polling.
  virtual bool CanSleep(uint32_t q) const = 0;
  // (A destination's room needs no notification: a source held for it keeps its chains in its
  // own ring, so its worker's ArmNotify reports work and the worker polls, not sleeps.)
  // Every queue at once (tests, and a single worker that polls everything).
  bool ArmAllNotify(std::vector<NotifyFd>* fds) {
    bool pending = false;
    for (uint32_t q = 0; q < NumQueuePairs(); ++q) pending |= ArmNotify(q, fds);
    return pending;
  }
  void DisarmAllNotify() {
    for (uint32_t q = 0; q < NumQueuePairs(); ++q) DisarmNotify(q);
  }

  // Interrupt moderation (docs/switch.md "Interrupt moderation"): a port may defer a signal
  // its peer asked for (a vhost-user call) after Tx or RxDone, to give one signal for several
  // batches. Such a port says so (defers_signals) and the forwarder notes the queue it sent to
  // or received from (SignalDebts, switch/forwarder.h); whoever noted it then calls the
  // matching Flush*Signal no later than the deadline it returns, and with force before it
  // sleeps or pauses, so no completed packet stays unsignalled while its worker is away.
  // Both signal what is due (force: all that is deferred) and return the next deadline
  // (MonotonicNowNs) of what stays deferred, 0 when nothing does.
  bool defers_signals() const { return defers_signals_; }
  // The deadline of the signal deferred on queue pair q (tx: by Tx, the peer's receive queue;
  // else by RxDone), 0 when none: read by the forwarder right after that call, on its thread
  // (and under the same lock), to note a debt only where something was deferred.
  uint64_t signal_due(uint32_t q, bool tx) const {
    return signal_due_[2 * (q % kMaxQueues) + (tx ? 0 : 1)].load(std::memory_order_relaxed);
  }
  // What Tx(q) deferred (the peer's receive queue): called like Tx, under tx_lock(q) when
  // shared and never while the port is closed (TxRoomOf/SendTo's rules).
  virtual uint64_t FlushTxSignal(uint32_t q, uint64_t now_ns, bool force) { return 0; }
  // What RxDone(q) deferred (completions of the peer's transmit queue): the worker that polls
  // queue q.
  virtual uint64_t FlushRxSignal(uint32_t q, uint64_t now_ns, bool force) { return 0; }

  virtual PortStats Stats() const = 0;
  // Queue pair q's counters alone (`connected` unused), for per-queue metrics; any thread. A
  // kind without per-queue counters reports everything as queue 0.
  virtual PortStats QueueStats(uint32_t q) const { return q == 0 ? Stats() : PortStats{}; }
  // Drops of this port by reason (its rings' and its own), summed over queues.
  virtual uint64_t DropsFor(DropReason r) const = 0;
  // "connected", "waiting" (for a peer), "up", "down": for the control plane.
  virtual std::string State() const = 0;

  // What Tx accepts now (any thread; the port publishes a new value when its peer negotiates
  // again). A port that never calls SetCaps accepts frames with no offload request only.
  PortCaps Caps() const { return PortCaps::Unpack(caps_.load(std::memory_order_acquire)); }
  // The features negotiated with the peer, in the peer's terms, for the control plane ("" when
  // the kind has none; e.g. a vhost-user port lists its virtio feature names).
  virtual std::string Features() const { return {}; }
  // What else the kind has to say in `nicmuxctl port show` and `port list`, as (key, value):
  // e.g. a vhost-user port's connections and max_memory. Read by the control thread.
  using Detail = std::pair<std::string, std::variant<std::string, uint64_t>>;
  virtual std::vector<Detail> Details() const { return {}; }
  // What the device or peer behind the port can do, beyond Caps(), for `nicmuxctl port caps`
  // (and, later, what pvdev exposes to a guest): e.g. a dpdk port's rte_eth_dev_info offloads
  // and which of them it uses, queue and MTU limits. Read by the control thread.
  virtual std::vector<Detail> DeviceCaps() const { return {}; }
  // Flow rules the port applies to what it delivers (a pv device's FLOW_CREATE), one row per
  // rule as (key, value): id, priority, rule, hits, where it runs. For `nicmuxctl port flows`.
  // Read by the control thread.
  virtual std::vector<std::vector<Detail>> FlowRules() const { return {}; }
  // A port whose capabilities follow another's (a pv device and its uplink=): that port's name,
  // or "". The control thread calls FollowedChanged with it (nullptr while there is no such
  // port) after every port change and once a second.
  virtual std::string Follows() const { return {}; }
  virtual void FollowedChanged(const Port* followed) {}
  // The NUMA node of the memory the port's packets live in (a guest's RAM for vhost-user), so
  // that the scheduler can give its queues to workers on that node (docs/scheduler.md "NUMA");
  // -1: unknown, or no node to prefer. Control thread; the scheduler reads it once a second.
  virtual int numa_node() const { return -1; }

  // Live upgrade (docs/upgrade.md). Whether this kind can hand its port over to a new
  // nicmuxd; a kind that cannot makes `nicmuxctl upgrade` refuse before anything starts.
  virtual bool CanHandOver() const { return false; }
  // Control thread, every worker paused (no chain in flight): fills `out` with what a new
  // nicmuxd needs to go on exactly here, its peer unaware (the kind's create() takes it back
  // through PortContext::handover). An error says why not; nothing changed then, and the port
  // goes on serving when the workers resume.
  virtual Result<void> Export(HandoverRecord* out) {
    return Error("port " + name_ + " cannot be handed over to a new nicmuxd");
  }
  // The handover's second step: the old process took Export() with the workers paused, let
  // them run on while the new one built the port from it, and pauses them again to hand over
  // what the data path changed meanwhile (ring positions; nothing else changes, as the
  // control thread waits for the new process throughout). ImportPositions applies that in the
  // new process. Default: nothing moves.
  virtual Result<void> ExportPositions(HandoverRecord* out) { return Ok(); }
  virtual Result<void> ImportPositions(HandoverRecord& in) { return Ok(); }
  // In the new process, once the old one committed: the port is this process's now (its
  // socket file is its to remove at exit, its timers may run).
  virtual void HandoverCommitted() {}
  // In the old process, the workers still paused, when the handover failed after this port's
  // ExportPositions: a kind that let go of something there (a dpdk port closes its device)
  // takes it back. The port goes on serving.
  virtual void HandoverAborted() {}
  // What the handover could not keep (a peer that had to be disconnected, and why), for the
  // upgrade's outcome; "" when nothing.
  virtual std::string HandoverWarning() const { return {}; }

  TxLock& tx_lock(uint32_t q) { return tx_locks_[q % kMaxQueues]; }
  static constexpr uint32_t kMaxQueues = 8;
  // The transmit side as other workers see it while the port changes its queues (its
  // Pausable pauses only the workers that poll the port, and closes it to the rest): a sender
  // that holds tx_lock(q) and finds it closed must not touch the queue (no TxRoom, no Tx):
  // it treats the port as having no room.
  bool tx_closed() const { return tx_closed_.load(std::memory_order_acquire); }
  // Control thread. Close returns once no sender is inside the port (each lock taken once).
  void CloseTx() {
    tx_closed_.store(true, std::memory_order_relaxed);
    for (TxLock& l : tx_locks_) {
      l.lock();
      l.unlock();
    }
  }
  void OpenTx() { tx_closed_.store(false, std::memory_order_release); }

  // How many times the port's peer went away (a vhost-user frontend disconnected, a TAP
  // interface vanished): what was learned behind the port before is stale then. The switch's
  // control thread compares it once a second and forgets the port's MAC addresses when it
  // moved. Any thread; a port whose peer cannot go away stays at 0.
  uint64_t link_generation() const { return link_generation_.load(std::memory_order_acquire); }

 protected:
  explicit Port(std::string name) : name_(std::move(name)) {}
  // The peer went away (any thread): bumps link_generation().
  void PeerGone() { link_generation_.fetch_add(1, std::memory_order_release); }
  // Publishes what Tx accepts from now on (any thread).
  void SetCaps(const PortCaps& c) { caps_.store(c.Pack(), std::memory_order_release); }
  // Set once at construction by a port configured to defer signals.
  void set_defers_signals(bool on) { defers_signals_ = on; }
  // By the writer of queue pair q's deferral (signal_due): when it defers, and 0 when it gives.
  void set_signal_due(uint32_t q, bool tx, uint64_t ns) {
    signal_due_[2 * (q % kMaxQueues) + (tx ? 0 : 1)].store(ns, std::memory_order_relaxed);
  }

 private:
  std::string name_;
  TxLock tx_locks_[kMaxQueues];
  std::atomic<bool> tx_closed_{false};
  std::atomic<uint64_t> link_generation_{0};
  std::atomic<uint64_t> caps_{0};
  bool defers_signals_ = false;
  std::array<std::atomic<uint64_t>, 2 * kMaxQueues> signal_due_{};
};

}  // namespace nicmux
