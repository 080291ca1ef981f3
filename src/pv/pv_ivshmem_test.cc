// The pv port's VM transport (transport=ivshmem): nicmuxd as the ivshmem server of QEMU's
// ivshmem-doorbell device. A client here reads the server's messages 8 bytes at a time, as
// QEMU's hw/misc/ivshmem.c does, checks each (value, fd) against the protocol of
// docs/specs/ivshmem-spec.rst, then drives the device through the region it got: its kicks are
// our peer's eventfds (what QEMU signals on a doorbell write), its irqs the guest peer's. Hostile
// clients: bytes and fds sent to the server, a second client, doorbells rung before anything is
// set up, a client that reconnects (QEMU's chardev reconnect=) and the port going away.
#include <endian.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/handover.h"
#include "base/pausable.h"
#include "base/unix_socket.h"
#include "packet/offload_ops.h"
#include "pv/pv_abi.h"
#include "pv/pv_port.h"
#include "tests/support/frames.h"
#include "tests/support/pv_driver.h"

namespace nicmux {
namespace {

using testing::Bytes;

struct Msg {
  int64_t value = 0;
  UniqueFd fd;    // at most one (QEMU takes one per message)
  int nfds = 0;   // how many came
  bool ok = false;
};

// One ivshmem client: the socket and what it received, and a RawPvDriver over the region.
class IvshmemClient {
 public:
  explicit IvshmemClient(EventLoop* loop) : loop_(loop), d(loop) {}
  EventLoop* loop_;
  testing::RawPvDriver d;
  std::vector<UniqueFd> host_fds, guest_fds;  // our peer's (kicks) and the guest's (irqs)
  int64_t version = -2, id = -2;

  bool Dial(const std::string& path) {
    auto addr = UnixAddr(path);
    if (!addr) return false;
    d.sock = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    return ::connect(d.sock.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) == 0;
  }
  // The next message: 8 bytes and their fd, turning the loop until it comes; ok false at EOF
  // or after a second of nothing.
  Msg Next() {
    Msg m;
    uint8_t buf[8];
    size_t got = 0;
    for (int i = 0; i < 200 && got < 8; ++i) {
      iovec iov{buf + got, 8 - got};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      const ssize_t n = ::recvmsg(d.sock.get(), &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n == 0) return m;
      if (n < 0) {
        if (errno != EAGAIN) return m;
        loop_->RunOnce(5);
        continue;
      }
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
        const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t j = 0; j < k; ++j) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + j * sizeof(int), sizeof fd);
          if (m.nfds++ == 0) m.fd = UniqueFd(fd); else ::close(fd);
        }
      }
      got += static_cast<size_t>(n);
    }
    if (got < 8) return m;
    uint64_t le;
    std::memcpy(&le, buf, 8);
    m.value = static_cast<int64_t>(le64toh(le));
    m.ok = true;
    return m;
  }
  // The whole setup as QEMU takes it; "" or what was wrong. doorbells: the eventfds expected
  // per peer.
  std::string Setup(uint32_t doorbells) {
    Msg v = Next();
    if (!v.ok || v.nfds != 0) return "version message";
    version = v.value;
    Msg i = Next();
    if (!i.ok || i.nfds != 0) return "id message";
    id = i.value;
    Msg s = Next();
    if (!s.ok || s.value != -1 || s.nfds != 1) return "shm message: value " + std::to_string(s.value);
    d.memfd = std::move(s.fd);
    for (uint32_t k = 0; k < 2 * doorbells; ++k) {
      Msg e = Next();
      if (!e.ok || e.nfds != 1) return "eventfd message " + std::to_string(k);
      const int64_t want = k < doorbells ? NMX_PV_IVSHMEM_HOST_PEER : NMX_PV_IVSHMEM_GUEST_PEER;
      if (e.value != want) return "eventfd message " + std::to_string(k) + " for peer " + std::to_string(e.value);
      (k < doorbells ? host_fds : guest_fds).push_back(std::move(e.fd));
    }
    // The RawPvDriver's doorbells: kick, irq per doorbell.
    for (uint32_t k = 0; k < doorbells; ++k) {
      d.bells.emplace_back(::dup(host_fds[k].get()));
      d.bells.emplace_back(::dup(guest_fds[k].get()));
    }
    struct stat st;
    if (::fstat(d.memfd.get(), &st) != 0) return "fstat";
    d.size = static_cast<size_t>(st.st_size);
    void* m = ::mmap(nullptr, d.size, PROT_READ | PROT_WRITE, MAP_SHARED, d.memfd.get(), 0);
    if (m == MAP_FAILED) return "mmap";
    d.base = static_cast<std::byte*>(m);
    return "";
  }
  // Nothing more on the socket (turns the loop a few times first).
  bool Quiet() {
    for (int i = 0; i < 5; ++i) loop_->RunOnce(5);
    char c;
    return ::recv(d.sock.get(), &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN;
  }
  bool Closed() {
    for (int i = 0; i < 5; ++i) loop_->RunOnce(5);
    char c;
    return ::recv(d.sock.get(), &c, 1, MSG_DONTWAIT) == 0;
  }
  uint64_t IrqCount(uint32_t doorbell) {
    uint64_t v = 0;
    return ::read(guest_fds[doorbell].get(), &v, 8) == 8 ? v : 0;
  }
};

Bytes Frame(uint32_t len, uint8_t seed) {
  Bytes f(len);
  const uint8_t hdr[14] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5};
  std::memcpy(f.data(), hdr, std::min<uint32_t>(len, 14));
  for (uint32_t i = 14; i < len; ++i) f[i] = std::byte(uint8_t(seed + i));
  return f;
}

class PvIvshmemTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto l = EventLoop::Create();
    ASSERT_TRUE(l.has_value());
    loop_ = std::move(*l);
    char dir[] = "/tmp/nmxivXXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    path_ = std::string(dir) + "/iv.sock";
    Make({});
  }
  void Make(PvPortOptions o) {
    port_.reset();
    o.name = "iv0";
    o.socket_path = path_;
    o.ivshmem = true;
    o.mac[0] = 2, o.mac[5] = 7;
    auto p = CreatePvPort(o, loop_.get(), &workers_);
    ASSERT_TRUE(p.has_value()) << p.error().message();
    port_ = std::move(*p);
  }
  std::string Detail(const std::string& key) const {
    for (const auto& [k, v] : port_->Details()) {
      if (k == key && std::holds_alternative<std::string>(v)) return std::get<std::string>(v);
    }
    return "";
  }

  std::unique_ptr<EventLoop> loop_;
  NoWorker workers_;
  std::string path_;
  std::unique_ptr<Port> port_;
};

TEST_F(PvIvshmemTest, SetupMessagesAsQemuReadsThem) {
  IvshmemClient c(loop_.get());
  ASSERT_TRUE(c.Dial(path_));
  ASSERT_EQ(c.Setup(2), "");
  EXPECT_EQ(c.version, 0);
  EXPECT_EQ(c.id, int64_t{NMX_PV_IVSHMEM_GUEST_PEER});
  EXPECT_TRUE(c.Quiet());  // nothing after the guest's own eventfds
  // BAR2: the file's size is a power of two, and the header says it.
  EXPECT_TRUE(std::has_single_bit(c.d.size)) << c.d.size;
  EXPECT_EQ(c.d.h()->magic, NMX_PV_MAGIC);
  EXPECT_EQ(c.d.h()->region_size, c.d.size);
  EXPECT_LE(c.d.h()->bufs_offset + c.d.h()->bufs_size, c.d.size);
  EXPECT_EQ(c.d.h()->features & NMX_PV_FEATURE_MEM_REGIONS, 0u);  // no fd channel
  EXPECT_EQ(c.d.h()->status, NMX_PV_STATUS_OK);
  // Sealed all the same: the client can neither shrink nor grow it.
  EXPECT_NE(::ftruncate(c.d.memfd.get(), 4096), 0);
  // The mailbox through our peer's eventfd 0 (a doorbell write 0 << 16 | 0), the answer's irq
  // on the guest's vector 0.
  nmx_pv_msg r = c.d.Call(NMX_PV_MSG_GET_INFO);
  ASSERT_EQ(r.status, 0);
  nmx_pv_info info;
  std::memcpy(&info, r.payload, sizeof info);
  EXPECT_EQ(info.mac[5], 7);
  EXPECT_GE(c.IrqCount(0), 1u);
  EXPECT_EQ(port_->State(), "connected");
  EXPECT_EQ(Detail("transport"), "ivshmem");
}

TEST_F(PvIvshmemTest, PaddedToAPowerOfTwoForEveryLayout) {
  for (uint32_t q : {1u, 3u, 8u}) {
    PvPortOptions o;
    o.queues = q;
    o.ring = 64;
    o.buf_size = 1536;
    Make(o);
    IvshmemClient c(loop_.get());
    ASSERT_TRUE(c.Dial(path_));
    ASSERT_EQ(c.Setup(1 + q), "") << q;
    EXPECT_TRUE(std::has_single_bit(c.d.size)) << c.d.size;
    EXPECT_EQ(c.d.h()->region_size, c.d.size);
    EXPECT_LT(c.d.h()->bufs_offset + c.d.h()->bufs_size, c.d.size + 1);
    EXPECT_GT(2 * (c.d.h()->bufs_offset + c.d.h()->bufs_size), c.d.size);  // no more than needed
  }
}

// A guest rings every doorbell (ours and its own, as QEMU forwards them) before it asked
// anything: nothing is answered, nothing breaks, and the device then works.
TEST_F(PvIvshmemTest, DoorbellsBeforeSetupAreHarmless) {
  IvshmemClient c(loop_.get());
  ASSERT_TRUE(c.Dial(path_));
  ASSERT_EQ(c.Setup(2), "");
  for (int i = 0; i < 1000; ++i) {
    for (uint32_t b = 0; b < 2; ++b) {
      c.d.Kick(b);
      uint64_t one = 1;
      ASSERT_EQ(::write(c.guest_fds[b].get(), &one, 8), 8);
    }
  }
  for (int i = 0; i < 10; ++i) loop_->RunOnce(5);
  EXPECT_EQ(c.d.c()->resp_seq, 0u);  // req_seq 0: nothing asked, nothing answered
  EXPECT_EQ(port_->State(), "connected");
  // A frame posted before QUEUE_SETUP is not looked at.
  c.d.PostTx(0, 0, Frame(64, 1));
  Batch b;
  EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
  port_->RxDone(0, b, 0);
  c.d.tx(0)->posted = 0;
  ASSERT_EQ(c.d.Start(), "");
  EXPECT_EQ(port_->State(), "running");
  c.d.PostTx(0, 3, Frame(100, 9));
  b.Clear();
  ASSERT_EQ(port_->Rx(0, b, kBurst), 1u);
  Bytes out(b[0].len);
  CopyPacketTo(b[0], out.data());
  EXPECT_EQ(out, Frame(100, 9));
  port_->RxDone(0, b, 1);
  EXPECT_EQ(c.d.tx(0)->done, 1u);
}

// UNTRUSTED client: the protocol has no client messages; bytes close the connection, and the
// region (which QEMU would keep mapped) says the device is gone and why.
TEST_F(PvIvshmemTest, ClientBytesCloseTheConnectionAndMarkTheRegionGone) {
  IvshmemClient c(loop_.get());
  ASSERT_TRUE(c.Dial(path_));
  ASSERT_EQ(c.Setup(2), "");
  ASSERT_EQ(::send(c.d.sock.get(), "hello", 5, MSG_NOSIGNAL), 5);
  EXPECT_TRUE(c.Closed());
  EXPECT_EQ(port_->State(), "waiting");
  EXPECT_EQ(c.d.h()->status, NMX_PV_STATUS_GONE);
  EXPECT_NE(std::string(c.d.h()->broken_reason).find("sent 5 bytes"), std::string::npos) << c.d.h()->broken_reason;
}

TEST_F(PvIvshmemTest, ClientFdsAreClosedAndCloseTheConnection) {
  IvshmemClient c(loop_.get());
  ASSERT_TRUE(c.Dial(path_));
  ASSERT_EQ(c.Setup(2), "");
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  std::vector<int> fds(6, p[1]);
  uint8_t x = 0;
  ASSERT_TRUE(SendWithFds(c.d.sock.get(), std::as_bytes(std::span(&x, 1)), fds).has_value());
  ::close(p[1]);
  EXPECT_TRUE(c.Closed());
  // Every copy of the pipe's write end is closed: the read end sees EOF.
  char ch;
  EXPECT_EQ(::read(p[0], &ch, 1), 0);
  ::close(p[0]);
}

// One VM per server socket: a second client gets nothing and is closed; the first goes on.
TEST_F(PvIvshmemTest, OneClientAtATime) {
  IvshmemClient a(loop_.get());
  ASSERT_TRUE(a.Dial(path_));
  ASSERT_EQ(a.Setup(2), "");
  IvshmemClient b(loop_.get());
  ASSERT_TRUE(b.Dial(path_));
  EXPECT_TRUE(b.Closed());
  EXPECT_EQ(a.d.Call(NMX_PV_MSG_GET_INFO).status, 0);
}

// QEMU's chardev reconnect=: the next connection gets a fresh region (a new generation); the
// old one says it is gone (QEMU 7.2 keeps the old BAR2: "server sent unexpected shared memory
// message"; docs/pv-protocol.md).
TEST_F(PvIvshmemTest, ReconnectGetsAFreshRegionAndTheOldSaysGone) {
  IvshmemClient a(loop_.get());
  ASSERT_TRUE(a.Dial(path_));
  ASSERT_EQ(a.Setup(2), "");
  ASSERT_EQ(a.d.Start(), "");
  EXPECT_EQ(a.d.h()->generation, 1u);
  a.d.sock.Reset();
  for (int i = 0; i < 5; ++i) loop_->RunOnce(5);
  EXPECT_EQ(port_->State(), "waiting");
  EXPECT_EQ(a.d.h()->status, NMX_PV_STATUS_GONE);
  EXPECT_NE(std::string(a.d.h()->broken_reason).find("QEMU closed"), std::string::npos) << a.d.h()->broken_reason;
  IvshmemClient b(loop_.get());
  ASSERT_TRUE(b.Dial(path_));
  ASSERT_EQ(b.Setup(2), "");
  EXPECT_EQ(b.d.h()->generation, 2u);
  EXPECT_EQ(b.d.h()->status, NMX_PV_STATUS_OK);
  EXPECT_EQ(b.d.Call(NMX_PV_MSG_GET_INFO).status, 0);
  // The old region's doorbells lead nowhere now.
  a.d.Kick(0);
  for (int i = 0; i < 3; ++i) loop_->RunOnce(5);
  EXPECT_EQ(b.d.Call(NMX_PV_MSG_STATS_GET).status, 0);
}

// The port deleted (or nicmuxd stopping): the guest's region says so.
TEST_F(PvIvshmemTest, PortGoneMarksTheRegion) {
  IvshmemClient c(loop_.get());
  ASSERT_TRUE(c.Dial(path_));
  ASSERT_EQ(c.Setup(2), "");
  port_.reset();
  EXPECT_EQ(c.d.h()->status, NMX_PV_STATUS_GONE);
  EXPECT_NE(std::string(c.d.h()->broken_reason).find("restart the VM"), std::string::npos);
}

// A hostile guest through the region is the process transport's case (pv_hostile_test.cc);
// once here: a ring index beyond the ring breaks the device, the mailbox says so.
TEST_F(PvIvshmemTest, GuestBreakingTheRingBreaksTheDevice) {
  IvshmemClient c(loop_.get());
  ASSERT_TRUE(c.Dial(path_));
  ASSERT_EQ(c.Setup(2), "");
  ASSERT_EQ(c.d.Start(), "");
  __atomic_store_n(&c.d.tx(0)->posted, 5000u, __ATOMIC_RELEASE);
  Batch b;
  EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
  port_->RxDone(0, b, 0);
  EXPECT_EQ(c.d.h()->status, NMX_PV_STATUS_BROKEN);
  EXPECT_EQ(port_->State(), "broken");
  EXPECT_EQ(c.d.Call(NMX_PV_MSG_GET_INFO).status, -EIO);
}

// A live upgrade (docs/pv-protocol.md "Live upgrade"): the port handed over to a new one (on
// its own loop; the old port's is never turned again, as the old process's after the commit)
// goes on with the same region, doorbells and positions: the guest sees nothing. Registered
// memory in an ivshmem port's record is a tampered record.
TEST_F(PvIvshmemTest, HandedOverTheGuestSeesNothing) {
  IvshmemClient c(loop_.get());
  ASSERT_TRUE(c.Dial(path_));
  ASSERT_EQ(c.Setup(2), "");
  ASSERT_EQ(c.d.Start(), "");
  c.d.PostTx(0, 0, Frame(100, 1));
  Batch b;
  ASSERT_EQ(port_->Rx(0, b, kBurst), 1u);
  port_->RxDone(0, b, 1);
  const uint32_t generation = c.d.h()->generation;
  auto loop_b = EventLoop::Create();
  ASSERT_TRUE(loop_b.has_value());
  PvPortOptions o;
  o.name = "iv0";
  o.socket_path = path_;
  o.ivshmem = true;
  o.mac[0] = 2, o.mac[5] = 7;
  {
    HandoverRecord state;
    ASSERT_TRUE(port_->Export(&state).has_value());
    state.mutable_values()["pv.mem.1.size"] = "4096";
    auto made = CreatePvPort(o, loop_b->get(), &workers_, &state);
    ASSERT_FALSE(made.has_value());
    EXPECT_NE(made.error().message().find("transport=ivshmem has no registered memory"), std::string::npos)
        << made.error().message();
  }
  HandoverRecord state;
  ASSERT_TRUE(port_->Export(&state).has_value());
  auto made = CreatePvPort(o, loop_b->get(), &workers_, &state);
  ASSERT_TRUE(made.has_value()) << made.error().message();
  std::unique_ptr<Port> next = std::move(*made);
  HandoverRecord pos;
  ASSERT_TRUE(port_->ExportPositions(&pos).has_value());
  ASSERT_TRUE(next->ImportPositions(pos).has_value());
  next->HandoverCommitted();
  c.d.loop = loop_b->get();
  c.d.PostTx(0, 1, Frame(100, 2));
  b.Clear();
  ASSERT_EQ(next->Rx(0, b, kBurst), 1u);
  Bytes out(b[0].len);
  CopyPacketTo(b[0], out.data());
  EXPECT_EQ(out, Frame(100, 2));
  next->RxDone(0, b, 1);
  EXPECT_EQ(c.d.tx(0)->done, 2u);
  EXPECT_EQ(c.d.Call(NMX_PV_MSG_GET_INFO).status, 0);  // the mailbox, through the same doorbells
  EXPECT_EQ(c.d.h()->status, NMX_PV_STATUS_OK);
  EXPECT_EQ(c.d.h()->generation, generation);
  EXPECT_EQ(next->State(), "running");
  char byte;
  EXPECT_LT(::recv(c.d.sock.get(), &byte, 1, MSG_DONTWAIT), 0);  // nothing sent to QEMU again
  next.reset();
}

}  // namespace
}  // namespace nicmux
