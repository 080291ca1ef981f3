// What the switch does with an Offload record (docs/offloads.md): check it against the frame's
// own headers (CheckOffload), complete a partial checksum (CompleteChecksum), and cut a GSO
// frame into the segments a destination without TSO/USO takes (Segmenter). All of it works on
// PacketRefs: headers in the private head copy, payload read from the source's segments and
// never copied here (the destination's Tx copies each byte once, as for any packet).
#pragma once

#include <cstddef>
#include <cstdint>
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

// How many segments a checked GSO frame becomes.
uint32_t GsoSegments(const PacketRef& p, const L4Layout& l);

// Completes p's partial checksum (needs_csum, checked): the ones' complement sum of the frame
// from csum_start to its end, the field's pseudo-header seed included, stored in the head
// copy at csum_start + csum_offset; clears needs_csum. Reads the payload from the source.
void CompleteChecksum(PacketRef& p);

// Cuts a checked GSO frame into PacketRefs, each a whole frame: headers rebuilt in its head
// copy (IPv4 total length, id and header checksum; IPv6 payload length; TCP sequence number,
// FIN/PSH only on the last segment, CWR only on the first; UDP length; L4 checksums complete)
// and its payload named in the source's segments, not copied. The outputs stay valid while
// the Segmenter and the source packet do (until the source's RxDone).
class Segmenter {
 public:
  // Cuts `p` into out (at least GsoSegments(p, l) long); returns the number of segments.
  // ~csum_ok: every segment's checksum is written; the records of the outputs ask for nothing.
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

}  // namespace nicmux
