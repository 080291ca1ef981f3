// AfXdpPort: a kernel network interface (a NIC, a veth) as a switch port through AF_XDP
// sockets, one per queue, bypassing the kernel's stack (docs/af_xdp.md). An XDP program that
// nicmuxd loads on the interface redirects every frame arriving on queue q to socket q; frames
// the switch sends go out of the interface's queue q.
//
// Options (--port af_xdp:NAME:key=value,...): iface=IF (required), queues=N (1..8: the
// interface's queues 0..N-1), mode=auto|zero-copy|native|generic (default auto: zero-copy,
// else native XDP with copies, else generic XDP), ring=N (descriptors per ring, a power of two,
// 64..8192, default 2048), tx_csum=auto|off (partial checksums through AF_XDP TX metadata where
// detection finds the kernel and device honour them; off: always completed in the port's copy).
//
// Before it touches the interface the port checks that it exists, that its MTU fits a UMEM
// frame (kFrameBytes) and that it may load an XDP program; an XDP program of someone else's on
// the interface is refused, one left by an earlier nicmuxd (named nicmux_xsk) is replaced. The
// program is a few instructions built here (bpf_redirect_map on an XSKMAP, falling back to
// XDP_PASS), loaded without libxdp's dispatcher, so no bpffs is needed. The destructor detaches
// it (only if it is still ours).
//
// UMEM: one shared mapping of a memfd per port (a new nicmuxd maps the same pages in a live
// upgrade); queue q owns 2 * ring frames of kFrameBytes in it,
// registered as that queue's UMEM with its own fill and completion rings: `ring` frames for
// receiving (in the fill ring, or held by the switch), `ring` for sending. The sockets, UMEM
// registrations and ring mappings are made here, not by libxdp (1.3.1 cannot register a TX
// metadata area); libxdp's inline ring accessors (xdp/xsk.h) work the rings.
//
// TX metadata (docs/af_xdp.md "Offloads", port/af_xdp_tx_metadata.h): with tx_csum=auto the
// UMEM is registered with XDP_UMEM_TX_METADATA_LEN and kTxMetadataLen bytes before every
// frame's data; when detection says the interface, in the mode the port got, honours a
// checksum request, the caps gain kCsum and Tx writes the request for each frame with a partial
// checksum instead of summing it.
//
// Data path (worker thread; Tx under the switch's per-queue lock):
//   Rx: frames the switch left unsent last time first, then the RX ring's descriptors, each a
//     one-segment PacketRef over its UMEM frame (no copy before the switch's one copy).
//   RxDone: the frames sent go back to the fill ring (kicking the kernel when it asks,
//     need_wakeup); the others are held for the next Rx, in order.
//   Tx: frames whose sends completed come back from the completion ring; each packet is
//     copied into a free frame and put on the TX ring; a partial checksum goes to the kernel as
//     TX metadata (kCsum, where detected) or is completed in that copy (PortCaps kCsumOnCopy);
//     GSO frames are cut by the switch. A sendto() kicks the kernel when it asks (need_wakeup;
//     always in copy mode).
//
// Live upgrade (docs/upgrade.md, docs/af_xdp.md "Live upgrade"): the port hands over its
// sockets, the UMEM memfd, the XSKMAP and the program, which stays attached throughout: the
// interface never stops redirecting to the sockets, and the kernel goes on filling the same
// rings while the processes change. The new process maps the UMEM and the rings again and
// checks them (an AF_XDP socket each, the program on the interface the one handed over, sizes
// as its spec says); at the precise point it takes the frames the old one owned (those free
// for sending, those held for a full destination) and resumes at the rings' own indexes. It
// detaches the program at exit only once the handover committed.
//
// Counters (per queue): rx/tx packets and bytes; rx_dropped: bad_frame (a descriptor outside
// the queue's UMEM or of length 0); tx_dropped: too_big_for_buffers (a frame longer than a
// UMEM frame). No free frame or TX slot is backpressure: Tx stops and returns what it took.
#pragma once

#include <xdp/xsk.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/mmap.h"
#include "base/result.h"
#include "base/unique_fd.h"
#include "port/port.h"
#include "port/registry.h"

namespace nicmux {

struct AfXdpPortOptions {
  std::string name;
  std::string ifname;
  uint32_t queues = 1;
  std::string mode = "auto";  // auto, zero-copy, native, generic
  uint32_t ring = 2048;
  std::string tx_csum = "auto";  // auto, off
};

// The af_xdp kind for the port registry (port/kinds.cc).
PortKind AfXdpPortKind();

class AfXdpPort final : public Port {
 public:
  static constexpr uint32_t kFrameBytes = 4096;  // a UMEM frame
  // The largest frame either way: the kernel writes a received frame XDP_PACKET_HEADROOM (256)
  // bytes into its UMEM frame in copy mode.
  static constexpr uint32_t kMaxFrameBytes = kFrameBytes - 256;
  static constexpr const char* kProgName = "nicmux_xsk";

  // With `handover`: the old process's port, from its Export (a live upgrade).
  static Result<std::unique_ptr<AfXdpPort>> Create(const AfXdpPortOptions& options,
                                                   HandoverRecord* handover = nullptr);
  ~AfXdpPort() override;

  uint32_t NumQueuePairs() const override { return static_cast<uint32_t>(q_.size()); }
  size_t Rx(uint32_t q, Batch& out, size_t max) override;
  void RxDone(uint32_t q, Batch& batch, size_t sent) override;
  size_t Tx(uint32_t q, std::span<const PacketRef* const> in) override;
  // kBurst, as TAP: Tx stops where frames or TX slots run out (which Tx checks itself).
  size_t TxRoom(uint32_t) override { return kBurst; }
  bool ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) override;
  void DisarmNotify(uint32_t) override {}
  bool CanSleep(uint32_t) const override { return true; }
  PortStats Stats() const override;
  PortStats QueueStats(uint32_t q) const override { return QueueStatsAt(q_, q); }
  uint64_t DropsFor(DropReason r) const override;
  std::string State() const override;
  // The interface's device node (sysfs; -1 for a veth or on a machine without NUMA), read at
  // Open: the scheduler puts its queues on a worker of that node (docs/scheduler.md).
  int numa_node() const override { return node_; }
  std::vector<Detail> Details() const override;
  std::vector<Detail> DeviceCaps() const override;
  bool CanHandOver() const override { return true; }
  Result<void> Export(HandoverRecord* out) override;
  Result<void> ExportPositions(HandoverRecord* out) override;
  Result<void> ImportPositions(HandoverRecord& in) override;
  void HandoverCommitted() override { owns_program_ = true; }

  // "zero-copy (native XDP)", "copy (native XDP)" or "copy (generic XDP)".
  const std::string& mode() const { return mode_; }

 private:
  struct Queue {
    ~Queue();
    xsk_ring_prod fill{};
    xsk_ring_cons comp{};
    xsk_ring_cons rx{};
    xsk_ring_prod tx{};
    // The socket (its own UMEM registered on it) and its four ring mappings.
    UniqueFd sock;
    int fd = -1;  // sock.get()
    struct Map {
      void* addr = nullptr;
      size_t len = 0;
    } maps[4];
    uint64_t base = 0;  // the queue's first byte in the UMEM mapping
    std::vector<uint64_t> free_tx;  // frame addresses (relative to base) free for sending
    // The frames of the packets Rx returned, in order, and those RxDone held back.
    // (Addresses are the descriptors' own: the frame's data, XDP_PACKET_HEADROOM into it in copy
    // mode; Refill masks them to the frame. Lengths are the descriptors' too: the switch may
    // shorten a PacketRef's, untagging it.)
    std::array<uint64_t, kBurst> rx_addr{};
    std::array<uint32_t, kBurst> rx_len{};
    std::array<Segment, kBurst> segs{};
    uint32_t n = 0;
    std::array<uint64_t, kBurst> held_addr{};
    std::array<uint32_t, kBurst> held_len{};
    uint32_t nheld = 0;
    std::atomic<uint32_t> nheld_seen{0};  // nheld, for other workers' ArmNotify
    // Receive frames owed to the fill ring that did not fit yet: the kernel publishes the RX
    // producer before the fill consumer (xsk_flush), so a frame can come back before the slot
    // it left is seen free. Kept in order, given to the fill ring first by the next Refill.
    std::vector<uint64_t> refill;
    std::atomic<uint32_t> refill_seen{0};  // refill.size(), for other workers' ArmNotify
    QueueCounters rxc, txc;
  };

  explicit AfXdpPort(const AfXdpPortOptions& o) : Port(o.name), opt_(o) {}
  // Checks the options and finds the interface (its index and MTU): both Open and Adopt.
  Result<void> CheckOptions();
  Result<void> Open();
  // Builds the port from the old process's (live upgrade): nothing on the interface changes.
  Result<void> Adopt(HandoverRecord& in);
  // The port's caps from what Open found (or the old process did).
  void SetXdpCaps();
  // Maps queue q's four rings from its socket (their indexes as they are now).
  Result<void> MapRings(Queue& q, const std::string& what);
  // Makes queue i's socket: UMEM registration (with the TX metadata area when meta_len > 0),
  // rings, bind. *umem_errno: the registration's errno with the metadata flag (then it is
  // registered without), 0 when it took it.
  Result<void> OpenQueue(Queue& q, uint32_t i, bool zero_copy, uint32_t meta_len, int* umem_errno);
  void Reclaim(Queue& q);
  void Refill(Queue& q, const uint64_t* addrs, uint32_t n);
  std::byte* Frame(const Queue& q, uint64_t addr) { return umem_area_.data() + q.base + addr; }

  AfXdpPortOptions opt_;
  int ifindex_ = 0;
  int node_ = -1;  // set at Open by the control thread, read by it
  uint32_t mtu_ = 0;
  uint32_t attach_flags_ = 0;  // XDP_FLAGS_DRV_MODE or XDP_FLAGS_SKB_MODE once attached, else 0
  std::string mode_;
  // TX metadata: the bytes before every TX frame's data (0 or kTxMetadataLen: what the UMEM
  // was registered with), whether partial checksums go as requests, and what detection found.
  uint32_t tx_headroom_ = 0;
  bool tx_csum_meta_ = false;
  std::string tx_metadata_;       // "checksum" or "none (why)"
  std::string tx_metadata_path_;  // with checksum: where the sum is made
  std::string xdp_features_, xsk_features_;  // from the netdev family, or "unknown (why)"
  UniqueFd map_fd_, prog_fd_;
  // Whether the destructor detaches the program: not in a live upgrade's new process until the
  // handover committed (a failed one leaves the old process serving through it).
  bool owns_program_ = true;
  UniqueFd umem_fd_;  // the memfd under umem_area_
  MappedRegion umem_area_;
  std::vector<std::unique_ptr<Queue>> q_;
};

}  // namespace nicmux
