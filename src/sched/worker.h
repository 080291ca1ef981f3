// Worker: a thread that polls its forwarders. While there is traffic it busy-polls; after a
// short idle spell (idle_poll_us) it arms the ports' notifications and sleeps in poll(2) on their kick fds
// (so idle guests cost no CPU), waking on a kick, a pause request or a timeout (100 ms; 1 ms
// while some running queue has no kick fd and must be polled). Kick fds are drained without
// blocking whatever their owner did to them (base/peer_io.h).
//
// It is the Pausable of its ports: the control thread's Pause() returns once the worker sits
// between bursts (no chain in flight, every used entry flushed); the worker waits until
// Resume(). The hot loop checks one atomic flag per round and takes no lock.
#pragma once

#include <time.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/event_fd.h"
#include "base/pausable.h"
#include "switch/forwarder.h"

namespace nicmux {

class Worker final : public Pausable {
 public:
  // How long a worker keeps polling after the last packet before it sleeps, by default.
  // Longer: lower latency for sparse traffic (a sleeping worker pays a wake-up, ~40 us in a
  // VM), at the price of a busy CPU while packets come more often than this.
  static constexpr uint32_t kDefaultIdlePollUs = 100;

  // cpu < 0: no pinning. idle_poll_us: see kDefaultIdlePollUs; 0 sleeps at the first empty
  // round.
  explicit Worker(std::string name, int cpu = -1, uint32_t idle_poll_us = kDefaultIdlePollUs);
  ~Worker() override;

  // Forwarders are added before Start() or under Pause().
  void Add(Forwarder* f) { forwarders_.push_back(f); }
  Result<void> Start();
  void Stop();

  void Pause() override;
  void Resume() override;

  const std::string& name() const { return name_; }
  int cpu() const { return cpu_; }
  // Counters for the control thread (metrics): packets moved, times it went to sleep (each
  // ends in a wake-up), nanoseconds spent asleep in poll(2), and the thread's CPU time so far
  // (CLOCK_THREAD_CPUTIME of the worker: busy polling counts as busy).
  uint64_t packets() const { return packets_.load(std::memory_order_relaxed); }
  uint64_t sleeps() const { return sleeps_.load(std::memory_order_relaxed); }
  uint64_t sleep_ns() const { return sleep_ns_.load(std::memory_order_relaxed); }
  uint64_t cpu_ns() const;

 private:
  void Loop();
  void MaybePause();
  void Sleep();

  std::string name_;
  int cpu_;
  uint64_t idle_poll_ns_;
  std::vector<Forwarder*> forwarders_;
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
  std::atomic<uint64_t> sleep_ns_{0};
  clockid_t cpu_clock_{};
  std::atomic<bool> has_cpu_clock_{false};
};

// All workers of the daemon as one Pausable: a port that any worker may send to (every port, in
// switch mode) pauses them all around a queue change. Pause order is fixed and Resume reverses
// it, so two control-plane callers cannot deadlock (there is one control thread anyway).
class WorkerGroup final : public Pausable {
 public:
  void Add(Worker* w) { workers_.push_back(w); }
  void Pause() override {
    for (Worker* w : workers_) w->Pause();
  }
  void Resume() override {
    for (auto it = workers_.rbegin(); it != workers_.rend(); ++it) (*it)->Resume();
  }

 private:
  std::vector<Worker*> workers_;
};

}  // namespace nicmux
