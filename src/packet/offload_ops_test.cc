#include "packet/offload_ops.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "tests/support/frames.h"

namespace nicmux {
namespace {

using testing::Bytes;
using testing::ChecksumOk;
using testing::FrameSpec;
using testing::MakeTcpUdpFrame;
using testing::SplitPacket;

// needs_csum without GSO: the sum is completed in the head copy and verifies with an
// independent byte-by-byte reference; every split of the frame over segments gives the same.
TEST(OffloadOps, CompleteChecksumEverySplit) {
  for (bool v6 : {false, true}) {
    for (bool udp : {false, true}) {
      for (uint32_t payload : {0u, 1u, 7u, 100u, 1401u}) {
        FrameSpec fs;
        fs.ipv6 = v6;
        fs.udp = udp;
        fs.payload = payload;
        fs.partial_csum = true;
        Bytes f = MakeTcpUdpFrame(fs);
        for (std::vector<uint32_t> cuts : {std::vector<uint32_t>{}, {1}, {63, 64}, {65, 3, 5}, {13, 1, 1, 200}}) {
          SplitPacket sp(f, cuts);
          PacketRef& p = sp.p;
          p.offload.flags = Offload::kNeedsCsum;
          p.offload.csum_start = static_cast<uint16_t>(fs.L4());
          p.offload.csum_offset = udp ? 6 : 16;
          L4Layout l;
          ASSERT_EQ(CheckOffload(p, &l), nullptr);
          CompleteChecksum(p);
          EXPECT_FALSE(p.offload.needs_csum());
          EXPECT_TRUE(p.offload.csum_valid());
          Bytes out = sp.Flatten();
          EXPECT_TRUE(ChecksumOk(out, fs)) << "v6 " << v6 << " udp " << udp << " payload " << payload
                                           << " cuts " << cuts.size();
        }
      }
    }
  }
}

// A peer that names only where the headers are (pvdev, DPDK flags) and leaves garbage in the
// checksum field: RequestL4Checksum seeds it from the headers, and the completed sum verifies;
// the IPv4 header checksum is rewritten likewise. Lengths outside the frame or the head copy
// ask for nothing.
TEST(OffloadOps, RequestL4ChecksumFromHeaderLengths) {
  for (bool v6 : {false, true}) {
    for (bool udp : {false, true}) {
      for (bool vlan : {false, true}) {
        FrameSpec fs;
        fs.ipv6 = v6;
        fs.udp = udp;
        fs.vlan = vlan;
        fs.payload = 333;
        Bytes f = MakeTcpUdpFrame(fs);
        const uint32_t field = fs.L4() + (udp ? 6 : 16);
        f[field] = std::byte{0xde};  // what a DPDK application may leave there
        f[field + 1] = std::byte{0xad};
        if (!v6) f[fs.L3() + 10] = std::byte{0x55};
        SplitPacket sp(f, {20, 40});
        PacketRef& p = sp.p;
        ASSERT_TRUE(RequestL4Checksum(p, fs.L3(), fs.L4() - fs.L3(), v6, !udp));
        EXPECT_EQ(p.offload.csum_start, fs.L4());
        if (!v6) {
          ASSERT_TRUE(FillIpv4HeaderChecksum(p, fs.L3(), 20));
        }
        L4Layout l;
        ASSERT_EQ(CheckOffload(p, &l), nullptr);
        CompleteChecksum(p);
        Bytes out = sp.Flatten();
        EXPECT_TRUE(ChecksumOk(out, fs)) << "v6 " << v6 << " udp " << udp << " vlan " << vlan;
        if (!v6) {
          EXPECT_TRUE(testing::IpHeaderOk(out, fs));
        }
      }
    }
  }
  FrameSpec fs;
  fs.payload = 10;
  Bytes f = MakeTcpUdpFrame(fs);
  SplitPacket sp(f, {});
  EXPECT_FALSE(RequestL4Checksum(sp.p, 14, 400, false, true));  // past the head copy
  EXPECT_FALSE(RequestL4Checksum(sp.p, 14, 10, false, true));    // shorter than an IPv4 header
  EXPECT_FALSE(RequestL4Checksum(sp.p, 4, 20, false, true));     // inside the Ethernet header
  EXPECT_FALSE(sp.p.offload.needs_csum());
  EXPECT_FALSE(FillIpv4HeaderChecksum(sp.p, 14, 22));            // not a multiple of 4
  FrameSpec tiny;
  tiny.udp = true;
  tiny.payload = 0;
  Bytes t = MakeTcpUdpFrame(tiny);
  t.resize(40);  // the UDP checksum field is past the end
  SplitPacket st(t, {});
  EXPECT_FALSE(RequestL4Checksum(st.p, 14, 20, false, false));
}

struct GsoCase {
  bool v6, udp, vlan;
  uint32_t options, payload, mss;
};

// A GSO frame cut into segments: each is a whole frame with the right lengths, ids, sequence
// numbers, flags and checksums (verified by the reference), and their payloads put together are
// the original payload.
TEST(OffloadOps, SegmentsAreWholeFramesWithValidChecksums) {
  const GsoCase cases[] = {
      {false, false, false, 12, 64000, 1448}, {true, false, false, 12, 64000, 1428},
      {false, false, true, 40, 3000, 1000},   {true, false, true, 0, 1001, 500},
      {false, true, false, 0, 8000, 1472},    {true, true, false, 0, 2960, 1452},
      {false, false, false, 0, 1448, 1448},   {false, false, false, 0, 0, 1448},
      {false, false, false, 0, 65, 64},
  };
  for (const GsoCase& c : cases) {
    FrameSpec fs;
    fs.ipv6 = c.v6;
    fs.udp = c.udp;
    fs.vlan = c.vlan;
    fs.tcp_options = c.options;
    fs.payload = c.payload;
    fs.tcp_flags = 0x18 | 0x80 | 0x01;  // PSH ACK CWR FIN
    Bytes f = MakeTcpUdpFrame(fs);
    SplitPacket sp(f, {7, 61, 999, 3});
    PacketRef& p = sp.p;
    p.offload.gso_type = c.udp ? GsoType::kUdpL4 : c.v6 ? GsoType::kTcp6 : GsoType::kTcp4;
    p.offload.gso_size = static_cast<uint16_t>(c.mss);
    p.offload.hdr_len = static_cast<uint16_t>(fs.Hdrs());
    p.offload.flags = Offload::kNeedsCsum;
    p.offload.csum_start = static_cast<uint16_t>(fs.L4());
    p.offload.csum_offset = c.udp ? 6 : 16;
    L4Layout l;
    ASSERT_EQ(CheckOffload(p, &l), nullptr);
    EXPECT_EQ(l.hdrs, fs.Hdrs());
    const uint32_t n = GsoSegments(p, l);
    EXPECT_EQ(n, c.payload == 0 ? 1 : (c.payload + c.mss - 1) / c.mss);
    std::vector<PacketRef> out(n);
    Segmenter seg;
    ASSERT_EQ(seg.Cut(p, l, out), n);
    Bytes joined;
    for (uint32_t s = 0; s < n; ++s) {
      // The segment's checksum is partial, for the destination's copy to complete ...
      ASSERT_TRUE(out[s].offload.needs_csum()) << "segment " << s;
      EXPECT_FALSE(out[s].offload.gso());
      EXPECT_EQ(out[s].offload.csum_start, fs.L4());
      EXPECT_EQ(out[s].offload.csum_offset, c.udp ? 6 : 16);
      Bytes q(out[s].len);
      ASSERT_EQ(CopyPacketCompletingTo(out[s], q.data()), out[s].len);
      // ... or the switch's CompleteChecksum: the same bytes.
      PacketRef summed = out[s];
      CompleteChecksum(summed);
      Bytes q2(summed.len);
      ASSERT_EQ(CopyPacketTo(summed, q2.data()), summed.len);
      EXPECT_TRUE(q == q2) << "segment " << s << ": completed in the copy and by the switch differ";
      const uint32_t plen = std::min(c.mss, c.payload - s * c.mss);
      ASSERT_EQ(q.size(), fs.Hdrs() + plen);
      EXPECT_TRUE(ChecksumOk(q, fs)) << "segment " << s;
      EXPECT_TRUE(testing::IpHeaderOk(q, fs)) << "segment " << s;
      if (!c.v6) {
        EXPECT_EQ(testing::IpId(q, fs), uint16_t(fs.ip_id + s));
      }
      if (!c.udp) {
        EXPECT_EQ(testing::TcpSeq(q, fs), fs.seq + s * c.mss);
        const uint8_t fl = testing::TcpFlags(q, fs);
        EXPECT_EQ((fl & 0x01) != 0, s + 1 == n) << "FIN on the last segment only";
        EXPECT_EQ((fl & 0x08) != 0, s + 1 == n) << "PSH on the last segment only";
        EXPECT_EQ((fl & 0x80) != 0, s == 0) << "CWR on the first segment only";
        EXPECT_TRUE(fl & 0x10) << "ACK on all";
      }
      joined.insert(joined.end(), q.begin() + fs.Hdrs(), q.end());
      EXPECT_TRUE(std::equal(q.begin(), q.begin() + fs.L3(), f.begin())) << "link header kept";
    }
    EXPECT_TRUE(joined == Bytes(f.begin() + fs.Hdrs(), f.end())) << "payload in order, whole";
  }
}

// Each rule of CheckOffload refuses what breaks it, naming the field.
TEST(OffloadOps, CheckRefusesInconsistentRecords) {
  FrameSpec fs;
  fs.payload = 3000;
  const Bytes good = MakeTcpUdpFrame(fs);
  auto tso = [&](const Bytes& f) {
    auto sp = std::make_unique<SplitPacket>(f, std::vector<uint32_t>{100});
    Offload& o = sp->p.offload;
    o.gso_type = GsoType::kTcp4;
    o.gso_size = 1448;
    o.hdr_len = static_cast<uint16_t>(fs.Hdrs());
    o.flags = Offload::kNeedsCsum;
    o.csum_start = static_cast<uint16_t>(fs.L4());
    o.csum_offset = 16;
    return sp;
  };
  L4Layout l;
  EXPECT_EQ(CheckOffload(tso(good)->p, &l), nullptr);
  auto expect = [&](std::unique_ptr<SplitPacket> sp, const char* field) {
    const char* got = CheckOffload(sp->p, &l);
    ASSERT_NE(got, nullptr) << "expected " << field;
    EXPECT_STREQ(got, field);
  };
  { auto sp = tso(good); sp->p.offload.gso_type = GsoType::kInvalid; expect(std::move(sp), "gso_type"); }
  { auto sp = tso(good); sp->p.offload.gso_type = GsoType::kTcp6; expect(std::move(sp), "gso_type"); }  // IPv4 really
  { auto sp = tso(good); sp->p.offload.gso_type = GsoType::kUdpL4; expect(std::move(sp), "gso_type"); }  // TCP really
  { auto sp = tso(good); sp->p.offload.gso_type = GsoType::kUdp; expect(std::move(sp), "gso_type"); }  // UFO
  { auto sp = tso(good); sp->p.offload.gso_size = 0; expect(std::move(sp), "gso_size"); }
  { auto sp = tso(good); sp->p.offload.gso_size = kMinGsoSize - 1; expect(std::move(sp), "gso_size"); }
  { auto sp = tso(good); sp->p.offload.hdr_len = static_cast<uint16_t>(good.size() + 1); expect(std::move(sp), "hdr_len"); }
  { auto sp = tso(good); sp->p.offload.csum_start = 10; expect(std::move(sp), "csum_start"); }
  { auto sp = tso(good); sp->p.offload.csum_start = static_cast<uint16_t>(fs.L4() + 2); expect(std::move(sp), "csum_start"); }
  { auto sp = tso(good); sp->p.offload.csum_offset = 0xfff0; expect(std::move(sp), "csum_offset"); }
  { auto sp = tso(good); sp->p.offload.csum_offset = 17; expect(std::move(sp), "csum_offset"); }
  { auto sp = tso(good); sp->p.offload.csum_start = 150; sp->p.offload.csum_offset = 16; expect(std::move(sp), "csum_start"); }
  {
    Bytes f = good;
    f[14] = std::byte{0x65};  // IP version 6 in an IPv4 TSO frame
    expect(tso(f), "gso_type");
  }
  {
    Bytes f = good;
    f[14 + 6] = std::byte{0x20};  // more fragments
    expect(tso(f), "gso_type");
  }
  {
    Bytes f = good;
    f[fs.L4() + 12] = std::byte{0x40};  // TCP data offset 16 bytes
    expect(tso(f), "hdr_len");
  }
  {
    FrameSpec big = fs;
    big.payload = 65535;
    expect(tso(MakeTcpUdpFrame(big)), "length");
  }
  {
    // 14 + 65536: the frame fits kMaxGsoFrameBytes, its IPv4 datagram does not fit 16 bits
    // (offload_fuzz's finding: one segment as long as the frame, its length field 0).
    FrameSpec big = fs;
    big.payload = 65536 - 40;
    auto sp = tso(MakeTcpUdpFrame(big));
    sp->p.offload.gso_size = 65535;
    expect(std::move(sp), "length");
  }
  {
    FrameSpec many = fs;
    many.payload = 65000;
    auto sp = tso(MakeTcpUdpFrame(many));
    sp->p.offload.gso_size = kMinGsoSize;  // 1016 segments: fine
    EXPECT_EQ(CheckOffload(sp->p, &l), nullptr);
  }
  {
    FrameSpec v6 = fs;
    v6.ipv6 = true;
    v6.ipv6_ext = true;  // a hop-by-hop header before TCP
    auto sp = tso(MakeTcpUdpFrame(v6));
    sp->p.offload.gso_type = GsoType::kTcp6;
    sp->p.offload.csum_start = static_cast<uint16_t>(v6.L4());
    expect(std::move(sp), "gso_type");
  }
  { auto sp = tso(good); sp->p.offload.flags = 0; expect(std::move(sp), "flags"); }  // GSO must ask for the sum
  { auto sp = tso(good); sp->p.offload.flags = Offload::kCsumValid; expect(std::move(sp), "flags"); }
  {
    // The sender's hdr_len is a hint: what passes on is the headers' length.
    auto sp = tso(good);
    sp->p.offload.hdr_len = 0;
    EXPECT_EQ(CheckOffload(sp->p, &l), nullptr);
    EXPECT_EQ(sp->p.offload.hdr_len, fs.Hdrs());
  }
  {
    // A partial checksum over a frame longer than any GSO frame: refused before the sum reads
    // it (a chain may claim 4 GiB over the same pages; the review's worker stall).
    FrameSpec huge = fs;
    huge.payload = 70000;
    auto sp = std::make_unique<SplitPacket>(MakeTcpUdpFrame(huge), std::vector<uint32_t>{});
    sp->p.offload.flags = Offload::kNeedsCsum;
    sp->p.offload.csum_start = static_cast<uint16_t>(fs.L4());
    sp->p.offload.csum_offset = 16;
    expect(std::move(sp), "length");
  }
  // needs_csum alone: the field must lie in the frame.
  {
    FrameSpec small = fs;
    small.payload = 10;
    auto sp = std::make_unique<SplitPacket>(MakeTcpUdpFrame(small), std::vector<uint32_t>{});
    sp->p.offload.flags = Offload::kNeedsCsum;
    sp->p.offload.csum_start = static_cast<uint16_t>(sp->p.len - 1);
    sp->p.offload.csum_offset = 0;
    expect(std::move(sp), "csum_offset");
  }
}

// The helpers agree with the byte-by-byte reference over odd and even lengths and splits.
TEST(OffloadOps, CsumAddMatchesReference) {
  Bytes b(70001);
  for (size_t i = 0; i < b.size(); ++i) b[i] = std::byte(i * 37 + 5 + (i >> 9));
  for (size_t n : {0u, 1u, 2u, 3u, 7u, 8u, 9u, 63u, 64u, 65u, 127u, 128u, 300u, 301u, 1449u, 65536u, 70001u}) {
    uint16_t got = CsumFold(CsumAdd(b.data(), n, 0));
    uint16_t be;
    uint8_t raw[2];
    std::memcpy(raw, &got, 2);
    be = static_cast<uint16_t>(raw[0] << 8 | raw[1]);
    EXPECT_EQ(be, testing::ReferenceSum(b.data(), n)) << n;
  }
  // All ones (the sum's worst case for carries) over 64 KiB, and from an odd address.
  Bytes ff(65536, std::byte{0xff});
  EXPECT_EQ(CsumFold(CsumAdd(ff.data(), ff.size(), 0)), 0xffff);
  for (size_t n : {64u, 1001u, 4096u}) {
    uint16_t got = CsumFold(CsumAdd(b.data() + 1, n, 0));
    uint8_t raw[2];
    std::memcpy(raw, &got, 2);
    EXPECT_EQ(static_cast<uint16_t>(raw[0] << 8 | raw[1]), testing::ReferenceSum(b.data() + 1, n)) << n;
  }
}

}  // namespace
}  // namespace nicmux
