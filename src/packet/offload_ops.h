// What the switch does with an Offload record (docs/offloads.md): check it against the frame's
// own headers (CheckOffload), complete a partial checksum (CompleteChecksum, or fused with a
// port's copy: CopyPacketCompleting), and cut a GSO frame into the segments a destination
// without TSO/USO takes (Segmenter). All of it works on PacketRefs: headers in the private head
// copy, payload in the source's segments, never copied here (the destination's Tx copies each
// byte once, as for any packet).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "packet/packet.h"

namespace nicmux {

// The most segments a source's PacketRef may name for CheckOffload to take it (vhost-user chains
// have at most 64, flat buffers one).
inline constexpr uint32_t kMaxPayloadSegments = 72;
// The most segments one GSO frame may become: 64 KiB of payload at a gso_size of 64.
inline constexpr uint32_t kMaxGsoSegments = 1024;
// The smallest gso_size taken (a TCP MSS below this is an attack, not a network).
inline constexpr uint32_t kMinGsoSize = 64;
// The largest GSO frame: 64 KiB of IP datagram plus the link header (Linux's GSO_MAX_SIZE).
inline constexpr uint32_t kMaxGsoFrameBytes = 65535 + 14 + 4;

// Where a GSO frame's headers are, as CheckOffload found them.
struct L4Layout {
  uint16_t l3 = 0;    // the IP header
  uint16_t l4 = 0;    // the TCP or UDP header
  uint16_t hdrs = 0;  // where the payload starts (l4 + the L4 header's length)
  uint8_t proto = 0;  // 6 (TCP) or 17 (UDP)
  bool ipv6 = false;
};

// UNTRUSTED: p.offload is the source's. Checks every field before anything uses it, growing
// p's head copy over the headers the record needs (ExtendHead):
//  - needs_csum: the frame at most kMaxGsoFrameBytes (completing the sum reads all of it),
//    csum_start at or after the Ethernet header, csum_offset even, csum_start + csum_offset + 2
//    within the frame and within kMaxHeadBytes (the sum is stored in the head copy);
//  - GSO: a type we know and take (not UFO), the frame at most kMaxGsoFrameBytes and its IP
//    datagram (IPv6: payload) at most 65535 bytes, Ethernet
//    (one 802.1Q tag at most), IPv4 without fragmentation or IPv6 without extension headers,
//    the L4 protocol the type names (an IPv6 GSO frame that is really IPv4 is refused), all
//    headers within kMaxHeadBytes, hdr_len within the frame, gso_size at least kMinGsoSize
//    and at most kMaxGsoSegments segments, and a partial checksum (required with GSO) at the
//    L4 header's checksum field.
// A GSO record that passes gets hdr_len set to the headers' real length (the sender's is a hint).
// Returns nullptr when the record may be used (with *l filled for GSO), else the name of the
// field that is wrong (the packet is then dropped as bad_offload).
const char* CheckOffload(PacketRef& p, L4Layout* l);

// For a port whose peer says only where the headers are (pvdev descriptors, DPDK mbuf flags):
// asks for p's L4 checksum the way virtio-net does (needs_csum, csum_start = l3 + l3_len,
// csum_offset 16 for TCP or 6 for UDP), with the field seeded by the pseudo-header's sum over
// the L4 length (the frame's bytes from csum_start, as Linux seeds it, GSO frames included),
// whatever the peer left there. The IP header's addresses are read from p's head copy, grown
// over the headers (ExtendHead). UNTRUSTED lengths: false, and nothing asked, when the
// headers do not fit kMaxHeadBytes or the frame.
bool RequestL4Checksum(PacketRef& p, uint32_t l3, uint32_t l3_len, bool ipv6, bool tcp);

// Writes the IPv4 header checksum of the header at l3 (l3_len bytes, in the head copy after
// growing it). False when the header does not fit kMaxHeadBytes or the frame, or l3_len is
// not 20..60 and a multiple of 4.
bool FillIpv4HeaderChecksum(PacketRef& p, uint32_t l3, uint32_t l3_len);

// How many segments a checked GSO frame becomes.
uint32_t GsoSegments(const PacketRef& p, const L4Layout& l);

// Completes p's partial checksum (needs_csum, checked): the ones' complement sum of the frame
// from csum_start to its end, the field's pseudo-header seed included, stored in the head
// copy at csum_start + csum_offset; clears needs_csum. Reads the payload from the source.
void CompleteChecksum(PacketRef& p);

// Cuts a checked GSO frame into PacketRefs, each a whole frame: headers rebuilt in its head
// copy (IPv4 total length, id and header checksum; IPv6 payload length; TCP sequence number,
// FIN/PSH only on the last segment, CWR only on the first; UDP length) and its payload named in
// the source's segments, not copied and not read. Each segment's L4 checksum is left partial
// (needs_csum, the field seeded with the pseudo-header's sum), for the destination's copy to
// complete (CopyPacketCompleting) or the switch (CompleteChecksum). The outputs stay valid
// while the Segmenter and the source packet do (until the source's RxDone).
class Segmenter {
 public:
  // Cuts `p` into out (at least GsoSegments(p, l) long); returns the number of segments.
  uint32_t Cut(const PacketRef& p, const L4Layout& l, std::span<PacketRef> out);

 private:
  // The payload as one list: the bytes of the head copy past the headers, then the source's
  // segments from where the head ends.
  Segment payload_[kMaxPayloadSegments];
  uint32_t npayload_ = 0;
};

// Ones' complement sum helpers (RFC 1071), summed in host order; Fold gives the 16-bit sum as
// it is stored (memcpy into the frame).
uint64_t CsumAdd(const std::byte* data, size_t n, uint64_t acc);
uint16_t CsumFold(uint64_t acc);

// A ones' complement sum over a byte stream given in pieces of any length (a piece that starts
// at an odd offset of the stream has its sum's bytes swapped, RFC 1071 §2(B)).
struct CsumStream {
  uint64_t acc = 0;
  bool odd = false;
  void Add(const std::byte* d, size_t n) {
    if (n == 0) return;
    uint16_t f = CsumFold(CsumAdd(d, n, 0));
    if (odd) f = static_cast<uint16_t>(f >> 8 | f << 8);
    acc += f;
    odd ^= (n & 1) != 0;
  }
};

// The value a partial checksum's field ends with, from the stream's sum (csum_start to the end,
// the field's seed included): UDP's 0 ("no checksum") is sent as 0xffff.
inline uint16_t FinishedChecksum(const CsumStream& cs, uint16_t csum_offset) {
  uint16_t sum = static_cast<uint16_t>(~CsumFold(cs.acc));
  if (sum == 0 && csum_offset == 6) sum = 0xffff;
  return sum;
}

// How many bytes the fused copy moves before summing them: the block is still in L1 when it is
// summed, so each byte makes one trip from memory.
inline constexpr size_t kCopySumBlock = 2048;

// Copies p's frame into w (as CopyPacket) and, when p asks for a partial checksum, completes it
// on the way (docs/offloads.md "Fused"): the head from the private copy (where the field is,
// checked by CheckOffload), the rest from the source, each block summed right after it is
// copied; then the sum is stored through w.Patch(offset, bytes, 2). A port whose Tx copies with
// this has PortCaps::kCsumOnCopy. Returns the bytes written.
template <typename Writer>
size_t CopyPacketCompleting(const PacketRef& p, Writer& w) {
  const Offload& o = p.offload;
  // A record CheckOffload has not passed (a capture of what arrived) is copied as it is.
  if (!o.needs_csum() || uint32_t{o.csum_start} + o.csum_offset + 2u > p.head_len) return CopyPacket(p, w);
  size_t done = w.Write(p.head, p.head_len);
  if (done < p.head_len) return done;
  CsumStream cs;
  cs.Add(p.head + o.csum_start, p.head_len - o.csum_start);
  uint32_t seg = p.seg, off = p.seg_off;
  size_t left = p.len - p.head_len;
  while (left > 0 && seg < p.nsegs) {
    const Segment& s = p.segs[seg];
    size_t k = left < s.len - off ? left : s.len - off;
    if (k > kCopySumBlock) k = kCopySumBlock;
    const size_t put = w.Write(s.data + off, k);
    done += put;
    if (put < k) return done;
    // UNTRUSTED: the source may change these bytes between the copy and the sum; then only
    // its own frame carries a wrong checksum, which its receiver drops.
    cs.Add(s.data + off, k);
    left -= k;
    off += static_cast<uint32_t>(k);
    if (off == s.len) {
      ++seg;
      off = 0;
    }
  }
  const uint16_t sum = FinishedChecksum(cs, o.csum_offset);
  w.Patch(size_t{o.csum_start} + o.csum_offset, &sum, 2);
  return done;
}

// The same into one contiguous buffer of at least p.len bytes.
inline size_t CopyPacketCompletingTo(const PacketRef& p, std::byte* out) {
  struct Flat {
    std::byte* base;
    size_t at = 0;
    size_t Write(const void* src, size_t n) {
      std::memcpy(base + at, src, n);
      at += n;
      return n;
    }
    void Patch(size_t where, const void* src, size_t n) { std::memcpy(base + where, src, n); }
  } w{out};
  return CopyPacketCompleting(p, w);
}

}  // namespace nicmux
