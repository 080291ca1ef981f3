// MemPort: a Port over frames in host memory, for unit tests of the switch logic (learning,
// flooding, VLANs, backpressure). Frames queued with Inject() come out of Rx (as PacketRefs over
// their bytes, like a guest's chains); what the switch sends is copied into sent(). RxDone keeps
// the frames not sent, to be received again — the backpressure contract of real ports.
// Real peers (guests, testpmd, the kernel) are exercised by tests/integration.
#pragma once

#include <atomic>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "packet/offload_ops.h"
#include "port/port.h"

namespace nicmux::testing {

using Frame = std::vector<std::byte>;

inline Frame MakeFrame(uint64_t dst, uint64_t src, int vid = -1, size_t len = 64, uint8_t fill = 0) {
  Frame f;
  auto put_mac = [&](uint64_t m) {
    for (int i = 5; i >= 0; --i) f.push_back(static_cast<std::byte>(m >> (8 * i)));
  };
  put_mac(dst);
  put_mac(src);
  if (vid >= 0) {
    f.push_back(std::byte{0x81});
    f.push_back(std::byte{0x00});
    f.push_back(static_cast<std::byte>(vid >> 8));
    f.push_back(static_cast<std::byte>(vid & 0xff));
  }
  f.push_back(std::byte{0x08});
  f.push_back(std::byte{0x00});
  const size_t payload_at = f.size();  // the same payload bytes tagged or not
  while (f.size() < len) f.push_back(static_cast<std::byte>(fill + f.size() - payload_at));
  return f;
}

class MemPort final : public Port {
 public:
  explicit MemPort(std::string name, uint32_t queues = 1) : Port(std::move(name)), queues_(queues) {}

  void Inject(Frame f, Offload o = {}) {
    in_.push_back(std::move(f));
    in_offload_.push_back(o);
  }
  std::vector<Frame>& sent() { return sent_; }
  // The offload record of each frame in sent(), as the switch handed it over.
  std::vector<Offload>& sent_offloads() { return sent_offloads_; }
  // What Tx accepts (Port::Caps).
  void set_caps(const PortCaps& c) { SetCaps(c); }
  void set_room(size_t r) { room_ = r; }
  // A guest refilling its receive ring: n more buffers.
  void add_room(size_t n) { room_ = room_ == SIZE_MAX ? SIZE_MAX : room_ + n; }
  size_t pending() const { return in_.size(); }
  // The peer went away (a frontend disconnected): bumps link_generation().
  void Disconnect() { PeerGone(); }

  uint32_t NumQueuePairs() const override { return queues_; }
  size_t Rx(uint32_t, Batch& out, size_t max) override {
    size_t n = 0;
    for (; n < in_.size() && n < max && !out.full(); ++n) {
      Frame& f = in_[n];
      PacketRef* p = out.TryPush();
      PacketFromFlat(p, &segs_[n], f.data(), static_cast<uint32_t>(f.size()));
      p->offload = in_offload_[n];
    }
    return n;
  }
  void RxDone(uint32_t, Batch&, size_t sent) override {
    rx_packets_ += sent;
    in_.erase(in_.begin(), in_.begin() + static_cast<long>(sent));
    in_offload_.erase(in_offload_.begin(), in_offload_.begin() + static_cast<long>(sent));
  }
  size_t Tx(uint32_t, std::span<const PacketRef* const> in) override {
    size_t k = 0;
    for (; k < in.size() && k < room_; ++k) {
      struct W {
        Frame* f;
        size_t Write(const void* p, size_t n) {
          const std::byte* b = static_cast<const std::byte*>(p);
          f->insert(f->end(), b, b + n);
          return n;
        }
        void Patch(size_t at, const void* p, size_t n) { std::memcpy(f->data() + at, p, n); }
      };
      Frame f;
      W w{&f};
      // A port with kCsumOnCopy (and not kCsum) completes partial checksums in its copy, as
      // vhost-user's Tx does.
      const PortCaps caps = Caps();
      if (caps.has(PortCaps::kCsumOnCopy) && !caps.has(PortCaps::kCsum)) {
        CopyPacketCompleting(*in[k], w);
      } else {
        CopyPacket(*in[k], w);
      }
      sent_.push_back(std::move(f));
      sent_offloads_.push_back(in[k]->offload);
    }
    if (room_ != SIZE_MAX) room_ -= k;
    return k;
  }
  size_t TxRoom(uint32_t) override { return std::min<size_t>(room_, kBurst); }
  bool ArmNotify(uint32_t, std::vector<NotifyFd>*) override { return !in_.empty(); }
  void DisarmNotify(uint32_t) override {}
  bool CanSleep(uint32_t) const override { return true; }
  PortStats Stats() const override {
    PortStats s;
    s.rx_packets = rx_packets_;
    s.tx_packets = sent_.size();
    return s;
  }
  uint64_t DropsFor(DropReason) const override { return 0; }
  std::string State() const override { return "up"; }

 private:
  uint32_t queues_;
  std::deque<Frame> in_;
  std::deque<Offload> in_offload_;
  std::vector<Frame> sent_;
  std::vector<Offload> sent_offloads_;
  Segment segs_[kBurst];
  size_t room_ = SIZE_MAX;
  std::atomic<uint64_t> rx_packets_{0};  // read by other threads in multi-worker tests
};

}  // namespace nicmux::testing
