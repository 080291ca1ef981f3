// The scheduler: placement (QueueAssignment), queue_affinity parsing, a port's own pause
// stopping only its pollers, wake-up isolation between workers, rebalancing by load, NUMA
// placement, and the cap on busy-polling workers. The worker threads are real; the forwarders
// and ports are the doubles of test_fakes.h. This machine has one NUMA node: the NUMA tests
// inject a two-node topology (the probes themselves: base/numa_test.cc).
#include "sched/scheduler.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "sched/test_fakes.h"

namespace nicmux {
namespace {

using namespace std::chrono_literals;

TEST(QueueAssignment, NewQueuesGoRoundRobinAndPinsAreKept) {
  std::vector<QueueLoad> qs(5);
  qs[3].pin = 0;
  QueueAssignment::PlaceNew(qs, 2);
  EXPECT_EQ(QueueAssignment::Current(qs), (std::vector<int>{0, 1, 0, 0, 1}));
  // Queues already placed stay; a new one goes to the worker with fewer.
  qs.push_back({});
  qs.push_back({});
  QueueAssignment::PlaceNew(qs, 2);
  EXPECT_EQ(qs[5].worker, 1);
  EXPECT_EQ(qs[6].worker, 0);
}

TEST(QueueAssignment, BalancedSplitsTheHeavyQueuesAndNeverMovesPinnedOnes) {
  // Two heavy queues and three idle ones, all on worker 0.
  std::vector<QueueLoad> qs = {{1000, -1, 0}, {0, -1, 0}, {900, -1, 0}, {0, -1, 0}, {0, -1, 1}};
  const std::vector<int> b = QueueAssignment::Balanced(qs, 2);
  EXPECT_NE(b[0], b[2]);
  EXPECT_EQ(QueueAssignment::Max(QueueAssignment::WorkerLoads(qs, b, 2)), 1000u);
  // The idle queues stay where they were (review: they used to pile onto one worker).
  EXPECT_EQ(b[1], 0);
  EXPECT_EQ(b[3], 0);
  EXPECT_EQ(b[4], 1);
  // Pinned: both heavy ones stay on worker 0 whatever the load.
  qs[0].pin = 0;
  qs[2].pin = 0;
  const std::vector<int> p = QueueAssignment::Balanced(qs, 2);
  EXPECT_EQ(p[0], 0);
  EXPECT_EQ(p[2], 0);
  // Already balanced: nothing moves.
  std::vector<QueueLoad> even = {{500, -1, 0}, {500, -1, 1}, {0, -1, 0}, {0, -1, 1}};
  EXPECT_EQ(QueueAssignment::Balanced(even, 2), QueueAssignment::Current(even));
}

TEST(QueueAffinity, ParsesAndNamesWhatIsWrong) {
  auto ok = ParseQueueAffinity("vm1", "0:1/2:0", 3, 2);
  ASSERT_TRUE(ok) << ok.error().message();
  EXPECT_EQ(*ok, (std::vector<int>{1, -1, 0}));
  auto msg = [](const char* text) {
    auto r = ParseQueueAffinity("vm1", text, 2, 2);
    return r ? std::string("ok") : r.error().message();
  };
  EXPECT_EQ(msg("0:2"), "port vm1: queue_affinity: '0:2': there are 2 worker(s), 0..1 (--workers)");
  EXPECT_EQ(msg("2:0"), "port vm1: queue_affinity: '2:0': the port has 2 queue pair(s), 0..1");
  EXPECT_EQ(msg("0:1/0:0"), "port vm1: queue_affinity: '0:0': queue 0 is pinned twice");
  EXPECT_EQ(msg("x"), "port vm1: queue_affinity: 'x' is not QUEUE:WORKER");
  EXPECT_EQ(msg("0:1/"), "port vm1: queue_affinity: '' is not QUEUE:WORKER");
}

struct TwoWorkerSched {
  explicit TwoWorkerSched(uint32_t idle_poll_us = 0, uint32_t rebalance_ticks = 0) {
    SchedulerOptions o;
    o.workers = 2;
    o.idle_poll_us = idle_poll_us;
    o.rebalance_ticks = rebalance_ticks;
    o.rebalance_min_load = 1000;
    s = std::make_unique<Scheduler>(o);
    s->SetForwarder(0, &f[0]);
    s->SetForwarder(1, &f[1]);
  }
  ~TwoWorkerSched() { s->Stop(); }
  FakeForwarder f[2];
  std::unique_ptr<Scheduler> s;
};

TEST(Scheduler, APortsOwnPauseStopsOnlyItsPollersAndClosesItsTransmitSide) {
  // The ports outlive the workers that poll them (declared first, destroyed last).
  FakePort a("a"), b("b");
  TwoWorkerSched t(100);
  t.f[0].pending.store(1 << 30);  // both busy
  t.f[1].pending.store(1 << 30);
  t.s->AddPort(&a, 0, {});
  t.s->AddPort(&b, 1, {});
  ASSERT_EQ(t.s->worker(0).queues().size(), 1u);
  ASSERT_EQ(t.s->worker(0).queues()[0].src.port, &a);
  ASSERT_TRUE(t.s->Start());
  auto pause = t.s->MakePortPause();
  pause->set_port(&a);
  ASSERT_TRUE(WaitFor([&] { return t.f[0].polls.load() > 100 && t.f[1].polls.load() > 100; }));
  pause->Pause();
  EXPECT_TRUE(a.tx_closed());
  EXPECT_FALSE(b.tx_closed());
  const uint64_t p0 = t.f[0].polls.load(), p1 = t.f[1].polls.load();
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(t.f[0].polls.load(), p0) << "a's poller runs during a's pause";
  EXPECT_GT(t.f[1].polls.load(), p1) << "b's poller stopped for a's pause";
  pause->Resume();
  EXPECT_FALSE(a.tx_closed());
  ASSERT_TRUE(WaitFor([&] { return t.f[0].polls.load() > p0; }));
  // Un-named (its port removed): pauses no one.
  pause->set_port(nullptr);
  pause->Pause();
  const uint64_t q0 = t.f[0].polls.load();
  ASSERT_TRUE(WaitFor([&] { return t.f[0].polls.load() > q0; }));
  pause->Resume();
}

TEST(Scheduler, AKickWakesOnlyTheWorkerThatPollsTheQueue) {
  FakePort a("a"), b("b");  // (outlive the workers)
  TwoWorkerSched t(0);  // sleep at the first empty round
  a.kick_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  b.kick_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  t.s->AddPort(&a, 0, {});
  t.s->AddPort(&b, 1, {});
  ASSERT_TRUE(t.s->Start());
  ASSERT_TRUE(WaitFor([&] { return t.s->worker(0).sleeps() > 0 && t.s->worker(1).sleeps() > 0; }));
  const uint64_t b_kicks = t.s->worker(1).kick_wakeups();
  for (int i = 0; i < 50; ++i) {
    const uint64_t before = t.s->worker(0).kick_wakeups();
    t.f[0].pending.store(1);
    const uint64_t one = 1;
    ASSERT_EQ(::write(a.kick_fd, &one, sizeof one), static_cast<ssize_t>(sizeof one));
    ASSERT_TRUE(WaitFor([&] { return t.f[0].pending.load() == 0; })) << "the kick did not wake a's worker";
    ASSERT_TRUE(WaitFor([&] { return t.s->worker(0).kick_wakeups() > before; }));
  }
  EXPECT_GE(t.s->worker(0).kick_wakeups(), 50u);
  EXPECT_EQ(t.s->worker(1).kick_wakeups(), b_kicks) << "a's kicks woke b's worker";
  t.s->Stop();
  ::close(a.kick_fd);
  ::close(b.kick_fd);
}

TEST(Scheduler, TwoHeavyQueuesOnOneWorkerEndUpOnTwo) {
  // Port ids 0..4; 2 and 4 are heavy. Placement (fewest queues first): 0->w0, 1->w1, 2->w0,
  // 3->w1, 4->w0: both heavy queues on worker 0. (The ports outlive the workers.)
  FakePort p[5] = {FakePort("p0"), FakePort("p1"), FakePort("heavy2"), FakePort("p3"), FakePort("heavy4")};
  TwoWorkerSched t(100, /*rebalance_ticks=*/3);
  for (auto& f : t.f) {
    f.busy_id = 2;
    f.busy_id2 = 4;
  }
  for (uint16_t i = 0; i < 5; ++i) t.s->AddPort(&p[i], i, {});
  auto where = [&](const Port* port) {
    for (uint32_t w = 0; w < 2; ++w) {
      for (const auto& q : t.s->worker(w).queues()) {
        if (q.src.port == port) return static_cast<int>(w);
      }
    }
    return -1;
  };
  ASSERT_EQ(where(&p[2]), 0);
  ASSERT_EQ(where(&p[4]), 0);
  ASSERT_TRUE(t.s->Start());
  // Ticks every 50 ms: three in a row with the imbalance move one of them.
  bool moved = false;
  for (int i = 0; i < 200 && !moved; ++i) {
    std::this_thread::sleep_for(50ms);
    moved = t.s->Tick();
  }
  ASSERT_TRUE(moved) << "no rebalancing within 10 s";
  EXPECT_NE(where(&p[2]), where(&p[4]));
  EXPECT_EQ(t.s->rebalances(), 1u);
  // Balanced now: the next ticks move nothing more (hysteresis, no ping-pong).
  for (int i = 0; i < 6; ++i) {
    std::this_thread::sleep_for(50ms);
    EXPECT_FALSE(t.s->Tick());
  }
  const auto view = t.s->Show();
  ASSERT_EQ(view.size(), 2u);
  EXPECT_GT(view[0].load, 0u);
  EXPECT_GT(view[1].load, 0u);
  // Each worker has a queue that always has a burst: its rounds move packets, and what they
  // cost per packet is known.
  for (const auto& v : view) {
    EXPECT_GT(v.busy_pct, 0.0) << v.name;
    EXPECT_LE(v.busy_pct, 100.0) << v.name;
    EXPECT_GT(v.busy_rounds_pct, 0.0) << v.name;
    EXPECT_GT(v.cycles_per_packet, 0u) << v.name;
  }
}

TEST(QueueAssignment, QueuesGoToWorkersOnTheirNodeAndPinsStillWin) {
  // Workers 0 and 2 on node 0, 1 and 3 on node 1.
  const QueueAssignment::Nodes nodes = {0, 1, 0, 1};
  std::vector<QueueLoad> qs = {{0, -1, -1, 1}, {0, -1, -1, 1}, {0, -1, -1, 1}, {0, -1, -1, 0},
                               {0, 0, -1, 1},   // pinned to worker 0 (node 0): the pin wins
                               {0, -1, -1, -1},  // unknown: any worker
                               {0, -1, -1, 7}};  // no worker on node 7: any worker
  QueueAssignment::PlaceNew(qs, 4, nodes);
  EXPECT_EQ(qs[0].worker, 1);
  EXPECT_EQ(qs[1].worker, 3);
  EXPECT_EQ(qs[2].worker, 1);  // node 1's workers only, fewest queues first
  EXPECT_EQ(qs[3].worker, 0);
  EXPECT_EQ(qs[4].worker, 0);
  EXPECT_EQ(qs[5].worker, 2);  // the worker with the fewest queues, whatever its node
  EXPECT_EQ(qs[6].worker, 2);
  // Balancing keeps to the nodes: three heavy node-1 queues spread over workers 1 and 3 only,
  // though 0 and 2 idle.
  qs[0].load = 1000;
  qs[1].load = 1000;
  qs[2].load = 1000;
  const std::vector<int> b = QueueAssignment::Balanced(qs, 4, nodes);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(b[i] == 1 || b[i] == 3) << i << " on worker " << b[i];
  EXPECT_EQ(b[4], 0);
  // Without nodes (one node, or no worker pinned): as before.
  std::vector<QueueLoad> plain = {{0, -1, -1, 1}, {0, -1, -1, 1}};
  QueueAssignment::PlaceNew(plain, 2);
  EXPECT_EQ(QueueAssignment::Current(plain), (std::vector<int>{0, 1}));
}

// Two workers pinned to CPUs 0 and 1, which an injected topology puts on nodes 0 and 1. The
// workers are not started (placement and Tick need no threads; nothing is pinned for real).
struct TwoNodeSched {
  TwoNodeSched() {
    SchedulerOptions o;
    o.workers = 2;
    o.cpus = {0, 1};
    o.idle_poll_us = 0;
    o.rebalance_ticks = 0;
    o.topology = NumaTopology({0, 1});
    s = std::make_unique<Scheduler>(o);
    s->SetForwarder(0, &f[0]);
    s->SetForwarder(1, &f[1]);
  }
  int WorkerOf(const Port* port) const {
    for (uint32_t w = 0; w < 2; ++w) {
      for (const auto& q : s->worker(w).queues()) {
        if (q.src.port == port) return static_cast<int>(w);
      }
    }
    return -1;
  }
  FakeForwarder f[2];
  std::unique_ptr<Scheduler> s;
};

TEST(Scheduler, QueuesFollowTheirPortsNumaNode) {
  TwoNodeSched t;
  EXPECT_EQ(t.s->worker(0).node(), 0);
  EXPECT_EQ(t.s->worker(1).node(), 1);
  FakePort a("a"), b("b"), c("c"), d("d"), e("e");
  a.node = 1;
  b.node = 1;
  c.node = 0;
  d.node = 1;
  t.s->AddPort(&a, 0, {});
  t.s->AddPort(&b, 1, {});
  t.s->AddPort(&c, 2, {});
  t.s->AddPort(&d, 3, {0});  // queue_affinity=0:0 on node 0: the pin wins
  EXPECT_EQ(t.WorkerOf(&a), 1);
  EXPECT_EQ(t.WorkerOf(&b), 1);  // not round robin: node 1 has one worker
  EXPECT_EQ(t.WorkerOf(&c), 0);
  EXPECT_EQ(t.WorkerOf(&d), 0);
  t.s->AddPort(&e, 4, {});  // unknown node (a guest not connected yet): fewest queues
  EXPECT_EQ(t.WorkerOf(&e), 0);

  // A new node must hold node_hold_ticks (3) ticks in a row: false until the last.
  auto held = [&] {
    const bool early = t.s->Tick() || t.s->Tick();
    return !early && t.s->Tick();
  };
  // The guest's new memory table is on node 1: its queue follows once that held.
  e.node = 1;
  EXPECT_TRUE(held());
  EXPECT_EQ(t.WorkerOf(&e), 1);
  EXPECT_EQ(t.s->numa_moves(), 1u);
  EXPECT_EQ(t.s->rebalances(), 0u);  // not a move by load
  // A frontend whose memory moves every tick (a new table each second) moves nothing.
  for (int i = 0; i < 6; ++i) {
    e.node = i % 2 == 0 ? 0 : 1;
    EXPECT_FALSE(t.s->Tick());
  }
  EXPECT_EQ(t.WorkerOf(&e), 1);
  e.node = 1;
  // a moves to node 0; d, pinned, stays on worker 0 whatever its node.
  a.node = 0;
  d.node = 0;
  EXPECT_TRUE(held());
  EXPECT_EQ(t.WorkerOf(&a), 0);
  d.node = 1;
  EXPECT_FALSE(held());
  EXPECT_EQ(t.WorkerOf(&d), 0);
  // A node without a worker (or unknown again): the queue stays where it is.
  b.node = 5;
  EXPECT_FALSE(held());
  EXPECT_EQ(t.WorkerOf(&b), 1);
  c.node = -1;
  EXPECT_FALSE(held());
  EXPECT_EQ(t.WorkerOf(&c), 0);
  EXPECT_EQ(t.s->numa_moves(), 2u);

  // sched show: each worker's node and each queue's.
  const auto view = t.s->Show();
  ASSERT_EQ(view.size(), 2u);
  EXPECT_EQ(view[0].node, 0);
  EXPECT_EQ(view[1].node, 1);
  for (const auto& q : view[1].queues) {
    if (q.port == "e") {
      EXPECT_EQ(q.node, 1);
    } else if (q.port == "b") {
      EXPECT_EQ(q.node, 5);
    }
  }
}

TEST(Scheduler, OneNodeMeansNoPreference) {
  // One node (this machine's case): a pinned worker is on node 0, but a port reporting node 0
  // does not make the unpinned worker second choice.
  SchedulerOptions o;
  o.workers = 2;
  o.cpus = {0, -1};
  o.rebalance_ticks = 0;
  o.topology = NumaTopology({0, 0});
  Scheduler s(o);
  EXPECT_EQ(s.worker(0).node(), -1);  // nothing to place: PreferNode is not called
  FakePort a("a"), b("b");
  a.node = 0;
  b.node = 0;
  s.AddPort(&a, 0, {});
  s.AddPort(&b, 1, {});
  EXPECT_EQ(s.worker(0).queues().size(), 1u);
  EXPECT_EQ(s.worker(1).queues().size(), 1u);
  EXPECT_EQ(s.Show()[0].node, 0);
}

TEST(Scheduler, AtMostMaxBusyWorkersBusyPollTheBusiestOnes) {
  SchedulerOptions o;
  o.workers = 3;
  o.busy_poll = true;
  o.max_busy_workers = 1;
  o.idle_poll_us = 0;  // the others sleep at once
  o.rebalance_ticks = 0;
  o.busy_swap_ticks = 2;
  FakePort p[3] = {FakePort("p0"), FakePort("p1"), FakePort("p2")};  // (outlive the workers)
  FakeForwarder f[3];
  Scheduler s(o);
  f[2].busy_id = 2;  // worker 2's queue (port id 2) always has a burst
  for (uint32_t i = 0; i < 3; ++i) s.SetForwarder(i, &f[i]);
  for (uint16_t i = 0; i < 3; ++i) s.AddPort(&p[i], i, {});
  ASSERT_EQ(s.worker(2).queues()[0].src.port, &p[2]);
  // Before any load is measured the first worker busy-polls: it never sleeps, the others do.
  EXPECT_TRUE(s.worker(0).busy_poll());
  EXPECT_FALSE(s.worker(1).busy_poll());
  EXPECT_FALSE(s.worker(2).busy_poll());
  ASSERT_TRUE(s.Start());
  ASSERT_TRUE(WaitFor([&] { return s.worker(1).sleeps() >= 3; }));
  EXPECT_EQ(s.worker(0).sleeps(), 0u);
  // Ticks: the loaded worker 2 takes over after busy_swap_ticks, worker 0 polls adaptively.
  ASSERT_TRUE(WaitFor([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s.Tick();
    return s.worker(2).busy_poll();
  }));
  EXPECT_FALSE(s.worker(0).busy_poll());
  EXPECT_FALSE(s.worker(1).busy_poll());
  EXPECT_EQ(s.busy_swaps(), 1u);
  // The unloaded ones sleep now, worker 0 included.
  const uint64_t s0 = s.worker(0).sleeps(), s1 = s.worker(1).sleeps();
  EXPECT_TRUE(WaitFor([&] { return s.worker(0).sleeps() >= s0 + 3 && s.worker(1).sleeps() >= s1 + 3; }));
  // No flapping: the busy one keeps it while it carries the load.
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s.Tick();
  }
  EXPECT_TRUE(s.worker(2).busy_poll());
  EXPECT_EQ(s.busy_swaps(), 1u);
  const auto view = s.Show();
  EXPECT_FALSE(view[0].busy_poll);
  EXPECT_TRUE(view[2].busy_poll);
  // Switched back on at run time, a sleeping worker is woken and polls without sleeping.
  s.worker(1).SetBusyPoll(true);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // it leaves its last sleep
  const uint64_t busy_sleeps = s.worker(1).sleeps();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(s.worker(1).sleeps(), busy_sleeps);
  s.Stop();
}

}  // namespace
}  // namespace nicmux
