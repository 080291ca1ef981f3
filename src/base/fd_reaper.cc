#include "base/fd_reaper.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string_view>
#include <thread>

namespace nicmux {
namespace {

struct Reaper {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<int> fds;
  std::atomic<uint64_t> waiting{0};
  bool started = false;

  void Add(int fd) {
    std::lock_guard lock(mu);
    fds.push_back(fd);
    waiting.fetch_add(1, std::memory_order_relaxed);
    if (!started) {
      started = true;
      std::thread([this] { Run(); }).detach();
    }
    cv.notify_one();
  }
  void Run() {
    for (;;) {
      int fd;
      {
        std::unique_lock lock(mu);
        cv.wait(lock, [this] { return !fds.empty(); });
        fd = fds.front();
        fds.pop_front();
      }
      ::close(fd);
      waiting.fetch_sub(1, std::memory_order_relaxed);
    }
  }
};

Reaper& TheReaper() {
  static Reaper* r = new Reaper;  // never destroyed: its thread may be inside close() at exit
  return *r;
}

}  // namespace

void CloseInBackground(int fd) {
  if (fd >= 0) TheReaper().Add(fd);
}

uint64_t FdsWaitingToClose() { return TheReaper().waiting.load(std::memory_order_relaxed); }

bool IsEventFd(int fd) {
  char path[64], target[64] = {};
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  const ssize_t n = ::readlink(path, target, sizeof target - 1);
  return n > 0 && std::string_view(target, static_cast<size_t>(n)) == "anon_inode:[eventfd]";
}

bool IsMemoryFile(int fd) { return ::fcntl(fd, F_GET_SEALS) >= 0; }

}  // namespace nicmux
