// libFuzzer target: offload records against their frames (CheckOffload), checksum completion
// and GSO segmentation (packet/offload_ops.h), each output checked by an independent reference
// (tests/support/frames.h's byte-by-byte sums).
// Input: [0] mode (bit 0: start from a well-formed TCP/UDP frame built from [1..4], else the
// bytes are the frame; bit 1: derive a consistent record from that frame, else take [5..14]);
// [1..4] frame spec (IPv6, UDP, VLAN, TCP options, payload length); [5..14] a raw record;
// [15..18] segment cut sizes; then up to 8 (offset, value) byte patches of the frame; the rest
// is the raw frame (mode bit 0 clear).
// Checks: nothing read or written outside the frame (sanitizers); a record CheckOffload accepts
// gives a completed checksum equal to the reference's, or segments that are whole frames: each
// at most headers + gso_size long, lengths, IPv4 header sums and L4 checksums verifying, and
// their payloads together the original payload.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "packet/offload_ops.h"
#include "tests/support/frames.h"

using namespace nicmux;
using testing::Bytes;
using testing::ReferenceSum;

namespace {

void Require(bool ok) {
  if (!ok) std::abort();
}

uint16_t Get16(const Bytes& f, size_t at) { return uint16_t(uint8_t(f[at]) << 8 | uint8_t(f[at + 1])); }

// The L4 checksum of a segment verifies (pseudo-header from its own IP header).
bool L4Ok(const Bytes& q, const L4Layout& l) {
  const uint32_t l4_len = static_cast<uint32_t>(q.size() - l.l4);
  uint32_t acc = l.ipv6 ? ReferenceSum(q.data() + l.l3 + 8, 32) : ReferenceSum(q.data() + l.l3 + 12, 8);
  acc += (l4_len >> 16) + (l4_len & 0xffff) + l.proto;
  while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
  return ReferenceSum(q.data() + l.l4, l4_len, acc) == 0xffff;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 19) return 0;
  const uint8_t mode = data[0];
  Bytes frame;
  testing::FrameSpec fs;
  if (mode & 1) {
    fs.ipv6 = data[1] & 1;
    fs.udp = data[1] & 2;
    fs.vlan = data[1] & 4;
    fs.ipv6_ext = data[1] & 8;
    fs.tcp_options = (data[2] % 11) * 4;
    fs.payload = (uint32_t{data[3]} << 8 | data[4]) % 66000;
    fs.partial_csum = true;
    frame = testing::MakeTcpUdpFrame(fs);
  }
  Offload o;
  if ((mode & 2) && (mode & 1)) {
    o.gso_type = fs.udp ? GsoType::kUdpL4 : fs.ipv6 ? GsoType::kTcp6 : GsoType::kTcp4;
    o.gso_size = static_cast<uint16_t>(std::max<uint32_t>(1, uint32_t{data[5]} << 8 | data[6]));
    o.hdr_len = static_cast<uint16_t>(fs.Hdrs());
    o.flags = Offload::kNeedsCsum | (data[7] & Offload::kEcn);
    o.csum_start = static_cast<uint16_t>(fs.L4());
    o.csum_offset = fs.udp ? 6 : 16;
    if (data[8] & 1) o.gso_type = GsoType::kNone;  // a partial checksum alone
  } else {
    o.csum_start = static_cast<uint16_t>(data[5] | data[6] << 8);
    o.csum_offset = static_cast<uint16_t>(data[7] | data[8] << 8);
    o.hdr_len = static_cast<uint16_t>(data[9] | data[10] << 8);
    o.gso_size = static_cast<uint16_t>(data[11] | data[12] << 8);
    o.gso_type = static_cast<GsoType>(data[13] % 6);
    o.flags = data[14] & 7;
  }
  const std::vector<uint32_t> cuts = {data[15] + 1u, data[16] + 1u, data[17] * 7u + 1u, data[18] * 13u + 1u};
  size_t at = 19;
  if (mode & 1) {
    for (int k = 0; k < 8 && at + 3 <= size && !frame.empty(); ++k, at += 3) {
      const size_t off = (size_t{data[at]} << 8 | data[at + 1]) % frame.size();
      if (data[at] & 0x80) frame[off] = std::byte{data[at + 2]};
    }
  } else {
    frame.assign(reinterpret_cast<const std::byte*>(data + at), reinterpret_cast<const std::byte*>(data + size));
  }
  if (frame.empty()) return 0;
  testing::SplitPacket sp(frame, cuts);
  PacketRef& p = sp.p;
  p.offload = o;
  L4Layout l;
  if (CheckOffload(p, &l) != nullptr) return 0;
  Require(p.head_len <= kMaxHeadBytes && p.head_len <= p.len);
  if (!p.offload.gso()) {
    if (!p.offload.needs_csum()) return 0;
    const uint32_t start = p.offload.csum_start, field = start + p.offload.csum_offset;
    const uint16_t want = static_cast<uint16_t>(~ReferenceSum(frame.data() + start, frame.size() - start));
    // (The reference sums big-endian words from csum_start; csum_offset is even, checked.)
    const bool udp_zero = want == 0 && p.offload.csum_offset == 6;
    // Completed in a destination's copy (CopyPacketCompleting) and by the switch: the same.
    Bytes fused(p.len);
    Require(CopyPacketCompletingTo(p, fused.data()) == p.len);
    CompleteChecksum(p);
    Bytes out = sp.Flatten();
    Require(fused == out);
    const uint16_t got = Get16(out, field);
    Require(got == (udp_zero ? 0xffff : want));
    for (size_t i = 0; i < out.size(); ++i) Require(i == field || i == field + 1 || out[i] == frame[i]);
    return 0;
  }
  const uint32_t n = GsoSegments(p, l);
  Require(n >= 1 && n <= kMaxGsoSegments);
  std::vector<PacketRef> segs(n);
  Segmenter cutter;
  Require(cutter.Cut(p, l, segs) == n);
  Bytes joined;
  for (uint32_t s = 0; s < n; ++s) {
    // Each segment's checksum is partial; completed in the copy and by the switch: the same.
    Require(segs[s].offload.needs_csum() && !segs[s].offload.gso());
    Bytes q(segs[s].len);
    Require(CopyPacketCompletingTo(segs[s], q.data()) == q.size());
    PacketRef summed = segs[s];
    CompleteChecksum(summed);
    Bytes q2(summed.len);
    Require(CopyPacketTo(summed, q2.data()) == q2.size() && q2 == q);
    Require(q.size() >= l.hdrs && q.size() <= uint32_t{l.hdrs} + p.offload.gso_size);
    Require(s + 1 == n || q.size() == uint32_t{l.hdrs} + p.offload.gso_size);
    if (l.ipv6) {
      Require(Get16(q, l.l3 + 4) == q.size() - l.l3 - 40);
    } else {
      Require(Get16(q, l.l3 + 2) == q.size() - l.l3);
      Require(ReferenceSum(q.data() + l.l3, l.l4 - l.l3) == 0xffff);
    }
    Require(L4Ok(q, l));
    Require(std::equal(q.begin(), q.begin() + l.l3, frame.begin()));  // the link header kept
    joined.insert(joined.end(), q.begin() + l.hdrs, q.end());
  }
  Require(joined == Bytes(frame.begin() + l.hdrs, frame.end()));
  return 0;
}
