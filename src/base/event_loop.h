// EventLoop: the control plane's single-threaded reactor (epoll + timers). Sockets, signals
// (through signalfd) and reconnect timers of every port run on it; a slow or hostile peer can
// only delay its own callbacks, never block the loop (sockets are non-blocking).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>

#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {

class EventLoop {
 public:
  using FdCallback = std::function<void(uint32_t epoll_events)>;
  using TimerCallback = std::function<void()>;
  using TimerId = uint64_t;

  static Result<std::unique_ptr<EventLoop>> Create();

  // Calls cb when fd is ready for `events` (EPOLLIN, ...). One watch per fd.
  Result<void> Watch(int fd, uint32_t events, FdCallback cb);
  // Changes the events of a watched fd (adds EPOLLOUT while output waits, say).
  Result<void> Modify(int fd, uint32_t events);
  void Unwatch(int fd);
  // Calls cb once, after delay_ms.
  TimerId After(uint64_t delay_ms, TimerCallback cb);
  void Cancel(TimerId id);

  // Runs until Stop() (from a callback).
  void Run();
  // Runs callbacks ready within timeout_ms once; returns after one round.
  void RunOnce(int timeout_ms);
  void Stop() { stop_ = true; }

 private:
  explicit EventLoop(UniqueFd ep) : ep_(std::move(ep)) {}
  int NextTimeoutMs() const;
  void FireTimers();

  UniqueFd ep_;
  std::map<int, std::shared_ptr<FdCallback>> watches_;
  std::multimap<uint64_t, std::pair<TimerId, TimerCallback>> timers_;  // by deadline (ms)
  TimerId next_timer_ = 1;
  bool stop_ = false;
};

}  // namespace nicmux
