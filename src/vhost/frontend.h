// Frontend: nicmux as the driver (frontend) side of vhost-user, our own virtio-user. It owns
// its "guest" memory (one memfd region, shared with the backend through SET_MEM_TABLE),
// connects to any vhost-user backend socket (nicmuxd, DPDK's vhost PMD, OVS), negotiates,
// and sets up 1..N queue pairs with DriverSplitVring / DriverPackedVring. The backend is not
// trusted: what it returns is checked by the driver rings (ids, lengths, indexes).
//
// Buffers: every queue has `size` buffers of buf_bytes each, owned by the ring slot's id
// (split head index / packed buffer id is reused as the buffer index, so no free list is
// needed on the hot path).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "base/event_fd.h"
#include "base/handover.h"
#include "base/peer_io.h"
#include "base/mmap.h"
#include "base/unique_fd.h"
#include "memory/guest_memory.h"
#include "vhost/channel.h"
#include "virtio/driver_vring.h"

namespace nicmux::vhost {

// The most queue pairs the frontend negotiates.
inline constexpr uint32_t kMaxFrontendQueuePairs = 8;

struct FrontendConfig {
  std::string socket_path;
  bool listen = false;        // wait for the backend to connect (it runs in client mode)
  uint32_t queue_pairs = 1;
  uint32_t queue_size = 256;
  bool packed = false;
  bool mrg_rxbuf = true;
  bool event_idx = true;
  bool indirect = false;
  uint32_t buf_bytes = 2048;  // per receive/transmit buffer (a frame larger needs MRG_RXBUF)
  // Seal the memory file against resizing, as QEMU's memfd backend does. Tests turn it off to
  // be the frontend DPDK's virtio-user is (it never seals) and shrink the file under the
  // backend.
  bool seal_memory = true;
  // The memory in huge pages (MFD_HUGETLB: the default size, 2 MiB on x86; reserved ones,
  // vm.nr_hugepages), as a QEMU guest with a hugetlbfs memory backend gives it: the backend
  // then maps it in huge pages too.
  bool hugepages = false;
  int connect_timeout_ms = 10000;
  // Virtio-net offload features to ask for (CSUM, HOST_TSO4, GUEST_CSUM, ...: virtio/features.h
  // bits); only those the backend offers are negotiated (features()).
  uint64_t offloads = 0;
};

// One virtqueue of the frontend.
struct FrontendQueue {
  bool packed = false;
  virtio::DriverSplitVring split;
  virtio::DriverPackedVring packed_ring;
  EventFd kick, call, err;  // err: the backend found the ring broken (SET_VRING_ERR)
  GuestAddr buffers;      // size * buf_bytes
  std::byte* host = nullptr;

  std::optional<uint16_t> Add(std::span<const virtio::DriverBuffer> b) {
    return packed ? packed_ring.Add(b) : split.Add(b);
  }
  void Publish() { packed ? packed_ring.Publish() : split.Publish(); }
  bool NeedKick() { return packed ? packed_ring.NeedKick() : split.NeedKick(); }
  virtio::PopStatus PopUsed(virtio::UsedBuffer* u) {
    return packed ? packed_ring.PopUsed(u) : split.PopUsed(u);
  }
  uint32_t num_free() const { return packed ? packed_ring.num_free() : split.num_free(); }
  uint16_t NextId() const { return packed ? packed_ring.NextId() : split.NextId(); }
  bool id_in_flight(uint16_t id) const { return packed ? packed_ring.id_in_flight(id) : split.id_in_flight(id); }
  bool broken() const { return packed ? packed_ring.broken() : split.broken(); }
  // The backend shares our kick eventfd and can make a write to it block (blocking mode and a
  // full counter; base/peer_io.h). The watchdog breaks that write off; from then on the queue
  // is published without kicks (a backend that blocks its doorbell must poll) and the port
  // reports it.
  void Kick() {
    Publish();
    if (kick_blocked.load(std::memory_order_relaxed) || !NeedKick()) return;
    if (SignalPeerEventFd(kick.fd()) == PeerIoStatus::kInterrupted) {
      kick_blocked.store(true, std::memory_order_relaxed);
    }
  }
  std::atomic<bool> kick_blocked{false};
};

class Frontend {
 public:
  // Connects (or accepts), negotiates and starts every queue. Errors name the step.
  static Result<std::unique_ptr<Frontend>> Create(const FrontendConfig& config);
  ~Frontend();

  uint64_t features() const { return features_; }
  uint32_t queue_pairs() const { return pairs_; }
  uint32_t net_hdr_len() const { return 12; }
  const FrontendConfig& config() const { return config_; }
  int memory_fd() const { return memfd_.get(); }
  // Queue 2k: receiveq k (the backend writes), 2k+1: transmitq k.
  FrontendQueue& rxq(uint32_t k) { return *queues_[2 * k]; }
  FrontendQueue& txq(uint32_t k) { return *queues_[2 * k + 1]; }
  // Host address of buffer `id` of a queue.
  std::byte* Buffer(FrontendQueue& q, uint16_t id) const { return q.host + uint64_t{id} * config_.buf_bytes; }
  GuestAddr BufferAddr(FrontendQueue& q, uint16_t id) const {
    return GuestAddr{q.buffers.value + uint64_t{id} * config_.buf_bytes};
  }
  // True while the backend keeps the connection open.
  bool Alive();
  // Live upgrade (docs/upgrade.md, docs/virtio-user.md "Live upgrade"). Export (step 1): the
  // connection, the memory file and every queue's layout and eventfds; an error when a message
  // is half exchanged with the backend. Adopt builds the same frontend from it in another
  // process without a word to the backend and without touching the rings (the old process
  // still drives them); ExportPositions / ImportPositions (step 2, every chain published) carry
  // the driver rings' shadows.
  Result<void> Export(HandoverRecord* out) const;
  static Result<std::unique_ptr<Frontend>> Adopt(const FrontendConfig& config, HandoverRecord& in);
  Result<void> ExportPositions(HandoverRecord* out) const;
  Result<void> ImportPositions(const HandoverRecord& in);
  // SET_MEM_TABLE again with the same memory (as QEMU sends one after a memory change): the
  // backend maps it anew and restarts its queues on it.
  Result<void> SendMemTableAgain();

 private:
  explicit Frontend(const FrontendConfig& c) : config_(c) {}
  Result<void> Connect();
  Result<void> Setup();
  // The memory's size and layout for config_ and pairs_ (Setup and Adopt agree on it).
  uint64_t MemoryBytes() const;
  // The next queue's ring areas and buffers, allocated in order from next_free_ (queue 0
  // first: Setup and Adopt lay them out alike).
  void Layout(virtio::DriverRingConfig* dc, GuestAddr* buffers);
  Result<uint64_t> GetU64(Request r);
  Result<void> Send(Request r, std::span<const std::byte> payload, std::span<const int> fds = {});
  template <typename T>
  Result<void> SendValue(Request r, const T& v, std::span<const int> fds = {}) {
    return Send(r, std::as_bytes(std::span<const T>(&v, 1)), fds);
  }
  Result<Message> WaitReply(Request r);
  // Writes what the channel queued, waiting for the backend to read (we are the client that
  // waits for its replies anyway); the same 5 s bound as WaitReply.
  Result<void> FlushOutput(Request r);
  GuestAddr Alloc(uint64_t bytes, uint64_t align);

  FrontendConfig config_;
  std::unique_ptr<Channel> ch_;
  UniqueFd memfd_;
  MappedRegion map_;
  std::shared_ptr<const GuestMemory> mem_;
  uint64_t next_free_ = 0;
  uint64_t features_ = 0;
  uint64_t protocol_features_ = 0;
  uint32_t pairs_ = 0;
  std::vector<std::unique_ptr<FrontendQueue>> queues_;
};

}  // namespace nicmux::vhost
