// The pv port against a hostile driver that goes beyond lying in the rings (pv_port_test.cc):
// it plays with the eventfds it shares with nicmuxd, and with the control requests that pause
// the workers, and races the control thread against a worker's burst.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <future>
#include <string>
#include <thread>

#include "base/event_loop.h"
#include "base/pausable.h"
#include "base/peer_io.h"
#include "pv/pv_abi.h"
#include "pv/pv_port.h"
#include "switch/l2_switch.h"
#include "tests/support/frames.h"
#include "tests/support/mem_port.h"
#include "tests/support/pv_driver.h"

namespace nicmux {
namespace {

using namespace std::chrono_literals;
using testing::Bytes;
using Driver = testing::RawPvDriver;

// The workers, played by the test: counts pauses, and can run one "worker round" inside the
// next pause (a worker finishing its burst while the control thread waits for it to pause).
class TestWorkers final : public Pausable {
 public:
  void Pause() override {
    ++pauses;
    if (during_next_pause) {
      auto f = std::move(during_next_pause);
      during_next_pause = nullptr;
      f();
    }
  }
  void Resume() override {}
  int pauses = 0;
  std::function<void()> during_next_pause;
};

Bytes Frame(uint32_t len) {
  Bytes f(len);
  const uint8_t hdr[14] = {2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5};
  std::memcpy(f.data(), hdr, 14);
  return f;
}

// What a hostile driver does to an eventfd it shares: blocking mode (the flag lives in the
// shared file description) and a counter one short of full, so that the host's next write
// blocks.
void MakeBlockingAndFull(int fd) {
  const int fl = ::fcntl(fd, F_GETFL);
  ASSERT_EQ(::fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
  uint64_t v;
  while (::read(fd, &v, sizeof v) == sizeof v) {
  }
  ASSERT_EQ(::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK), 0);
  const uint64_t full = 0xfffffffffffffffe;
  ASSERT_EQ(::write(fd, &full, sizeof full), static_cast<ssize_t>(sizeof full));
}

size_t OpenFds() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

class HostilePvDriver : public ::testing::Test {
 protected:
  void SetUp() override {
    auto l = EventLoop::Create();
    ASSERT_TRUE(l.has_value());
    loop_ = std::move(*l);
    char dir[] = "/tmp/nmxpvhXXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    path_ = std::string(dir) + "/pv.sock";
    Make();
  }
  void Make() {
    port_.reset();
    PvPortOptions o;
    o.name = "pv0";
    o.socket_path = path_;
    o.ring = 64;
    o.mac[0] = 2;
    o.mac[5] = 9;
    auto p = CreatePvPort(o, loop_.get(), &workers_);
    ASSERT_TRUE(p.has_value()) << p.error().message();
    port_ = std::move(*p);
  }
  bool WaitFor(const std::function<bool()>& f) {
    for (int i = 0; i < 200 && !f(); ++i) loop_->RunOnce(10);
    return f();
  }
  // One round of the worker on pair 0: drain the tx ring, take nothing.
  void WorkerRound() {
    Batch b;
    port_->Rx(0, b, kBurst);
    port_->RxDone(0, b, b.size());
  }

  std::unique_ptr<EventLoop> loop_;
  TestWorkers workers_;
  std::string path_;
  std::unique_ptr<Port> port_;
};

// A driver that makes an irq eventfd block (blocking mode, full counter) held the worker that
// signals it for 20 to 40 ms (the peer-I/O watchdog's), at every burst, for as long as it
// liked: the status was not looked at. Tx signals while holding the destination queue's
// TxLock, so every worker sending to the device spun behind it. Now the first such write costs
// the driver its device (broken, nothing signalled again), and hanging up costs it a
// quarantine: reconnecting to repeat is refused for 1 s, then longer.
TEST_F(HostilePvDriver, IrqEventfdMadeBlockingCostsItsDeviceNotTheWorker) {
  for (const bool rx_ring : {true, false}) {
    SCOPED_TRACE(rx_ring ? "rx ring (the host's Tx)" : "tx ring (the host's RxDone)");
    Make();
    Driver d(loop_.get());
    ASSERT_EQ(d.Connect(path_), "");
    ASSERT_EQ(d.Start(), "");
    for (uint32_t i = 0; i < 8; ++i) d.PostRx(0, 64 + i, 2048);
    (rx_ring ? d.rx(0) : d.tx(0))->driver_flags = NMX_PV_DRIVER_WANTS_IRQ;
    MakeBlockingAndFull(d.bells[3].get());  // doorbell 1 (pair 0): [2] kick, [3] irq
    const Bytes f = Frame(60);
    testing::SplitPacket sp(f, {});
    const PacketRef* one[1] = {&sp.p};
    // One burst that signals, on a thread of its own so that a regression fails, not hangs.
    auto burst = [&] {
      if (rx_ring) {
        port_->Tx(0, {one, 1});
      } else {
        d.PostTx(0, 0, f);
        WorkerRound();
      }
    };
    const uint64_t interrupts = PeerIoInterrupts();
    auto first = std::async(std::launch::async, burst);
    const bool returned = first.wait_for(10s) == std::future_status::ready;
    if (!returned) {
      uint64_t v;
      ASSERT_EQ(::read(d.bells[3].get(), &v, sizeof v),
                static_cast<ssize_t>(sizeof v));  // release it
    }
    ASSERT_TRUE(returned) << "the worker's irq write blocked";
    EXPECT_GT(PeerIoInterrupts(), interrupts);
    // The device is broken, naming the doorbell; the next bursts cost the worker nothing.
    EXPECT_EQ(d.h()->status, NMX_PV_STATUS_BROKEN);
    EXPECT_NE(std::string(d.h()->broken_reason).find("irq"), std::string::npos)
        << d.h()->broken_reason;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 5; ++i) burst();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 60ms) << "the worker was held again";
    // Hanging up: the port refuses drivers for a while.
    d.sock.Reset();
    EXPECT_TRUE(WaitFor([&] { return port_->State().rfind("quarantined", 0) == 0; }))
        << port_->State();
    Driver again(loop_.get());
    EXPECT_NE(again.Connect(path_), "");
  }
  // The quarantine ends (1 s the first time).
  std::this_thread::sleep_for(1100ms);
  loop_->RunOnce(0);
  EXPECT_EQ(port_->State(), "waiting");
  Driver d(loop_.get());
  EXPECT_EQ(d.Connect(path_), "");
  EXPECT_EQ(d.Start(), "");
}

// The control doorbell made blocking: the control thread was held 20 to 40 ms and the driver
// disconnected, but it could reconnect and repeat at once. Now it is quarantined too.
TEST_F(HostilePvDriver, ControlIrqMadeBlockingIsQuarantined) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  MakeBlockingAndFull(d.bells[1].get());  // doorbell 0: [0] kick, [1] irq
  nmx_pv_ctrl* c = d.c();
  c->req.type = NMX_PV_MSG_GET_INFO;
  c->req.len = 0;
  __atomic_store_n(&c->req_seq, 1u, __ATOMIC_RELEASE);
  d.Kick(0);
  auto serve = std::async(std::launch::async,
                          [&] { WaitFor([&] { return port_->State() != "connected"; }); });
  const bool returned = serve.wait_for(10s) == std::future_status::ready;
  if (!returned) {
    uint64_t v;
    ASSERT_EQ(::read(d.bells[1].get(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
  }
  ASSERT_TRUE(returned) << "the control thread's irq write blocked";
  EXPECT_EQ(port_->State().rfind("quarantined", 0), 0u) << port_->State();
  Driver again(loop_.get());
  EXPECT_NE(again.Connect(path_), "");
}

// START while started paused the workers again and set the queues on again; a worker that
// broke the device while finishing its round (the pause waits for exactly that) had its
// queues turned back on behind it: a broken device running, whose lie (posted far ahead) is
// never consumed and never breaks it again (Break runs once), so ArmNotify reports work
// forever and the worker never sleeps.
TEST_F(HostilePvDriver, StartDuringABreakLeavesTheQueuesOff) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  ASSERT_EQ(d.Start(), "");
  __atomic_store_n(&d.tx(0)->posted, 5000u, __ATOMIC_RELEASE);
  bool ran = false;
  workers_.during_next_pause = [&] {
    ran = true;
    WorkerRound();
  };
  d.Call(NMX_PV_MSG_START);
  if (!ran) {  // no pause: the round happens after
    workers_.during_next_pause = nullptr;
    WorkerRound();
  }
  EXPECT_EQ(d.h()->status, NMX_PV_STATUS_BROKEN);
  EXPECT_EQ(port_->State(), "broken");
  std::vector<NotifyFd> fds;
  EXPECT_FALSE(port_->ArmAllNotify(&fds))
      << "a broken device's queue reports work forever: the worker spins";
  port_->DisarmAllNotify();
  Batch b;
  EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
}

// Each START and STOP paused every worker (the control thread waits for each to finish its
// round), even when it changed nothing: a driver repeating STOP on a stopped device (no
// CONFIGURE needed) made every worker pause once per request, taking their time from every
// other port. Requests that change nothing pause nothing now.
TEST_F(HostilePvDriver, RepeatedStartOrStopDoesNotPauseTheWorkers) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  const int before = workers_.pauses;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(d.Call(NMX_PV_MSG_STOP).status, 0);
  EXPECT_EQ(workers_.pauses, before) << "STOP of a stopped device paused the workers";
  ASSERT_EQ(d.Start(), "");
  const int started = workers_.pauses;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(d.Call(NMX_PV_MSG_START).status, 0);
  EXPECT_EQ(workers_.pauses, started) << "START of a started device paused the workers";
  // A real change still pauses, and works.
  EXPECT_EQ(d.Call(NMX_PV_MSG_STOP).status, 0);
  EXPECT_EQ(workers_.pauses, started + 1);
  EXPECT_EQ(port_->State(), "connected");
  EXPECT_EQ(d.Call(NMX_PV_MSG_START).status, 0);
  EXPECT_EQ(port_->State(), "running");
}

// Connections leave nothing behind in nicmuxd: its fds (memfd, eventfds, socket) are closed
// whether the driver hangs up cleanly, broken, or right after the hello.
TEST_F(HostilePvDriver, ReconnectsLeakNoFds) {
  auto cycle = [&](int how) {
    Driver d(loop_.get());
    ASSERT_EQ(d.Connect(path_), "");
    if (how == 1) {
      ASSERT_EQ(d.Start(), "");
      __atomic_store_n(&d.tx(0)->posted, 5000u, __ATOMIC_RELEASE);
      WorkerRound();
      ASSERT_EQ(port_->State(), "broken");
    }
    d.sock.Reset();
    ASSERT_TRUE(WaitFor([&] { return port_->State() == "waiting"; }));
  };
  for (int how = 0; how < 2; ++how) cycle(how);  // whatever is allocated once
  const size_t fds = OpenFds();
  for (int i = 0; i < 30; ++i) cycle(i % 2);
  EXPECT_EQ(OpenFds(), fds);
}

// A new connection gets a fresh device: nothing a previous driver set or did reaches it. The
// MAC and MTU a driver set stayed for the next one (GET_INFO's, and the frames it receives with
// promiscuous mode off), and STATS_GET showed the next driver what the previous one moved.
TEST_F(HostilePvDriver, NothingOfAPreviousDriverReachesTheNext) {
  {
    Driver a(loop_.get());
    ASSERT_EQ(a.Connect(path_), "");
    ASSERT_EQ(a.Start(), "");
    ASSERT_EQ(a.Call(NMX_PV_MSG_MAC_SET, nmx_pv_mac{{2, 0x66, 0x66, 0x66, 0x66, 0x66}, {}}).status, 0);
    ASSERT_EQ(a.Call(NMX_PV_MSG_MTU_SET, nmx_pv_u32{1000}).status, 0);
    for (uint32_t i = 0; i < 3; ++i) a.PostTx(0, i, Frame(100));
    WorkerRound();
    a.sock.Reset();
    ASSERT_TRUE(WaitFor([&] { return port_->State() == "waiting"; }));
  }
  Driver b(loop_.get());
  ASSERT_EQ(b.Connect(path_), "");
  nmx_pv_info info;
  nmx_pv_msg r = b.Call(NMX_PV_MSG_GET_INFO);
  ASSERT_EQ(r.status, 0);
  std::memcpy(&info, r.payload, sizeof info);
  EXPECT_EQ(info.mac[1], 0) << "the previous driver's MAC";
  EXPECT_EQ(info.mac[5], 9);
  EXPECT_EQ(info.mtu, 1500u) << "the previous driver's MTU";
  EXPECT_EQ(port_->Caps().mtu, 1500);
  r = b.Call(NMX_PV_MSG_STATS_GET);
  ASSERT_EQ(r.status, 0);
  nmx_pv_stats st;
  std::memcpy(&st, r.payload, sizeof st);
  EXPECT_EQ(st.tx[0].packets, 0u) << "the previous driver's frames";
  EXPECT_EQ(st.tx[0].bytes, 0u);
}

// Offload requests from a hostile driver, through the switch to a TSO uplink and to a port that
// takes no offload (the switch completes checksums and cuts segments for it): lengths that do
// not fit, both IP versions, a checksum on a 14-byte frame, TSO with a segment size of 0, 1 and
// 64 (the smallest taken: at most 1024 segments), the wrong IP version. Every lie is dropped
// and counted (bad_offload) by the port or by the switch; nothing is read outside a frame
// (ASan), what crosses has valid checksums.
TEST_F(HostilePvDriver, OffloadLiesThroughTheSwitch) {
  port_.reset();
  PvPortOptions o;
  o.name = "pv0";
  o.socket_path = path_;
  o.ring = 64;
  o.buf_size = 66560;
  o.mac[0] = 2;
  o.uplink = "up0";
  auto made = CreatePvPort(o, loop_.get(), &workers_);
  ASSERT_TRUE(made.has_value());
  port_ = std::move(*made);
  testing::MemPort up("up0"), plain("m1");
  PortCaps tso;
  tso.offloads = PortCaps::kCsum | PortCaps::kTso4 | PortCaps::kTso6;
  up.set_caps(tso);
  port_->FollowedChanged(&up);
  L2Switch sw(SwitchOptions{});
  const uint16_t pv_id = *sw.AddPort(port_.get(), {});
  ASSERT_TRUE(sw.AddPort(&up, {}).has_value());
  ASSERT_TRUE(sw.AddPort(&plain, {}).has_value());
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  ASSERT_EQ(d.Start(1, NMX_PV_TX_TCP_TSO | NMX_PV_TX_TCP_CKSUM | NMX_PV_TX_UDP_CKSUM | NMX_PV_TX_IPV4_CKSUM), "");
  constexpr uint16_t v4 = NMX_PV_DESC_IPV4, v6 = NMX_PV_DESC_IPV6, tcp = NMX_PV_DESC_TCP_CKSUM,
                     udp = NMX_PV_DESC_UDP_CKSUM, ip = NMX_PV_DESC_IP_CKSUM, tsoreq = NMX_PV_DESC_TSO;
  uint32_t slot = 0;
  auto post = [&](const Bytes& f, uint16_t flags, uint8_t l2, uint16_t l3, uint8_t l4, uint16_t segsz) {
    const uint32_t at = d.tx(0)->posted & 63;
    d.PostTx(0, slot++, f, flags);
    d.tx(0)->desc[at].l2_len = l2;
    d.tx(0)->desc[at].l3_len = l3;
    d.tx(0)->desc[at].l4_len = l4;
    d.tx(0)->desc[at].tso_segsz = segsz;
  };
  testing::FrameSpec small;
  small.payload = 3000;
  const Bytes f3k = testing::MakeTcpUdpFrame(small);
  testing::FrameSpec big;
  big.payload = 64000;
  const Bytes f64k = testing::MakeTcpUdpFrame(big);
  testing::FrameSpec jumbo;  // the largest IPv4 datagram, untagged: 65549 bytes
  jumbo.payload = 65535 + 14 - jumbo.Hdrs();
  const Bytes fmax = testing::MakeTcpUdpFrame(jumbo);
  const Bytes f14 = Frame(14);
  // Dropped by the port (the request or its lengths).
  post(f3k, v4 | v6 | tcp, 14, 20, 0, 0);             // both IP versions
  post(f14, v4 | tcp, 14, 20, 0, 0);                  // a checksum on a bare Ethernet header
  post(f3k, v4 | tcp, 255, 65535, 0, 0);              // lengths past the head copy
  post(f3k, v4 | ip, 14, 61, 0, 0);                   // an IPv4 header of 61 bytes
  post(f3k, v4 | udp | tsoreq, 14, 20, 20, 1448);     // TSO without TCP
  post(f3k, v4 | tcp, 0, 20, 0, 0);                   // no L2 header
  // Dropped by the switch (CheckOffload).
  post(f3k, v4 | tcp | tsoreq, 14, 20, 20, 0);        // segments of 0 bytes
  post(f3k, v4 | tcp | tsoreq, 14, 20, 20, 1);        // segments of 1 byte
  post(f3k, v6 | tcp | tsoreq, 14, 40, 20, 1448);     // IPv6 TSO on an IPv4 frame
  post(f3k, v4 | tcp | tsoreq, 14, 24, 20, 1448);     // the checksum not at the real L4 header
  // Cross.
  post(f64k, v4 | tcp | tsoreq | ip, 14, 20, 20, 64);  // 1000 segments for m1
  post(f3k, v4 | tcp | tsoreq, 14, 20, 255, 1448);      // l4_len is only a hint
  post(fmax, v4 | tcp, 14, 20, 0, 0);                   // a 64 KiB datagram, checksum asked
  post(f3k, v4, 0, 0, 0, 0);                            // no request: lengths ignored
  for (int i = 0; i < 4; ++i) sw.worker(0)->ForwardAll();
  EXPECT_EQ(d.tx(0)->done, 14u);
  EXPECT_EQ(port_->DropsFor(DropReason::kBadOffload), 6u);
  EXPECT_EQ(sw.DropsFor(pv_id, DropReason::kBadOffload), 4u);
  ASSERT_EQ(up.sent().size(), 4u);  // whole, TSO included
  ASSERT_EQ(plain.sent().size(), 1000u + 3u + 1u + 1u);
  testing::FrameSpec seg = big;
  for (size_t i = 0; i < plain.sent().size(); ++i) {
    const Bytes& f = plain.sent()[i];
    if (f.size() == f3k.size() && i + 1 == plain.sent().size()) continue;  // the frame without a request
    ASSERT_TRUE(testing::ChecksumOk(f, seg)) << "frame " << i << " of " << f.size() << " bytes";
    ASSERT_TRUE(testing::IpHeaderOk(f, seg)) << "frame " << i;
  }
}

// The edges of the buffer area: an empty buffer right at its end (the address one past the
// mapping) breaks the device (too small for any frame), as one byte more does. A tx frame of 0
// bytes is dropped; one that ends exactly at the area's end is taken.
TEST_F(HostilePvDriver, TheEdgesOfTheBufferArea) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  ASSERT_EQ(d.Start(), "");
  const uint64_t end = d.h()->bufs_offset + d.h()->bufs_size;
  ASSERT_EQ(end, d.size);
  const Bytes f = Frame(60);
  testing::SplitPacket sp(f, {});
  const PacketRef* one[1] = {&sp.p};
  // The tx side: 0 bytes, then 60 bytes ending at the area's end.
  d.PostTx(0, 0, f);
  d.tx(0)->desc[0].len = 0;
  d.PostTx(0, 1, f);
  d.tx(0)->desc[1].offset = end - 60;
  Batch b;
  ASSERT_EQ(port_->Rx(0, b, kBurst), 1u);
  EXPECT_EQ(b[0].len, 60u);
  port_->RxDone(0, b, 1);
  EXPECT_EQ(d.tx(0)->done, 2u);
  EXPECT_EQ(port_->DropsFor(DropReason::kBadFrame), 1u);
  EXPECT_EQ(d.h()->status, NMX_PV_STATUS_OK);
  // An rx buffer of 0 bytes at the area's end lies inside it, but no frame fits: it breaks the
  // device (it would stay posted for ever, every frame dropped behind it), as one byte more,
  // past the end, does.
  d.PostRx(0, 0, 0);
  d.rx(0)->desc[0].offset = end;
  EXPECT_EQ(port_->Tx(0, {one, 1}), 1u);
  EXPECT_EQ(d.h()->status, NMX_PV_STATUS_BROKEN);
  EXPECT_NE(std::string(d.h()->broken_reason).find("len 0 cannot hold an Ethernet header"), std::string::npos)
      << d.h()->broken_reason;
  d.sock.Reset();
  for (int i = 0; i < 20 && port_->State() != "waiting"; ++i) loop_->RunOnce(10);
  Driver e(loop_.get());
  ASSERT_EQ(e.Connect(path_), "");
  ASSERT_EQ(e.Start(), "");
  e.PostRx(0, 0, 1);
  e.rx(0)->desc[0].offset = end;
  EXPECT_EQ(port_->Tx(0, {one, 1}), 1u);
  EXPECT_EQ(e.h()->status, NMX_PV_STATUS_BROKEN);
  EXPECT_NE(std::string(e.h()->broken_reason).find("outside the buffer area"), std::string::npos) << e.h()->broken_reason;
}

// The region's file: the driver can neither shrink nor grow it (the host's mapping would fault
// or the host would map what the driver chose), nor add or remove seals. Punching holes is
// allowed (F_SEAL_WRITE cannot be had with the host's writable mapping): the pages read back as
// zeros, the host's next access maps a fresh page, nothing faults.
TEST_F(HostilePvDriver, TheRegionFileCannotBeResized) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  ASSERT_EQ(d.Start(), "");
  const int fd = d.memfd.get();
  EXPECT_NE(::ftruncate(fd, 4096), 0);
  EXPECT_NE(::ftruncate(fd, static_cast<off_t>(d.size) * 2), 0);
  EXPECT_NE(::fallocate(fd, 0, static_cast<off_t>(d.size), 4096), 0);
  char c = 1;
  EXPECT_NE(::pwrite(fd, &c, 1, static_cast<off_t>(d.size)), 1);
  EXPECT_NE(::fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), 0);
  const int seals = ::fcntl(fd, F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  // Holes everywhere, then every host access.
  d.PostTx(0, 0, Frame(60));
  d.PostRx(0, 1, 2048);
  const nmx_pv_header h = *d.h();
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(d.size)), 0);
  EXPECT_EQ(d.h()->magic, 0u);
  *d.h() = h;  // (this test's driver finds the rings through the header)
  EXPECT_EQ(d.tx(0)->posted, 0u);
  Batch b;
  EXPECT_EQ(port_->Rx(0, b, kBurst), 0u);
  port_->RxDone(0, b, 0);
  const Bytes f = Frame(60);
  testing::SplitPacket sp(f, {});
  const PacketRef* one[1] = {&sp.p};
  EXPECT_EQ(port_->TxRoom(0), 0u);
  EXPECT_EQ(port_->Tx(0, {one, 1}), 0u);  // no buffer posted any more
  std::vector<NotifyFd> fds;
  EXPECT_FALSE(port_->ArmAllNotify(&fds));
  port_->DisarmAllNotify();
  EXPECT_EQ(d.Call(NMX_PV_MSG_GET_INFO).status, 0);
  EXPECT_EQ(port_->State(), "running");
}

// nicmuxd's mapping of the current region (the test's driver maps it too, at `driver`).
std::byte* HostMapping(const std::byte* driver) {
  std::FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return nullptr;
  char line[512];
  std::byte* found = nullptr;
  while (std::fgets(line, sizeof line, f)) {
    if (!std::strstr(line, "nicmux-pv")) continue;
    const auto start = reinterpret_cast<std::byte*>(std::strtoull(line, nullptr, 16));
    if (start != driver) found = start;
  }
  std::fclose(f);
  return found;
}

// The region can fault under nicmuxd after all: a page the driver punched out is allocated
// again at the host's next access, and where that allocation fails the access gets SIGBUS, not
// an error (shmem gives -ENOSPC when the commit charge is refused, vm.overcommit_memory=2: a
// driver that has used up the commit limit itself, then punches holes in its rings). SIGBUS
// killed the daemon and every port. The region is now a peer mapping (base/peer_mapping.h): the
// fault is recovered, the driver loses its connection and the port is quarantined. Played here
// by mapping a one-page file over nicmuxd's mapping of the region (the same SIGBUS; the commit
// limit cannot be set from a test), in a child process: before the fix the fault killed it.
TEST_F(HostilePvDriver, ARegionFaultCostsTheDriverItsConnectionNotTheDaemon) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Driver d(loop_.get());
        if (d.Connect(path_) != "" || d.Start() != "") std::_Exit(2);
        std::byte* host = HostMapping(d.base);
        if (!host) std::_Exit(3);
        const int small = ::memfd_create("short", MFD_CLOEXEC);
        if (small < 0 || ::ftruncate(small, 4096) != 0) std::_Exit(4);
        if (::mmap(host, d.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, small, 0) != host) std::_Exit(5);
        Batch b;
        port_->Rx(0, b, kBurst);  // reads the tx ring, past the file's one page: SIGBUS
        port_->RxDone(0, b, b.size());
        if (!WaitFor([&] { return port_->State().rfind("quarantined", 0) == 0; })) std::_Exit(6);
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

// What nicmuxd logs while f runs (stderr, where LogMessage writes).
std::string CaptureLog(const std::function<void()>& f) {
  char path[] = "/tmp/nmxpvlogXXXXXX";
  const int fd = ::mkstemp(path);
  EXPECT_GE(fd, 0);
  std::fflush(stderr);
  const int saved = ::dup(2);
  ::dup2(fd, 2);
  f();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::string out;
  char buf[4096];
  ssize_t n;
  ::lseek(fd, 0, SEEK_SET);
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  ::unlink(path);
  return out;
}

size_t Count(const std::string& log, const std::string& what) {
  size_t n = 0;
  for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1)) ++n;
  return n;
}

// Everything a driver can make nicmuxd log goes through a limiter of its port: a driver that
// reconnects in a loop wrote two lines per connection (connected, disconnected) as fast as the
// control thread accepted; and the per-call-site limiters the port's other messages shared
// let one driver's flood of refused requests silence another port's first one.
TEST_F(HostilePvDriver, ADriverCannotFloodTheLogOrSilenceAnotherPort) {
  const std::string log = CaptureLog([&] {
    for (int i = 0; i < 40; ++i) {
      Driver d(loop_.get());
      ASSERT_EQ(d.Connect(path_), "");
      d.sock.Reset();
      ASSERT_TRUE(WaitFor([&] { return port_->State() == "waiting"; }));
    }
    Driver d(loop_.get());
    ASSERT_EQ(d.Connect(path_), "");
    for (int i = 0; i < 40; ++i) d.Call(99);  // refused: unknown type
    // Another port, another driver: its first refusal is logged.
    PvPortOptions o;
    o.name = "pv1";
    o.socket_path = path_ + "1";
    o.mac[0] = 2;
    auto other = CreatePvPort(o, loop_.get(), &workers_);
    ASSERT_TRUE(other.has_value());
    Driver e(loop_.get());
    ASSERT_EQ(e.Connect(o.socket_path), "");
    e.Call(98);
  });
  EXPECT_LE(Count(log, "port pv0: pv driver connected"), 12u);
  EXPECT_LE(Count(log, "port pv0: pv driver disconnected"), 12u);
  EXPECT_LE(Count(log, "port pv0: pv request 99 refused"), 12u);
  EXPECT_EQ(Count(log, "port pv1: pv request 98 refused"), 1u);
}

}  // namespace
}  // namespace nicmux
