// Capture: copies of the packets a port sends and receives, for `nicmuxctl capture` (a pcap).
// Workers add (under a mutex: capturing is a diagnostic, its cost only exists while someone
// captures); the control thread drains. Bounded: when the control thread falls behind, packets
// are dropped and counted, never queued without limit.
#pragma once

#include <time.h>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "packet/offload_ops.h"
#include "packet/packet.h"

namespace nicmux {

struct CapturedPacket {
  uint64_t ts_ns;  // CLOCK_REALTIME (pcap timestamps are wall-clock)
  bool tx;         // sent out of the port (else received from it)
  uint32_t orig_len;
  std::vector<std::byte> data;
};

class Capture {
 public:
  explicit Capture(size_t max_queued = 16384, uint32_t snap_bytes = 65535)
      : max_queued_(max_queued), snap_bytes_(snap_bytes) {}

  void Add(const PacketRef& p, bool tx) {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct VecWriter {
      std::vector<std::byte>* v;
      size_t left;
      size_t Write(const void* src, size_t n) {
        const size_t k = n < left ? n : left;
        const std::byte* b = static_cast<const std::byte*>(src);
        v->insert(v->end(), b, b + k);
        left -= k;
        return k;
      }
      void Patch(size_t at, const void* src, size_t n) {  // within what was kept
        if (at < v->size()) std::memcpy(v->data() + at, src, std::min(n, v->size() - at));
      }
    };
    CapturedPacket c{uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec), tx, p.len, {}};
    c.data.reserve(p.len < snap_bytes_ ? p.len : snap_bytes_);
    VecWriter w{&c.data, snap_bytes_};
    // What was sent: a partial checksum completed in the captured copy, as a capture on the
    // wire would show it. What was received: as it came.
    if (tx) {
      CopyPacketCompleting(p, w);
    } else {
      CopyPacket(p, w);
    }
    std::lock_guard lock(mu_);
    if (queued_.size() >= max_queued_) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    queued_.push_back(std::move(c));
  }

  std::vector<CapturedPacket> Drain() {
    std::vector<CapturedPacket> out;
    std::lock_guard lock(mu_);
    out.swap(queued_);
    return out;
  }
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }

 private:
  std::mutex mu_;
  std::vector<CapturedPacket> queued_;
  size_t max_queued_;
  uint32_t snap_bytes_;
  std::atomic<uint64_t> dropped_{0};
};

}  // namespace nicmux
