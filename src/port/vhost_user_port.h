// VhostUserPort: a VM's or container's virtio-net NIC, reached over vhost-user (nicmux is the
// backend; QEMU, DPDK's virtio_user or nicmux's own frontend is the driver).
//
// Options (--port vhost-user:NAME:key=value,...):
//   socket=PATH   the UNIX socket (required)
//   client        connect to PATH (QEMU `server=on`) and reconnect with back-off when the
//                 frontend goes away; default: listen on PATH (one frontend at a time)
//   queues=N      queue pairs offered (1..8, default 1)
//   mtu=N         offered with VIRTIO_NET_F_MTU (68..65535; default: not offered)
//   max_memory=SIZE  the most guest memory one frontend may map, all regions together
//                 (bytes, or with a K, M, G or T suffix, 1024-based; 1M..4T, default 4T):
//                 SET_MEM_TABLE or ADD_MEM_REG past it is a protocol error (the connection
//                 is closed). Pages of it nicmuxd reads first are charged to nicmuxd's
//                 memory cgroup, so this bounds what one guest can make nicmuxd's charge.
//   rx_usecs=N, rx_frames=N, tx_usecs=N, tx_frames=N  interrupt moderation, as ethtool -C
//                 names it from the guest's side (rx: its receive queue, the frames nicmuxd
//                 delivers; tx: the completions of what it sent): a signal the guest asked
//                 for waits up to N us, or until N frames wait with it (0: no frame bound),
//                 so one interrupt covers several batches. Default 0: one signal per batch.
//
// Data path (worker thread): Rx pops the guest's transmit chains and makes PacketRefs over
// them (no copy); Tx copies packets into the guest's receive chains (MRG_RXBUF: as many
// buffers as a packet needs); RxDone returns transmit chains in pop order. A destination ring
// that runs out of buffers stops Tx; the source rewinds what was not taken (backpressure, no
// loss). Used entries and calls are batched per burst.
//
// Counters: rx/tx packets and bytes; tx_dropped (queue not running, packet larger than the
// guest's buffers), rx_dropped (chain shorter than the virtio-net header); the rings' drop
// reasons (desc_outside_memory, avail_idx_jump, ...).
#pragma once

#include <optional>

#include "base/unix_socket.h"

#include <array>
#include <atomic>
#include <memory>
#include <string>

#include "base/event_loop.h"
#include "base/log.h"
#include "base/pausable.h"
#include "packet/hold.h"
#include "port/port.h"
#include "port/registry.h"
#include "vhost/backend_session.h"

namespace nicmux {

struct VhostUserPortOptions {
  std::string name;
  std::string socket_path;
  bool client = false;
  uint32_t queue_pairs = 1;
  uint16_t mtu = 0;
  uint64_t max_memory = vhost::kMaxMemoryBytes;  // vhost::kMinMaxMemoryBytes..kMaxMemoryBytes
  // Offer checksum and TSO offloads (docs/offloads.md): CSUM, GUEST_CSUM, HOST_/GUEST_TSO4,
  // TSO6 and ECN. Off: the guest computes every checksum and sends MTU-sized frames.
  bool offloads = true;
  // Interrupt moderation per direction (the header's rx_usecs/rx_frames, tx_usecs/tx_frames):
  // usecs 0 signals per batch; frames 0 bounds by time alone.
  struct Moderation {
    uint32_t usecs = 0;
    uint32_t frames = 0;
  };
  Moderation rx_moderation{};  // the guest's receive queue (Tx)
  Moderation tx_moderation{};  // the guest's transmit completions (RxDone)
  // socket_group=, socket_mode=: the socket file's group and mode (empty: nicmuxd's
  // --socket-group/--socket-mode, base/unix_socket.h). Only when nicmuxd listens.
  std::optional<SocketAccess> access = std::nullopt;
};

// Reads a spec that PortRegistry::Check passed; mtu is the port's mtu= (offered to the guest).
Result<VhostUserPortOptions> VhostUserPortOptionsFromSpec(const PortSpec& s, uint32_t mtu);

// The vhost-user kind for the port registry (port/kinds.cc).
PortKind VhostUserPortKind();

class VhostUserPort final : public Port {
 public:
  // Listens (server) or starts connecting (client). `worker` is the worker that will poll the
  // port; the port pauses it around every queue change.
  // With `handover` (a live upgrade, docs/upgrade.md): goes on with the old nicmuxd's socket,
  // connection and device state (Export's record) instead of listening or connecting afresh.
  static Result<std::unique_ptr<VhostUserPort>> Create(const VhostUserPortOptions& options,
                                                       EventLoop* loop, Pausable* worker,
                                                       HandoverRecord* handover = nullptr);
  ~VhostUserPort() override;

  uint32_t NumQueuePairs() const override { return opt_.queue_pairs; }
  // A frame from the guest that sits 2 bytes off: its virtio-net header is not hdr bytes long.
  static bool HeaderShifted(const PacketRef& p, uint32_t hdr);
  size_t Rx(uint32_t q, Batch& out, size_t max) override;
  void RxDone(uint32_t q, Batch& batch, size_t sent) override;
  size_t Tx(uint32_t q, std::span<const PacketRef* const> in) override;
  size_t TxRoom(uint32_t q) override;
  void PrefetchRx(uint32_t q) override;
  bool ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) override;
  void DisarmNotify(uint32_t q) override;
  bool CanSleep(uint32_t q) const override;
  uint64_t FlushTxSignal(uint32_t q, uint64_t now_ns, bool force) override;
  uint64_t FlushRxSignal(uint32_t q, uint64_t now_ns, bool force) override;
  // Interrupts (calls) written for the guest's receive queues and transmit queues, and the
  // signal requests that moderation merged into a later interrupt.
  uint64_t rx_interrupts() const { return SumOf(interrupts_, 0); }
  uint64_t tx_interrupts() const { return SumOf(interrupts_, 1); }
  uint64_t interrupts_coalesced() const { return SumOf(coalesced_, 0) + SumOf(coalesced_, 1); }
  PortStats Stats() const override;
  PortStats QueueStats(uint32_t q) const override {
    PortStats s;
    if (q >= vhost::kMaxQueuePairs) return s;
    s.rx_packets = rxc_[q].packets.Get();
    s.rx_bytes = rxc_[q].bytes.Get();
    s.rx_dropped = rxc_[q].dropped.Get();
    s.tx_packets = txc_[q].packets.Get();
    s.tx_bytes = txc_[q].bytes.Get();
    s.tx_dropped = txc_[q].dropped.Get();
    return s;
  }

  // A frontend is attached. Any thread: true once a connection is watched, false once a
  // disconnect has finished (its memory unmapped, its fds closed, a quarantine it earned set).
  bool connected() const { return connected_.load(std::memory_order_acquire); }
  // Connections closed because the frontend attacked the daemon (blocked a signalling write,
  // shrank its memory under the mapping). Any thread.
  uint64_t hostile_disconnects() const { return hostile_disconnects_.load(std::memory_order_relaxed); }
  uint64_t connections() const { return connections_.load(std::memory_order_relaxed); }
  uint64_t max_memory() const { return opt_.max_memory; }
  // connections; max_memory (as a size) and max_memory_bytes: the bound on the guest memory
  // one frontend may map, default included.
  std::vector<Detail> Details() const override;
  const vhost::BackendSession& session() const { return session_; }
  // Drop counters of the queues, summed (rings' reasons plus the port's own).
  uint64_t DropsFor(DropReason r) const override;
  // "connected", "waiting", or "quarantined (N ms left, M hostile disconnects)" after a
  // frontend attacked the daemon.
  std::string State() const override;
  // The virtio features the frontend negotiated ("" before it has).
  std::string Features() const override;
  // The node holding most of the guest's memory (base/numa.h MajorityNode: a few pages per
  // region looked up, none faulted in); -1 before a memory table, or while none of the probed
  // pages is there yet (probed again at the next call). A new table is probed afresh.
  int numa_node() const override;
  // Live upgrade: the listening socket (or, with client, none), the frontend's connection and
  // the session's device state (BackendSession::Export). Refused while a vhost-user message is
  // half received or replies wait unsent.
  bool CanHandOver() const override { return true; }
  Result<void> Export(HandoverRecord* out) override;
  Result<void> ExportPositions(HandoverRecord* out) override;
  Result<void> ImportPositions(HandoverRecord& in) override;
  void HandoverCommitted() override;
  std::string HandoverWarning() const override { return handover_warning_; }

 private:
  void UpdateCaps();
  uint64_t caps_features_ = ~0ull;  // the features UpdateCaps last saw (none yet: no feature word is all ones)
  VhostUserPort(const VhostUserPortOptions& options, EventLoop* loop, Pausable* worker);
  Result<void> Listen();
  Result<void> Adopt(HandoverRecord& h);
  // The handover could not keep the frontend's connection (its state did not check out here,
  // or it was mid-message there): dropped, the frontend reconnects once the old process exits.
  void DropHandedOverConnection(const std::string& why);
  bool owns_socket_file_ = true;  // false between a handover's Adopt and its commit
  std::string handover_warning_;
  void OnAccept();
  void TryConnect();
  void Attach(UniqueFd sock);
  void OnReadable();
  void OnWritable();
  // Watches for EPOLLOUT exactly while the channel holds unsent replies.
  void WatchOutput();
  void Disconnect(const std::string& why);
  // Worker side: the frontend made a signalling write block (base/peer_io.h); tells the
  // control thread through fault_.
  void NotePeerBlocked();
  // Worker side: the driver's interrupt (call), unless an earlier peer write was broken off.
  void Notify(vhost::DeviceQueue& dq);
  // After a Flush of ring i (`want`: the driver asked for a signal, EVENT_IDX or not
  // NO_INTERRUPT) that published `frames` chains: the signal now, or deferred by the ring's
  // moderation (then Flush*Signal gives it). `now`: no deferring (a bad chain's completion, a
  // stopping queue).
  void Signal(vhost::DeviceQueue& dq, uint32_t i, bool want, uint32_t frames, bool now = false);
  // Ring i's deferral (if any) forgotten, signal_due cleared.
  void Settle(uint32_t i);
  // The signal of ring i now, and its deferral (if any) settled.
  void Give(vhost::DeviceQueue& dq, uint32_t i);
  uint64_t FlushDeferred(uint32_t i, uint64_t now_ns, bool force);
  const VhostUserPortOptions::Moderation& ModerationOf(uint32_t i) const {
    return i % 2 == 0 ? opt_.rx_moderation : opt_.tx_moderation;
  }
  // A queue stops (the session's stop hook, the worker paused): what it held is completed and
  // what it deferred signalled.
  void StopQueue(uint32_t i);
  // Worker side: a ring that broke is reported to the frontend once (its error eventfd) and
  // logged, naming the port, the queue and the reason (rate-limited per port).
  void CheckBroken(vhost::DeviceQueue& dq, uint32_t index);
  // Control thread: fault_ fired (a blocked write, or the frontend's memory faulted,
  // base/peer_mapping.h): the connection is closed and the port keeps new frontends out for a
  // while (quarantine), so that reconnecting and repeating costs the other ports little.
  void OnFault();
  bool InQuarantine();

  void DrainHeld(uint32_t q, vhost::DeviceQueue& dq);
  void CompleteHeld(uint32_t queue);
  template <typename Ring>
  size_t TxRing(uint32_t q, vhost::DeviceQueue& dq, Ring& ring, std::span<const PacketRef* const> in);
  void SendRarp(uint32_t q);

  VhostUserPortOptions opt_;
  EventLoop* loop_;
  vhost::BackendSession session_;
  UniqueFd listen_fd_;
  std::unique_ptr<vhost::Channel> channel_;
  EventLoop::TimerId reconnect_timer_ = 0;
  uint64_t backoff_ms_ = 0;
  // Written by the control thread only; atomic so that other threads (metrics, tests) may read.
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> connections_{0};
  bool watching_out_ = false;
  EventFd fault_;                         // worker or SIGBUS handler -> control thread
  std::atomic<bool> peer_blocked_{false};
  uint64_t quarantine_ms_ = 0;            // length of the last quarantine, doubling to a cap
  uint64_t quarantine_until_ns_ = 0;      // monotonic
  std::atomic<uint64_t> hostile_disconnects_{0};
  // A peer can make these lines at will (connect, disconnect, protocol errors): one limiter
  // per port and kind, so one noisy frontend silences neither another port's lines nor its
  // own other kind.
  LogRateLimiter log_conn_, log_error_, log_refused_, log_hdr_, log_broken_;

  // Per queue pair, the guest transmit chains behind the current batch (worker only).
  struct RxState {
    virtio::DescChain chains[kBurst];
    uint32_t n = 0;
    uint8_t chain_of[kBurst];  // batch packet k came from chains[chain_of[k]]
  };
  std::array<RxState, vhost::kMaxQueuePairs> rx_;
  // Per queue pair, the receive chains one packet spans (MRG_RXBUF): per queue because two
  // workers may send to two queues of one port at once.
  static constexpr uint32_t kMaxRxBuffers = 64;
  struct TxState {
    virtio::DescChain chains[kMaxRxBuffers];
  };
  std::array<TxState, vhost::kMaxQueuePairs> tx_;

  std::array<QueueCounters, vhost::kMaxQueuePairs> rxc_, txc_;
  // Per ring (session queue index), the signal moderation deferred: ring 2q by Tx's senders
  // (under tx_lock(q)), ring 2q+1 by q's poller; both by the control thread while the queue
  // stops (StopQueue: its worker paused, the port closed to the others).
  struct Deferred {
    bool pending = false;
    uint32_t frames = 0;    // chains published since the signal was first asked for
    uint64_t since_ns = 0;  // when it was
  };
  std::array<Deferred, vhost::kMaxQueues> deferred_{};
  bool disconnecting_ = false;  // control thread: Disconnect's session reset (no signals then)
  // Per ring, like deferred_ (one writer each): interrupts given, owed ones merged.
  std::array<Counter, vhost::kMaxQueues> interrupts_, coalesced_;
  uint64_t SumOf(const std::array<Counter, vhost::kMaxQueues>& c, uint32_t parity) const {
    uint64_t n = 0;
    for (uint32_t i = parity; i < vhost::kMaxQueues; i += 2) n += c[i].Get();
    return n;
  }
  // Per queue pair, the guest's transmit chains devices hold (zero copy, packet/hold.h):
  // owned with the tables' own reference counting (abandoned, never deleted, by the port).
  std::array<HoldTable*, vhost::kMaxQueuePairs> holds_{};
  // numa_node(): the memory table it probed last (weak: compared, never used) and the answer.
  mutable std::weak_ptr<const GuestMemory> probed_mem_;
  mutable int node_ = -1;
};

}  // namespace nicmux
