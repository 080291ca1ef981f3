// TapPort: the host kernel's network stack as a switch port. nicmux creates a TAP interface
// (/dev/net/tun, IFF_TAP); what the switch sends to the port, the kernel receives on that
// interface, and what the kernel transmits on it, the switch receives. A host process, a
// container's veth behind a bridge or the kernel's routing reach the switch this way.
//
// Options (--port tap:NAME:key=value,...):
//   ifname=IF     kernel interface name (default: the port name; 1..15 characters, no '/',
//                 ':', '%' or whitespace). An interface of that name must not exist yet: the
//                 port never takes over a device someone else made.
//   queues=N      queue pairs, 1..8 (default 1); N > 1 makes a multi-queue device
//                 (IFF_MULTI_QUEUE), one fd per queue; the kernel spreads flows over them.
//   address=A/P   an IPv4 address with prefix length set on the interface ("10.0.0.1/24").
//   up            bring the link up (default on).
//   mtu=N         interface MTU, 68..65535 (default: the kernel's, 1500).
//   offloads=on|off  checksum offload and TSO (IPv4, IPv6, ECN) both ways (default on).
//
// The device is not persistent: it goes away when the port closes its fds (the destructor, or
// the daemon's exit). Every queue fd is O_NONBLOCK; the frames carry a 12-byte virtio-net
// header (IFF_VNET_HDR, TUNSETVNETHDRSZ 12, little-endian), translated into the Offload
// record at this edge. With offloads (the default) TUNSETOFFLOAD CSUM|TSO4|TSO6|TSO_ECN lets
// the kernel hand us TSO frames with partial checksums, and the caps say the kernel takes them
// (it accepts any virtio-net header from a TAP writer); with offloads=off, TUNSETOFFLOAD 0:
// whole, checksummed frames both ways.
//
// Data path (worker thread; Tx under the switch's per-queue lock): the port owns kBurst host
// buffers per queue. Rx read()s frames into free buffers and makes one-segment PacketRefs over
// them; RxDone frees the buffers of the frames sent and KEEPS the others (a TAP read cannot be
// undone), which the next Rx returns first, in order. Tx writev()s each packet straight from
// the source's segments (virtio-net header, the private head copy, then the segments): the
// kernel's copy out of our iovecs is the one copy. Reads and writes are one syscall per packet
// — TAP has no batching; io_uring or AF_XDP on a veth would be the fast path.
//
// Counters (per queue, summed in Stats): rx/tx packets and bytes; rx_dropped: bad_frame (a
// read shorter than the virtio-net header plus an Ethernet header), too_big_for_buffers (a
// read that filled the whole buffer: possibly truncated); tx_dropped: bad_frame (the kernel
// refused the frame: EINVAL, or the PacketRef's segments end early), too_big_for_buffers
// (longer than any TAP frame), port_down (EIO and the like: the interface is down or was
// deleted). EAGAIN/ENOBUFS on write is backpressure, not a drop: Tx stops and returns what it
// took. If the interface is deleted underneath us (ip link del) the port stops reading, no
// longer offers its fds for sleeping, and State() says "down".
#pragma once

#include <sys/uio.h>

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

struct TapPortOptions {
  std::string name;     // the nicmux port name
  std::string ifname;   // kernel interface name; empty: the port name
  uint32_t queues = 1;  // 1..8
  std::string address;  // "10.0.0.1/24"; empty: none
  bool up = true;
  uint32_t mtu = 0;  // 68..65535; 0: the kernel's default
  // Checksum offload and TSO both ways (TUNSETOFFLOAD CSUM|TSO4|TSO6|TSO_ECN): the kernel
  // hands us 64 KiB TCP frames with partial checksums and takes them (docs/offloads.md).
  bool offloads = true;
};

// The TAP kind for the port registry (port/kinds.cc).
PortKind TapPortKind();

class TapPort final : public Port {
 public:
  // Buffer layout: each host buffer holds the 12-byte virtio-net header and then a frame of
  // up to kMaxFrameBytes (more than 65535 + Ethernet + VLAN headers: any MTU fits).
  static constexpr uint32_t kVnetHdrBytes = 12;
  static constexpr uint32_t kSlotBytes = 68 * 1024;
  static constexpr uint32_t kMaxFrameBytes = kSlotBytes - kVnetHdrBytes;
  static constexpr uint32_t kMinFrameBytes = 14;  // an Ethernet header
  static constexpr uint32_t kMaxIov = 64 + 2;     // header, head, then up to 64 segments

  // With `handover` (a live upgrade, docs/upgrade.md): goes on with the old nicmuxd's queue
  // fds (the interface, its address and offloads stay as they are) instead of creating it.
  static Result<std::unique_ptr<TapPort>> Create(const TapPortOptions& options, HandoverRecord* handover = nullptr);
  ~TapPort() override = default;  // closing the fds removes the interface

  uint32_t NumQueuePairs() const override { return static_cast<uint32_t>(q_.size()); }
  size_t Rx(uint32_t q, Batch& out, size_t max) override;
  void RxDone(uint32_t q, Batch& batch, size_t sent) override;
  size_t Tx(uint32_t q, std::span<const PacketRef* const> in) override;
  size_t TxRoom(uint32_t q) override { return kBurst; }
  bool ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) override;
  void DisarmNotify(uint32_t) override {}
  bool CanSleep(uint32_t) const override { return true; }
  PortStats Stats() const override;
  PortStats QueueStats(uint32_t q) const override { return QueueStatsAt(q_, q); }
  uint64_t DropsFor(DropReason r) const override;
  // "up" while the interface exists and is IFF_UP, else "down" (one ioctl: control plane only).
  std::string State() const override;

  // Live upgrade: the queue fds (Export); the frames read from the kernel and not sent yet
  // (held for a full destination), in a memfd (ExportPositions).
  bool CanHandOver() const override { return true; }
  Result<void> Export(HandoverRecord* out) override;
  Result<void> ExportPositions(HandoverRecord* out) override;
  Result<void> ImportPositions(HandoverRecord& in) override;

  const std::string& ifname() const { return ifname_; }
  // The queue's TAP fd (tests).
  int fd(uint32_t q) const { return q_[q]->fd.get(); }

 private:
  TapPort(std::string name, std::string ifname)
      : Port(std::move(name)), ifname_(std::move(ifname)) {}
  // Frames of queue q kept or read: buffer slot `slot` of the queue.
  std::byte* Slot(uint32_t q, uint32_t slot) const {
    return buffers_.data() + (uint64_t{q} * kBurst + slot) * kSlotBytes;
  }
  std::string ifname_;
  MappedRegion buffers_;  // queues * kBurst slots of kSlotBytes, touched only where read into

  struct Queue {
    UniqueFd fd;
    // Rx (the worker owning the queue): order[0, held) are the slots holding frames not yet
    // sent, oldest first; order[held, kBurst) are free. Rx emits order[0, emitted).
    uint8_t order[kBurst];
    uint32_t frame_len[kBurst];         // per slot: frame bytes after the virtio-net header
    Segment segs[kBurst];  // per slot
    uint32_t held = 0;
    uint32_t emitted = 0;
    uint32_t batch_base = 0;        // batch index of the first emitted frame
    std::atomic<uint32_t> kept{0};  // held after the last RxDone, for ArmNotify (any worker)
    std::atomic<bool> gone{false};  // read failed for good: the interface was deleted
    // Tx (whoever holds the queue's TxLock).
    iovec iov[kMaxIov];
    std::byte* bounce = nullptr;  // kMaxFrameBytes, for packets with more than 64 segments
    QueueCounters rxc, txc;
  };
  std::vector<std::unique_ptr<Queue>> q_;
  MappedRegion bounce_;  // queues * kMaxFrameBytes

  void Emit(uint32_t q, uint32_t slot, Batch& out);
  // 0 when the kernel took p, else an errno (EAGAIN/ENOBUFS: try later; EINVAL: a malformed
  // PacketRef or a frame the kernel refused; EMSGSIZE: too big; others from writev).
  int WritePacket(Queue& s, const PacketRef& p);
};

}  // namespace nicmux
