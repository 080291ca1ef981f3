// Flow rules of the pv port: the rule checks and the matcher (pv_flow.h), then rules made by a
// driver written on the ABI (tests/support/pv_driver.h) through the mailbox, applied to frames
// the switch hands the port: queue, RSS, drop, mark, priority, destroy, flush, and every
// refusal of a hostile rule message, which leaves the device working.
#include "pv/pv_flow.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/event_loop.h"
#include "base/pausable.h"
#include "pv/guest/nicmux_pv.h"
#include "pv/pv_abi.h"
#include "pv/pv_port.h"
#include "tests/support/frames.h"
#include "tests/support/pv_driver.h"

namespace nicmux {
namespace {

using testing::Bytes;
using testing::FrameSpec;
using Driver = testing::RawPvDriver;

Bytes Udp(uint16_t dport, bool ipv6 = false, bool vlan = false, uint16_t sport = 40000) {
  FrameSpec s;
  s.udp = true;
  s.ipv6 = ipv6;
  s.vlan = vlan;
  s.payload = 64;
  Bytes f = testing::MakeTcpUdpFrame(s);
  testing::Put16(f, s.L4(), sport);
  testing::Put16(f, s.L4() + 2, dport);
  return f;
}
Bytes Tcp(uint16_t dport) {
  FrameSpec s;
  s.payload = 64;
  Bytes f = testing::MakeTcpUdpFrame(s);
  testing::Put16(f, s.L4() + 2, dport);
  return f;
}

nmx_pv_flow_rule UdpDstRule(uint16_t port, uint32_t queue) {
  nmx_pv_flow_rule r{};
  r.items = NMX_PV_FLOW_ITEM_ETH | NMX_PV_FLOW_ITEM_IPV4 | NMX_PV_FLOW_ITEM_UDP;
  r.spec.l4_dst = htons(port);
  r.mask.l4_dst = 0xffff;
  r.actions = NMX_PV_FLOW_ACTION_QUEUE;
  r.queue = queue;
  return r;
}

pv::FlowVerdict Classify(const pv::FlowTable& t, const Bytes& f) {
  testing::SplitPacket sp(f, {});
  return t.Classify(sp.p);
}

// ---- the matcher --------------------------------------------------------------------------

TEST(PvFlow, ToeplitzMatchesMicrosoftsVerificationSuite) {
  // "Verifying the RSS hash calculation" (Microsoft): 66.9.149.187:2794 -> 161.142.100.80:1766.
  // The input: source address, destination address, source port, destination port.
  const uint8_t l3[8] = {66, 9, 149, 187, 161, 142, 100, 80};
  const uint8_t l4[12] = {66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6};
  EXPECT_EQ(pv::Toeplitz(pv::kDefaultRssKey, l3, 8), 0x323e8fc2u);
  EXPECT_EQ(pv::Toeplitz(pv::kDefaultRssKey, l4, 12), 0x51ccc178u);
}

TEST(PvFlow, MatchesItemsFieldsAndPriority) {
  pv::FlowTable t;
  EXPECT_EQ(Classify(t, Udp(4789)).rule, nullptr);
  const uint32_t a = t.Add(UdpDstRule(4789, 1));
  auto v = Classify(t, Udp(4789));
  ASSERT_NE(v.rule, nullptr);
  EXPECT_EQ(v.rule->id, a);
  EXPECT_EQ(v.queue, 1);
  EXPECT_EQ(Classify(t, Udp(4790)).rule, nullptr);
  EXPECT_EQ(Classify(t, Tcp(4789)).rule, nullptr);            // not udp
  EXPECT_EQ(Classify(t, Udp(4789, true)).rule, nullptr);      // not ipv4
  EXPECT_NE(Classify(t, Udp(4789, false, true)).rule, nullptr);  // tagged: still eth / ipv4 / udp
  // A lower priority number first, whatever the order of creation; equal: the older.
  nmx_pv_flow_rule drop{};
  drop.items = NMX_PV_FLOW_ITEM_IPV4;
  drop.actions = NMX_PV_FLOW_ACTION_DROP;
  drop.priority = 1;
  t.Add(drop);
  EXPECT_EQ(Classify(t, Udp(4789)).queue, 1);  // the udp rule (priority 0)
  EXPECT_TRUE(Classify(t, Tcp(80)).drop);
  nmx_pv_flow_rule first = UdpDstRule(4789, 0);
  first.priority = 0;
  t.Add(first);  // same priority as rule a, younger: a still wins
  EXPECT_EQ(Classify(t, Udp(4789)).queue, 1);
  ASSERT_TRUE(t.Remove(a));
  EXPECT_EQ(Classify(t, Udp(4789)).queue, 0);
  EXPECT_FALSE(t.Remove(a));
  // IPv6 addresses, a partial mask, vlan tci.
  pv::FlowTable t6;
  nmx_pv_flow_rule r6{};
  r6.items = NMX_PV_FLOW_ITEM_ETH | NMX_PV_FLOW_ITEM_VLAN | NMX_PV_FLOW_ITEM_IPV6;
  r6.spec.vlan_tci = htons(42);
  r6.mask.vlan_tci = htons(0x0fff);
  r6.spec.ip_dst[0] = 0x38;  // the frames' dst starts 0x38 0x39 ...
  r6.mask.ip_dst[0] = 0xf0;
  r6.spec.ip_src[15] = 0xff;  // spec bits outside the mask mean nothing
  r6.actions = NMX_PV_FLOW_ACTION_MARK;
  r6.mark = 77;
  ASSERT_EQ(pv::CheckFlowRule(r6, 1), "");
  t6.Add(r6);
  v = Classify(t6, Udp(1, true, true));
  ASSERT_NE(v.rule, nullptr);
  EXPECT_TRUE(v.mark);
  EXPECT_EQ(v.mark_value, 77u);
  EXPECT_EQ(v.queue, -1);  // mark alone: the switch's queue
  EXPECT_EQ(Classify(t6, Udp(1, true, false)).rule, nullptr);  // untagged
  EXPECT_EQ(Classify(t6, Udp(1, false, true)).rule, nullptr);  // ipv4
  EXPECT_EQ(t6.rules()[0]->hits.load(), 1u);
}

TEST(PvFlow, RssHashesOverTheChosenQueues) {
  pv::FlowTable t;
  nmx_pv_flow_rule r{};
  r.items = NMX_PV_FLOW_ITEM_IPV4 | NMX_PV_FLOW_ITEM_UDP;
  r.actions = NMX_PV_FLOW_ACTION_RSS;
  r.rss_queue_num = 2;
  r.rss_queues[0] = 2;
  r.rss_queues[1] = 3;
  r.rss_types = NMX_PV_RSS_IPV4_UDP;
  ASSERT_EQ(pv::CheckFlowRule(r, 4), "");
  t.Add(r);
  int seen[4] = {};
  for (uint16_t sp = 1000; sp < 1064; ++sp) {
    const Bytes f = Udp(53, false, false, sp);
    const auto v = Classify(t, f);
    ASSERT_TRUE(v.rss);
    const uint8_t in[12] = {10, 0, 0, 1, 10, 0, 0, 2, uint8_t(sp >> 8), uint8_t(sp), 0, 53};
    EXPECT_EQ(v.hash, pv::Toeplitz(pv::kDefaultRssKey, in, 12));
    EXPECT_EQ(v.queue, r.rss_queues[v.hash % 2]);
    ++seen[v.queue];
  }
  EXPECT_GT(seen[2], 10);
  EXPECT_GT(seen[3], 10);
  // Types without udp over ipv4: not hashed, the list's first queue.
  r.rss_types = NMX_PV_RSS_IPV6;
  pv::FlowTable t2;
  t2.Add(r);
  const auto v = Classify(t2, Udp(53));
  EXPECT_FALSE(v.rss);
  EXPECT_EQ(v.queue, 2);
}

TEST(PvFlow, CheckRefusesWhatItCannotApply) {
  struct Case {
    const char* what;
    void (*edit)(nmx_pv_flow_rule&);
    const char* reason;
  };
  const Case cases[] = {
      {"unknown item", [](nmx_pv_flow_rule& r) { r.items |= 0x40; }, "item bits 0x40 are not offered"},
      {"v4+v6", [](nmx_pv_flow_rule& r) { r.items |= NMX_PV_FLOW_ITEM_IPV6; }, "ipv4 and ipv6"},
      {"tcp+udp", [](nmx_pv_flow_rule& r) { r.items |= NMX_PV_FLOW_ITEM_TCP; }, "tcp and udp"},
      {"udp alone", [](nmx_pv_flow_rule& r) { r.items = NMX_PV_FLOW_ITEM_UDP; }, "udp needs an ipv4 or ipv6 item"},
      {"vlan mask", [](nmx_pv_flow_rule& r) { r.mask.vlan_tci = 1; }, "vlan fields without a vlan item"},
      {"ip mask", [](nmx_pv_flow_rule& r) { r.items = NMX_PV_FLOW_ITEM_ETH, r.mask.l4_dst = 0, r.mask.ip_proto = 1; },
       "ip fields without"},
      {"long v4", [](nmx_pv_flow_rule& r) { r.mask.ip_dst[7] = 1; }, "ipv4 address has 4 bytes"},
      {"reserved", [](nmx_pv_flow_rule& r) { r.mask.reserved = 1; }, "reserved"},
      {"reserved2", [](nmx_pv_flow_rule& r) { r.reserved = 9; }, "reserved"},
      {"no action", [](nmx_pv_flow_rule& r) { r.actions = 0, r.queue = 0; }, "no action"},
      {"unknown action", [](nmx_pv_flow_rule& r) { r.actions |= 0x100; }, "action bits 0x100 are not offered"},
      {"two fates", [](nmx_pv_flow_rule& r) { r.actions |= NMX_PV_FLOW_ACTION_DROP; }, "more than one"},
      {"queue range", [](nmx_pv_flow_rule& r) { r.queue = 2; }, "action queue 2: the device has 2 rx queues"},
      {"huge queue", [](nmx_pv_flow_rule& r) { r.queue = 0xffffffff; }, "action queue 4294967295"},
      {"stray queue", [](nmx_pv_flow_rule& r) { r.actions = NMX_PV_FLOW_ACTION_DROP; }, "queue set without"},
      {"stray mark", [](nmx_pv_flow_rule& r) { r.mark = 3; }, "mark set without"},
      {"rss 0", [](nmx_pv_flow_rule& r) { r.actions = NMX_PV_FLOW_ACTION_RSS, r.queue = 0; }, "rss with 0 queues"},
      {"rss 17",
       [](nmx_pv_flow_rule& r) { r.actions = NMX_PV_FLOW_ACTION_RSS, r.queue = 0, r.rss_queue_num = 17; },
       "rss with 17 queues"},
      {"rss bad q",
       [](nmx_pv_flow_rule& r) {
         r.actions = NMX_PV_FLOW_ACTION_RSS, r.queue = 0, r.rss_queue_num = 2, r.rss_queues[1] = 5;
       },
       "rss queue 5"},
      {"rss tail",
       [](nmx_pv_flow_rule& r) {
         r.actions = NMX_PV_FLOW_ACTION_RSS, r.queue = 0, r.rss_queue_num = 1, r.rss_queues[15] = 1;
       },
       "beyond rss_queue_num"},
      {"rss types",
       [](nmx_pv_flow_rule& r) {
         r.actions = NMX_PV_FLOW_ACTION_RSS, r.queue = 0, r.rss_queue_num = 1, r.rss_types = 1ull << 40;
       },
       "types 0x10000000000 are not offered"},
      {"rss key",
       [](nmx_pv_flow_rule& r) { r.actions = NMX_PV_FLOW_ACTION_RSS, r.queue = 0, r.rss_queue_num = 1, r.rss_key_len = 39; },
       "key of 39 bytes"},
      {"stray key", [](nmx_pv_flow_rule& r) { r.rss_key[3] = 1; }, "rss_key set without"},
      {"stray rss", [](nmx_pv_flow_rule& r) { r.rss_types = 1; }, "rss fields set without"},
  };
  for (const Case& c : cases) {
    nmx_pv_flow_rule r = UdpDstRule(4789, 1);
    c.edit(r);
    const std::string why = pv::CheckFlowRule(r, 2);
    EXPECT_NE(why.find(c.reason), std::string::npos) << c.what << ": " << why;
  }
  EXPECT_EQ(pv::CheckFlowRule(UdpDstRule(4789, 1), 2), "");
}

// ---- through the port -----------------------------------------------------------------------

// The workers' side of the pause handshake, played by the test thread (Send holds the mutex,
// as a worker's round would), counting the pauses.
class CountingWorkers final : public Pausable {
 public:
  void Pause() override {
    m_.lock();
    ++pauses;
  }
  void Resume() override { m_.unlock(); }
  std::recursive_mutex& mutex() { return m_; }
  std::atomic<int> pauses{0};

 private:
  std::recursive_mutex m_;
};

class PvFlowPortTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto l = EventLoop::Create();
    ASSERT_TRUE(l.has_value());
    loop_ = std::move(*l);
    char dir[] = "/tmp/nmxpvflowXXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr);
    path_ = std::string(dir) + "/pv.sock";
    Make(4, 256);
  }
  void Make(uint32_t queues, uint32_t max_flows) {
    port_.reset();
    PvPortOptions o;
    o.name = "pv0";
    o.socket_path = path_;
    o.mac[0] = 2, o.mac[5] = 9;
    o.queues = queues;
    o.max_flows = max_flows;
    auto p = CreatePvPort(o, loop_.get(), &workers_);
    ASSERT_TRUE(p.has_value()) << p.error().message();
    port_ = std::move(*p);
  }
  // Sends frames as the switch would, on destination queue q.
  size_t Send(uint32_t q, const std::vector<Bytes>& frames) {
    std::vector<testing::SplitPacket> sp;
    sp.reserve(frames.size());
    for (const Bytes& f : frames) sp.emplace_back(f, std::vector<uint32_t>{30});
    std::vector<const PacketRef*> ptrs;
    for (auto& s : sp) ptrs.push_back(&s.p);
    std::lock_guard worker(workers_.mutex());
    return port_->Tx(q, {ptrs.data(), ptrs.size()});
  }
  nmx_pv_msg Create(Driver& d, const nmx_pv_flow_rule& r) { return d.Call(NMX_PV_MSG_FLOW_CREATE, r); }
  uint32_t Id(const nmx_pv_msg& m) {
    nmx_pv_flow_id id;
    std::memcpy(&id, m.payload, sizeof id);
    return id.id;
  }
  // Connects, starts `queues` pairs and posts 8 buffers on each rx ring.
  void Up(Driver& d, uint32_t queues) {
    ASSERT_EQ(d.Connect(path_), "");
    ASSERT_EQ(d.Start(queues), "");
    for (uint32_t q = 0; q < queues; ++q) {
      for (uint32_t i = 0; i < 8; ++i) d.PostRx(q, q * 16 + i, 2048);
    }
  }

  std::unique_ptr<EventLoop> loop_;
  CountingWorkers workers_;
  std::string path_;
  std::unique_ptr<Port> port_;
};

TEST_F(PvFlowPortTest, InfoAnnouncesWhatTheHostMatches) {
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  EXPECT_TRUE(d.h()->features & NMX_PV_FEATURE_FLOWS);
  nmx_pv_msg r = d.Call(NMX_PV_MSG_GET_INFO);
  ASSERT_EQ(r.status, 0);
  nmx_pv_info info;
  std::memcpy(&info, r.payload, sizeof info);
  EXPECT_EQ(info.flow_items, pv::kFlowItems);
  EXPECT_EQ(info.flow_actions, pv::kFlowActions);
  EXPECT_EQ(info.max_flows, 256u);
  EXPECT_EQ(info.flow_rss_types, pv::kFlowRssTypes);
  EXPECT_EQ(info.flow_rss_queues, NMX_PV_FLOW_RSS_MAX_QUEUES);
  nmx_pv_flow_fields m;
  std::memcpy(&m, info.flow_fields.bytes, sizeof m);
  EXPECT_EQ(m.l4_dst, 0xffff);
  EXPECT_EQ(m.reserved, 0u);
  // flows=0: nothing offered, every FLOW request refused.
  d.sock.Reset();
  loop_->RunOnce(10);
  Make(1, 0);
  Driver d0(loop_.get());
  ASSERT_EQ(d0.Connect(path_), "");
  EXPECT_FALSE(d0.h()->features & NMX_PV_FEATURE_FLOWS);
  r = d0.Call(NMX_PV_MSG_GET_INFO);
  std::memcpy(&info, r.payload, sizeof info);
  EXPECT_EQ(info.flow_items, 0u);
  EXPECT_EQ(info.max_flows, 0u);
  ASSERT_EQ(d0.Start(1), "");
  r = Create(d0, UdpDstRule(4789, 0));
  EXPECT_EQ(r.status, -ENOTSUP);
  EXPECT_NE(std::string(r.reason).find("flows=0"), std::string::npos) << r.reason;
}

TEST_F(PvFlowPortTest, QueueRuleSteersThenDestroyStopsIt) {
  Driver d(loop_.get());
  Up(d, 2);
  const int pauses = workers_.pauses;
  nmx_pv_msg r = Create(d, UdpDstRule(4789, 1));
  ASSERT_EQ(r.status, 0) << r.reason;
  const uint32_t id = Id(r);
  EXPECT_NE(id, 0u);
  EXPECT_EQ(workers_.pauses, pauses + 1);  // the table changes with the workers paused
  // The switch hands everything to queue 0: the vxlan frames go to ring 1, the rest stay.
  EXPECT_EQ(Send(0, {Udp(4789), Udp(53), Udp(4789), Tcp(4789), Udp(4789)}), 5u);
  EXPECT_EQ(d.rx(1)->done, 3u);
  EXPECT_EQ(d.rx(0)->done, 2u);
  EXPECT_EQ(d.rx(1)->desc[0].len, Udp(4789).size());
  EXPECT_EQ(0, std::memcmp(d.base + d.buf(16), Udp(4789).data(), Udp(4789).size()));
  EXPECT_EQ(d.rx(1)->desc[0].flags & (NMX_PV_DESC_MARK | NMX_PV_DESC_RSS), 0);
  // The driver's own counters say so, per queue.
  nmx_pv_msg st = d.Call(NMX_PV_MSG_STATS_GET);
  nmx_pv_stats s;
  std::memcpy(&s, st.payload, sizeof s);
  EXPECT_EQ(s.rx[0].packets, 2u);
  EXPECT_EQ(s.rx[1].packets, 3u);
  // nicmuxctl's view.
  auto rows = port_->FlowRules();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(std::get<uint64_t>(rows[0][0].second), id);
  EXPECT_EQ(std::get<std::string>(rows[0][2].second), "eth / ipv4 / udp dst is 4789 -> queue 1");
  EXPECT_EQ(std::get<uint64_t>(rows[0][3].second), 3u);
  EXPECT_EQ(std::get<std::string>(rows[0][4].second), "software");
  // Destroyed: everything follows the switch again.
  ASSERT_EQ(d.Call(NMX_PV_MSG_FLOW_DESTROY, nmx_pv_flow_id{id, 0}).status, 0);
  EXPECT_EQ(Send(0, {Udp(4789)}), 1u);
  EXPECT_EQ(d.rx(0)->done, 3u);
  EXPECT_EQ(d.rx(1)->done, 3u);
  EXPECT_TRUE(port_->FlowRules().empty());
  r = d.Call(NMX_PV_MSG_FLOW_DESTROY, nmx_pv_flow_id{id, 0});
  EXPECT_EQ(r.status, -ENOENT);
  EXPECT_NE(std::string(r.reason).find("FLOW_DESTROY: no rule"), std::string::npos) << r.reason;
}

TEST_F(PvFlowPortTest, DropMarkRssAndFullRings) {
  Driver d(loop_.get());
  Up(d, 4);
  nmx_pv_flow_rule drop{};
  drop.items = NMX_PV_FLOW_ITEM_IPV4 | NMX_PV_FLOW_ITEM_TCP;
  drop.actions = NMX_PV_FLOW_ACTION_DROP;
  ASSERT_EQ(Create(d, drop).status, 0);
  nmx_pv_flow_rule mark = UdpDstRule(4789, 2);
  mark.actions |= NMX_PV_FLOW_ACTION_MARK;
  mark.mark = 0xabcdef;
  ASSERT_EQ(Create(d, mark).status, 0);
  nmx_pv_flow_rule rss{};
  rss.priority = 5;
  rss.items = NMX_PV_FLOW_ITEM_IPV4 | NMX_PV_FLOW_ITEM_UDP;
  rss.actions = NMX_PV_FLOW_ACTION_RSS;
  rss.rss_queue_num = 2;
  rss.rss_queues[0] = 1;
  rss.rss_queues[1] = 3;
  ASSERT_EQ(Create(d, rss).status, 0);
  EXPECT_EQ(Send(1, {Tcp(80), Tcp(22), Udp(4789)}), 3u);
  EXPECT_EQ(port_->DropsFor(DropReason::kFlowDrop), 2u);
  ASSERT_EQ(d.rx(2)->done, 1u);
  EXPECT_EQ(d.rx(2)->desc[0].flags & NMX_PV_DESC_MARK, NMX_PV_DESC_MARK);
  EXPECT_EQ(d.rx(2)->desc[0].mark, 0xabcdefu);
  // RSS: each frame on the queue its hash names, with the hash.
  std::vector<Bytes> frames;
  for (uint16_t sp = 2000; sp < 2008; ++sp) frames.push_back(Udp(53, false, false, sp));
  EXPECT_EQ(Send(0, frames), 8u);
  uint32_t got1 = 0, got3 = 0;
  for (uint16_t sp = 2000; sp < 2008; ++sp) {
    const uint8_t in[12] = {10, 0, 0, 1, 10, 0, 0, 2, uint8_t(sp >> 8), uint8_t(sp), 0, 53};
    const uint32_t h = pv::Toeplitz(pv::kDefaultRssKey, in, 12);
    const uint32_t q = rss.rss_queues[h % 2];
    const nmx_pv_desc& desc = d.rx(q)->desc[q == 1 ? got1++ : got3++];
    EXPECT_EQ(desc.rss_hash, h);
    EXPECT_EQ(desc.flags & NMX_PV_DESC_RSS, NMX_PV_DESC_RSS);
  }
  EXPECT_EQ(d.rx(1)->done, got1);
  EXPECT_EQ(d.rx(3)->done, got3);
  EXPECT_EQ(got1 + got3, 8u);
  // A full ring drops what its rule sends it (the others are not held up): queue 2 has 7
  // buffers left.
  std::vector<Bytes> many(10, Udp(4789));
  many.push_back(Udp(9));  // no rule but rss: hashed
  EXPECT_EQ(port_->TxRoom(0), kBurst);
  EXPECT_EQ(Send(0, many), 11u);
  EXPECT_EQ(d.rx(2)->done, 8u);
  EXPECT_EQ(port_->DropsFor(DropReason::kQueueFull), 3u);
  nmx_pv_msg st = d.Call(NMX_PV_MSG_STATS_GET);
  nmx_pv_stats s;
  std::memcpy(&s, st.payload, sizeof s);
  EXPECT_EQ(s.rx_no_buffers, 3u);
  EXPECT_EQ(s.rx[2].packets, 8u);
  // FLUSH: no rule left, the plain path again (the switch's queue, its backpressure).
  ASSERT_EQ(d.Call(NMX_PV_MSG_FLOW_FLUSH).status, 0);
  EXPECT_TRUE(port_->FlowRules().empty());
  EXPECT_EQ(port_->TxRoom(2), 0u);
}

TEST_F(PvFlowPortTest, HostileRuleMessagesAreRefusedAndTheDeviceWorksOn) {
  Make(2, 3);
  Driver d(loop_.get());
  ASSERT_EQ(d.Connect(path_), "");
  // Before CONFIGURE: a rule names queues of a configuration.
  nmx_pv_msg r = Create(d, UdpDstRule(4789, 0));
  EXPECT_EQ(r.status, -EINVAL);
  EXPECT_NE(std::string(r.reason).find("FLOW_CREATE: CONFIGURE first"), std::string::npos) << r.reason;
  ASSERT_EQ(d.Start(2), "");
  for (uint32_t i = 0; i < 4; ++i) d.PostRx(0, i, 2048), d.PostRx(1, 16 + i, 2048);
  // Truncated and overlong payloads.
  const nmx_pv_flow_rule ok = UdpDstRule(4789, 1);
  r = d.Call(NMX_PV_MSG_FLOW_CREATE, &ok, sizeof ok - 1);
  EXPECT_EQ(r.status, -EINVAL);
  EXPECT_NE(std::string(r.reason).find("FLOW_CREATE: payload of 239 bytes, not 240"), std::string::npos) << r.reason;
  r = d.CallWithLen(NMX_PV_MSG_FLOW_VALIDATE, 0xffff);  // len beyond the payload area
  EXPECT_EQ(r.status, -EINVAL);
  r = d.CallWithLen(NMX_PV_MSG_FLOW_FLUSH, 4);
  EXPECT_EQ(r.status, -EINVAL);
  r = d.Call(NMX_PV_MSG_FLOW_DESTROY, nmx_pv_flow_id{1, 7});
  EXPECT_NE(std::string(r.reason).find("reserved must be 0"), std::string::npos) << r.reason;
  // Garbage rules: refused with the field named, by VALIDATE and CREATE alike.
  nmx_pv_flow_rule bad = ok;
  bad.queue = 2;
  for (uint16_t type : {NMX_PV_MSG_FLOW_VALIDATE, NMX_PV_MSG_FLOW_CREATE}) {
    r = d.Call(type, bad);
    EXPECT_EQ(r.status, -EINVAL);
    EXPECT_NE(std::string(r.reason).find("action queue 2: the device has 2 rx queues configured"), std::string::npos)
        << r.reason;
  }
  bad = ok;
  bad.actions |= 0x80;
  r = Create(d, bad);
  EXPECT_EQ(r.status, -ENOTSUP);
  EXPECT_NE(std::string(r.reason).find("FLOW_CREATE: action bits 0x80 are not offered"), std::string::npos) << r.reason;
  // Random bytes: never taken unless CheckFlowRule says so, never a crash.
  std::srand(7);
  for (int i = 0; i < 300; ++i) {
    nmx_pv_flow_rule g;
    auto* b = reinterpret_cast<uint8_t*>(&g);
    for (size_t k = 0; k < sizeof g; ++k) b[k] = static_cast<uint8_t>(std::rand());
    if (i % 2) g.reserved = g.spec.reserved = g.mask.reserved = 0;
    r = d.Call(NMX_PV_MSG_FLOW_VALIDATE, g);
    EXPECT_EQ(r.status == 0, pv::CheckFlowRule(g, 2).empty());
  }
  EXPECT_TRUE(port_->FlowRules().empty());
  // VALIDATE makes nothing; the bound: flows=3.
  EXPECT_EQ(d.Call(NMX_PV_MSG_FLOW_VALIDATE, ok).status, 0);
  EXPECT_TRUE(port_->FlowRules().empty());
  for (int i = 0; i < 3; ++i) ASSERT_EQ(Create(d, ok).status, 0);
  r = Create(d, ok);
  EXPECT_EQ(r.status, -ENOSPC);
  EXPECT_NE(std::string(r.reason).find("flows=3"), std::string::npos) << r.reason;
  r = d.Call(NMX_PV_MSG_FLOW_VALIDATE, ok);
  EXPECT_EQ(r.status, -ENOSPC);
  // The device works on, rules applied.
  EXPECT_EQ(Send(0, {Udp(4789), Udp(1)}), 2u);
  EXPECT_EQ(d.rx(1)->done, 1u);
  EXPECT_EQ(d.rx(0)->done, 1u);
  EXPECT_EQ(port_->State(), "running");
  // CONFIGURE forgets the rules (they named the old queues); so does a new connection.
  ASSERT_EQ(d.Call(NMX_PV_MSG_STOP).status, 0);
  struct nmx_pv_configure cfg{};
  cfg.nb_rx_queues = cfg.nb_tx_queues = 1;
  ASSERT_EQ(d.Call(NMX_PV_MSG_CONFIGURE, cfg).status, 0);
  EXPECT_TRUE(port_->FlowRules().empty());
  cfg.nb_rx_queues = cfg.nb_tx_queues = 2;
  ASSERT_EQ(d.Call(NMX_PV_MSG_CONFIGURE, cfg).status, 0);
  ASSERT_EQ(Create(d, ok).status, 0);
  EXPECT_EQ(port_->FlowRules().size(), 1u);
  d.sock.Reset();
  for (int i = 0; i < 5; ++i) loop_->RunOnce(5);
  EXPECT_EQ(port_->State(), "waiting");
  EXPECT_TRUE(port_->FlowRules().empty());
  Driver d2(loop_.get());
  ASSERT_EQ(d2.Connect(path_), "");
  EXPECT_TRUE(port_->FlowRules().empty());
}

// The driver library's flow calls against the real host: nicmuxd's loop on its own thread,
// the library's control calls from this one (each answer orders what the host did before it).
TEST_F(PvFlowPortTest, LibraryFlowCallsAgainstTheHost) {
  std::atomic<bool> stop{false};
  std::thread host([&] {
    while (!stop.load()) loop_->RunOnce(2);
  });
  char err[256] = "";
  nmx_pv_dev* dev = nmx_pv_open(path_.c_str(), err, sizeof err);
  ASSERT_NE(dev, nullptr) << err;
  EXPECT_TRUE(nmx_pv_features(dev) & NMX_PV_FEATURE_FLOWS);
  nmx_pv_info info;
  ASSERT_EQ(nmx_pv_get_info(dev, &info), 0);
  EXPECT_EQ(info.flow_items, pv::kFlowItems);
  EXPECT_EQ(info.max_flows, 256u);
  nmx_pv_flow_rule r = UdpDstRule(4789, 1);
  r.actions |= NMX_PV_FLOW_ACTION_MARK;
  r.mark = 4242;
  uint32_t id = 0;
  EXPECT_EQ(nmx_pv_flow_create(dev, &r, &id), -EINVAL);  // before CONFIGURE
  EXPECT_NE(std::string(nmx_pv_strerror(dev)).find("FLOW_CREATE refused by the host: FLOW_CREATE: CONFIGURE first"),
            std::string::npos)
      << nmx_pv_strerror(dev);
  struct nmx_pv_configure c{};
  c.nb_rx_queues = c.nb_tx_queues = 2;
  ASSERT_EQ(nmx_pv_configure(dev, &c), 0);
  for (uint32_t q = 0; q < 2; ++q) {
    ASSERT_EQ(nmx_pv_queue_setup(dev, q, NMX_PV_QUEUE_RX), 0) << nmx_pv_strerror(dev);
    ASSERT_EQ(nmx_pv_queue_setup(dev, q, NMX_PV_QUEUE_TX), 0) << nmx_pv_strerror(dev);
  }
  ASSERT_EQ(nmx_pv_start(dev), 0);
  nmx_pv_flow_rule bad = r;
  bad.queue = 3;
  EXPECT_EQ(nmx_pv_flow_validate(dev, &bad), -EINVAL);
  EXPECT_NE(std::string(nmx_pv_strerror(dev)).find("action queue 3: the device has 2 rx queues configured"),
            std::string::npos)
      << nmx_pv_strerror(dev);
  EXPECT_EQ(nmx_pv_flow_validate(dev, &r), 0);
  ASSERT_EQ(nmx_pv_flow_create(dev, &r, &id), 0) << nmx_pv_strerror(dev);
  EXPECT_NE(id, 0u);
  // The switch's frames, all for queue 0: the vxlan ones reach the library on queue 1, marked.
  EXPECT_EQ(Send(0, {Udp(4789), Udp(53), Udp(4789)}), 3u);
  nmx_pv_pkt pk[8];
  ASSERT_EQ(nmx_pv_rx_burst(dev, 1, pk, 8), 2u);
  EXPECT_EQ(pk[0].flags & NMX_PV_DESC_MARK, NMX_PV_DESC_MARK);
  EXPECT_EQ(pk[0].mark, 4242u);
  EXPECT_EQ(pk[0].len, Udp(4789).size());
  EXPECT_EQ(0, std::memcmp(pk[0].data, Udp(4789).data(), pk[0].len));
  nmx_pv_rx_done(dev, 1, 2);
  ASSERT_EQ(nmx_pv_rx_burst(dev, 0, pk, 8), 1u);
  EXPECT_EQ(pk[0].flags & NMX_PV_DESC_MARK, 0);
  nmx_pv_rx_done(dev, 0, 1);
  ASSERT_EQ(nmx_pv_flow_destroy(dev, id), 0);
  EXPECT_EQ(nmx_pv_flow_destroy(dev, id), -ENOENT);
  EXPECT_EQ(Send(0, {Udp(4789)}), 1u);
  EXPECT_EQ(nmx_pv_rx_burst(dev, 1, pk, 8), 0u);
  EXPECT_EQ(nmx_pv_rx_burst(dev, 0, pk, 8), 1u);
  nmx_pv_rx_done(dev, 0, 1);
  ASSERT_EQ(nmx_pv_flow_create(dev, &r, &id), 0);
  ASSERT_EQ(nmx_pv_flow_flush(dev), 0);
  {
    std::lock_guard worker(workers_.mutex());  // the flush changed the table paused
    EXPECT_TRUE(port_->FlowRules().empty());
  }
  nmx_pv_close(dev);
  stop = true;
  host.join();
}

// flows=0: the library refuses before asking.
TEST_F(PvFlowPortTest, LibraryWithoutFlows) {
  Make(1, 0);
  std::atomic<bool> stop{false};
  std::thread host([&] {
    while (!stop.load()) loop_->RunOnce(2);
  });
  char err[256] = "";
  nmx_pv_dev* dev = nmx_pv_open(path_.c_str(), err, sizeof err);
  ASSERT_NE(dev, nullptr) << err;
  nmx_pv_info info;
  ASSERT_EQ(nmx_pv_get_info(dev, &info), 0);
  EXPECT_EQ(info.flow_items, 0u);
  const nmx_pv_flow_rule r = UdpDstRule(1, 0);
  uint32_t id;
  EXPECT_EQ(nmx_pv_flow_create(dev, &r, &id), -ENOTSUP);
  EXPECT_NE(std::string(nmx_pv_strerror(dev)).find("the host offers no flow rules"), std::string::npos);
  EXPECT_EQ(nmx_pv_flow_flush(dev), -ENOTSUP);
  nmx_pv_close(dev);
  stop = true;
  host.join();
}

}  // namespace
}  // namespace nicmux
