// Test frames with real headers (Ethernet, optional 802.1Q, IPv4 or IPv6, TCP with options or
// UDP) and an independent reference for their checksums: a plain big-endian 16-bit sum, byte
// by byte, written apart from packet/offload_ops.cc so that the two can check each other.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "packet/packet.h"

namespace nicmux::testing {

using Bytes = std::vector<std::byte>;

struct FrameSpec {
  bool ipv6 = false;
  bool udp = false;
  bool vlan = false;
  bool ipv6_ext = false;      // an 8-byte hop-by-hop header between IPv6 and L4
  uint32_t tcp_options = 0;   // bytes of NOPs (a multiple of 4)
  uint32_t payload = 100;
  uint8_t tcp_flags = 0x18;   // PSH ACK
  uint16_t ip_id = 0x1234;
  uint32_t seq = 0x10203040;
  bool partial_csum = false;  // the L4 checksum field holds the pseudo-header seed (a sender's offload)

  uint32_t L3() const { return vlan ? 18 : 14; }
  uint32_t L4() const { return L3() + (ipv6 ? 40 + (ipv6_ext ? 8 : 0) : 20); }
  uint32_t Hdrs() const { return L4() + (udp ? 8 : 20 + tcp_options); }
};

// The ones' complement sum of n bytes read as big-endian 16-bit words (odd tail padded).
inline uint16_t ReferenceSum(const std::byte* p, size_t n, uint32_t acc = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) acc += uint32_t(uint8_t(p[i])) << 8 | uint8_t(p[i + 1]);
  if (n & 1) acc += uint32_t(uint8_t(p[n - 1])) << 8;
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(acc);
}

inline void Put16(Bytes& f, size_t at, uint16_t v) {
  f[at] = std::byte(v >> 8);
  f[at + 1] = std::byte(v);
}
inline uint16_t Get16(const Bytes& f, size_t at) { return uint16_t(uint8_t(f[at]) << 8 | uint8_t(f[at + 1])); }

// The pseudo-header's sum for the frame's addresses and an L4 length.
inline uint16_t ReferencePseudo(const Bytes& f, const FrameSpec& s, uint32_t l4_len) {
  const uint8_t proto = s.udp ? 17 : 6;
  uint32_t acc;
  if (s.ipv6) {
    acc = ReferenceSum(f.data() + s.L3() + 8, 32);
    acc += l4_len >> 16;
    acc += l4_len & 0xffff;
  } else {
    acc = ReferenceSum(f.data() + s.L3() + 12, 8);
    acc += l4_len;
  }
  acc += proto;
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(acc);
}

// True when the frame's L4 checksum verifies (the sum over pseudo-header and segment is 0xffff).
inline bool ChecksumOk(const Bytes& f, const FrameSpec& s) {
  const uint32_t l4_len = static_cast<uint32_t>(f.size() - s.L4());
  const uint16_t sum = ReferenceSum(f.data() + s.L4(), l4_len, ReferencePseudo(f, s, l4_len));
  return sum == 0xffff;
}

// Completes a partial checksum the way a receiver that takes them does (independently of
// packet/offload_ops): the sum from csum_start to the end, seed included, stored inverted.
inline void CompleteReference(Bytes& f, uint32_t csum_start, uint32_t csum_offset) {
  const uint16_t sum = static_cast<uint16_t>(~ReferenceSum(f.data() + csum_start, f.size() - csum_start));
  Put16(f, csum_start + csum_offset, sum == 0 && csum_offset == 6 ? 0xffff : sum);
}

// True when the IPv4 header's checksum verifies and its total length is the frame's (IPv6: the
// payload length is).
inline bool IpHeaderOk(const Bytes& f, const FrameSpec& s) {
  if (s.ipv6) return Get16(f, s.L3() + 4) == f.size() - s.L3() - 40;
  return ReferenceSum(f.data() + s.L3(), 20) == 0xffff && Get16(f, s.L3() + 2) == f.size() - s.L3();
}
inline uint16_t IpId(const Bytes& f, const FrameSpec& s) { return Get16(f, s.L3() + 4); }
inline uint32_t TcpSeq(const Bytes& f, const FrameSpec& s) {
  return uint32_t{Get16(f, s.L4() + 4)} << 16 | Get16(f, s.L4() + 6);
}
inline uint8_t TcpFlags(const Bytes& f, const FrameSpec& s) { return uint8_t(f[s.L4() + 13]); }

// A frame as the spec says, with a correct L4 checksum (or, with partial_csum, the seed a sender
// leaves for the device: the pseudo-header's folded sum) and payload bytes 0, 1, 2, ...
inline Bytes MakeTcpUdpFrame(const FrameSpec& s) {
  Bytes f(s.Hdrs() + s.payload);
  const uint8_t mac[12] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1};
  std::memcpy(f.data(), mac, 12);
  size_t at = 12;
  if (s.vlan) {
    Put16(f, 12, 0x8100);
    Put16(f, 14, 42);
    at = 16;
  }
  Put16(f, at, s.ipv6 ? 0x86dd : 0x0800);
  const uint32_t l3 = s.L3(), l4 = s.L4();
  const uint32_t l4_len = static_cast<uint32_t>(f.size() - l4);
  const uint8_t proto = s.udp ? 17 : 6;
  if (s.ipv6) {
    f[l3] = std::byte{0x60};
    Put16(f, l3 + 4, static_cast<uint16_t>(f.size() - l3 - 40));
    f[l3 + 6] = std::byte{s.ipv6_ext ? uint8_t{0} : proto};
    f[l3 + 7] = std::byte{64};
    for (int i = 0; i < 32; ++i) f[l3 + 8 + i] = std::byte(0x20 + i);
    if (s.ipv6_ext) f[l3 + 40] = std::byte{proto};  // hop-by-hop: next header, length 0, PadN
  } else {
    f[l3] = std::byte{0x45};
    Put16(f, l3 + 2, static_cast<uint16_t>(f.size() - l3));
    Put16(f, l3 + 4, s.ip_id);
    Put16(f, l3 + 6, 0x4000);  // DF
    f[l3 + 8] = std::byte{64};
    f[l3 + 9] = std::byte{proto};
    const uint8_t addrs[8] = {10, 0, 0, 1, 10, 0, 0, 2};
    std::memcpy(f.data() + l3 + 12, addrs, 8);
    Put16(f, l3 + 10, static_cast<uint16_t>(~ReferenceSum(f.data() + l3, 20)));
  }
  size_t csum_at;
  Put16(f, l4, 40000);
  Put16(f, l4 + 2, 5201);
  if (s.udp) {
    Put16(f, l4 + 4, static_cast<uint16_t>(l4_len));
    csum_at = l4 + 6;
  } else {
    Put16(f, l4 + 4, static_cast<uint16_t>(s.seq >> 16));
    Put16(f, l4 + 6, static_cast<uint16_t>(s.seq));
    Put16(f, l4 + 8, 0x0a0b);
    f[l4 + 12] = std::byte(((20 + s.tcp_options) / 4) << 4);
    f[l4 + 13] = std::byte{s.tcp_flags};
    Put16(f, l4 + 14, 65535);
    for (uint32_t i = 0; i < s.tcp_options; ++i) f[l4 + 20 + i] = std::byte{1};  // NOP
    csum_at = l4 + 16;
  }
  for (uint32_t i = 0; i < s.payload; ++i) f[s.Hdrs() + i] = std::byte(i * 7 + (i >> 8));
  const uint16_t pseudo = ReferencePseudo(f, s, l4_len);
  if (s.partial_csum) {
    Put16(f, csum_at, pseudo);
  } else {
    uint16_t c = static_cast<uint16_t>(~ReferenceSum(f.data() + l4, l4_len, pseudo));
    if (c == 0 && s.udp) c = 0xffff;
    Put16(f, csum_at, c);
  }
  return f;
}

// A PacketRef over a frame cut into segments at the given lengths (the last one takes the rest),
// as a guest's descriptor chain would present it; Flatten() gives the frame as a destination
// would receive it.
struct SplitPacket {
  Bytes frame;
  std::vector<Segment> segs;
  PacketRef p;

  SplitPacket(const Bytes& f, const std::vector<uint32_t>& cuts) : frame(f) {
    size_t at = 0;
    for (uint32_t c : cuts) {
      if (at >= frame.size()) break;
      const size_t k = std::min<size_t>(c, frame.size() - at);
      segs.push_back({frame.data() + at, static_cast<uint32_t>(k)});
      at += k;
    }
    if (at < frame.size() || segs.empty()) segs.push_back({frame.data() + at, static_cast<uint32_t>(frame.size() - at)});
    p.segs = segs.data();
    p.nsegs = static_cast<uint16_t>(segs.size());
    p.len = static_cast<uint32_t>(frame.size());
    p.head_len = 0;
    p.seg = 0;
    p.seg_off = 0;
    ExtendHead(&p, std::min<uint32_t>(p.len, kHeadBytes));
  }
  Bytes Flatten() const {
    Bytes out(p.len);
    CopyPacketTo(p, out.data());
    return out;
  }
};

}  // namespace nicmux::testing
