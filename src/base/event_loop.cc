#include "base/event_loop.h"

#include <sys/epoll.h>

#include <vector>

#include "base/log.h"

namespace nicmux {
namespace {
uint64_t NowMs() { return MonotonicNowNs() / 1'000'000; }
}  // namespace

Result<std::unique_ptr<EventLoop>> EventLoop::Create() {
  int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return Error::FromErrno("epoll_create1");
  return std::unique_ptr<EventLoop>(new EventLoop(UniqueFd(ep)));
}

Result<void> EventLoop::Watch(int fd, uint32_t events, FdCallback cb) {
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, fd, &ev) < 0) {
    return Error::FromErrno("epoll_ctl add fd " + std::to_string(fd));
  }
  watches_[fd] = std::make_shared<FdCallback>(std::move(cb));
  return Ok();
}

Result<void> EventLoop::Modify(int fd, uint32_t events) {
  if (watches_.find(fd) == watches_.end()) return Error("fd " + std::to_string(fd) + " is not watched");
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  if (::epoll_ctl(ep_.get(), EPOLL_CTL_MOD, fd, &ev) < 0) {
    return Error::FromErrno("epoll_ctl mod fd " + std::to_string(fd));
  }
  return Ok();
}

void EventLoop::Unwatch(int fd) {
  if (watches_.erase(fd) > 0) ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, fd, nullptr);
}

EventLoop::TimerId EventLoop::After(uint64_t delay_ms, TimerCallback cb) {
  TimerId id = next_timer_++;
  timers_.emplace(NowMs() + delay_ms, std::make_pair(id, std::move(cb)));
  return id;
}

void EventLoop::Cancel(TimerId id) {
  for (auto it = timers_.begin(); it != timers_.end(); ++it) {
    if (it->second.first == id) {
      timers_.erase(it);
      return;
    }
  }
}

int EventLoop::NextTimeoutMs() const {
  if (timers_.empty()) return -1;
  uint64_t now = NowMs(), at = timers_.begin()->first;
  return at <= now ? 0 : static_cast<int>(std::min<uint64_t>(at - now, 60'000));
}

void EventLoop::FireTimers() {
  uint64_t now = NowMs();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    TimerCallback cb = std::move(timers_.begin()->second.second);
    timers_.erase(timers_.begin());
    cb();
  }
}

void EventLoop::RunOnce(int timeout_ms) {
  int t = NextTimeoutMs();
  if (t < 0 || (timeout_ms >= 0 && timeout_ms < t)) t = timeout_ms;
  epoll_event evs[32];
  int n = ::epoll_wait(ep_.get(), evs, 32, t);
  for (int i = 0; i < n; ++i) {
    auto it = watches_.find(evs[i].data.fd);
    if (it == watches_.end()) continue;  // unwatched by an earlier callback in this round
    std::shared_ptr<FdCallback> cb = it->second;  // survives its own Unwatch
    (*cb)(evs[i].events);
  }
  FireTimers();
}

void EventLoop::Run() {
  stop_ = false;
  while (!stop_) RunOnce(-1);
}

}  // namespace nicmux
