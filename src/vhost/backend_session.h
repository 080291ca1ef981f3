// BackendSession: the device (backend) side of one vhost-user connection for a virtio-net
// device, following QEMU docs/interop/vhost-user.rst. It takes messages from a Channel, checks
// each against the request table and its own state, and keeps the device state: negotiated
// features, the guest memory table, and per queue its size, ring addresses, base, kick and
// call fds and whether it is enabled. When a queue has everything it needs it is started: its
// ring areas are mapped through the memory table and a SplitVring or PackedVring is set up for
// the worker that polls it.
//
// Every change to a started queue (start, stop, new call fd, new memory table) happens inside
// a pause of the worker (base/pausable.h), so the hot loop takes no locks.
//
// A message that is malformed or that the state does not allow (wrong size or fd count, an
// unknown request, overlapping regions, a ring outside memory, a queue index or size out of
// range, a kick before any memory table, ...) makes Handle() return an error naming the
// request and the field; the owner then closes the connection (Reset()), and no other port
// notices.
//
// Queue numbering (virtio 1.2 §5.1.2): queue 2k is the guest's receiveq k (we write into it),
// queue 2k+1 its transmitq k (we read from it).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <tuple>
#include <optional>
#include <string>

#include "base/counter.h"
#include "base/event_fd.h"
#include "base/peer_io.h"
#include "base/pausable.h"
#include "base/unique_fd.h"
#include "memory/guest_memory.h"
#include "base/handover.h"
#include "vhost/channel.h"
#include "virtio/packed_vring.h"
#include "virtio/split_vring.h"

namespace nicmux::vhost {

inline constexpr uint32_t kMaxQueuePairs = 8;
inline constexpr uint32_t kMaxQueues = 2 * kMaxQueuePairs;
// The most guest memory one frontend may have mapped (address space, not RAM): 4 TiB. It is
// the ceiling of BackendConfig::max_memory (a port's max_memory=, which defaults to it).
inline constexpr uint64_t kMaxMemoryBytes = 4ull << 40;
// The least max_memory= a port takes: 1 MiB (no guest runs in less; a smaller one is a typo).
inline constexpr uint64_t kMinMaxMemoryBytes = 1ull << 20;
// The most memory regions one frontend may have (GET_MAX_MEM_SLOTS answers it): every
// ADD_MEM_REG builds a new snapshot of the whole table, so n regions cost O(n^2) bytes of
// allocation over a connection (509, GuestMemory's limit, was 34 MiB of RSS under ASan). 64 is
// what the kernel's vhost allows by default (max_mem_regions); QEMU keeps its VM within it.
inline constexpr uint32_t kMaxMemSlots = 64;
// The most ADD_MEM_REGs of one region without a REM_MEM_REG: QEMU sends one per queue pair.
inline constexpr uint32_t kMaxRegionRefs = 8 * kMaxQueuePairs;

// One virtqueue as the worker sees it. Fields below `running` are the worker's while it is
// set; the session changes them only with the worker paused.
struct DeviceQueue {
  // From the frontend.
  uint32_t num = 0;
  std::optional<VringAddr> addr;
  uint32_t base = 0;
  UniqueFd kick;
  bool kick_set = false;  // a kick fd, or "no fd" (the frontend expects polling)
  UniqueFd call;
  UniqueFd err;
  bool enabled = false;

  // Running state.
  bool running = false;
  bool packed = false;
  bool error_signalled = false;  // the ring broke and the frontend was told (SignalError)
  virtio::SplitVring split;
  virtio::PackedVring packed_ring;

  int kick_fd() const { return kick.get(); }  // -1 when polling
  // Forgets what the frontend set (a new connection); the rings' counters stay.
  void Forget() {
    num = 0;
    addr.reset();
    base = 0;
    kick.Reset();
    kick_set = false;
    call.Reset();
    err.Reset();
    enabled = false;
    running = false;
  }
  // Notifies the driver (an interrupt) if it has a call fd. False when the frontend made the
  // write block (its eventfd set back to blocking with a full counter) and the peer-I/O
  // watchdog broke it off (base/peer_io.h): the caller reports the peer as hostile.
  bool Call() const {
    return !call.valid() || SignalPeerEventFd(call.get()) != PeerIoStatus::kInterrupted;
  }
  // Tells the frontend that this queue is broken (SET_VRING_ERR's eventfd; QEMU logs "vhost
  // vring error in virtqueue N"). False as for Call().
  bool SignalError() const {
    return !err.valid() || SignalPeerEventFd(err.get()) != PeerIoStatus::kInterrupted;
  }
};

struct BackendConfig {
  uint32_t queue_pairs = 1;  // offered through MQ / GET_QUEUE_NUM, 1..kMaxQueuePairs
  uint16_t mtu = 0;          // offered with VIRTIO_NET_F_MTU when nonzero
  // The most guest memory (bytes, all regions together) one frontend may map, 1..
  // kMaxMemoryBytes: SET_MEM_TABLE and ADD_MEM_REG past it are refused. Pages of it that
  // nicmuxd reads first are charged to nicmuxd's memory cgroup (docs/vhost-user.md).
  uint64_t max_memory = kMaxMemoryBytes;
  // Offer CSUM, GUEST_CSUM, HOST_TSO4/6, HOST_ECN, GUEST_TSO4/6, GUEST_ECN.
  bool offloads = false;
};

class BackendSession {
 public:
  BackendSession(const BackendConfig& config, Pausable* worker);
  ~BackendSession();

  // The virtio and protocol features this backend offers.
  uint64_t offered_features() const { return offered_features_; }
  uint64_t offered_protocol_features() const { return offered_protocol_features_; }

  // Handles one message, replying on ch where the protocol says so. An error means the
  // connection must be closed (call Reset()).
  Result<void> Handle(Message& msg, Channel& ch);

  // Connection gone: stop every queue, unmap memory, close fds; ready for a new connection.
  void Reset();
  // An eventfd of the owner's, signalled when a memory region of this session faults because
  // the frontend shrank its file (base/peer_mapping.h); check memory()->Poisoned() then.
  void SetFaultFd(int fd) { fault_fd_ = fd; }
  // Called with queue i's index when a running queue stops (the worker paused, its ring still
  // mapped): the owner completes what it still has in flight (held chains, packet/hold.h).
  void SetStopHook(std::function<void(uint32_t)> hook) { stop_hook_ = std::move(hook); }

  // The frontend negotiated CSUM or HOST_TSO*: the virtio-net headers of its transmitted
  // frames carry offload requests (read them); otherwise they mean nothing (§5.1.6.2).
  bool peer_sends_offloads() const { return peer_sends_offloads_; }
  uint64_t features() const { return features_; }
  uint64_t protocol_features() const { return protocol_features_; }
  bool has_features() const { return features_set_; }
  uint8_t status() const { return status_; }
  uint16_t mtu() const { return mtu_; }
  uint32_t num_queues() const { return kMaxQueues; }
  // The worker's view; only read while the worker runs (not paused) or with it paused.
  DeviceQueue& queue(uint32_t i) { return queues_[i]; }
  const std::shared_ptr<const GuestMemory>& memory() const { return mem_; }
  // Pending SEND_RARP: the MAC to announce, taken by the datapath (any thread: one atomic word,
  // so a guest's SEND_RARP pauses no worker).
  std::optional<std::array<uint8_t, 6>> TakeRarp();
  bool has_rarp() const { return rarp_.load(std::memory_order_relaxed) != 0; }
  uint64_t generation() const { return generation_; }

  // Live upgrade (docs/upgrade.md). Export: with the worker paused, writes the device state
  // under "s." keys of `out` — what the frontend set (features, memory regions and their
  // fds, per queue size, addresses, kick/call/err fds, enabled) with each running queue's
  // base at its ring's position now. An error (a ring with a chain in flight) changes nothing.
  Result<void> Export(HandoverRecord* out) const;
  // Import: on a fresh session, rebuilds that state through Handle() — the same checks as
  // the frontend's own messages (memory mapped and bounded) — taking the fds out of `in`, all
  // but starting the queues: their kicks wait for ImportPositions (the old process's rings
  // move on meanwhile). No reply goes to the frontend. An error names the request and the
  // field; Reset() then.
  Result<void> Import(HandoverRecord& in);
  // The second step (Port::ExportPositions): with the worker paused again, each running
  // queue's position now ("s.p.I.base"), or that its ring broke meanwhile ("s.p.I.broken").
  // ImportPositions starts the queues from there through SET_VRING_BASE and SET_VRING_KICK
  // (rings mapped and checked against their bases; a broken one stays stopped, as it would
  // there, until the frontend sets it up again).
  Result<void> ExportPositions(HandoverRecord* out) const;
  Result<void> ImportPositions(HandoverRecord& in);

  // Bytes of virtio_net_hdr in front of every packet with the negotiated features.
  uint32_t net_hdr_len() const { return net_hdr_len_; }
  bool mrg_rxbuf() const { return mrg_rxbuf_; }

 private:
  Result<void> Dispatch(const RequestInfo& info, Message& msg, Channel& ch, bool* replied);
  Result<void> SetMemTable(Message& msg);
  Result<void> AddMemReg(Message& msg);
  Result<void> RemMemReg(Message& msg);
  Result<void> SetVringFd(const RequestInfo& info, Message& msg);
  Result<uint32_t> QueueIndex(const RequestInfo& info, uint32_t index) const;
  // Starts queue i if it has everything and is enabled; stops it otherwise.
  Result<void> Reconcile(uint32_t i);
  Result<void> StartLocked(uint32_t i);  // with the worker paused
  void StopLocked(uint32_t i);           // with the worker paused
  // Swaps in a new memory table, re-mapping the rings of started queues.
  Result<void> SwapMemory(std::shared_ptr<const GuestMemory> m, const char* request);

  BackendConfig config_;
  Pausable* worker_;
  int fault_fd_ = -1;
  std::function<void(uint32_t)> stop_hook_;
  uint64_t offered_features_ = 0;
  bool peer_sends_offloads_ = false;
  uint64_t offered_protocol_features_ = 0;
  uint64_t features_ = 0;
  bool features_set_ = false;
  uint64_t protocol_features_ = 0;
  uint8_t status_ = 0;
  uint16_t mtu_ = 0;
  uint32_t net_hdr_len_ = 12;
  bool mrg_rxbuf_ = false;
  std::shared_ptr<const GuestMemory> mem_;
  // ADD_MEM_REG / REM_MEM_REG references per region: QEMU keeps one vhost device per queue
  // pair on the same connection, and each adds (and later removes) the same regions.
  std::map<std::tuple<uint64_t, uint64_t, uint64_t>, uint32_t> region_refs_;
  // Each region's file, kept for a live upgrade's handover (the mapping keeps the memory
  // anyway; one fd per region).
  std::map<std::tuple<uint64_t, uint64_t, uint64_t>, UniqueFd> region_fds_;
  std::array<DeviceQueue, kMaxQueues> queues_;
  // Between Import and ImportPositions: the kicks that start each queue (an fd, or an invalid
  // one for a frontend that expects polling).
  std::map<uint32_t, UniqueFd> import_kicks_;
  std::atomic<uint64_t> rarp_{0};  // kRarpSet | the MAC (first octet most significant); 0: none
  static constexpr uint64_t kRarpSet = 1ull << 63;
  uint64_t generation_ = 0;  // bumped whenever a queue starts or stops
};

}  // namespace nicmux::vhost
