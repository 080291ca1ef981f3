#include "port/virtio_net_edge.h"

#include <gtest/gtest.h>

#include "tests/support/fake_guest.h"

namespace nicmux {
namespace {

using testing::FakeGuest;

// A chain of readable segments of the given sizes holding header + frame bytes 0, 1, 2, ...
struct ChainFixture {
  FakeGuest g{1 << 20};
  virtio::DescChain c;
  std::vector<std::byte> expect;

  ChainFixture(std::vector<uint32_t> sizes, uint32_t hdr_len) {
    virtio::ChainBuilder b(g.mem(), virtio::ChainPolicy::kAny, &c);
    uint32_t n = 0;
    for (uint32_t sz : sizes) {
      GuestAddr a = g.Alloc(sz, 1);
      std::byte* p = g.Host(a, sz);
      for (uint32_t i = 0; i < sz; ++i, ++n) {
        p[i] = static_cast<std::byte>(n < hdr_len ? 0xee : (n - hdr_len) * 7);
        if (n >= hdr_len) expect.push_back(p[i]);
      }
      EXPECT_FALSE(b.Add(a.value, sz, false));
    }
  }
};

TEST(VirtioNetEdge, HeaderAndHeadAcrossSegments) {
  for (auto sizes : std::vector<std::vector<uint32_t>>{{12, 1500}, {5, 7, 30, 40, 1000}, {1200}, {12, 64}, {13}}) {
    ChainFixture f(sizes, 12);
    PacketRef p;
    ASSERT_TRUE(PacketFromChain(f.c, 12, &p));
    ASSERT_EQ(p.len, f.expect.size());
    EXPECT_EQ(p.head_len, std::min<uint32_t>(p.len, kHeadBytes));
    EXPECT_EQ(std::memcmp(p.head, f.expect.data(), p.head_len), 0);
    // flags 0xee: DATA_VALID, RSC_INFO (ignored), no NEEDS_CSUM; gso_type 0xee: unknown.
    EXPECT_FALSE(p.offload.needs_csum());
    EXPECT_TRUE(p.offload.csum_valid());
    EXPECT_EQ(p.offload.gso_type, GsoType::kInvalid);
    EXPECT_EQ(p.offload.hdr_len, 0xeeee);
    // Copy into a writable chain and compare.
    FakeGuest dst(1 << 20);
    virtio::DescChain w;
    virtio::ChainBuilder wb(dst.mem(), virtio::ChainPolicy::kAny, &w);
    GuestAddr a1 = dst.Alloc(100, 1), a2 = dst.Alloc(4000, 1);
    ASSERT_FALSE(wb.Add(a1.value, 100, true));
    ASSERT_FALSE(wb.Add(a2.value, 4000, true));
    virtio::ChainWriter cw(w);
    ASSERT_EQ(CopyPacket(p, cw), p.len);
    std::vector<std::byte> got(p.len);
    for (uint32_t i = 0; i < p.len; ++i) got[i] = i < 100 ? *dst.Host(GuestAddr{a1.value + i}) : *dst.Host(GuestAddr{a2.value + i - 100});
    EXPECT_TRUE(got == f.expect);
  }
}

TEST(VirtioNetEdge, WithoutOffloadsTheHeaderIsIgnoredAndTheFrameStillFound) {
  for (auto sizes : std::vector<std::vector<uint32_t>>{{12, 1500}, {5, 7, 30, 40, 1000}, {1200}, {13}}) {
    ChainFixture f(sizes, 12);
    PacketRef p;
    p.offload.flags = 0x55;
    ASSERT_TRUE(PacketFromChain(f.c, 12, &p, /*read_hdr=*/false));
    ASSERT_EQ(p.len, f.expect.size());
    EXPECT_EQ(std::memcmp(p.head, f.expect.data(), p.head_len), 0);
    EXPECT_TRUE(p.offload.none());  // the guest's 0xee header bytes are not taken
    // Into one contiguous buffer: every byte, in order.
    std::vector<std::byte> out(p.len + 16, std::byte{0x11});
    EXPECT_EQ(CopyPacketTo(p, out.data()), p.len);
    EXPECT_TRUE(std::equal(f.expect.begin(), f.expect.end(), out.begin()));
    EXPECT_EQ(out[p.len], std::byte{0x11});  // nothing past the end
  }
}

TEST(VirtioNetEdge, ChainShorterThanHeaderIsRefused) {
  ChainFixture f({8}, 12);
  PacketRef p;
  EXPECT_FALSE(PacketFromChain(f.c, 12, &p));
}

// The header's fields, both ways; an unknown GSO type and a lone ECN bit are marked invalid.
TEST(VirtioNetEdge, HeaderTranslatesBothWays) {
  virtio::VirtioNetHdrV1 h{};
  h.flags = virtio::kNetHdrFNeedsCsum;
  h.gso_type = virtio::kNetHdrGsoTcpv6 | virtio::kNetHdrGsoEcn;
  h.hdr_len = Le16::Of(86);
  h.gso_size = Le16::Of(1428);
  h.csum_start = Le16::Of(54);
  h.csum_offset = Le16::Of(16);
  const Offload o = OffloadFromVirtio(h);
  EXPECT_TRUE(o.needs_csum());
  EXPECT_FALSE(o.csum_valid());
  EXPECT_TRUE(o.ecn());
  EXPECT_EQ(o.gso_type, GsoType::kTcp6);
  EXPECT_EQ(o.hdr_len, 86);
  EXPECT_EQ(o.gso_size, 1428);
  EXPECT_EQ(o.csum_start, 54);
  EXPECT_EQ(o.csum_offset, 16);
  const virtio::VirtioNetHdrV1 back = VirtioFromOffload(o);
  EXPECT_EQ(std::memcmp(&back, &h, sizeof h), 0);
  for (uint8_t t : {uint8_t{2}, uint8_t{6}, uint8_t{0x7f}, virtio::kNetHdrGsoEcn}) {
    virtio::VirtioNetHdrV1 bad{};
    bad.gso_type = t;
    EXPECT_EQ(OffloadFromVirtio(bad).gso_type, GsoType::kInvalid) << int{t};
  }
  virtio::VirtioNetHdrV1 valid{};
  valid.flags = virtio::kNetHdrFDataValid;
  valid.csum_start = Le16::Of(99);  // meaningless without NEEDS_CSUM: not taken
  const Offload v = OffloadFromVirtio(valid);
  EXPECT_TRUE(v.csum_valid());
  EXPECT_EQ(v.csum_start, 0);
}

}  // namespace
}  // namespace nicmux
