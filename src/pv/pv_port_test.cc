// The pv port against a driver written here straight on the ABI (so that it can also break
// every rule): the handshake, the control mailbox, both rings, and the hostile cases, each
// ending in a dropped-and-counted frame or a broken device that names the field.
#include "pv/pv_port.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/pausable.h"
#include "base/unix_socket.h"
#include "packet/offload_ops.h"
#include "pv/pv_abi.h"
#include "tests/support/frames.h"
#include "tests/support/pv_driver.h"

namespace nicmux {
namespace {

using testing::Bytes;

std::string TempSocket() {
  char dir[] = "/tmp/nmxpvXXXXXX";
  EXPECT_NE(::mkdtemp(dir), nullptr);
  return std::string(dir) + "/pv.sock";
}

using Driver = testing::RawPvDriver;

Bytes Frame(uint32_t len, uint8_t seed) {
  Bytes f(len);
  const uint8_t hdr[14] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5};
  std::memcpy(f.data(), hdr, std::min<uint32_t>(len, 14));
  for (uint32_t i = 14; i < len; ++i) f[i] = std::byte(uint8_t(seed + i));
  return f;
}

class PvPortTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto l = EventLoop::Create();
    ASSERT_TRUE(l.has_value());
    loop_ = std::move(*l);
    path_ = TempSocket();
    Make({});
  }
  void Make(PvPortOptions o) {
    port_.reset();
    o.name = "pv0";
    o.socket_path = path_;
    if (o.mac[0] == 0) o.mac[0] = 2, o.mac[5] = 9;
    auto p = CreatePvPort(o, loop_.get(), &workers_);
    ASSERT_TRUE(p.has_value()) << p.error().message();
    port_ = std::move(*p);
  }
  uint64_t Drops(DropReason r) const { return port_->DropsFor(r); }

  std::unique_ptr<EventLoop> loop_;
  NoWorker workers_;
  std::string path_;
  std::unique_ptr<Port> port_;
};

TEST_F(PvPortTest, HandshakeAndInfo) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  EXPECT_EQ(d.h()->version, NMX_PV_VERSION);
  EXPECT_EQ(d.h()->max_queue_pairs, 1u);
  EXPECT_EQ(d.h()->ring_size, 1024u);
  EXPECT_EQ(d.h()->generation, 1u);
  EXPECT_EQ(d.h()->status, NMX_PV_STATUS_OK);
  // The driver cannot resize the region under the host.
  EXPECT_NE(::ftruncate(d.memfd.get(), 4096), 0);
  nmx_pv_msg r = d.Call(NMX_PV_MSG_GET_INFO);
  ASSERT_EQ(r.status, 0);
  nmx_pv_info info;
  std::memcpy(&info, r.payload, sizeof info);
  EXPECT_EQ(info.max_rx_queues, 1u);
  EXPECT_EQ(info.mtu, 1500u);
  EXPECT_EQ(info.mac[5], 9);
  EXPECT_EQ(info.tx_offloads, NMX_PV_TX_IPV4_CKSUM | NMX_PV_TX_TCP_CKSUM | NMX_PV_TX_UDP_CKSUM);
  EXPECT_STREQ(info.uplink, "none");
  EXPECT_EQ(port_->State(), "connected");
}

TEST_F(PvPortTest, ControlRefusalsNameTheReason) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  nmx_pv_msg r = d.Call(NMX_PV_MSG_START);
  EXPECT_EQ(r.status, -EINVAL);
  EXPECT_NE(std::string(r.reason).find("CONFIGURE first"), std::string::npos) << r.reason;
  nmx_pv_configure cfg{};
  cfg.nb_rx_queues = cfg.nb_tx_queues = 2;
  r = d.Call(NMX_PV_MSG_CONFIGURE, cfg);
  EXPECT_EQ(r.status, -EINVAL);
  EXPECT_NE(std::string(r.reason).find("1..1"), std::string::npos) << r.reason;
  cfg.nb_rx_queues = cfg.nb_tx_queues = 1;
  cfg.tx_offloads = NMX_PV_TX_TCP_TSO;
  r = d.Call(NMX_PV_MSG_CONFIGURE, cfg);
  EXPECT_EQ(r.status, -ENOTSUP);
  EXPECT_NE(std::string(r.reason).find("tcp_tso is not offered (uplink: none)"), std::string::npos) << r.reason;
  r = d.Call(99);
  EXPECT_EQ(r.status, -EINVAL);
  EXPECT_NE(std::string(r.reason).find("unknown request type 99"), std::string::npos);
  r = d.Call(NMX_PV_MSG_MTU_SET, &cfg, 3);  // a truncated payload
  EXPECT_EQ(r.status, -EINVAL);
  EXPECT_NE(std::string(r.reason).find("MTU_SET: payload of 3 bytes, not 4"), std::string::npos) << r.reason;
  r = d.Call(NMX_PV_MSG_MTU_SET, nmx_pv_u32{9000});
  EXPECT_EQ(r.status, -EINVAL);  // does not fit a 2048-byte buffer
  EXPECT_EQ(d.Call(NMX_PV_MSG_MTU_SET, nmx_pv_u32{1400}).status, 0);
  EXPECT_EQ(port_->Caps().mtu, 1400);
  // A ring whose posted is not 0 at setup.
  cfg.tx_offloads = 0;
  ASSERT_EQ(d.Call(NMX_PV_MSG_CONFIGURE, cfg).status, 0);
  d.tx(0)->posted = 5;
  r = d.Call(NMX_PV_MSG_QUEUE_SETUP, nmx_pv_queue_req{0, NMX_PV_QUEUE_TX});
  EXPECT_EQ(r.status, -EINVAL);
  EXPECT_NE(std::string(r.reason).find("posted is 5"), std::string::npos) << r.reason;
  // The device still works after all of it.
  d.tx(0)->posted = 0;
  ASSERT_EQ(d.Start(), "");
  EXPECT_EQ(port_->State(), "running");
}

TEST_F(PvPortTest, FramesBothWaysInOrderWithHoldBack) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  ASSERT_EQ(d.Start(), "");
  for (uint8_t i = 0; i < 3; ++i) d.PostTx(0, i, Frame(60 + i, i));
  Batch b;
  ASSERT_EQ(port_->Rx(0, b, kBurst), 3u);
  EXPECT_EQ(b[1].len, 61u);
  port_->RxDone(0, b, 2);  // the third is not taken: read again first
  EXPECT_EQ(d.tx(0)->done, 2u);
  b.Clear();
  ASSERT_EQ(port_->Rx(0, b, kBurst), 1u);
  EXPECT_EQ(b[0].len, 62u);
  Bytes out(b[0].len);
  CopyPacketTo(b[0], out.data());
  EXPECT_EQ(out, Frame(62, 2));
  port_->RxDone(0, b, 1);
  EXPECT_EQ(d.tx(0)->done, 3u);
  EXPECT_EQ(port_->Stats().rx_packets, 3u);

  // Towards the driver: two buffers posted, three frames offered: two taken.
  d.PostRx(0, 100, 2048);
  d.PostRx(0, 101, 2048);
  EXPECT_EQ(port_->TxRoom(0), 2u);
  std::vector<Bytes> frames = {Frame(100, 7), Frame(1500, 8), Frame(64, 9)};
  std::vector<testing::SplitPacket> sp;
  for (auto& f : frames) sp.emplace_back(f, std::vector<uint32_t>{});
  const PacketRef* ptrs[3] = {&sp[0].p, &sp[1].p, &sp[2].p};
  EXPECT_EQ(port_->Tx(0, {ptrs, 3}), 2u);
  EXPECT_EQ(d.rx(0)->done, 2u);
  EXPECT_EQ(d.rx(0)->desc[1].len, 1500u);
  EXPECT_EQ(0, std::memcmp(d.base + d.buf(101), frames[1].data(), 1500));
  // A frame longer than the posted buffer is dropped; the buffer stays for the next.
  d.PostRx(0, 102, 200);
  const PacketRef* big[2] = {&sp[1].p, &sp[2].p};
  EXPECT_EQ(port_->Tx(0, {big, 2}), 2u);
  EXPECT_EQ(d.rx(0)->done, 3u);
  EXPECT_EQ(d.rx(0)->desc[2].len, 64u);
  EXPECT_EQ(Drops(DropReason::kTooBig), 1u);
}

TEST_F(PvPortTest, ChecksumRequestsAndResults) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  ASSERT_EQ(d.Start(1, NMX_PV_TX_TCP_CKSUM | NMX_PV_TX_IPV4_CKSUM), "");
  testing::FrameSpec fs;
  fs.payload = 500;
  Bytes f = testing::MakeTcpUdpFrame(fs);
  f[fs.L4() + 16] = std::byte{0x12};  // garbage in the field, as a DPDK application may leave
  d.PostTx(0, 0, f, NMX_PV_DESC_IPV4 | NMX_PV_DESC_TCP_CKSUM | NMX_PV_DESC_IP_CKSUM);
  nmx_pv_desc& desc = d.tx(0)->desc[0];
  desc.l2_len = 14;
  desc.l3_len = 20;
  // An unconfigured request (UDP) on the next frame: dropped as bad_offload, consumed.
  d.PostTx(0, 1, f, NMX_PV_DESC_IPV4 | NMX_PV_DESC_UDP_CKSUM);
  Batch b;
  ASSERT_EQ(port_->Rx(0, b, kBurst), 1u);
  EXPECT_TRUE(b[0].offload.needs_csum());
  EXPECT_EQ(b[0].offload.csum_start, fs.L4());
  // Completed in the copy towards another pv driver's buffer: valid, and marked good.
  d.PostRx(0, 50, 2048);
  const PacketRef* ptrs[1] = {&b[0]};
  EXPECT_EQ(port_->Tx(0, {ptrs, 1}), 1u);
  Bytes got(f.size());
  std::memcpy(got.data(), d.base + d.buf(50), f.size());
  EXPECT_TRUE(testing::ChecksumOk(got, fs));
  EXPECT_EQ(d.rx(0)->desc[0].flags, NMX_PV_DESC_L4_GOOD);
  port_->RxDone(0, b, 1);
  EXPECT_EQ(d.tx(0)->done, 2u);
  EXPECT_EQ(Drops(DropReason::kBadOffload), 1u);
}

TEST_F(PvPortTest, ShortFramesDroppedAndConsumed) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  ASSERT_EQ(d.Start(), "");
  d.PostTx(0, 0, Frame(10, 0));
  d.PostTx(0, 1, Frame(60, 1));
  Batch b;
  ASSERT_EQ(port_->Rx(0, b, kBurst), 1u);
  port_->RxDone(0, b, 1);
  EXPECT_EQ(d.tx(0)->done, 2u);
  EXPECT_EQ(Drops(DropReason::kBadFrame), 1u);
}

// Each lie breaks the device: the header says so, naming the field; nothing is read or
// written outside the buffer area; a new connection starts clean.
TEST_F(PvPortTest, HostileDriverBreaksTheDevice) {
  struct Case {
    const char* name;
    void (*lie)(Driver&);
    const char* says;
  };
  const Case cases[] = {
      {"posted beyond the ring", [](Driver& d) { __atomic_store_n(&d.tx(0)->posted, 5000u, __ATOMIC_RELEASE); },
       "posted 5000 is 5000 ahead"},
      {"offset outside the area",
       [](Driver& d) {
         d.PostTx(0, 0, Frame(60, 0));
         d.tx(0)->desc[0].offset = 0;  // the header page
       },
       "offset 0 len 60 is outside the buffer area"},
      {"offset + len wraps",
       [](Driver& d) {
         d.PostTx(0, 0, Frame(60, 0));
         d.tx(0)->desc[0].offset = ~uint64_t{0} - 10;
       },
       "is outside the buffer area"},
      {"length past the end",
       [](Driver& d) {
         d.PostTx(0, 0, Frame(60, 0));
         d.tx(0)->desc[0].offset = d.h()->bufs_offset + d.h()->bufs_size - 30;
       },
       "is outside the buffer area"},
      {"region 7",
       [](Driver& d) {
         d.PostTx(0, 0, Frame(60, 0));
         d.tx(0)->desc[0].region = 7;
       },
       "region 7"},
  };
  uint32_t generation = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    Driver d(loop_.get());
    ASSERT_EQ(d.Connect(path_), "");
    EXPECT_GT(d.h()->generation, generation);
    generation = d.h()->generation;
    ASSERT_EQ(d.Start(), "");
    c.lie(d);
    Batch b;
    EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
    port_->RxDone(0, b, 0);
    EXPECT_EQ(d.h()->status, NMX_PV_STATUS_BROKEN);
    EXPECT_NE(std::string(d.h()->broken_reason).find(c.says), std::string::npos) << d.h()->broken_reason;
    EXPECT_EQ(port_->State(), "broken");
    // The data path stays off; control requests are refused with the reason.
    d.PostTx(0, 1, Frame(60, 1));
    EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
    nmx_pv_msg r = d.Call(NMX_PV_MSG_GET_INFO);
    EXPECT_EQ(r.status, -EIO);
    // Hang up: the port waits for the next driver.
    d.sock.Reset();
    for (int i = 0; i < 20 && port_->State() != "waiting"; ++i) loop_->RunOnce(10);
    EXPECT_EQ(port_->State(), "waiting");
  }
  // The rx ring lies too.
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  ASSERT_EQ(d.Start(), "");
  __atomic_store_n(&d.rx(0)->posted, 2000u, __ATOMIC_RELEASE);
  Bytes f = Frame(60, 0);
  testing::SplitPacket sp(f, {});
  const PacketRef* ptrs[1] = {&sp.p};
  EXPECT_EQ(port_->Tx(0, {ptrs, 1}), 1u);  // dropped, never a stall
  EXPECT_EQ(d.h()->status, NMX_PV_STATUS_BROKEN);
  EXPECT_NE(std::string(d.h()->broken_reason).find("rx ring 0: posted 2000"), std::string::npos);
  // A posted receive buffer too short for any frame breaks it too (it would have stayed posted
  // for ever, every frame dropped as too big behind it).
  d.sock.Reset();
  for (int i = 0; i < 20 && port_->State() != "waiting"; ++i) loop_->RunOnce(10);
  Driver e(loop_.get());
  ASSERT_EQ(e.Connect(path_), "");
  ASSERT_EQ(e.Start(), "");
  e.PostRx(0, 0, 13);
  EXPECT_EQ(port_->Tx(0, {ptrs, 1}), 1u);
  EXPECT_EQ(e.h()->status, NMX_PV_STATUS_BROKEN);
  EXPECT_NE(std::string(e.h()->broken_reason).find("len 13 cannot hold an Ethernet header"), std::string::npos)
      << e.h()->broken_reason;
}

TEST_F(PvPortTest, OneDriverAtATime) {
  Driver a(loop_.get());
  ASSERT_EQ(a.Connect(path_), "");
  auto addr = UnixAddr(path_);
  UniqueFd b(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(::connect(b.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr), 0);
  for (int i = 0; i < 5; ++i) loop_->RunOnce(10);
  char c;
  EXPECT_EQ(::recv(b.get(), &c, 1, MSG_DONTWAIT), 0);  // closed by the port
  EXPECT_EQ(a.Call(NMX_PV_MSG_GET_INFO).status, 0);
}

// The capabilities follow the uplink: a port that takes TSO makes the device offer it (with
// buffers that hold a 64 KiB frame), and the driver hears of the change.
class TsoPort final : public Port {
 public:
  TsoPort() : Port("up0") {
    PortCaps c;
    c.offloads = PortCaps::kCsum | PortCaps::kTso4 | PortCaps::kTso6;
    SetCaps(c);
  }
  uint32_t NumQueuePairs() const override { return 1; }
  size_t Rx(uint32_t, Batch&, size_t) override { return 0; }
  void RxDone(uint32_t, Batch&, size_t) override {}
  size_t Tx(uint32_t, std::span<const PacketRef* const> in) override { return in.size(); }
  size_t TxRoom(uint32_t) override { return kBurst; }
  bool ArmNotify(uint32_t, std::vector<NotifyFd>*) override { return false; }
  void DisarmNotify(uint32_t) override {}
  bool CanSleep(uint32_t) const override { return true; }
  PortStats Stats() const override { return {}; }
  uint64_t DropsFor(DropReason) const override { return 0; }
  std::string State() const override { return "link up, 25000 Mbit/s"; }
  std::vector<Detail> DeviceCaps() const override { return {{"driver", std::string("net_test")}}; }
};

TEST_F(PvPortTest, CapabilitiesFollowTheUplink) {
  PvPortOptions o;
  o.buf_size = 66560;
  o.ring = 64;
  o.uplink = "up0";
  Make(o);
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  auto info = [&] {
    nmx_pv_info i;
    nmx_pv_msg r = d.Call(NMX_PV_MSG_GET_INFO);
    std::memcpy(&i, r.payload, sizeof i);
    return i;
  };
  EXPECT_FALSE(info().tx_offloads & NMX_PV_TX_TCP_TSO);
  const uint32_t ev = d.c()->event_seq;
  TsoPort up;
  port_->FollowedChanged(&up);
  EXPECT_EQ(d.c()->event_seq, ev + 1);
  nmx_pv_info i = info();
  EXPECT_TRUE(i.tx_offloads & NMX_PV_TX_TCP_TSO);
  EXPECT_EQ(i.link_speed_mbps, 25000u);
  EXPECT_STREQ(i.uplink, "up0 (net_test)");
  port_->FollowedChanged(&up);  // nothing new: no event
  EXPECT_EQ(d.c()->event_seq, ev + 1);
  port_->FollowedChanged(nullptr);
  EXPECT_FALSE(info().tx_offloads & NMX_PV_TX_TCP_TSO);
  EXPECT_EQ(d.c()->event_seq, ev + 2);
}

}  // namespace
}  // namespace nicmux
