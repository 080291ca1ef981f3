// The af_xdp port's TX metadata: the checksum request's bytes as the kernel reads them
// (include/uapi/linux/if_xdp.h struct xsk_tx_metadata), that completing a frame the way the
// kernel does from the request gives the frame the port's software copy gives, the netdev
// netlink replies' parsing (hand-built replies, then the kernel's own for `lo`), and the
// decision. The real interface (a veth) is tests/integration/af_xdp_port.sh's.
#include "port/af_xdp_tx_metadata.h"

#include <gtest/gtest.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <net/if.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "packet/offload_ops.h"
#include "packet/packet.h"
#include "tests/support/frames.h"

namespace nicmux {
namespace {

using testing::Bytes;
using testing::FrameSpec;

uint64_t Le(const std::byte* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = v << 8 | uint8_t(p[i]);
  return v;
}

TEST(AfXdpTxMetadata, ChecksumRequestBytes) {
  // What the kernel reads at addr - tx_metadata_len: u64 flags (XDP_TXMD_FLAGS_CHECKSUM = 2),
  // then u16 csum_start, u16 csum_offset, 4 bytes of padding and u64 launch_time: 24 bytes,
  // little-endian on this machine.
  std::byte meta[kTxMetadataLen];
  std::memset(meta, 0xaa, sizeof meta);
  Offload o;
  o.flags = Offload::kNeedsCsum;
  o.csum_start = 34;
  o.csum_offset = 16;
  ASSERT_TRUE(WriteTxChecksumRequest(o, 1000, 64, meta));
  EXPECT_EQ(Le(meta, 8), 2u);
  EXPECT_EQ(Le(meta + 8, 2), 34u);
  EXPECT_EQ(Le(meta + 10, 2), 16u);
  for (uint32_t i = 12; i < kTxMetadataLen; ++i) EXPECT_EQ(uint8_t(meta[i]), 0) << "byte " << i;
}

TEST(AfXdpTxMetadata, NoRequestWhereTheKernelWouldRefuseIt) {
  std::byte meta[kTxMetadataLen];
  std::memset(meta, 0xaa, sizeof meta);
  Offload o;
  EXPECT_FALSE(WriteTxChecksumRequest(o, 1000, 64, meta));  // no partial checksum
  o.flags = Offload::kNeedsCsum;
  o.csum_start = 34;
  o.csum_offset = 16;
  EXPECT_FALSE(WriteTxChecksumRequest(o, 51, 51, meta));  // the field ends past the frame (52 > 51)
  EXPECT_TRUE(WriteTxChecksumRequest(o, 52, 52, meta) && meta[0] == std::byte{2});
  std::memset(meta, 0xaa, sizeof meta);
  EXPECT_FALSE(WriteTxChecksumRequest(o, 1000, 40, meta));  // past the checked head: not a checked record
  o.csum_start = 65530;  // (16-bit sums of a record nobody checked)
  o.csum_offset = 16;
  EXPECT_FALSE(WriteTxChecksumRequest(o, 3000, 160, meta));
  for (std::byte b : meta) EXPECT_EQ(b, std::byte{0xaa});  // nothing written
}

// The frame the kernel sends for a request (the bytes copied as they are, then the sum from
// csum_start over the rest stored at csum_start + csum_offset: skb_checksum_help, or the
// device) is the frame the port's software path sends (CopyPacketCompletingTo), and its
// checksum verifies.
TEST(AfXdpTxMetadata, KernelCompletionMatchesTheSoftwareCopy) {
  for (bool ipv6 : {false, true}) {
    for (bool udp : {false, true}) {
      for (bool vlan : {false, true}) {
        for (uint32_t payload : {0u, 1u, 100u, 1459u, 3000u}) {
          FrameSpec fs;
          fs.ipv6 = ipv6;
          fs.udp = udp;
          fs.vlan = vlan;
          fs.payload = payload;
          fs.partial_csum = true;
          Bytes f = testing::MakeTcpUdpFrame(fs);
          SCOPED_TRACE(::testing::Message() << "ipv6 " << ipv6 << " udp " << udp << " vlan " << vlan << " payload " << payload);
          PacketRef p;
          Segment seg;
          PacketFromFlat(&p, &seg, f.data(), static_cast<uint32_t>(f.size()));
          p.offload.flags = Offload::kNeedsCsum;
          p.offload.csum_start = static_cast<uint16_t>(fs.L4());
          p.offload.csum_offset = udp ? 6 : 16;
          L4Layout l;
          ASSERT_EQ(CheckOffload(p, &l), nullptr);  // as the switch does (it grows the head copy)

          std::vector<std::byte> umem_frame(4096, std::byte{0x55});
          std::byte* data = umem_frame.data() + kTxMetadataLen;
          ASSERT_TRUE(WriteTxChecksumRequest(p.offload, p.len, p.head_len, data - kTxMetadataLen));
          ASSERT_EQ(CopyPacketTo(p, data), f.size());
          // The kernel's side, from the bytes alone.
          ASSERT_EQ(Le(umem_frame.data(), 8), 2u);
          const auto start = static_cast<uint32_t>(Le(umem_frame.data() + 8, 2));
          const auto off = static_cast<uint32_t>(Le(umem_frame.data() + 10, 2));
          Bytes sent(data, data + f.size());
          testing::CompleteReference(sent, start, off);
          EXPECT_TRUE(testing::ChecksumOk(sent, fs));

          std::vector<std::byte> soft(f.size());
          CopyPacketCompletingTo(p, soft.data());
          EXPECT_EQ(soft, sent);
        }
      }
    }
  }
}

// ---- netlink replies, built here byte by byte as the kernel lays them out

struct Reply {
  std::vector<std::byte> b;
  void Msg(uint16_t type, uint32_t seq, const std::vector<std::byte>& payload, bool genl = true) {
    const uint32_t len = NLMSG_HDRLEN + (genl ? GENL_HDRLEN : 0) + static_cast<uint32_t>(payload.size());
    nlmsghdr h{};
    h.nlmsg_len = len;
    h.nlmsg_type = type;
    h.nlmsg_seq = seq;
    Append(&h, sizeof h);
    if (genl) {
      genlmsghdr g{};
      g.cmd = 1;
      g.version = 1;
      Append(&g, sizeof g);
    }
    b.insert(b.end(), payload.begin(), payload.end());
    b.resize(NLMSG_ALIGN(b.size()));
  }
  void Error(uint32_t seq, int32_t err) {
    std::vector<std::byte> p(sizeof(nlmsgerr));
    std::memcpy(p.data(), &err, sizeof err);
    Msg(NLMSG_ERROR, seq, p, false);
  }
  void Append(const void* d, size_t n) {
    auto* c = static_cast<const std::byte*>(d);
    b.insert(b.end(), c, c + n);
  }
};

std::vector<std::byte> Attr(uint16_t type, const void* d, uint16_t n) {
  std::vector<std::byte> a(NLA_ALIGN(NLA_HDRLEN + n));
  const uint16_t len = static_cast<uint16_t>(NLA_HDRLEN + n);
  std::memcpy(a.data(), &len, 2);
  std::memcpy(a.data() + 2, &type, 2);
  std::memcpy(a.data() + NLA_HDRLEN, d, n);
  return a;
}
template <typename T>
std::vector<std::byte> Attr(uint16_t type, T v) {
  return Attr(type, &v, sizeof v);
}
std::vector<std::byte> Cat(std::initializer_list<std::vector<std::byte>> parts) {
  std::vector<std::byte> r;
  for (const auto& p : parts) r.insert(r.end(), p.begin(), p.end());
  return r;
}

TEST(AfXdpNetlink, FamilyReply) {
  Reply r;
  r.Msg(GENL_ID_CTRL, 7, Cat({Attr(CTRL_ATTR_FAMILY_NAME, "netdev", 7), Attr(CTRL_ATTR_FAMILY_ID, uint16_t{29}),
                              Attr(CTRL_ATTR_VERSION, uint32_t{1})}));
  auto id = ParseGenlFamilyReply(r.b, 7);
  ASSERT_TRUE(id) << id.error().message();
  EXPECT_EQ(*id, 29);
  // Another request's answer is not this one's.
  EXPECT_FALSE(ParseGenlFamilyReply(r.b, 8));
  Reply none;
  none.Error(7, -ENOENT);
  auto e = ParseGenlFamilyReply(none.b, 7);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().sys_errno(), ENOENT);
  Reply bad;  // an id of the wrong size
  bad.Msg(GENL_ID_CTRL, 7, Attr(CTRL_ATTR_FAMILY_ID, uint32_t{29}));
  EXPECT_FALSE(ParseGenlFamilyReply(bad.b, 7));
}

TEST(AfXdpNetlink, DevGetReply) {
  // The 6.18 layout: ifindex, xdp-features, xdp-rx-metadata-features, xsk-features (with a
  // pad attribute before a u64, as on architectures that align them), an ack after.
  Reply r;
  r.Msg(29, 3,
        Cat({Attr(uint16_t{1}, uint32_t{12}), Attr(uint16_t{2}, uint32_t{0}), Attr(uint16_t{3}, uint64_t{0x23}),
             Attr(uint16_t{5}, uint64_t{0}), Attr(uint16_t{6}, uint64_t{2}), Attr(uint16_t{42}, uint32_t{7})}));
  r.Error(3, 0);
  auto i = ParseNetdevDevReply(r.b, 3, 12);
  ASSERT_TRUE(i) << i.error().message();
  EXPECT_TRUE(i->has_xsk_features);
  EXPECT_EQ(i->xsk_features, 2u);
  EXPECT_EQ(i->xdp_features, 0x23u);
  EXPECT_EQ(XdpFeatureNames(i->xdp_features), "basic redirect rx-sg");
  EXPECT_EQ(XskFeatureNames(i->xsk_features), "tx-checksum");
  EXPECT_EQ(XskFeatureNames(0), "none");
  EXPECT_EQ(XskFeatureNames(7 | (uint64_t{1} << 9)), "tx-timestamp tx-checksum tx-launch-time-fifo bit9");

  // A kernel before 6.8: no xsk-features at all.
  Reply old;
  old.Msg(29, 3, Cat({Attr(uint16_t{1}, uint32_t{12}), Attr(uint16_t{3}, uint64_t{1})}));
  auto o = ParseNetdevDevReply(old.b, 3, 12);
  ASSERT_TRUE(o);
  EXPECT_FALSE(o->has_xsk_features);

  // The wrong device, a u64 of 4 bytes, no such device, nothing at all.
  EXPECT_FALSE(ParseNetdevDevReply(r.b, 3, 13));
  Reply shortv;
  shortv.Msg(29, 3, Cat({Attr(uint16_t{1}, uint32_t{12}), Attr(uint16_t{6}, uint32_t{2})}));
  EXPECT_FALSE(ParseNetdevDevReply(shortv.b, 3, 12));
  Reply nodev;
  nodev.Error(3, -ENODEV);
  auto n = ParseNetdevDevReply(nodev.b, 3, 12);
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().sys_errno(), ENODEV);
  EXPECT_FALSE(ParseNetdevDevReply({}, 3, 12));
}

TEST(AfXdpNetlink, MalformedLengthsAreRefusedNotRead) {
  Reply r;
  r.Msg(29, 3, Cat({Attr(uint16_t{1}, uint32_t{12}), Attr(uint16_t{6}, uint64_t{2})}));
  // Every truncation of a good reply: an error or (cut between messages) less, never a read past the end.
  for (size_t n = 0; n < r.b.size(); ++n) {
    std::vector<std::byte> cut(r.b.begin(), r.b.begin() + static_cast<long>(n));
    auto i = ParseNetdevDevReply(cut, 3, 12);
    EXPECT_FALSE(i && i->has_xsk_features) << n;
  }
  // A message length past the buffer, an attribute length past the message, one below 4.
  Reply big = r;
  const uint32_t huge = 4096;
  std::memcpy(big.b.data(), &huge, 4);
  EXPECT_FALSE(ParseNetdevDevReply(big.b, 3, 12));
  Reply attr = r;
  const uint16_t alen = 200;
  std::memcpy(attr.b.data() + NLMSG_HDRLEN + GENL_HDRLEN, &alen, 2);
  EXPECT_FALSE(ParseNetdevDevReply(attr.b, 3, 12));
  const uint16_t tiny = 2;
  std::memcpy(attr.b.data() + NLMSG_HDRLEN + GENL_HDRLEN, &tiny, 2);
  EXPECT_FALSE(ParseNetdevDevReply(attr.b, 3, 12));
}

TEST(AfXdpNetlink, RequestsAsTheKernelReadsThem) {
  const std::string f = GenlGetFamilyRequest("netdev", 5);
  ASSERT_EQ(f.size(), NLMSG_HDRLEN + GENL_HDRLEN + NLA_ALIGN(NLA_HDRLEN + 7));
  nlmsghdr h;
  std::memcpy(&h, f.data(), sizeof h);
  EXPECT_EQ(h.nlmsg_len, f.size());
  EXPECT_EQ(h.nlmsg_type, GENL_ID_CTRL);
  EXPECT_EQ(h.nlmsg_seq, 5u);
  EXPECT_EQ(uint8_t(f[NLMSG_HDRLEN]), CTRL_CMD_GETFAMILY);
  EXPECT_EQ(std::string(f.data() + NLMSG_HDRLEN + GENL_HDRLEN + NLA_HDRLEN), "netdev");
  const std::string d = NetdevDevGetRequest(29, 6, 12);
  ASSERT_EQ(d.size(), NLMSG_HDRLEN + GENL_HDRLEN + 8);
  std::memcpy(&h, d.data(), sizeof h);
  EXPECT_EQ(h.nlmsg_type, 29);
  EXPECT_EQ(uint8_t(d[NLMSG_HDRLEN]), 1);  // NETDEV_CMD_DEV_GET
  uint16_t alen, atype;
  uint32_t idx;
  std::memcpy(&alen, d.data() + NLMSG_HDRLEN + GENL_HDRLEN, 2);
  std::memcpy(&atype, d.data() + NLMSG_HDRLEN + GENL_HDRLEN + 2, 2);
  std::memcpy(&idx, d.data() + NLMSG_HDRLEN + GENL_HDRLEN + 4, 4);
  EXPECT_EQ(alen, 8);
  EXPECT_EQ(atype, 1);  // NETDEV_A_DEV_IFINDEX
  EXPECT_EQ(idx, 12u);
}

// The kernel's own answer for the loopback device (no XDP features, no AF_XDP TX metadata),
// and for a device that does not exist. (The veth's: tests/integration/af_xdp_port.sh.)
TEST(AfXdpNetlink, TheKernelAboutLoopback) {
  const unsigned lo = if_nametoindex("lo");
  ASSERT_NE(lo, 0u);
  auto i = QueryNetdev(lo);
  if (!i && i.error().sys_errno() == ENOENT) GTEST_SKIP() << i.error().message();
  ASSERT_TRUE(i) << i.error().message();
  EXPECT_TRUE(i->has_xsk_features) << "a kernel with the netdev family but before 6.8?";
  EXPECT_EQ(i->xsk_features, 0u);
  auto none = QueryNetdev(0x7ffffff0);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().sys_errno(), ENODEV) << none.error().message();
  auto f = TxChecksumIpGeneric("lo");
  ASSERT_TRUE(f) << f.error().message();  // (lo has it on, as a rule; its value is the kernel's)
  EXPECT_FALSE(TxChecksumIpGeneric("nosuch-if0"));
}

TEST(AfXdpTxMetadata, Decision) {
  NetdevXdpInfo veth;
  veth.has_xsk_features = true;
  veth.xdp_features = 7;
  NetdevXdpInfo mlx = veth;
  mlx.xsk_features = 3;
  const Result<NetdevXdpInfo> r_veth(veth), r_mlx(mlx), r_err(Error("netlink: no reply"));
  NetdevXdpInfo old;
  const Result<NetdevXdpInfo> r_old(old);
  const Result<bool> hw_on(true), hw_off(false), hw_err(Error("ETHTOOL_GFEATURES: Operation not supported"));
  TxCsumInputs in;
  in.ifname = "v0";
  in.netdev = &r_veth;
  in.hw_csum = &hw_on;
  // Copy mode: the device's tx-checksum-ip-generic decides, not its xsk-features.
  TxCsumDecision d = DecideTxChecksum(in);
  EXPECT_TRUE(d.use);
  EXPECT_EQ(d.detail, "checksum");
  EXPECT_NE(d.path.find("copy mode"), std::string::npos);
  in.hw_csum = &hw_off;
  d = DecideTxChecksum(in);
  EXPECT_FALSE(d.use);
  EXPECT_EQ(d.detail.rfind("none (copy mode, and v0 has tx-checksum-ip-generic off", 0), 0u) << d.detail;
  in.hw_csum = &hw_err;
  EXPECT_FALSE(DecideTxChecksum(in).use);
  // Zero-copy: the driver's xsk-features decide.
  in.hw_csum = &hw_on;
  in.zero_copy = true;
  d = DecideTxChecksum(in);
  EXPECT_FALSE(d.use);
  EXPECT_NE(d.detail.find("no tx-checksum in its xsk-features (none)"), std::string::npos) << d.detail;
  in.netdev = &r_mlx;
  d = DecideTxChecksum(in);
  EXPECT_TRUE(d.use);
  EXPECT_NE(d.path.find("zero-copy"), std::string::npos);
  in.netdev = &r_old;
  EXPECT_FALSE(DecideTxChecksum(in).use);
  in.netdev = &r_err;
  d = DecideTxChecksum(in);
  EXPECT_FALSE(d.use);
  EXPECT_NE(d.detail.find("netlink: no reply"), std::string::npos);
  // Whatever the device: a kernel that refused the flag, and the option.
  in.netdev = &r_mlx;
  in.umem_errno = EINVAL;
  d = DecideTxChecksum(in);
  EXPECT_FALSE(d.use);
  EXPECT_EQ(d.detail, "none (the kernel refused XDP_UMEM_TX_METADATA_LEN: Invalid argument; it has no AF_XDP TX metadata)");
  in.option_off = true;
  EXPECT_EQ(DecideTxChecksum(in).detail, "none (tx_csum=off)");
}

}  // namespace
}  // namespace nicmux
