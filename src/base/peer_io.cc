#include "base/peer_io.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "base/check.h"
#include "base/log.h"

namespace nicmux {
namespace {

constexpr int kInterruptSignal = SIGURG;
constexpr size_t kMaxThreads = 256;

// One per thread that has made a watched call. seq is odd while the thread is inside a watched
// section; the watchdog compares it across ticks.
struct Slot {
  std::atomic<bool> used{false};
  std::atomic<uint64_t> seq{0};
  pthread_t thread{};
};
Slot g_slots[kMaxThreads];
std::atomic<uint64_t> g_interrupts{0};
std::once_flag g_start;

void OnInterrupt(int) {}  // only there to make the blocked syscall return EINTR

void Watchdog() {
  uint64_t last[kMaxThreads] = {};
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(kPeerIoTickMs));
    for (size_t i = 0; i < kMaxThreads; ++i) {
      Slot& s = g_slots[i];
      if (!s.used.load(std::memory_order_acquire)) {
        last[i] = 0;
        continue;
      }
      const uint64_t seq = s.seq.load(std::memory_order_relaxed);
      if ((seq & 1) != 0 && seq == last[i]) {
        // In the same section as a tick ago. Signal again on every tick it stays there (the
        // first signal may have come just before the syscall began to wait).
        g_interrupts.fetch_add(1, std::memory_order_relaxed);
        pthread_kill(s.thread, kInterruptSignal);
      }
      last[i] = seq;
    }
  }
}

void Start() {
  std::call_once(g_start, [] {
    struct sigaction sa = {};
    sa.sa_handler = OnInterrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: the interrupted syscall returns EINTR
    NICMUX_CHECK(sigaction(kInterruptSignal, &sa, nullptr) == 0);
    std::thread(Watchdog).detach();
  });
}

// The calling thread's slot, taken on first use and given back when the thread ends.
struct ThreadSlot {
  Slot* slot = nullptr;
  ThreadSlot() {
    Start();
    for (Slot& s : g_slots) {
      bool expected = false;
      if (s.used.load(std::memory_order_relaxed)) continue;
      s.thread = pthread_self();
      s.seq.store(0, std::memory_order_relaxed);
      if (s.used.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) {
        slot = &s;
        return;
      }
    }
    // More than kMaxThreads threads signalling peers: unwatched (never the case in nicmuxd,
    // whose workers are few); logged once.
    NICMUX_LOG_RATELIMITED(kError, "peer I/O: more than %zu threads, calls unwatched", kMaxThreads);
  }
  ~ThreadSlot() {
    if (slot != nullptr) slot->used.store(false, std::memory_order_release);
  }
};
thread_local ThreadSlot t_slot;

class Watched {
 public:
  Watched() : s_(t_slot.slot) {
    if (s_) s_->seq.fetch_add(1, std::memory_order_relaxed);
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  ~Watched() {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (s_) s_->seq.fetch_add(1, std::memory_order_relaxed);
  }

 private:
  Slot* s_;
};

}  // namespace

PeerIoStatus SignalPeerEventFd(int fd) {
  const uint64_t one = 1;
  ssize_t n;
  {
    Watched w;
    n = ::write(fd, &one, sizeof one);
  }
  if (n == sizeof one) return PeerIoStatus::kOk;
  if (n < 0 && errno == EAGAIN) return PeerIoStatus::kFull;
  if (n < 0 && errno == EINTR) return PeerIoStatus::kInterrupted;
  return PeerIoStatus::kFailed;
}

PeerIoStatus DrainPeerEventFd(int fd, uint64_t* value) {
  uint64_t v = 0;
  iovec iov{&v, sizeof v};
  ssize_t n = ::preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
  if (n < 0 && (errno == EOPNOTSUPP || errno == EINVAL)) {
    // A kernel without RWF_NOWAIT for eventfds: a watched read.
    Watched w;
    n = ::read(fd, &v, sizeof v);
  }
  if (value) *value = n == sizeof v ? v : 0;
  if (n == sizeof v || (n < 0 && errno == EAGAIN)) return PeerIoStatus::kOk;
  if (n < 0 && errno == EINTR) return PeerIoStatus::kInterrupted;
  return PeerIoStatus::kFailed;
}

uint64_t PeerIoInterrupts() { return g_interrupts.load(std::memory_order_relaxed); }

}  // namespace nicmux
