// PacketRef and Batch: how packets cross the switch without being copied (DESIGN.md "The data
// path"). A PacketRef names the source's buffer segments (still in the source's memory, valid
// until the source's RxDone) and carries a private copy of the first bytes — the headers that
// classification reads, so a guest that rewrites its buffer after we looked cannot change
// where the packet goes. A destination copies the head from that private copy and the rest
// straight from the source segments: one copy per byte.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "base/check.h"
#include "packet/hold.h"
#include "packet/offload.h"
#include "packet/segment.h"

namespace nicmux {

inline constexpr uint32_t kBurst = 32;
inline constexpr uint32_t kHeadBytes = 64;
// How far the head copy may grow for a packet with an offload request (ExtendHead): its
// headers, up to the L4 header with options (Ethernet + 802.1Q + IPv4 with options + TCP with
// options is 138 bytes). A request that needs more is refused (bad_offload).
inline constexpr uint32_t kMaxHeadBytes = 160;
// Room for the switch to insert an 802.1Q tag into the private head copy.
inline constexpr uint32_t kHeadRoomBytes = kMaxHeadBytes + 4;

struct PacketRef {
  const Segment* segs = nullptr;  // the source's segments (not owned)
  uint16_t nsegs = 0;
  uint16_t seg = 0;        // where the bytes after the head start: segment and offset
  uint32_t seg_off = 0;
  uint32_t len = 0;        // frame bytes, without any port's metadata header
  uint32_t head_len = 0;   // min(len, kHeadBytes) as received; ExtendHead may grow it (offloads),
                           // the switch may add or remove a tag
  Offload offload;         // checksum and segmentation requests, translated by the source port
  // The source can keep the frame's memory past RxDone for a destination that takes a hold
  // instead of copying (packet/hold.h); nullptr: it cannot, or the switch changes the frame.
  PacketHolder* holder = nullptr;
  uint32_t hold_cookie = 0;  // the source's own, for holder
  alignas(16) std::byte head[kHeadRoomBytes];

  std::span<const std::byte> headers() const { return {head, head_len}; }
};

// Up to kBurst packets; TryPush() refuses the 33rd instead of writing past the end.
class Batch {
 public:
  // A slot's holder is cleared: a source that offers holds sets it again.
  PacketRef* TryPush() {
    if (count_ == kBurst) return nullptr;
    PacketRef* p = &pkts_[count_++];
    p->holder = nullptr;
    return p;
  }
  void Pop() {
    NICMUX_DCHECK(count_ > 0);
    --count_;
  }
  void Clear() { count_ = 0; }
  uint32_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  bool full() const { return count_ == kBurst; }
  PacketRef& operator[](uint32_t i) { return pkts_[i]; }
  const PacketRef& operator[](uint32_t i) const { return pkts_[i]; }
  std::span<const PacketRef> span() const { return {pkts_.data(), count_}; }

 private:
  std::array<PacketRef, kBurst> pkts_;
  uint32_t count_ = 0;
};

// Fills p over one flat buffer of len frame bytes at data (a TAP slot, a virtio-user buffer,
// a UMEM frame, a test's vector): *seg is the segment p names (the caller keeps it alive until
// RxDone); the offload record is cleared (the port translates its own metadata after).
inline void PacketFromFlat(PacketRef* p, Segment* seg, std::byte* data, uint32_t len) {
  *seg = {data, len};
  p->segs = seg;
  p->nsegs = 1;
  p->len = len;
  p->head_len = len < kHeadBytes ? len : kHeadBytes;
  p->offload = {};
  p->holder = nullptr;
  if (p->head_len == kHeadBytes) {
    std::memcpy(p->head, data, kHeadBytes);  // fixed size: inlined
  } else if (p->head_len > 0) {
    std::memcpy(p->head, data, p->head_len);
  }
  p->seg = p->head_len == len ? 1 : 0;
  p->seg_off = p->head_len == len ? 0 : p->head_len;
}

// Grows p's private head copy to min(want, len) bytes (want <= kMaxHeadBytes), taking them from
// the source's segments and moving where the rest starts. False when the segments end first.
inline bool ExtendHead(PacketRef* p, uint32_t want) {
  NICMUX_CHECK(want <= kMaxHeadBytes);
  if (want > p->len) want = p->len;
  while (p->head_len < want) {
    if (p->seg >= p->nsegs) return false;
    const Segment& s = p->segs[p->seg];
    if (p->seg_off >= s.len) {
      ++p->seg;
      p->seg_off = 0;
      continue;
    }
    const uint32_t k = std::min(want - p->head_len, s.len - p->seg_off);
    std::memcpy(p->head + p->head_len, s.data + p->seg_off, k);
    p->head_len += k;
    p->seg_off += k;
  }
  return true;
}

// Copies p's frame bytes [0, len) into w (anything with size_t Write(const void*, size_t), e.g.
// a ChainWriter): the head from the private copy, the rest from the source segments. Returns
// the bytes written (less than p.len only if w ran out of room).
template <typename Writer>
size_t CopyPacket(const PacketRef& p, Writer& w) {
  size_t done = w.Write(p.head, p.head_len);
  if (done < p.head_len) return done;
  uint32_t seg = p.seg, off = p.seg_off;
  size_t left = p.len - p.head_len;
  while (left > 0 && seg < p.nsegs) {
    const Segment& s = p.segs[seg];
    const size_t k = left < s.len - off ? left : s.len - off;
    const size_t put = w.Write(s.data + off, k);
    done += put;
    if (put < k) return done;
    left -= k;
    ++seg;
    off = 0;
  }
  return done;
}

// The same into one contiguous buffer of at least p.len bytes (the common case: a receive
// buffer that holds the whole frame). Returns p.len.
inline size_t CopyPacketTo(const PacketRef& p, std::byte* out) {
  if (p.head_len == kHeadBytes) {
    std::memcpy(out, p.head, kHeadBytes);  // fixed size: inlined
  } else {
    std::memcpy(out, p.head, p.head_len);
  }
  out += p.head_len;
  uint32_t seg = p.seg, off = p.seg_off;
  size_t left = p.len - p.head_len;
  while (left > 0 && seg < p.nsegs) {
    const Segment& s = p.segs[seg];
    const size_t k = left < s.len - off ? left : s.len - off;
    std::memcpy(out, s.data + off, k);
    out += k;
    left -= k;
    ++seg;
    off = 0;
  }
  return p.len - left;
}

}  // namespace nicmux
