// TapPort against the real kernel (runs as root): the port creates a TAP interface with an
// address, the test plays a host at .2 on that subnet and exchanges real frames with the
// kernel's stack (ARP, ICMP echo), checks that frames not sent are received again, the
// multi-queue device, the option errors, and that the interface goes away with the port.
#include "port/tap_port.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <net/if.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "base/check.h"

namespace nicmux {
namespace {

using Frame = std::vector<uint8_t>;
using Mac = std::array<uint8_t, 6>;

constexpr Mac kPeerMac = {0x02, 0x6e, 0x6d, 0x78, 0x00, 0x02};  // the test's "host" at .2
constexpr Mac kBroadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

int Subnet() { return 20 + getpid() % 200; }
uint32_t Ip(int host) {  // 10.213.<subnet>.<host>, host byte order
  return (10u << 24) | (213u << 16) | (static_cast<uint32_t>(Subnet()) << 8) |
         static_cast<uint32_t>(host);
}
std::string IpText(int host) {
  return "10.213." + std::to_string(Subnet()) + "." + std::to_string(host);
}
std::string UniqueIfname() {
  static int n = 0;
  return "nmxt" + std::to_string(getpid()) + "x" + std::to_string(n++);
}

// ---------------------------------------------------------------- frame building and parsing

void Put16(Frame& f, uint16_t v) {
  f.push_back(static_cast<uint8_t>(v >> 8));
  f.push_back(static_cast<uint8_t>(v));
}
void Put32(Frame& f, uint32_t v) {
  Put16(f, static_cast<uint16_t>(v >> 16));
  Put16(f, static_cast<uint16_t>(v));
}
void PutMac(Frame& f, const Mac& m) { f.insert(f.end(), m.begin(), m.end()); }
uint16_t Get16(const Frame& f, size_t at) { return static_cast<uint16_t>(f[at] << 8 | f[at + 1]); }
uint32_t Get32(const Frame& f, size_t at) {
  return uint32_t{Get16(f, at)} << 16 | Get16(f, at + 2);
}
Mac GetMac(const Frame& f, size_t at) {
  Mac m;
  std::copy(f.begin() + static_cast<long>(at), f.begin() + static_cast<long>(at + 6), m.begin());
  return m;
}

uint16_t Checksum(const uint8_t* p, size_t n) {
  uint32_t sum = 0;
  for (size_t i = 0; i + 1 < n; i += 2) sum += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
  if (n & 1) sum += static_cast<uint32_t>(p[n - 1] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

Frame Arp(uint16_t op, const Mac& eth_dst, const Mac& sha, uint32_t spa, const Mac& tha,
          uint32_t tpa) {
  Frame f;
  PutMac(f, eth_dst);
  PutMac(f, sha);
  Put16(f, 0x0806);
  Put16(f, 1);       // Ethernet
  Put16(f, 0x0800);  // IPv4
  f.push_back(6);
  f.push_back(4);
  Put16(f, op);
  PutMac(f, sha);
  Put32(f, spa);
  PutMac(f, tha);
  Put32(f, tpa);
  return f;
}

Frame IcmpEcho(const Mac& dst, const Mac& src, uint32_t sip, uint32_t dip, uint16_t id,
               uint16_t seq, size_t payload_bytes = 32) {
  Frame f;
  PutMac(f, dst);
  PutMac(f, src);
  Put16(f, 0x0800);
  const size_t ip = f.size();
  f.push_back(0x45);
  f.push_back(0);
  Put16(f, static_cast<uint16_t>(20 + 8 + payload_bytes));
  Put16(f, seq);     // identification
  Put16(f, 0x4000);  // DF
  f.push_back(64);
  f.push_back(1);  // ICMP
  Put16(f, 0);
  Put32(f, sip);
  Put32(f, dip);
  const uint16_t ipsum = Checksum(f.data() + ip, 20);
  f[ip + 10] = static_cast<uint8_t>(ipsum >> 8);
  f[ip + 11] = static_cast<uint8_t>(ipsum);
  const size_t icmp = f.size();
  f.push_back(8);  // echo request
  f.push_back(0);
  Put16(f, 0);
  Put16(f, id);
  Put16(f, seq);
  for (size_t i = 0; i < payload_bytes; ++i) f.push_back(static_cast<uint8_t>(i * 7 + seq));
  const uint16_t sum = Checksum(f.data() + icmp, f.size() - icmp);
  f[icmp + 2] = static_cast<uint8_t>(sum >> 8);
  f[icmp + 3] = static_cast<uint8_t>(sum);
  return f;
}

bool IsArp(const Frame& f, uint16_t op) {
  return f.size() >= 42 && Get16(f, 12) == 0x0806 && Get16(f, 20) == op;
}
bool IsEchoReply(const Frame& f, uint16_t id, uint16_t seq) {
  return f.size() >= 42 && Get16(f, 12) == 0x0800 && f[23] == 1 && f[34] == 0 &&
         Get16(f, 38) == id && Get16(f, 40) == seq;
}

// ---------------------------------------------------------------- PacketRefs over test bytes

// A PacketRef over `f` split into segments of seg_bytes (the first head_len bytes also in the
// private head copy, as a source port makes them).
struct TestPacket {
  Frame bytes;
  std::vector<Segment> segs;
  PacketRef ref;

  explicit TestPacket(const Frame& f, size_t seg_bytes = SIZE_MAX) : bytes(f) {
    for (size_t at = 0; at < bytes.size(); at += seg_bytes) {
      const size_t k = std::min(seg_bytes, bytes.size() - at);
      segs.push_back({reinterpret_cast<std::byte*>(bytes.data() + at), static_cast<uint32_t>(k)});
    }
    ref.segs = segs.data();
    ref.nsegs = static_cast<uint16_t>(segs.size());
    ref.len = static_cast<uint32_t>(bytes.size());
    ref.head_len = std::min<uint32_t>(ref.len, kHeadBytes);
    std::memcpy(ref.head, bytes.data(), ref.head_len);
    // Where the bytes after the head start.
    size_t skip = ref.head_len;
    uint16_t s = 0;
    while (s < ref.nsegs && skip >= segs[s].len) skip -= segs[s++].len;
    ref.seg = s;
    ref.seg_off = static_cast<uint32_t>(skip);
  }
};

size_t TxFrame(TapPort& port, uint32_t q, const Frame& f, size_t seg_bytes = SIZE_MAX) {
  TestPacket p(f, seg_bytes);
  const PacketRef* ptrs[] = {&p.ref};
  return port.Tx(q, ptrs);
}

Frame Bytes(const PacketRef& p) {
  struct W {
    Frame* f;
    size_t Write(const void* src, size_t n) {
      const uint8_t* b = static_cast<const uint8_t*>(src);
      f->insert(f->end(), b, b + n);
      return n;
    }
  };
  Frame f;
  W w{&f};
  CopyPacket(p, w);
  return f;
}

// Waits up to timeout_ms for readable queue fds of the port.
void WaitReadable(TapPort& port, int timeout_ms) {
  std::vector<NotifyFd> fds;
  port.ArmAllNotify(&fds);
  std::vector<pollfd> pfds;
  for (const NotifyFd& f : fds) pfds.push_back({f.fd, POLLIN, 0});
  ::poll(pfds.data(), pfds.size(), timeout_ms);
  port.DisarmAllNotify();
}

// Receives frames from every queue (all sent) until `want` matches one, which is returned.
// Frames that do not match go to `other` (to answer the kernel's ARP requests); the kernel
// also sends IPv6 router solicitations and MLD reports on a new link, which are skipped. The
// bound is generous (a busy machine): it is only reached when the frame never comes.
std::optional<Frame> WaitFor(TapPort& port, const std::function<bool(const Frame&)>& want,
                             const std::function<void(const Frame&)>& other = nullptr,
                             int timeout_ms = 30000) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    std::optional<Frame> found;
    for (uint32_t q = 0; q < port.NumQueuePairs(); ++q) {
      Batch b;
      const size_t n = port.Rx(q, b, kBurst);
      for (uint32_t i = 0; i < n; ++i) {
        Frame f = Bytes(b[i]);
        EXPECT_EQ(f.size(), b[i].len);
        if (!found && want(f)) {
          found = std::move(f);
        } else if (other) {
          other(f);
        }
      }
      port.RxDone(q, b, n);
    }
    if (found) return found;
    WaitReadable(port, 100);
  }
  return std::nullopt;
}

class TapPortTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ifname_ = UniqueIfname();
    TapPortOptions o;
    o.name = "tap.test";
    o.ifname = ifname_;
    o.address = IpText(1) + "/24";
    o.mtu = 9000;
    auto p = TapPort::Create(o);
    ASSERT_TRUE(p) << p.error().message();
    port_ = std::move(*p);
  }

  // Answers the kernel's ARP requests for the test's host at .2.
  void AnswerArp(const Frame& f) {
    if (IsArp(f, 1) && Get32(f, 38) == Ip(2)) {
      EXPECT_EQ(TxFrame(*port_, 0, Arp(2, GetMac(f, 6), kPeerMac, Ip(2), GetMac(f, 22), Ip(1))),
                1u);
    }
  }
  // ARP for .1 from .2: the kernel's answer gives the interface's MAC (and the kernel learns
  // ours from the request).
  Mac ResolveTap(uint32_t q = 0) {
    const Frame req = Arp(1, kBroadcast, kPeerMac, Ip(2), Mac{}, Ip(1));
    EXPECT_EQ(TxFrame(*port_, q, req), 1u);
    auto reply =
        WaitFor(*port_, [](const Frame& f) { return IsArp(f, 2) && Get32(f, 28) == Ip(1); });
    EXPECT_TRUE(reply.has_value()) << "no ARP reply from the kernel";
    if (!reply) return Mac{};
    EXPECT_EQ(GetMac(*reply, 0), kPeerMac);
    EXPECT_EQ(GetMac(*reply, 32), kPeerMac);
    EXPECT_EQ(Get32(*reply, 38), Ip(2));
    EXPECT_EQ(GetMac(*reply, 22), GetMac(*reply, 6));
    return GetMac(*reply, 22);
  }

  std::string ifname_;
  std::unique_ptr<TapPort> port_;
};

TEST_F(TapPortTest, CreatesTheConfiguredInterface) {
  EXPECT_NE(::if_nametoindex(ifname_.c_str()), 0u);
  EXPECT_EQ(port_->NumQueuePairs(), 1u);
  EXPECT_EQ(port_->State(), "up");
  int sock = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(sock, 0);
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, ifname_.c_str(), IFNAMSIZ - 1);
  ASSERT_EQ(::ioctl(sock, SIOCGIFMTU, &ifr), 0);
  EXPECT_EQ(ifr.ifr_mtu, 9000);
  ASSERT_EQ(::ioctl(sock, SIOCGIFADDR, &ifr), 0);
  EXPECT_EQ(ntohl(reinterpret_cast<sockaddr_in*>(&ifr.ifr_addr)->sin_addr.s_addr), Ip(1));
  ASSERT_EQ(::ioctl(sock, SIOCGIFNETMASK, &ifr), 0);
  EXPECT_EQ(ntohl(reinterpret_cast<sockaddr_in*>(&ifr.ifr_netmask)->sin_addr.s_addr), 0xffffff00u);
  ::close(sock);
  std::vector<NotifyFd> fds;
  EXPECT_FALSE(port_->ArmAllNotify(&fds));
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_EQ(fds[0].fd, port_->fd(0));
  EXPECT_FALSE(fds[0].eventfd);
  EXPECT_EQ(port_->TxRoom(0), kBurst);
}

TEST_F(TapPortTest, KernelAnswersArpAndPing) {
  const Mac tap_mac = ResolveTap();
  for (uint16_t seq = 1; seq <= 3; ++seq) {
    const Frame req = IcmpEcho(tap_mac, kPeerMac, Ip(2), Ip(1), 0x4242, seq);
    ASSERT_EQ(TxFrame(*port_, 0, req), 1u);
    auto reply = WaitFor(
        *port_, [&](const Frame& f) { return IsEchoReply(f, 0x4242, seq); },
        [&](const Frame& f) { AnswerArp(f); });
    ASSERT_TRUE(reply.has_value()) << "no echo reply for seq " << seq;
    const Frame& r = *reply;
    EXPECT_EQ(r.size(), req.size());
    EXPECT_EQ(GetMac(r, 0), kPeerMac);
    EXPECT_EQ(GetMac(r, 6), tap_mac);
    EXPECT_EQ(Get32(r, 26), Ip(1));
    EXPECT_EQ(Get32(r, 30), Ip(2));
    EXPECT_EQ(Checksum(r.data() + 14, 20), 0);             // the kernel's checksums are whole
    EXPECT_EQ(Checksum(r.data() + 34, r.size() - 34), 0);  // (no offloads)
    EXPECT_TRUE(std::equal(r.begin() + 42, r.end(), req.begin() + 42));  // payload echoed
  }
  const PortStats s = port_->Stats();
  EXPECT_GE(s.tx_packets, 4u);
  EXPECT_GE(s.rx_packets, 4u);
  EXPECT_EQ(s.tx_dropped, 0u);
  EXPECT_EQ(s.rx_dropped, 0u);
}

// The bytes after the head come from the source segments (scattered: iovecs; more than 64
// segments: the bounce buffer), the head from the private copy only.
TEST_F(TapPortTest, TxScatteredPacketsAndHeadFromPrivateCopy) {
  const Mac tap_mac = ResolveTap();
  const struct {
    uint16_t seq;
    size_t seg_bytes;
  } cases[] = {{10, SIZE_MAX}, {11, 100}, {12, 7}, {13, 2}, {14, 1}};
  for (const auto& c : cases) {
    const Frame req = IcmpEcho(tap_mac, kPeerMac, Ip(2), Ip(1), 0x77, c.seq, 400);
    TestPacket p(req, c.seg_bytes);
    // Scribble over the segment bytes the head copy covers: they must not be read.
    std::memset(p.bytes.data(), 0xee, p.ref.head_len);
    const PacketRef* ptrs[] = {&p.ref};
    ASSERT_EQ(port_->Tx(0, ptrs), 1u);
    auto reply = WaitFor(
        *port_, [&](const Frame& f) { return IsEchoReply(f, 0x77, c.seq); },
        [&](const Frame& f) { AnswerArp(f); });
    ASSERT_TRUE(reply.has_value()) << "segments of " << c.seg_bytes << " bytes";
    EXPECT_TRUE(std::equal(reply->begin() + 42, reply->end(), req.begin() + 42));
  }
  EXPECT_EQ(port_->Stats().tx_dropped, 0u);
}

TEST_F(TapPortTest, FramesNotSentAreReceivedAgain) {
  const Mac tap_mac = ResolveTap();
  for (uint16_t seq = 1; seq <= 4; ++seq) {
    ASSERT_EQ(TxFrame(*port_, 0, IcmpEcho(tap_mac, kPeerMac, Ip(2), Ip(1), 0x99, seq)), 1u);
  }
  // Collect at least 3 frames, giving every partial batch back unsent (kept, in order).
  const uint64_t rx_before = port_->Stats().rx_packets;
  const uint64_t rx_bytes_before = port_->Stats().rx_bytes;
  Batch b;
  std::vector<Frame> first;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    b.Clear();
    const size_t n = port_->Rx(0, b, kBurst);
    ASSERT_EQ(n, b.size());
    // The frames kept come back first, unchanged.
    for (size_t i = 0; i < first.size(); ++i) {
      ASSERT_LT(i, n);
      EXPECT_EQ(Bytes(b[static_cast<uint32_t>(i)]), first[i]) << "frame " << i;
    }
    first.clear();
    for (uint32_t i = 0; i < n; ++i) first.push_back(Bytes(b[i]));
    if (n >= 3) break;
    port_->RxDone(0, b, 0);
    std::vector<NotifyFd> fds;
    if (n > 0) {
      EXPECT_TRUE(port_->ArmAllNotify(&fds));  // kept frames: do not sleep
    }
    WaitReadable(*port_, 100);
  }
  ASSERT_GE(first.size(), 3u);
  EXPECT_EQ(port_->Stats().rx_packets, rx_before);

  // Nothing sent: all come back, and a smaller max takes the oldest.
  port_->RxDone(0, b, 0);
  b.Clear();
  ASSERT_EQ(port_->Rx(0, b, 2), 2u);
  EXPECT_EQ(Bytes(b[0]), first[0]);
  EXPECT_EQ(Bytes(b[1]), first[1]);
  // One sent: the next Rx starts at the second.
  port_->RxDone(0, b, 1);
  EXPECT_EQ(port_->Stats().rx_packets, rx_before + 1);
  EXPECT_EQ(port_->Stats().rx_bytes, rx_bytes_before + first[0].size());
  b.Clear();
  const size_t n = port_->Rx(0, b, kBurst);
  ASSERT_GE(n, first.size() - 1);
  for (size_t i = 1; i < first.size(); ++i) {
    EXPECT_EQ(Bytes(b[static_cast<uint32_t>(i - 1)]), first[i]) << "frame " << i;
  }
  port_->RxDone(0, b, n);
  EXPECT_EQ(port_->Stats().rx_packets, rx_before + 1 + n);
  std::vector<NotifyFd> fds;
  EXPECT_FALSE(port_->ArmAllNotify(&fds));
}

TEST_F(TapPortTest, TxErrorsAreCountedDrops) {
  // Shorter than an Ethernet header: the kernel refuses it (EINVAL); taken, counted.
  const Frame runt(10, 0xab);
  EXPECT_EQ(TxFrame(*port_, 0, runt), 1u);
  EXPECT_EQ(port_->DropsFor(DropReason::kBadFrame), 1u);
  // Segments that end before len: refused without reading past them.
  TestPacket p(IcmpEcho(kBroadcast, kPeerMac, Ip(2), Ip(1), 1, 1, 200));
  p.segs[0].len = 100;
  const PacketRef* ptrs[] = {&p.ref};
  EXPECT_EQ(port_->Tx(0, ptrs), 1u);
  EXPECT_EQ(port_->DropsFor(DropReason::kBadFrame), 2u);
  EXPECT_EQ(port_->Stats().tx_dropped, 2u);
  EXPECT_EQ(port_->Stats().tx_packets, 0u);
}

TEST_F(TapPortTest, InterfaceDeletedUnderThePort) {
  const std::string cmd = "ip link del dev " + ifname_;
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_EQ(::if_nametoindex(ifname_.c_str()), 0u);
  EXPECT_EQ(TxFrame(*port_, 0, Arp(1, kBroadcast, kPeerMac, Ip(2), Mac{}, Ip(1))), 1u);
  EXPECT_EQ(port_->DropsFor(DropReason::kPortDown), 1u);
  Batch b;
  EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
  port_->RxDone(0, b, 0);
  EXPECT_EQ(port_->State(), "down");
  EXPECT_FALSE(port_->Stats().connected);
  std::vector<NotifyFd> fds;
  EXPECT_FALSE(port_->ArmAllNotify(&fds));
  EXPECT_TRUE(fds.empty());  // its fd would poll POLLERR forever
}

TEST(TapPort, MultiQueue) {
  const std::string ifname = UniqueIfname();
  TapPortOptions o;
  o.name = "mq";
  o.ifname = ifname;
  o.queues = 2;
  o.address = IpText(1) + "/24";
  auto p = TapPort::Create(o);
  ASSERT_TRUE(p) << p.error().message();
  TapPort& port = **p;
  EXPECT_EQ(port.NumQueuePairs(), 2u);
  std::vector<NotifyFd> fds;
  EXPECT_FALSE(port.ArmAllNotify(&fds));
  ASSERT_EQ(fds.size(), 2u);
  EXPECT_NE(fds[0].fd, fds[1].fd);
  EXPECT_FALSE(fds[0].eventfd || fds[1].eventfd);
  // Sent on queue 1, the kernel's answer comes back on whichever queue it picks.
  ASSERT_EQ(TxFrame(port, 1, Arp(1, kBroadcast, kPeerMac, Ip(2), Mac{}, Ip(1))), 1u);
  auto reply = WaitFor(port, [](const Frame& f) { return IsArp(f, 2) && Get32(f, 28) == Ip(1); });
  EXPECT_TRUE(reply.has_value());
  p->reset();
  EXPECT_EQ(::if_nametoindex(ifname.c_str()), 0u);
}

TEST(TapPort, DownWhenNotUp) {
  TapPortOptions o;
  o.name = "down";
  o.ifname = UniqueIfname();
  o.up = false;
  auto p = TapPort::Create(o);
  ASSERT_TRUE(p) << p.error().message();
  EXPECT_EQ((*p)->State(), "down");
}

TEST(TapPort, GoesAwayWithThePort) {
  TapPortOptions o;
  o.name = UniqueIfname();  // ifname defaults to the port name
  auto p = TapPort::Create(o);
  ASSERT_TRUE(p) << p.error().message();
  EXPECT_EQ((*p)->ifname(), o.name);
  EXPECT_NE(::if_nametoindex(o.name.c_str()), 0u);
  // A second port cannot take the same interface over.
  auto again = TapPort::Create(o);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().message(),
            "port " + o.name + ": interface " + o.name + " exists already");
  p->reset();
  EXPECT_EQ(::if_nametoindex(o.name.c_str()), 0u);
}

TEST(TapPort, OptionErrors) {
  auto message = [](TapPortOptions o) {
    auto p = TapPort::Create(o);
    return p ? std::string("created") : p.error().message();
  };
  TapPortOptions o;
  o.name = "t";
  o.ifname = "lo";
  EXPECT_EQ(message(o), "port t: interface lo exists already");
  o.ifname = "nmx-sixteen-char";
  EXPECT_EQ(message(o), "port t: interface name \"nmx-sixteen-char\" is longer than 15 characters");
  o.ifname = "";
  o.name = "a-port-name-too-long";
  EXPECT_EQ(message(o),
            "port a-port-name-too-long: interface name \"a-port-name-too-long\" is longer than 15 "
            "characters");
  o.name = "t";
  o.ifname = "tap%d";
  EXPECT_NE(message(o).find("bad interface name"), std::string::npos);
  o.ifname = UniqueIfname();
  o.queues = 0;
  EXPECT_EQ(message(o), "port t: queues=0 out of range 1..8");
  o.queues = 9;
  EXPECT_EQ(message(o), "port t: queues=9 out of range 1..8");
  o.queues = 1;
  o.mtu = 67;
  EXPECT_EQ(message(o), "port t: mtu=67 out of range 68..65535");
  o.mtu = 65536;
  EXPECT_EQ(message(o), "port t: mtu=65536 out of range 68..65535");
  o.mtu = 0;
  for (const char* bad :
       {"10.0.0.1", "10.0.0.1/33", "10.0.0/24", "10.0.0.1/", "x/8", "10.0.0.1/2a"}) {
    o.address = bad;
    EXPECT_EQ(message(o),
              "port t: address \"" + std::string(bad) + "\" is not A.B.C.D/PREFIX (IPv4)");
  }
  // Nothing was left behind by the failed attempts.
  EXPECT_EQ(::if_nametoindex(o.ifname.c_str()), 0u);
}


// ---------------------------------------------------------------- live upgrade

// Frames of an experimental ethertype (0x88b5) sent out of the interface by a packet socket:
// the kernel hands them to the TAP fd's reader, the port.
class Injector {
 public:
  explicit Injector(const std::string& ifname) : sock_(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0)) {
    ifindex_ = static_cast<int>(::if_nametoindex(ifname.c_str()));
  }
  bool ok() const { return sock_ >= 0 && ifindex_ > 0; }
  ~Injector() {
    if (sock_ >= 0) ::close(sock_);
  }
  static Frame Make(uint32_t seq, size_t len) {
    Frame f;
    PutMac(f, kBroadcast);
    PutMac(f, kPeerMac);
    Put16(f, 0x88b5);
    Put32(f, seq);
    while (f.size() < len) f.push_back(static_cast<uint8_t>(f.size() * 13 + seq));
    return f;
  }
  static bool Ours(const Frame& f) { return f.size() >= 18 && Get16(f, 12) == 0x88b5; }
  bool Send(const Frame& f) {
    sockaddr_ll a{};
    a.sll_family = AF_PACKET;
    a.sll_ifindex = ifindex_;
    a.sll_halen = 6;
    std::memcpy(a.sll_addr, f.data(), 6);
    return ::sendto(sock_, f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&a), sizeof a) ==
           static_cast<ssize_t>(f.size());
  }

 private:
  int sock_;
  int ifindex_ = 0;
};

class TapHandover : public ::testing::Test {
 protected:
  void SetUp() override {
    o_.name = "tap.ho";
    o_.ifname = UniqueIfname();
    o_.address = IpText(1) + "/24";
    o_.mtu = 9000;
    auto p = TapPort::Create(o_);
    ASSERT_TRUE(p) << p.error().message();
    a_ = std::move(*p);
  }
  // A reads until `want` of the test's frames are among those it holds (RxDone with none
  // sent: a full destination), and returns every frame it holds, in order.
  std::vector<Frame> HoldFrames(size_t want) {
    std::vector<Frame> held;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      Batch b;
      const size_t n = a_->Rx(0, b, kBurst);
      held.clear();
      size_t ours = 0;
      for (uint32_t i = 0; i < n; ++i) {
        held.push_back(Bytes(b[i]));
        ours += Injector::Ours(held.back());
      }
      a_->RxDone(0, b, 0);
      if (ours >= want || n == kBurst) break;
      WaitReadable(*a_, 100);
    }
    return held;
  }
  std::string CreateError(TapPortOptions o, HandoverRecord& r) {
    auto p = TapPort::Create(o, &r);
    return p ? std::string("created") : p.error().message();
  }

  TapPortOptions o_;
  std::unique_ptr<TapPort> a_;
};

TEST_F(TapHandover, HeldFramesGoOverInOrderByteForByte) {
  Injector inj(o_.ifname);
  ASSERT_TRUE(inj.ok());
  // Sizes from the least a frame may be to a 9000-byte MTU's largest.
  const size_t sizes[] = {60, 1514, 64, 9014, 777, 18};
  for (uint32_t i = 0; i < std::size(sizes); ++i) ASSERT_TRUE(inj.Send(Injector::Make(i, sizes[i]))) << i;
  std::vector<Frame> held = HoldFrames(std::size(sizes));
  std::vector<Frame> ours;
  for (const Frame& f : held) {
    if (Injector::Ours(f)) ours.push_back(f);
  }
  ASSERT_EQ(ours.size(), std::size(sizes));
  for (uint32_t i = 0; i < ours.size(); ++i) EXPECT_EQ(ours[i], Injector::Make(i, sizes[i])) << i;
  const uint64_t rx_before = a_->Stats().rx_packets;

  HandoverRecord state, pos;
  ASSERT_TRUE(a_->CanHandOver());
  ASSERT_TRUE(a_->Export(&state));
  ASSERT_TRUE(a_->ExportPositions(&pos));
  EXPECT_EQ(*pos.Get("t.q.0.held"), held.size());
  // B from the record, A still there (both hold the interface through their fds).
  auto b = TapPort::Create(o_, &state);
  ASSERT_TRUE(b) << b.error().message();
  TapPort& port = **b;
  auto ip = port.ImportPositions(pos);
  ASSERT_TRUE(ip) << ip.error().message();
  EXPECT_EQ(port.State(), "up");
  // A goes (the old process exits): the interface stays, B's fd holds it.
  a_.reset();
  EXPECT_NE(::if_nametoindex(o_.ifname.c_str()), 0u);
  EXPECT_EQ(rx_before, 0u);  // nothing was sent from A

  // B's first Rx: exactly the frames A held, in order, byte for byte.
  {
    std::vector<NotifyFd> fds;
    EXPECT_TRUE(port.ArmAllNotify(&fds));  // frames held: do not sleep
    port.DisarmAllNotify();
    Batch bt;
    const size_t n = port.Rx(0, bt, static_cast<uint32_t>(held.size()));
    ASSERT_EQ(n, held.size());
    for (uint32_t i = 0; i < n; ++i) {
      EXPECT_EQ(Bytes(bt[i]), held[i]) << "frame " << i;
      EXPECT_EQ(bt[i].len, held[i].size());
    }
    // Not sent yet either: they stay held in B too, and come back first.
    port.RxDone(0, bt, 0);
    bt.Clear();
    ASSERT_EQ(port.Rx(0, bt, 2), 2u);
    EXPECT_EQ(Bytes(bt[0]), held[0]);
    EXPECT_EQ(Bytes(bt[1]), held[1]);
    port.RxDone(0, bt, 2);
    EXPECT_EQ(port.Stats().rx_packets, 2u);
  }
  // What the kernel sends now reaches B, after the rest of the held frames.
  ASSERT_TRUE(inj.Send(Injector::Make(100, 200)));
  std::vector<Frame> rest;
  auto last = WaitFor(port, [&](const Frame& f) {
    rest.push_back(f);
    return f == Injector::Make(100, 200);
  });
  ASSERT_TRUE(last.has_value());
  ASSERT_GE(rest.size(), held.size() - 2);
  for (size_t i = 2; i < held.size(); ++i) EXPECT_EQ(rest[i - 2], held[i]) << "frame " << i;
  b->reset();
  EXPECT_EQ(::if_nametoindex(o_.ifname.c_str()), 0u);
}

TEST_F(TapHandover, NothingHeldGoesOverEmpty) {
  HandoverRecord state, pos;
  ASSERT_TRUE(a_->Export(&state));
  ASSERT_TRUE(a_->ExportPositions(&pos));
  EXPECT_FALSE(pos.Has("t.q.0.held"));
  auto b = TapPort::Create(o_, &state);
  ASSERT_TRUE(b) << b.error().message();
  ASSERT_TRUE((*b)->ImportPositions(pos));
  Batch bt;
  (*b)->Rx(0, bt, kBurst);  // whatever the kernel sent (IPv6 noise): no held frame
  for (uint32_t i = 0; i < bt.size(); ++i) EXPECT_FALSE(Injector::Ours(Bytes(bt[i])));
  (*b)->RxDone(0, bt, bt.size());
}

TEST_F(TapHandover, RecordsThatAreNotThisInterfaceAreRefused) {
  const std::string not_tap = "port tap.ho: handover: queue 0's fd is not a TAP fd of " + o_.ifname;
  {
    HandoverRecord r;
    UniqueFd e(::eventfd(0, EFD_CLOEXEC));
    ASSERT_TRUE(r.SetFd("t.q.0.fd", e.get()));
    EXPECT_EQ(CreateError(o_, r), not_tap);
  }
  {
    HandoverRecord r;
    int p[2];
    ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
    ASSERT_TRUE(r.SetFd("t.q.0.fd", p[0]));
    ::close(p[0]);
    ::close(p[1]);
    EXPECT_EQ(CreateError(o_, r), not_tap);
  }
  {
    // Another interface's TAP fd.
    TapPortOptions other;
    other.name = "other";
    other.ifname = UniqueIfname();
    auto p = TapPort::Create(other);
    ASSERT_TRUE(p) << p.error().message();
    HandoverRecord r;
    ASSERT_TRUE((*p)->Export(&r));
    EXPECT_EQ(CreateError(o_, r), not_tap);
  }
  {
    HandoverRecord r;
    EXPECT_EQ(CreateError(o_, r), "port tap.ho: handover: handover: no value t.q.0.fd");
    r.Set("t.q.0.fd", 3);
    EXPECT_EQ(CreateError(o_, r), "port tap.ho: handover: handover: t.q.0.fd = 3 is above 0");
  }
  {
    // The old port had two queues, this one has one.
    HandoverRecord r;
    ASSERT_TRUE(a_->Export(&r));
    ASSERT_TRUE(r.SetFd("t.q.1.fd", a_->fd(0)));
    EXPECT_EQ(CreateError(o_, r), "port tap.ho: handover: the old port had more than 1 queue(s)");
  }
  // The interface is A's still.
  EXPECT_NE(::if_nametoindex(o_.ifname.c_str()), 0u);
  EXPECT_EQ(a_->State(), "up");
}

TEST_F(TapHandover, HostileHeldFramesAreRefused) {
  HandoverRecord state;
  ASSERT_TRUE(a_->Export(&state));
  auto b = TapPort::Create(o_, &state);
  ASSERT_TRUE(b) << b.error().message();
  TapPort& port = **b;
  auto memfd_of = [](size_t bytes) {
    UniqueFd m(::memfd_create("held", MFD_CLOEXEC));
    NICMUX_CHECK(m.valid() && ::ftruncate(m.get(), static_cast<off_t>(bytes)) == 0);
    return m;
  };
  auto error = [&](HandoverRecord& r) {
    auto e = port.ImportPositions(r);
    return e ? std::string("imported") : e.error().message();
  };
  {
    HandoverRecord r;
    r.Set("t.q.0.held", kBurst + 1);
    EXPECT_EQ(error(r), "handover: t.q.0.held = 33 is above 32");
  }
  {
    HandoverRecord r;
    r.Set("t.q.0.held", 1);
    EXPECT_EQ(error(r), "handover: no value t.q.0.frames");
  }
  {
    HandoverRecord r;
    r.Set("t.q.0.held", 1);
    UniqueFd m = memfd_of(1 << 20);
    ASSERT_TRUE(r.SetFd("t.q.0.frames", m.get()));
    r.Set("t.q.0.len.0", TapPort::kMaxFrameBytes + 1);
    EXPECT_EQ(error(r), "handover: t.q.0.len.0 = " + std::to_string(TapPort::kMaxFrameBytes + 1) + " is above " +
                            std::to_string(TapPort::kMaxFrameBytes));
  }
  {
    HandoverRecord r;
    r.Set("t.q.0.held", 1);
    UniqueFd m = memfd_of(1 << 20);
    ASSERT_TRUE(r.SetFd("t.q.0.frames", m.get()));
    r.Set("t.q.0.len.0", 13);
    EXPECT_EQ(error(r), "port tap.ho: handover: a held frame of 13 bytes");
  }
  {
    // Two frames announced, the file holds one and a half.
    HandoverRecord r;
    r.Set("t.q.0.held", 2);
    UniqueFd m = memfd_of(TapPort::kVnetHdrBytes + 100 + TapPort::kVnetHdrBytes + 50);
    ASSERT_TRUE(r.SetFd("t.q.0.frames", m.get()));
    r.Set("t.q.0.len.0", 100);
    r.Set("t.q.0.len.1", 100);
    EXPECT_EQ(error(r), "port tap.ho: handover: held frames cut short");
  }
  {
    // Not a file that can be read at an offset.
    HandoverRecord r;
    r.Set("t.q.0.held", 1);
    UniqueFd e(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    ASSERT_TRUE(r.SetFd("t.q.0.frames", e.get()));
    r.Set("t.q.0.len.0", 60);
    EXPECT_EQ(error(r), "port tap.ho: handover: held frames cut short");
  }
  // After every refusal the port holds nothing it was not given.
  Batch bt;
  port.Rx(0, bt, kBurst);
  for (uint32_t i = 0; i < bt.size(); ++i) EXPECT_FALSE(Injector::Ours(Bytes(bt[i])));
  port.RxDone(0, bt, bt.size());
}

}  // namespace
}  // namespace nicmux
