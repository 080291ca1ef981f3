// Offload: what a packet asks of the next hop, or tells it, about checksums and segmentation,
// in no port's terms (docs/offloads.md). Each port translates its own metadata into it at its
// edge (the virtio-net header of vhost-user, virtio-user and TAP; AF_XDP TX metadata,
// DPDK mbuf flags, pvdev descriptors) and back; the switch and everything between the ports
// sees only this record.
//
// A record that came from a peer is UNTRUSTED until CheckOffload (packet/offload_ops.h)
// has checked it against the frame's own headers.
#pragma once

#include <cstdint>

namespace nicmux {

enum class GsoType : uint8_t {
  kNone = 0,
  kTcp4,     // TCP over IPv4, segments of gso_size payload bytes
  kTcp6,     // TCP over IPv6
  kUdp,      // UDP fragmentation (UFO): IP fragments of one datagram
  kUdpL4,    // UDP segmentation (USO): one UDP datagram per gso_size bytes
  kInvalid,  // a type the peer named that we do not know: refused by CheckOffload
};

struct Offload {
  static constexpr uint8_t kNeedsCsum = 1;  // the L4 checksum is partial: complete it
  static constexpr uint8_t kCsumValid = 2;  // the checksum was verified (or need not be)
  static constexpr uint8_t kEcn = 4;        // with TCP GSO: the first segment carries CWR

  uint16_t csum_start = 0;   // with kNeedsCsum: where summing starts, from the frame's 1st byte
  uint16_t csum_offset = 0;  // with kNeedsCsum: where the 16-bit sum goes, from csum_start
  uint16_t hdr_len = 0;      // with GSO: bytes of headers (L2 to L4) before the payload
  uint16_t gso_size = 0;     // with GSO: payload bytes per segment
  GsoType gso_type = GsoType::kNone;
  uint8_t flags = 0;

  bool needs_csum() const { return flags & kNeedsCsum; }
  bool csum_valid() const { return flags & kCsumValid; }
  bool ecn() const { return flags & kEcn; }
  bool gso() const { return gso_type != GsoType::kNone; }
  // Nothing asked, nothing told: a frame the next hop takes as it is.
  bool none() const { return flags == 0 && gso_type == GsoType::kNone; }

  // An 802.1Q tag of `delta` bytes was inserted (> 0) or removed (< 0) before the L3 header:
  // the offsets that count from the frame's first byte move with it.
  void ShiftL2(int delta) {
    if (needs_csum()) csum_start = static_cast<uint16_t>(csum_start + delta);
    if (gso()) hdr_len = static_cast<uint16_t>(hdr_len + delta);
  }
};
static_assert(sizeof(Offload) == 10);

const char* GsoTypeName(GsoType t);

}  // namespace nicmux
