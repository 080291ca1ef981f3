// The worker's handshakes with a forwarder played by the test: pause/resume (Pause returns only
// between polls, nothing is polled until Resume), sleep/wake (an idle worker sleeps on the
// armed fds and a kick wakes it and is drained), and a queue that must be polled (no kick fd)
// does not keep the worker from sleeping (issue 17, item 11). Every wait is for an event, with
// a generous bound: the machine may be busy.
#include "sched/worker.h"

#include "sched/test_fakes.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <gtest/gtest.h>

namespace nicmux {
namespace {

using namespace std::chrono_literals;

// A worker polling one fake queue.
struct OneQueue {
  FakeForwarder f;
  FakePort port;
  Counter packets;
  void Give(Worker& w) {
    w.SetForwarder(&f);
    w.SetQueues({{SourceQueue{&port, 0, 0}, &packets}});
  }
};

TEST(Worker, PauseReturnsBetweenPollsAndNothingIsPolledUntilResume) {
  OneQueue one;
  FakeForwarder& f = one.f;
  f.pending.store(1 << 30);  // always busy: the worker never sleeps
  Worker w("w", -1, 100);
  one.Give(w);
  ASSERT_TRUE(w.Start());
  ASSERT_TRUE(WaitFor([&] { return f.polls.load() > 1000; }));
  for (int i = 0; i < 50; ++i) {
    w.Pause();
    EXPECT_FALSE(f.in_poll.load());
    const uint64_t at_pause = f.polls.load();
    std::this_thread::sleep_for(2ms);
    EXPECT_EQ(f.polls.load(), at_pause);  // paused means paused
    w.Resume();
    ASSERT_TRUE(WaitFor([&] { return f.polls.load() > at_pause; }));
  }
  // Nested pauses (a port inside a group pause) resume only at the outermost Resume.
  w.Pause();
  w.Pause();
  w.Resume();
  const uint64_t at = f.polls.load();
  std::this_thread::sleep_for(5ms);
  EXPECT_EQ(f.polls.load(), at);
  w.Resume();
  ASSERT_TRUE(WaitFor([&] { return f.polls.load() > at; }));
  w.Stop();
}

// Review of issue 17: a Pause right after a Resume returned before the worker had run again,
// so a frontend sending pausing requests back to back kept every worker paused. Now every
// pause/resume cycle lets the worker run at least one round.
TEST(Worker, BackToBackPausesLetTheWorkerRunARoundEachTime) {
  OneQueue one;
  FakeForwarder& f = one.f;
  f.pending.store(1 << 30);  // busy: a round is a Poll
  Worker w("w", -1, 100);
  one.Give(w);
  ASSERT_TRUE(w.Start());
  ASSERT_TRUE(WaitFor([&] { return f.polls.load() > 0; }));
  constexpr uint64_t kCycles = 2000;
  const uint64_t before = f.polls.load();
  for (uint64_t i = 0; i < kCycles; ++i) {
    w.Pause();
    w.Resume();
  }
  w.Pause();  // the last cycle's round is done once this returns
  EXPECT_GE(f.polls.load() - before, kCycles);
  w.Resume();
  w.Stop();
}

// The worker's own cost (sched show's BUSY % and CYC/PKT): every round is counted, the rounds
// that moved packets apart, and only those rounds' cycles.
TEST(Worker, CountsRoundsAndTheCyclesOfRoundsThatMovedPackets) {
  OneQueue one;
  FakeForwarder& f = one.f;
  Worker w("w", -1, 1000, /*fixed_window=*/true);  // polls 1 ms after the last packet: empty rounds counted
  one.Give(w);
  ASSERT_TRUE(w.Start());
  ASSERT_TRUE(WaitFor([&] { return w.rounds() > 100; }));
  EXPECT_EQ(w.busy_rounds(), 0u);
  EXPECT_EQ(w.busy_cycles(), 0u);
  f.pending.store(500);  // one packet per round, 500 rounds
  ASSERT_TRUE(WaitFor([&] { return w.packets() == 500; }));
  w.Pause();  // the counters are published before the next round starts
  EXPECT_EQ(w.busy_rounds(), 500u);
  EXPECT_GT(w.busy_cycles(), 0u);
  EXPECT_GT(w.rounds(), w.busy_rounds());
  w.Resume();
  w.Stop();
}

TEST(Worker, IdleWorkerSleepsOnTheKickFdAndAKickWakesIt) {
  OneQueue one;
  FakeForwarder& f = one.f;
  FakePort& p = one.port;
  p.kick_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(p.kick_fd, 0);
  Worker w("w", -1, 0);  // sleep at the first empty round
  one.Give(w);
  ASSERT_TRUE(w.Start());
  ASSERT_TRUE(WaitFor([&] { return w.sleeps() >= 1; }));
  for (int i = 0; i < 20; ++i) {
    // Asleep: no polls for a while (the longest sleep is 100 ms; a kick-less wake is rare).
    const uint64_t sleeps = w.sleeps();
    f.pending.store(1);
    const uint64_t one_kick = 1;
    ASSERT_EQ(::write(p.kick_fd, &one_kick, sizeof one_kick), static_cast<ssize_t>(sizeof one_kick));
    ASSERT_TRUE(WaitFor([&] { return f.pending.load() == 0; })) << "the kick did not wake the worker";
    // The kick is drained (else poll() would return at once and the worker would spin), and
    // the worker goes back to sleep.
    ASSERT_TRUE(WaitFor([&] {
      pollfd pf{p.kick_fd, POLLIN, 0};
      return ::poll(&pf, 1, 0) == 0;
    })) << "kick left pending";
    ASSERT_TRUE(WaitFor([&] { return w.sleeps() > sleeps; }));
  }
  EXPECT_GE(w.kick_wakeups(), 20u);
  w.Stop();
  ::close(p.kick_fd);
}

TEST(Worker, AQueueWithoutKickFdDoesNotKeepTheWorkerAwake) {
  // A frontend asked for polling (SET_VRING_KICK with no fd): the port cannot sleep on it.
  // Before, the worker then never slept (100 % CPU, every port on it included); now it sleeps
  // 1 ms at a time and polls in between.
  OneQueue one;
  FakeForwarder& f = one.f;
  one.port.can_sleep = false;
  Worker w("w", -1, 0);
  one.Give(w);
  ASSERT_TRUE(w.Start());
  ASSERT_TRUE(WaitFor([&] { return w.sleeps() >= 50; })) << "the worker does not sleep";
  // Every wake polls a round and sleeps again: polls stay in step with sleeps.
  const uint64_t s0 = w.sleeps(), p0 = f.polls.load();
  ASSERT_TRUE(WaitFor([&] { return w.sleeps() >= s0 + 50; }));
  const uint64_t s1 = w.sleeps(), p1 = f.polls.load();
  EXPECT_LE(p1 - p0, 3 * (s1 - s0) + 10);
  // And a packet that arrives is still picked up within a few sleeps.
  f.pending.store(1);
  EXPECT_TRUE(WaitFor([&] { return f.pending.load() == 0; }));
  w.Stop();
}


// Interrupt moderation (SignalDebts): a signal a port deferred is given when its deadline
// comes while the worker is busy, and at once when the worker goes to sleep or pauses,
// whatever its deadline.
TEST(Worker, DeferredSignalsAreGivenWhenDueWhileBusy) {
  OneQueue one;
  FakePort dst("dst");
  dst.Defer(1'000'000);  // 1 ms
  one.f.defer_to = &dst;
  one.f.busy_id = 0;  // never idle: only the deadline can give them
  Worker w("w", -1, 100);
  one.Give(w);
  ASSERT_TRUE(w.Start());
  ASSERT_TRUE(WaitFor([&] { return dst.signals.load() >= 5; }));
  w.Stop();
  EXPECT_EQ(w.sleeps(), 0u);
  EXPECT_LE(dst.forced.load(), 1u);  // at Stop at most
}

TEST(Worker, DeferredSignalsAreGivenBeforeSleeping) {
  OneQueue one;
  FakePort dst("dst");
  dst.Defer(3600'000'000'000ull);  // an hour: only the flush before sleeping can give it
  one.f.defer_to = &dst;
  Worker w("w", -1, 100);
  one.Give(w);
  ASSERT_TRUE(w.Start());
  one.f.pending.store(1);
  ASSERT_TRUE(WaitFor([&] { return dst.signals.load() == 1 && w.sleeps() >= 1; }));
  EXPECT_EQ(dst.forced.load(), 1u);
  EXPECT_EQ(dst.deadline.load(), 0u);
  w.Stop();
}

TEST(Worker, DeferredSignalsAreGivenBeforePausing) {
  OneQueue one;
  FakePort dst("dst");
  dst.Defer(3600'000'000'000ull);
  one.f.defer_to = &dst;
  one.f.busy_id = 0;  // never sleeps
  Worker w("w", -1, 100);
  one.Give(w);
  ASSERT_TRUE(w.Start());
  ASSERT_TRUE(WaitFor([&] { return dst.deadline.load() != 0; }));
  w.Pause();
  EXPECT_EQ(dst.deadline.load(), 0u);  // nothing deferred waits on a paused worker
  EXPECT_GE(dst.forced.load(), 1u);
  w.Resume();
  w.Stop();
}


// A debt to a port closed for a change (shared: more than one worker) waits, with the worker
// asleep a millisecond at a time, and is given once the port opens again.
TEST(Worker, ADeferredSignalToAClosedPortWaitsForItToOpen) {
  FakeForwarder f(/*shared=*/true);
  FakePort src("src"), dst("dst");
  Counter packets;
  dst.Defer(3600'000'000'000ull);
  dst.CloseTx();
  f.defer_to = &dst;
  Worker w("w", -1, 100);
  w.SetForwarder(&f);
  w.SetQueues({{SourceQueue{&src, 0, 0}, &packets}});
  ASSERT_TRUE(w.Start());
  f.pending.store(1);
  ASSERT_TRUE(WaitFor([&] { return w.sleeps() >= 3; }));
  EXPECT_EQ(dst.signals.load(), 0u);  // closed: not touched
  EXPECT_NE(dst.deadline.load(), 0u);
  dst.OpenTx();
  ASSERT_TRUE(WaitFor([&] { return dst.signals.load() == 1; }));
  w.Stop();
}

}  // namespace
}  // namespace nicmux
