#include "packet/offload_ops.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace nicmux {

namespace {

constexpr uint32_t kEth = 14;
constexpr uint8_t kTcp = 6, kUdp = 17;
constexpr uint8_t kTcpFin = 0x01, kTcpPsh = 0x08, kTcpCwr = 0x80;

uint16_t Be16(const std::byte* p) { return static_cast<uint16_t>(uint8_t(p[0]) << 8 | uint8_t(p[1])); }
uint32_t Be32(const std::byte* p) { return uint32_t{Be16(p)} << 16 | Be16(p + 2); }
void PutBe16(std::byte* p, uint16_t v) {
  p[0] = std::byte(v >> 8);
  p[1] = std::byte(v);
}
void PutBe32(std::byte* p, uint32_t v) {
  PutBe16(p, static_cast<uint16_t>(v >> 16));
  PutBe16(p + 2, static_cast<uint16_t>(v));
}

// Sums n payload bytes from (segs[*seg], *off), advancing the position.
void SumSegments(const Segment* segs, uint32_t nsegs, uint32_t* seg, uint32_t* off, size_t n, CsumStream* cs) {
  while (n > 0 && *seg < nsegs) {
    const Segment& s = segs[*seg];
    const size_t k = std::min<size_t>(n, s.len - *off);
    if (cs) cs->Add(s.data + *off, k);
    n -= k;
    *off += static_cast<uint32_t>(k);
    if (*off == s.len) {
      ++*seg;
      *off = 0;
    }
  }
}

// The pseudo-header's sum (RFC 793 / RFC 8200 §8.1) for an L4 length of len.
uint64_t PseudoSum(const std::byte* head, const L4Layout& l, uint8_t proto, uint32_t len) {
  uint64_t acc;
  std::byte tail[8] = {};
  if (l.ipv6) {
    acc = CsumAdd(head + l.l3 + 8, 32, 0);
    PutBe32(tail, len);
    tail[7] = std::byte{proto};
    return CsumAdd(tail, 8, acc);
  }
  acc = CsumAdd(head + l.l3 + 12, 8, 0);
  tail[1] = std::byte{proto};
  PutBe16(tail + 2, static_cast<uint16_t>(len));
  return CsumAdd(tail, 4, acc);
}

}  // namespace

namespace {

// The bulk of CsumAdd: 32-bit words zero-extended into 64-bit lanes, several independent lanes
// so the adds do not wait for one another (the one-accumulator loop ran at 4 bytes a cycle and
// was 40 % of the worker's time segmenting TSO frames, perf). Sums the first n & ~63 bytes.
#if defined(__x86_64__)
#define NICMUX_SUM_BLOCKS 1
__attribute__((target("avx2"))) uint64_t SumBlocksAvx2(const std::byte* d, size_t n) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i a0 = zero, a1 = zero, a2 = zero, a3 = zero;
  for (; n >= 64; n -= 64, d += 64) {
    const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d));
    const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + 32));
    a0 = _mm256_add_epi64(a0, _mm256_unpacklo_epi32(v0, zero));
    a1 = _mm256_add_epi64(a1, _mm256_unpackhi_epi32(v0, zero));
    a2 = _mm256_add_epi64(a2, _mm256_unpacklo_epi32(v1, zero));
    a3 = _mm256_add_epi64(a3, _mm256_unpackhi_epi32(v1, zero));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];  // each < 2^40 for n < 4 GiB: no overflow
}

uint64_t SumBlocksSse2(const std::byte* d, size_t n) {
  const __m128i zero = _mm_setzero_si128();
  __m128i a0 = zero, a1 = zero, a2 = zero, a3 = zero;
  for (; n >= 64; n -= 64, d += 64) {
    const __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d));
    const __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d + 16));
    const __m128i v2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d + 32));
    const __m128i v3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(d + 48));
    a0 = _mm_add_epi64(a0, _mm_add_epi64(_mm_unpacklo_epi32(v0, zero), _mm_unpackhi_epi32(v0, zero)));
    a1 = _mm_add_epi64(a1, _mm_add_epi64(_mm_unpacklo_epi32(v1, zero), _mm_unpackhi_epi32(v1, zero)));
    a2 = _mm_add_epi64(a2, _mm_add_epi64(_mm_unpacklo_epi32(v2, zero), _mm_unpackhi_epi32(v2, zero)));
    a3 = _mm_add_epi64(a3, _mm_add_epi64(_mm_unpacklo_epi32(v3, zero), _mm_unpackhi_epi32(v3, zero)));
  }
  const __m128i s = _mm_add_epi64(_mm_add_epi64(a0, a1), _mm_add_epi64(a2, a3));
  alignas(16) uint64_t lanes[2];
  _mm_store_si128(reinterpret_cast<__m128i*>(lanes), s);
  return lanes[0] + lanes[1];
}

using SumBlocksFn = uint64_t (*)(const std::byte*, size_t);
SumBlocksFn PickSumBlocks() { return __builtin_cpu_supports("avx2") ? SumBlocksAvx2 : SumBlocksSse2; }
const SumBlocksFn kSumBlocks = PickSumBlocks();
#endif

}  // namespace

uint64_t CsumAdd(const std::byte* d, size_t n, uint64_t acc) {
#ifdef NICMUX_SUM_BLOCKS
  if (n >= 64) {
    // (Host order, 32-bit words: the sum mod 0xffff is the 16-bit words' sum, 2^16 = 1.)
    const uint64_t blocks = kSumBlocks(d, n);
    acc = (acc & 0xffffffff) + (acc >> 32) + (blocks & 0xffffffff) + (blocks >> 32);
    d += n & ~size_t{63};
    n &= 63;
  }
#endif
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, d, 8);
    acc += v & 0xffffffff;
    acc += v >> 32;
    d += 8;
    n -= 8;
  }
  if (n >= 4) {
    uint32_t v;
    std::memcpy(&v, d, 4);
    acc += v;
    d += 4;
    n -= 4;
  }
  if (n >= 2) {
    uint16_t v;
    std::memcpy(&v, d, 2);
    acc += v;
    d += 2;
    n -= 2;
  }
  if (n) acc += static_cast<uint8_t>(d[0]);  // the low byte of a host-order (LE) word
  return acc;
}

uint16_t CsumFold(uint64_t acc) {
  acc = (acc & 0xffffffff) + (acc >> 32);
  acc = (acc & 0xffffffff) + (acc >> 32);
  acc = (acc & 0xffff) + (acc >> 16);
  acc = (acc & 0xffff) + (acc >> 16);
  acc = (acc & 0xffff) + (acc >> 16);
  return static_cast<uint16_t>(acc);
}

const char* CheckOffload(PacketRef& p, L4Layout* l) {
  Offload& o = p.offload;
  if (o.gso_type == GsoType::kInvalid) return "gso_type";
  if (p.nsegs > kMaxPayloadSegments - 1) return "segments";
  if (o.needs_csum()) {
    // UNTRUSTED: csum_start and csum_offset, bounded by the frame and the head copy's size; the
    // frame's length too: completing the sum reads every byte, and a chain may claim 4 GiB
    // (its descriptors all naming the same pages), which would stall the worker.
    if (p.len > kMaxGsoFrameBytes) return "length";
    const uint32_t end = uint32_t{o.csum_start} + o.csum_offset + 2;
    if (o.csum_start < kEth) return "csum_start";
    if (o.csum_offset & 1) return "csum_offset";  // a 16-bit sum at an odd distance: no protocol has one
    if (end > p.len) return "csum_offset";
    if (end > kMaxHeadBytes) return "csum_start";
    if (!ExtendHead(&p, end)) return "csum_offset";
  }
  if (!o.gso()) return nullptr;
  // UNTRUSTED: every header below is the peer's; each offset is checked against the head copy
  // before it is read.
  if (o.gso_type == GsoType::kUdp) return "gso_type";  // UFO is never offered
  if (p.len > kMaxGsoFrameBytes) return "length";
  if (o.gso_size < kMinGsoSize) return "gso_size";
  if (o.hdr_len > p.len) return "hdr_len";
  if (!ExtendHead(&p, std::min(p.len, kMaxHeadBytes))) return "length";
  const std::byte* h = p.head;
  const uint32_t hl = p.head_len;
  uint32_t l3 = kEth;
  if (hl < l3) return "length";
  uint16_t type = Be16(h + 12);
  if (type == 0x8100) {
    l3 += 4;
    if (hl < l3) return "length";
    type = Be16(h + 16);
  }
  *l = {};
  l->l3 = static_cast<uint16_t>(l3);
  uint8_t proto;
  uint32_t l4;
  if (o.gso_type == GsoType::kTcp4 || (o.gso_type == GsoType::kUdpL4 && type == 0x0800)) {
    if (type != 0x0800 || hl < l3 + 20) return "gso_type";
    const uint8_t vihl = uint8_t(h[l3]);
    if (vihl >> 4 != 4 || (vihl & 15) < 5) return "gso_type";
    l4 = l3 + (vihl & 15) * 4u;
    if ((Be16(h + l3 + 6) & 0x3fff) != 0) return "gso_type";  // a fragment, or more to come
    proto = uint8_t(h[l3 + 9]);
  } else if (o.gso_type == GsoType::kTcp6 || o.gso_type == GsoType::kUdpL4) {
    if (type != 0x86dd || hl < l3 + 40) return "gso_type";
    if (uint8_t(h[l3]) >> 4 != 6) return "gso_type";
    l4 = l3 + 40;
    proto = uint8_t(h[l3 + 6]);  // an extension header here is refused below
    l->ipv6 = true;
  } else {
    return "gso_type";
  }
  // An IP datagram's length must fit its 16-bit field (a segment that is the whole frame keeps
  // it; offload_fuzz found a 65536-byte IPv4 datagram cut into one 'segment' of length 0).
  if (p.len - l3 - (l->ipv6 ? 40 : 0) > 65535) return "length";
  const uint8_t want = o.gso_type == GsoType::kUdpL4 ? kUdp : kTcp;
  if (proto != want) return "gso_type";
  uint32_t hdrs;
  if (proto == kTcp) {
    if (hl < l4 + 20) return "hdr_len";
    const uint32_t doff = (uint8_t(h[l4 + 12]) >> 4) * 4u;
    if (doff < 20) return "hdr_len";
    hdrs = l4 + doff;
  } else {
    hdrs = l4 + 8;
  }
  if (hdrs > hl) return "hdr_len";  // headers beyond kMaxHeadBytes (or the frame)
  // A GSO request must ask for the L4 checksum (virtio 1.2 §5.1.6.2: NEEDS_CSUM with any
  // gso_type): a segment-able frame marked otherwise would reach a guest or the kernel as GSO
  // without CHECKSUM_PARTIAL.
  if (!o.needs_csum()) return "flags";
  if (o.csum_start != l4 || o.csum_offset != (proto == kTcp ? 16 : 6)) return "csum_start";
  l->l4 = static_cast<uint16_t>(l4);
  l->hdrs = static_cast<uint16_t>(hdrs);
  l->proto = proto;
  if (GsoSegments(p, *l) > kMaxGsoSegments) return "gso_size";
  // The sender's hdr_len is a hint (Linux sends its linear part's length); what is passed on
  // is the headers' real length.
  o.hdr_len = static_cast<uint16_t>(hdrs);
  return nullptr;
}

bool RequestL4Checksum(PacketRef& p, uint32_t l3, uint32_t l3_len, bool ipv6, bool tcp) {
  const uint32_t start = l3 + l3_len;
  const uint32_t field = start + (tcp ? 16u : 6u);
  // The addresses (IPv4: bytes 12..20; IPv6: 8..40) lie within the IP header, checked here.
  if (l3 < kEth || l3_len < (ipv6 ? 40u : 20u) || field + 2 > kMaxHeadBytes || field + 2 > p.len) return false;
  if (!ExtendHead(&p, field + 2)) return false;
  L4Layout l;
  l.l3 = static_cast<uint16_t>(l3);
  l.ipv6 = ipv6;
  const uint16_t seed = CsumFold(PseudoSum(p.head, l, tcp ? kTcp : kUdp, p.len - start));
  std::memcpy(p.head + field, &seed, 2);
  p.offload.flags |= Offload::kNeedsCsum;
  p.offload.csum_start = static_cast<uint16_t>(start);
  p.offload.csum_offset = tcp ? 16 : 6;
  return true;
}

bool FillIpv4HeaderChecksum(PacketRef& p, uint32_t l3, uint32_t l3_len) {
  if (l3 < kEth || l3_len < 20 || l3_len > 60 || l3_len % 4 || l3 + l3_len > kMaxHeadBytes || l3 + l3_len > p.len) {
    return false;
  }
  if (!ExtendHead(&p, l3 + l3_len)) return false;
  std::memset(p.head + l3 + 10, 0, 2);
  const uint16_t sum = static_cast<uint16_t>(~CsumFold(CsumAdd(p.head + l3, l3_len, 0)));
  std::memcpy(p.head + l3 + 10, &sum, 2);
  return true;
}

uint32_t GsoSegments(const PacketRef& p, const L4Layout& l) {
  const uint32_t payload = p.len - l.hdrs;
  return payload == 0 ? 1 : (payload + p.offload.gso_size - 1) / p.offload.gso_size;
}

void CompleteChecksum(PacketRef& p) {
  p.holder = nullptr;  // the frame is changed: copied, never held (packet/hold.h)
  Offload& o = p.offload;
  NICMUX_CHECK(o.needs_csum() && uint32_t{o.csum_start} + o.csum_offset + 2u <= p.head_len);
  CsumStream cs;
  cs.Add(p.head + o.csum_start, p.head_len - o.csum_start);
  uint32_t seg = p.seg, off = p.seg_off;
  SumSegments(p.segs, p.nsegs, &seg, &off, p.len - p.head_len, &cs);
  const uint16_t sum = FinishedChecksum(cs, o.csum_offset);
  std::memcpy(p.head + o.csum_start + o.csum_offset, &sum, 2);
  o.flags = static_cast<uint8_t>((o.flags & ~Offload::kNeedsCsum) | Offload::kCsumValid);
}

uint32_t Segmenter::Cut(const PacketRef& p, const L4Layout& l, std::span<PacketRef> out) {
  const uint32_t n = GsoSegments(p, l);
  NICMUX_CHECK(out.size() >= n && p.head_len >= l.hdrs);
  // The payload stream: the head copy's bytes past the headers, then the source's segments.
  npayload_ = 0;
  if (p.head_len > l.hdrs) {
    payload_[npayload_++] = {const_cast<std::byte*>(p.head) + l.hdrs, p.head_len - l.hdrs};
  }
  for (uint32_t i = p.seg; i < p.nsegs; ++i) {
    const Segment& s = p.segs[i];
    const uint32_t from = i == p.seg ? p.seg_off : 0;
    if (from < s.len) payload_[npayload_++] = {s.data + from, s.len - from};
  }
  const uint32_t mss = p.offload.gso_size;
  const uint32_t payload = p.len - l.hdrs;
  const std::byte* h = p.head;
  const bool tcp = l.proto == kTcp;
  const uint32_t seq0 = tcp ? Be32(h + l.l4 + 4) : 0;
  const uint16_t id0 = l.ipv6 ? 0 : Be16(h + l.l3 + 4);
  const uint8_t flags0 = tcp ? uint8_t(h[l.l4 + 13]) : 0;
  uint32_t seg = 0, off = 0;  // the payload stream's position
  for (uint32_t s = 0; s < n; ++s) {
    const uint32_t at = s * mss;
    const uint32_t plen = std::min(mss, payload - at);
    PacketRef& q = out[s];
    std::memcpy(q.head, h, l.hdrs);
    q.head_len = l.hdrs;
    q.len = l.hdrs + plen;
    q.segs = payload_;
    q.nsegs = static_cast<uint16_t>(npayload_);
    q.seg = static_cast<uint16_t>(seg);
    q.seg_off = off;
    q.offload = {};
    q.holder = nullptr;  // a segment the switch made: copied, never held
    std::byte* qh = q.head;
    const uint32_t l4_len = q.len - l.l4;
    if (l.ipv6) {
      PutBe16(qh + l.l3 + 4, static_cast<uint16_t>(q.len - l.l3 - 40));
    } else {
      PutBe16(qh + l.l3 + 2, static_cast<uint16_t>(q.len - l.l3));
      PutBe16(qh + l.l3 + 4, static_cast<uint16_t>(id0 + s));
      PutBe16(qh + l.l3 + 10, 0);
      const uint16_t ipsum = static_cast<uint16_t>(~CsumFold(CsumAdd(qh + l.l3, l.l4 - l.l3, 0)));
      std::memcpy(qh + l.l3 + 10, &ipsum, 2);
    }
    uint16_t csum_off;
    if (tcp) {
      PutBe32(qh + l.l4 + 4, seq0 + at);
      uint8_t f = flags0;
      if (s + 1 < n) f &= static_cast<uint8_t>(~(kTcpFin | kTcpPsh));
      if (s > 0) f &= static_cast<uint8_t>(~kTcpCwr);
      qh[l.l4 + 13] = std::byte{f};
      csum_off = 16;
    } else {
      PutBe16(qh + l.l4 + 4, static_cast<uint16_t>(l4_len));
      csum_off = 6;
    }
    // The L4 checksum is left partial, seeded with the pseudo-header's sum: a destination that
    // takes partial checksums gets it so, one that sums while copying completes it in its copy
    // (CopyPacketCompleting), and for any other the switch completes it (CompleteChecksum).
    const uint16_t seed = CsumFold(PseudoSum(qh, l, l.proto, l4_len));
    std::memcpy(qh + l.l4 + csum_off, &seed, 2);
    q.offload.flags = Offload::kNeedsCsum;
    q.offload.csum_start = l.l4;
    q.offload.csum_offset = csum_off;
    SumSegments(payload_, npayload_, &seg, &off, plen, nullptr);  // the next segment's start
  }
  return n;
}

}  // namespace nicmux
