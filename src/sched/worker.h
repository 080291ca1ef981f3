// Worker: a thread that polls the source queues the scheduler gives it (Scheduler,
// sched/scheduler.h), one bounded burst per queue per round, round robin, through its
// forwarding context. While there is traffic it busy-polls; after an idle spell (the window:
// adaptive, up to idle_poll_us, see NoteSpell) it arms its own queues' notifications and sleeps
// in poll(2) on their fds, so idle guests cost no CPU and a kick wakes only the worker that
// polls the queue. The window follows the gaps between bursts: a reply that comes 30 us after
// the request is worth polling for, a lone packet of an independent trickle is not (it costs
// a wake-up either way, and polling only burns the CPU meanwhile). It wakes on a kick, a pause
// request or a timeout (100 ms; 1 ms while one of its running queues has no kick fd and must be
// polled). Kick fds are drained without blocking whatever their owner did to them
// (base/peer_io.h).
//
// Busy polling (never sleeping) can be switched on and off while it runs (SetBusyPoll: the
// scheduler's cap on busy workers, max_busy_workers); the loop reads the mode once per round.
// Pinned to a CPU, the thread pins itself before it touches anything, and asks its forwarder
// to keep its buffers on the CPU's NUMA node (SetNode).
//
// It is Pausable: the control thread's Pause() returns once the worker sits between bursts (no
// chain in flight, every used entry flushed); the worker waits until Resume(). The hot loop
// checks one atomic flag per round and takes no lock.
#pragma once

#include <poll.h>
#include <time.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/event_fd.h"
#include "base/counter.h"
#include "base/pausable.h"
#include "base/result.h"
#include "switch/forwarder.h"

namespace nicmux {

class Worker final : public Pausable {
 public:
  // How long a worker keeps polling after the last packet before it sleeps, by default.
  // Longer: lower latency for sparse traffic (a sleeping worker pays a wake-up, ~40 us in a
  // VM), at the price of a busy CPU while packets come more often than this.
  static constexpr uint32_t kDefaultIdlePollUs = 100;
  // idle_poll_us this large: the worker starts busy-polling (SetBusyPoll(true)) and polls
  // adaptively within kDefaultIdlePollUs when that is switched off.
  static constexpr uint32_t kBusyPoll = UINT32_MAX;

  // cpu < 0: no pinning. idle_poll_us: see kDefaultIdlePollUs; 0 sleeps at the first empty
  // round; kBusyPoll: see there.
  // fixed_window: always poll idle_poll_us before sleeping (no adaptation; --poll-fixed).
  explicit Worker(std::string name, int cpu = -1, uint32_t idle_poll_us = kDefaultIdlePollUs,
                  bool fixed_window = false);
  ~Worker() override;

  // A queue the worker polls, with the counter its packets are added to (owned by the
  // scheduler, read by the control thread for load accounting).
  struct Polled {
    SourceQueue src;
    Counter* packets = nullptr;
  };
  // The forwarding context, before Start().
  void SetForwarder(Forwarder* f) { fwd_ = f; }
  // The NUMA node of its CPU (-1: unknown, or nothing to place), before Start(): the thread
  // calls Forwarder::PreferNode(node) once pinned.
  void SetNode(int node) { node_ = node; }
  int node() const { return node_; }
  // Busy polling on (never sleep) or off (sleep after the idle window): any time, from the
  // control thread; a sleeping worker is woken to start polling. The loop takes it at its
  // next round.
  void SetBusyPoll(bool on) {
    if (busy_.exchange(on, std::memory_order_relaxed) != on && on) wake_.Signal();
  }
  // The queues it polls: before Start() or while this worker is paused (control thread).
  void SetQueues(std::vector<Polled> qs) { queues_ = std::move(qs); }
  const std::vector<Polled>& queues() const { return queues_; }  // control thread
  Result<void> Start();
  void Stop();

  void Pause() override;
  void Resume() override;

  const std::string& name() const { return name_; }
  int cpu() const { return cpu_; }
  bool busy_poll() const { return busy_.load(std::memory_order_relaxed); }
  // Counters for the control thread (metrics): packets moved, times it went to sleep (each
  // ends in a wake-up), of those the wake-ups by a notification of its own queues (a kick, a
  // readable fd; not a timeout or a pause), nanoseconds spent asleep in poll(2), and the
  // thread's CPU time so far (CLOCK_THREAD_CPUTIME of the worker: busy polling counts as
  // busy).
  uint64_t packets() const { return packets_.load(std::memory_order_relaxed); }
  uint64_t sleeps() const { return sleeps_.load(std::memory_order_relaxed); }
  uint64_t kick_wakeups() const { return kick_wakeups_.load(std::memory_order_relaxed); }
  uint64_t sleep_ns() const { return sleep_ns_.load(std::memory_order_relaxed); }
  // Rounds polled (one burst per queue each), the rounds that moved packets, and the cycles
  // spent in those (CycleCount units: the TSC on x86): the worker's own cost per packet even
  // when the frontend is what saturates, as OVS's pmd-stats-show "processing cycles".
  uint64_t rounds() const { return rounds_.Get(); }
  uint64_t busy_rounds() const { return busy_rounds_.Get(); }
  uint64_t busy_cycles() const { return busy_cycles_.Get(); }
  // The adaptive idle-poll window it uses now (ns; 0: sleeps at the first empty round).
  uint64_t window_ns() const {
    return busy_poll()                         ? UINT64_MAX
           : idle_poll_ns_ == 0 || fixed_window_ ? idle_poll_ns_
                                                 : window_ns_.load(std::memory_order_relaxed);
  }
  uint64_t cpu_ns() const;

 private:
  void Loop();
  void MaybePause();
  void Sleep();
  // The signals its forwarder deferred (SignalDebts): those due, or all (force).
  void FlushSignals(bool force);
  // Adaptive polling: the idle-poll window chosen from what idle spells showed (NoteSpell).
  void NoteSpell(uint64_t polled_ns, bool hit);
  static constexpr uint32_t kWindows = 5;  // idle_poll / 16, / 8, / 4, / 2, / 1
  static constexpr double kBonus = 1.5;    // a packet caught is worth this many idle_polls

  std::string name_;
  int cpu_;
  int node_ = -1;
  uint64_t idle_poll_ns_;  // the longest idle window (when not busy-polling)
  bool fixed_window_;
  std::atomic<bool> busy_{false};  // busy polling: never sleep
  std::atomic<int> pin_result_{-1};  // the thread's pinning: -1 pending, else 0 or an errno
  double score_[kWindows] = {};
  std::atomic<uint64_t> window_ns_{0};  // the idle-poll window now (read by the control thread)
  Forwarder* fwd_ = nullptr;
  std::vector<Polled> queues_;
  std::vector<NotifyFd> fds_;    // Sleep's, kept to avoid an allocation per sleep
  std::vector<pollfd> pfds_;
  std::thread thread_;
  EventFd wake_;
  std::atomic<bool> stop_{false};
  bool started_ = false;

  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> pause_req_{false};
  bool paused_ = false;  // guarded by mu_
  int depth_ = 0;        // control thread only

  std::atomic<uint64_t> packets_{0};
  std::atomic<uint64_t> sleeps_{0};
  std::atomic<uint64_t> kick_wakeups_{0};
  std::atomic<uint64_t> sleep_ns_{0};
  Counter rounds_, busy_rounds_, busy_cycles_;  // one writer: the worker
  clockid_t cpu_clock_{};
  std::atomic<bool> has_cpu_clock_{false};
};

}  // namespace nicmux
