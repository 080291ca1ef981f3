// A pv port handed over to another (a live upgrade, docs/pv-protocol.md "Live upgrade"): port
// A serves a driver on its own event loop, Exports, port B is built from the record on another
// loop (A's is never turned again: the old process between the two steps), A forwards on, the
// positions go over, B commits and the driver, turning B's loop from then on, goes on with
// exactly the next frame in both directions. Then the records an old process could send that
// must be refused (B not built, A still serving), and the positions that cost the driver its
// device instead.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "base/event_fd.h"
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
using Driver = testing::RawPvDriver;

Bytes Frame(uint32_t len, uint8_t seed) {
  Bytes f(len);
  const uint8_t hdr[14] = {2, 0, 0, 0, 0, 9, 2, 0, 0, 0, 0, 1, 0x88, 0xb5};
  std::memcpy(f.data(), hdr, std::min<uint32_t>(len, 14));
  for (uint32_t i = 14; i < len; ++i) f[i] = std::byte(uint8_t(seed + i));
  return f;
}

std::unique_ptr<EventLoop> NewLoop() {
  auto l = EventLoop::Create();
  EXPECT_TRUE(l.has_value());
  return std::move(*l);
}

// The driver's own memory (MEM_ADD): a memfd.
struct DriverMemory {
  explicit DriverMemory(uint64_t bytes) : size(bytes) {
    fd = UniqueFd(::memfd_create("pv-driver-mem", MFD_CLOEXEC));
    EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(bytes)), 0);
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    EXPECT_NE(p, MAP_FAILED);
    base = static_cast<std::byte*>(p);
  }
  ~DriverMemory() { ::munmap(base, size); }
  UniqueFd fd;
  uint64_t size;
  std::byte* base;
};

// Replaces the fd a record names under key with fd (the record owns it from then on).
void SwapFd(HandoverRecord* r, const std::string& key, UniqueFd fd) {
  r->AddOwnedFd(std::move(fd));
  r->mutable_values()[key] = std::to_string(r->fds().size() - 1);
}

class PvHandoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    loop_a_ = NewLoop();
    loop_b_ = NewLoop();
    char dir[] = "/tmp/nmxpvhXXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    opt_.name = "pv0";
    opt_.socket_path = std::string(dir) + "/pv.sock";
    opt_.queues = 2;
    opt_.ring = 64;
    opt_.mac[0] = 2, opt_.mac[5] = 9;
    auto p = CreatePvPort(opt_, loop_a_.get(), &workers_);
    ASSERT_TRUE(p.has_value()) << p.error().message();
    a_ = std::move(*p);
  }
  void TearDown() override {
    b_.reset();
    a_.reset();
  }
  // Step 1: A's record.
  HandoverRecord Export() {
    HandoverRecord r;
    auto e = a_->Export(&r);
    EXPECT_TRUE(e.has_value()) << e.error().message();
    return r;
  }
  Result<std::unique_ptr<Port>> Build(HandoverRecord& r) { return CreatePvPort(opt_, loop_b_.get(), &workers_, &r); }
  // Step 2 and the commit.
  void Cutover() {
    HandoverRecord pos;
    auto e = a_->ExportPositions(&pos);
    ASSERT_TRUE(e.has_value()) << e.error().message();
    auto i = b_->ImportPositions(pos);
    ASSERT_TRUE(i.has_value()) << i.error().message();
    b_->HandoverCommitted();
  }
  // The driver's frames seeds[...] through `p`'s Rx on queue q, all taken.
  std::vector<uint8_t> Receive(Port& p, uint32_t q) {
    Batch b;
    std::vector<uint8_t> seeds;
    const size_t n = p.Rx(q, b, kBurst);
    for (size_t k = 0; k < n; ++k) {
      Bytes got(b[static_cast<uint32_t>(k)].len);
      CopyPacketTo(b[static_cast<uint32_t>(k)], got.data());
      seeds.push_back(uint8_t(uint8_t(got[14]) - 14));
    }
    p.RxDone(q, b, n);
    return seeds;
  }
  size_t Send(Port& p, uint32_t q, const std::vector<uint8_t>& seeds) {
    std::vector<Bytes> frames;
    for (uint8_t s : seeds) frames.push_back(Frame(100, s));
    std::vector<testing::SplitPacket> sp;
    sp.reserve(frames.size());
    for (const Bytes& f : frames) sp.emplace_back(f, std::vector<uint32_t>{});
    std::vector<const PacketRef*> ptrs;
    for (auto& s : sp) ptrs.push_back(&s.p);
    return p.Tx(q, {ptrs.data(), ptrs.size()});
  }

  PvPortOptions opt_;
  std::unique_ptr<EventLoop> loop_a_, loop_b_;
  NoWorker workers_;
  std::unique_ptr<Port> a_, b_;
};

TEST_F(PvHandoverTest, TrafficGoesOnExactlyWhereItStopped) {
  Driver d(loop_a_.get());
  ASSERT_EQ(d.Connect(opt_.socket_path), "");
  // Registered memory (before START), a MAC, promiscuous off, an MTU, a flow rule.
  DriverMemory mem(65536);
  ASSERT_EQ(d.MemAdd(1, mem.fd.get(), 0, mem.size).status, 0);
  ASSERT_EQ(d.Start(2), "");
  const uint8_t mac[6] = {2, 0, 0, 0, 0, 9};
  nmx_pv_mac m{};
  std::memcpy(m.mac, mac, 6);
  ASSERT_EQ(d.Call(NMX_PV_MSG_MAC_SET, m).status, 0);
  ASSERT_EQ(d.Call(NMX_PV_MSG_PROMISC_SET, nmx_pv_u32{0}).status, 0);
  ASSERT_EQ(d.Call(NMX_PV_MSG_MTU_SET, nmx_pv_u32{1400}).status, 0);
  nmx_pv_flow_rule rule{};
  rule.items = NMX_PV_FLOW_ITEM_ETH;
  rule.actions = NMX_PV_FLOW_ACTION_MARK;
  rule.mark = 77;
  nmx_pv_msg r = d.Call(NMX_PV_MSG_FLOW_CREATE, rule);
  ASSERT_EQ(r.status, 0) << r.reason;
  nmx_pv_flow_id fid;
  std::memcpy(&fid, r.payload, sizeof fid);
  const uint32_t generation = d.h()->generation;

  // Before the upgrade: frames 0..2 posted, two taken (the third is read again later).
  for (uint8_t i = 0; i < 3; ++i) d.PostTx(0, i, Frame(100, i));
  {
    Batch b;
    ASSERT_EQ(a_->Rx(0, b, kBurst), 3u);
    a_->RxDone(0, b, 2);
  }
  for (uint32_t i = 0; i < 6; ++i) d.PostRx(0, 32 + i, 2048);
  ASSERT_EQ(Send(*a_, 0, {50, 51}), 2u);

  HandoverRecord state = Export();
  // Adopt writes nothing into the shared region: its bytes are the same after B is built and
  // after its positions are imported, until the commit.
  std::vector<std::byte> before(d.base, d.base + d.size);
  auto made = Build(state);
  ASSERT_TRUE(made.has_value()) << made.error().message();
  b_ = std::move(*made);
  EXPECT_EQ(0, std::memcmp(before.data(), d.base, d.size)) << "Adopt wrote into the shared region";
  EXPECT_EQ(b_->State(), "running");
  // A forwards on between the steps: frame 2 again and frame 3, and one more towards the driver.
  d.PostTx(0, 3, Frame(100, 3));
  EXPECT_EQ(Receive(*a_, 0), (std::vector<uint8_t>{2, 3}));
  ASSERT_EQ(Send(*a_, 0, {52}), 1u);
  before.assign(d.base, d.base + d.size);
  {
    HandoverRecord pos;
    ASSERT_TRUE(a_->ExportPositions(&pos).has_value());
    auto i = b_->ImportPositions(pos);
    ASSERT_TRUE(i.has_value()) << i.error().message();
  }
  EXPECT_EQ(0, std::memcmp(before.data(), d.base, d.size)) << "the new port wrote into the shared region before the commit";
  b_->HandoverCommitted();
  d.loop = loop_b_.get();

  // The same device, going on: the next frames each way, in the next slots.
  d.PostTx(0, 4, Frame(100, 4));
  d.PostTx(0, 5, Frame(100, 5));
  EXPECT_EQ(Receive(*b_, 0), (std::vector<uint8_t>{4, 5}));
  EXPECT_EQ(d.tx(0)->done, 6u);
  ASSERT_EQ(Send(*b_, 0, {53}), 1u);
  EXPECT_EQ(d.rx(0)->done, 4u);
  EXPECT_EQ(uint8_t(d.base[d.buf(35) + 14]), uint8_t(53 + 14));
  EXPECT_EQ(d.rx(0)->desc[3].flags & NMX_PV_DESC_MARK, NMX_PV_DESC_MARK);  // the rule goes on
  EXPECT_EQ(d.rx(0)->desc[3].mark, 77u);
  // Registered memory: a frame in region 1.
  Bytes f = Frame(100, 6);
  std::memcpy(mem.base + 4096, f.data(), f.size());
  d.PostTxAt(0, 1, 4096, 100);
  EXPECT_EQ(Receive(*b_, 0), (std::vector<uint8_t>{6}));
  // Queue 1 was started too.
  d.PostTx(1, 40, Frame(100, 7));
  EXPECT_EQ(Receive(*b_, 1), (std::vector<uint8_t>{7}));
  // Promiscuous mode is still off: a frame for another MAC is not delivered.
  Bytes other = Frame(100, 8);
  other[5] = std::byte{1};
  testing::SplitPacket sp(other, {});
  const PacketRef* ptr = &sp.p;
  EXPECT_EQ(b_->Tx(0, {&ptr, 1}), 1u);
  EXPECT_EQ(d.rx(0)->done, 4u);
  EXPECT_EQ(b_->DropsFor(DropReason::kNoRoute), 1u);

  // The control plane: same answers, the driver's counters going on from the old process's.
  EXPECT_EQ(d.h()->generation, generation);
  EXPECT_EQ(d.h()->status, NMX_PV_STATUS_OK);
  r = d.Call(NMX_PV_MSG_GET_INFO);
  ASSERT_EQ(r.status, 0) << r.reason;
  nmx_pv_info info;
  std::memcpy(&info, r.payload, sizeof info);
  EXPECT_EQ(info.mtu, 1400u);
  EXPECT_EQ(0, std::memcmp(info.mac, mac, 6));
  EXPECT_EQ(info.promisc, 0u);
  r = d.Call(NMX_PV_MSG_STATS_GET);
  ASSERT_EQ(r.status, 0) << r.reason;
  nmx_pv_stats st;
  std::memcpy(&st, r.payload, sizeof st);
  EXPECT_EQ(st.tx[0].packets, 7u);  // frames 0..6 taken from the driver's tx ring 0 (A: 4, B: 3)
  EXPECT_EQ(st.tx[1].packets, 1u);
  EXPECT_EQ(st.rx[0].packets, 4u);  // 50, 51, 52 by A, 53 by B
  auto rules = b_->FlowRules();
  ASSERT_EQ(rules.size(), 1u);
  EXPECT_EQ(std::get<uint64_t>(rules[0][0].second), fid.id);
  // Hits: 3 in A, 2 in B (the last then dropped: not for this MAC).
  EXPECT_EQ(std::get<uint64_t>(rules[0][3].second), 5u);
  bool one_connection = false;
  for (const auto& [k, v] : b_->Details()) one_connection |= k == "connections" && std::get<uint64_t>(v) == 1;
  EXPECT_TRUE(one_connection);
  EXPECT_EQ(b_->HandoverWarning(), "");
  // A rule created now gets an id not given before; memory requests are still refused while
  // started, and answered.
  r = d.Call(NMX_PV_MSG_FLOW_CREATE, rule);
  ASSERT_EQ(r.status, 0) << r.reason;
  nmx_pv_flow_id fid2;
  std::memcpy(&fid2, r.payload, sizeof fid2);
  EXPECT_GT(fid2.id, fid.id);
  EXPECT_EQ(d.MemDel(1).status, -EBUSY);
}

TEST_F(PvHandoverTest, AWaitingPortGoesOverAndTakesTheNextDriver) {
  {
    Driver d(loop_a_.get());
    ASSERT_EQ(d.Connect(opt_.socket_path), "");
    d.sock.Reset();
    for (int i = 0; i < 20 && a_->State() != "waiting"; ++i) loop_a_->RunOnce(10);
  }
  ASSERT_EQ(a_->State(), "waiting");
  HandoverRecord state = Export();
  auto made = Build(state);
  ASSERT_TRUE(made.has_value()) << made.error().message();
  b_ = std::move(*made);
  Cutover();
  Driver d(loop_b_.get());
  ASSERT_EQ(d.Connect(opt_.socket_path), "");
  EXPECT_EQ(d.h()->generation, 2u);  // after the old process's first
  ASSERT_EQ(d.Start(1), "");
  d.PostTx(0, 0, Frame(100, 1));
  EXPECT_EQ(Receive(*b_, 0), (std::vector<uint8_t>{1}));
}

// Each tampering of the state refuses the handover naming what is wrong; the old port goes on
// serving its driver.
TEST_F(PvHandoverTest, TamperedRecordsAreRefused) {
  Driver d(loop_a_.get());
  ASSERT_EQ(d.Connect(opt_.socket_path), "");
  DriverMemory mem(65536);
  ASSERT_EQ(d.MemAdd(1, mem.fd.get(), 0, mem.size).status, 0);
  ASSERT_EQ(d.Start(2), "");
  nmx_pv_flow_rule rule{};
  rule.items = NMX_PV_FLOW_ITEM_ETH;
  rule.actions = NMX_PV_FLOW_ACTION_QUEUE;
  rule.queue = 1;
  ASSERT_EQ(d.Call(NMX_PV_MSG_FLOW_CREATE, rule).status, 0);
  auto set = [](const char* key, std::string v) {
    return [key, v](HandoverRecord* r) { r->mutable_values()[key] = v; };
  };
  auto memfd = [](uint64_t size, bool seal) {
    UniqueFd fd(::memfd_create("tamper", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
    if (seal) {
      EXPECT_EQ(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
    }
    return fd;
  };
  const uint64_t region_size = d.size;
  struct Case {
    const char* name;
    std::function<void(HandoverRecord*)> tamper;
    const char* says;
  };
  const Case cases[] = {
      {"another queue count", set("pv.queues", "1"), "the old port had queues=1"},
      {"a quarantine that never ends", set("pv.quarantine_until_ns", "18446744073709551615"), "pv.quarantine_until_ns"},
      {"a ring index key missing", [](HandoverRecord* r) { r->mutable_values().erase("pv.ring"); }, "no value pv.ring"},
      {"an unsealed region",
       [&](HandoverRecord* r) { SwapFd(r, "pv.region", memfd(region_size, false)); }, "not sealed"},
      {"a region of another size",
       [&](HandoverRecord* r) { SwapFd(r, "pv.region", memfd(region_size + 4096, true)); }, "not a file of"},
      {"a doorbell that is a memory file",
       [&](HandoverRecord* r) { SwapFd(r, "pv.q.1.kick", memfd(4096, false)); }, "pv.q.1.kick is not an eventfd"},
      {"a connection that is an eventfd",
       [](HandoverRecord* r) {
         auto e = EventFd::Create();
         SwapFd(r, "pv.conn", UniqueFd(::dup(e->fd())));
       },
       "pv.conn is not a UNIX stream socket"},
      {"a socket listening elsewhere",
       [](HandoverRecord* r) {
         char dir[] = "/tmp/nmxpvhXXXXXX";
         ASSERT_NE(::mkdtemp(dir), nullptr);
         auto l = ListenUnix(std::string(dir) + "/other.sock");
         SwapFd(r, "pv.listen", std::move(*l));
       },
       "is not a UNIX socket listening on"},
      {"an fd index out of range", set("pv.ctrl_irq", "99"), "pv.ctrl_irq = 99 is above"},
      {"a multicast MAC", set("pv.mac", "1"), "pv.mac"},
      {"an MTU over the buffers", set("pv.mtu", "9000"), "pv.mtu = 9000 is above"},
      {"TSO the buffers cannot hold", set("pv.tx_offloads", std::to_string(NMX_PV_TX_TCP_TSO)),
       "not what this port can offer"},
      {"started with a queue not set up", set("pv.q.1.setup", "1"), "pv.q.1.setup 1 does not fit"},
      {"more queues than the port's", set("pv.nb_rx", "3"), "pv.nb_rx = 3 is above 2"},
      {"a flow rule naming a queue not configured",
       [](HandoverRecord* r) {
         std::string& hex = r->mutable_values()["pv.flow.0.rule"];
         hex.replace(24, 8, "05000000");  // queue (the fourth u32) = 5
       },
       "pv.flow.0.rule: "},
      {"a flow rule cut short", [](HandoverRecord* r) { r->mutable_values()["pv.flow.0.rule"].resize(20); },
       "is not a rule's"},
      {"a flow id past the next", set("pv.flow_next_id", "0"), "is 0, above pv.flow_next_id or taken"},
      {"more rules than flows=", set("pv.flows", "9999"), "pv.flows = 9999 is above 256"},
      {"registered memory past its file", set("pv.mem.1.size", "131072"), "past the end of the file"},
      {"registered memory over max_memory", set("pv.mem.1.size", std::to_string(uint64_t{1} << 40)),
       "pv.mem.1.size"},
      {"registered memory at an odd offset", set("pv.mem.1.offset", "100"), "multiples of the file's page size"},
      {"a half request longer than its bytes", set("pv.sock_got", "8"), "pv.sock_bytes is not pv.sock_got bytes"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    HandoverRecord state = Export();
    c.tamper(&state);
    auto made = Build(state);
    ASSERT_FALSE(made.has_value());
    EXPECT_NE(made.error().message().find(c.says), std::string::npos) << made.error().message();
    // The old port serves on, its socket file still there.
    EXPECT_EQ(d.Call(NMX_PV_MSG_GET_INFO).status, 0);
    struct stat st;
    EXPECT_EQ(::stat(opt_.socket_path.c_str(), &st), 0);
  }
  EXPECT_EQ(a_->State(), "running");
  d.PostTx(0, 0, Frame(100, 1));
  EXPECT_EQ(Receive(*a_, 0), (std::vector<uint8_t>{1}));
}

// Positions: one that cannot be (a queue on that the device does not run) refuses the
// handover; a ring index that is not the one in the ring (the driver wrote the host's `done`,
// or the old process lied) costs the driver its device, marked broken at the commit and not
// before, the upgrade going on.
TEST_F(PvHandoverTest, TamperedPositions) {
  Driver d(loop_a_.get());
  ASSERT_EQ(d.Connect(opt_.socket_path), "");
  nmx_pv_configure cfg{};
  cfg.nb_rx_queues = cfg.nb_tx_queues = 1;
  ASSERT_EQ(d.Call(NMX_PV_MSG_CONFIGURE, cfg).status, 0);
  {
    HandoverRecord state = Export();
    auto made = Build(state);
    ASSERT_TRUE(made.has_value()) << made.error().message();
    HandoverRecord pos;
    ASSERT_TRUE(a_->ExportPositions(&pos).has_value());
    pos.mutable_values()["pv.q.0.on"] = "1";  // not started
    auto r = (*made)->ImportPositions(pos);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message().find("pv.q.0.on 1: a queue the device does not run"), std::string::npos)
        << r.error().message();
  }
  ASSERT_EQ(d.Start(1), "");
  d.PostTx(0, 0, Frame(100, 1));
  EXPECT_EQ(Receive(*a_, 0), (std::vector<uint8_t>{1}));
  {
    // Started and not broken: both of queue 0's rings run; a record with them off would
    // stop the driver's traffic with nothing said.
    HandoverRecord state = Export();
    auto made = Build(state);
    ASSERT_TRUE(made.has_value()) << made.error().message();
    HandoverRecord pos;
    ASSERT_TRUE(a_->ExportPositions(&pos).has_value());
    pos.mutable_values()["pv.q.0.on"] = "0";
    auto r = (*made)->ImportPositions(pos);
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message().find("pv.q.0.on 0: the started device runs 3 there"), std::string::npos)
        << r.error().message();
  }
  HandoverRecord state = Export();
  auto made = Build(state);
  ASSERT_TRUE(made.has_value()) << made.error().message();
  b_ = std::move(*made);
  HandoverRecord pos;
  ASSERT_TRUE(a_->ExportPositions(&pos).has_value());
  EXPECT_EQ(pos.values().at("pv.q.0.drained"), "1");
  pos.mutable_values()["pv.q.0.drained"] = "5";
  ASSERT_TRUE(b_->ImportPositions(pos).has_value());
  EXPECT_EQ(d.h()->status, NMX_PV_STATUS_OK);  // nothing written before the commit
  EXPECT_NE(b_->HandoverWarning().find("tx ring 0: done 1 is not the host's 5"), std::string::npos)
      << b_->HandoverWarning();
  b_->HandoverCommitted();
  d.loop = loop_b_.get();
  EXPECT_EQ(d.h()->status, NMX_PV_STATUS_BROKEN);
  EXPECT_NE(std::string(d.h()->broken_reason).find("tx ring 0: done 1"), std::string::npos) << d.h()->broken_reason;
  EXPECT_EQ(b_->State(), "broken");
  d.PostTx(0, 1, Frame(100, 2));
  EXPECT_EQ(Receive(*b_, 0), (std::vector<uint8_t>{}));
  EXPECT_EQ(d.Call(NMX_PV_MSG_GET_INFO).status, -EIO);
  // Reconnecting clears it, as after any broken device.
  d.sock.Reset();
  for (int i = 0; i < 20 && b_->State() != "waiting"; ++i) loop_b_->RunOnce(10);
  Driver d2(loop_b_.get());
  ASSERT_EQ(d2.Connect(opt_.socket_path), "");
  ASSERT_EQ(d2.Start(1), "");
  d2.PostTx(0, 0, Frame(100, 3));
  EXPECT_EQ(Receive(*b_, 0), (std::vector<uint8_t>{3}));
}

// What the driver sent while the handover ran: a memory request half read by the old process
// (its first bytes and its fd read, the rest still on the way) and a mailbox request written
// while nobody served the mailbox (the old control thread waits for the new process between
// the two steps): the new process completes and answers both after the commit.
TEST_F(PvHandoverTest, WhatTheDriverSentMeanwhileIsAnsweredByTheNewProcess) {
  Driver d(loop_a_.get());
  ASSERT_EQ(d.Connect(opt_.socket_path), "");
  DriverMemory mem(65536);
  nmx_pv_sock_req req{};
  req.type = NMX_PV_SOCK_MEM_ADD;
  req.seq = 1;
  req.id = 2;
  req.size = mem.size;
  // The first 10 bytes with the fd, read by A.
  {
    iovec iov{&req, 10};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    const int fd = mem.fd.get();
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    ASSERT_EQ(::sendmsg(d.sock.get(), &mh, 0), 10);
    for (int i = 0; i < 3; ++i) loop_a_->RunOnce(5);
  }
  HandoverRecord state = Export();
  EXPECT_EQ(state.values().at("pv.sock_got"), "10");
  auto made = Build(state);
  ASSERT_TRUE(made.has_value()) << made.error().message();
  b_ = std::move(*made);
  // A GET_INFO written and kicked with nobody serving: no answer yet.
  nmx_pv_ctrl* ctl = d.c();
  ctl->req.type = NMX_PV_MSG_GET_INFO;
  ctl->req.len = 0;
  ctl->req.seq = ++d.seq;
  __atomic_store_n(&ctl->req_seq, d.seq, __ATOMIC_RELEASE);
  d.Kick(0);
  Cutover();
  EXPECT_EQ(__atomic_load_n(&ctl->resp_seq, __ATOMIC_ACQUIRE), d.seq);  // answered at the commit
  EXPECT_EQ(ctl->resp.status, 0) << ctl->resp.reason;
  d.loop = loop_b_.get();
  ASSERT_EQ(::send(d.sock.get(), reinterpret_cast<const char*>(&req) + 10, sizeof req - 10, 0),
            static_cast<ssize_t>(sizeof req - 10));
  nmx_pv_sock_resp r = d.SockAnswer();
  EXPECT_EQ(r.status, 0) << r.reason;
  EXPECT_EQ(r.id, 2u);
  bool registered = false;
  for (const auto& [k, v] : b_->Details()) {
    registered |= k == "registered_memory" && std::get<std::string>(v).rfind("1 regions", 0) == 0;
  }
  EXPECT_TRUE(registered);
  // The region is used: a frame in it.
  ASSERT_EQ(d.Start(1), "");
  Bytes f = Frame(100, 9);
  std::memcpy(mem.base + 8192, f.data(), f.size());
  d.PostTxAt(0, 2, 8192, 100);
  EXPECT_EQ(Receive(*b_, 0), (std::vector<uint8_t>{9}));
}

// An uplink port that takes TSO (the device then offers it), for the capability events.
class TsoUplink final : public Port {
 public:
  TsoUplink() : Port("up0") {
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
};

// The uplink as the new process sees it while its ports are added one by one (first missing,
// then there): the driver hears of it only after the commit, and only if the end of it differs
// from what it was told.
TEST_F(PvHandoverTest, UplinkEventsWaitForTheCommitAndOnlyWhatChanged) {
  opt_.uplink = "up0";
  opt_.buf_size = 66560;
  a_.reset();
  auto p = CreatePvPort(opt_, loop_a_.get(), &workers_);
  ASSERT_TRUE(p.has_value()) << p.error().message();
  a_ = std::move(*p);
  Driver d(loop_a_.get());
  ASSERT_EQ(d.Connect(opt_.socket_path), "");
  TsoUplink up;
  a_->FollowedChanged(&up);
  const uint32_t told = d.c()->event_seq;
  ASSERT_EQ(told, 1u);
  for (bool gone_at_commit : {false, true}) {
    SCOPED_TRACE(gone_at_commit ? "the uplink gone" : "the same uplink");
    HandoverRecord state = Export();
    auto made = Build(state);
    ASSERT_TRUE(made.has_value()) << made.error().message();
    b_ = std::move(*made);
    b_->FollowedChanged(nullptr);  // not added yet
    b_->FollowedChanged(gone_at_commit ? nullptr : &up);
    EXPECT_EQ(d.c()->event_seq, told);  // nothing before the commit
    Cutover();
    EXPECT_EQ(d.c()->event_seq, gone_at_commit ? told + 1 : told);
    b_.reset();
  }
}

}  // namespace
}  // namespace nicmux
