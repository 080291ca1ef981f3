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
// state: kFree, then kClaimed (one thread filling it in), then kLive (the watchdog reads it).
struct Slot {
  static constexpr uint8_t kFree = 0, kClaimed = 1, kLive = 2;
  std::atomic<uint8_t> state{kFree};
  std::atomic<uint64_t> seq{0};
  // Written while kClaimed, read by the watchdog after it saw kLive. Atomic because the
  // watchdog may still read it after the slot changed hands (the old thread ended, a new one
  // claimed it between the watchdog's two loads): then one spurious signal, one EINTR.
  std::atomic<pthread_t> thread{};
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
      if (s.state.load(std::memory_order_acquire) != Slot::kLive) {
        last[i] = 0;
        continue;
      }
      const uint64_t seq = s.seq.load(std::memory_order_relaxed);
      if ((seq & 1) != 0 && seq == last[i]) {
        // In the same section as a tick ago. Signal again on every tick it stays there (the
        // first signal may have come just before the syscall began to wait).
        g_interrupts.fetch_add(1, std::memory_order_relaxed);
        pthread_kill(s.thread.load(std::memory_order_relaxed), kInterruptSignal);
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
      // Claim first, then fill in, then publish: two threads starting at once must not both
      // write one slot (the loser used to overwrite the winner's thread id, and the watchdog
      // then interrupted the wrong thread).
      uint8_t expected = Slot::kFree;
      if (!s.state.compare_exchange_strong(expected, Slot::kClaimed, std::memory_order_acquire)) continue;
      s.thread.store(pthread_self(), std::memory_order_relaxed);
      s.seq.store(0, std::memory_order_relaxed);
      s.state.store(Slot::kLive, std::memory_order_release);
      slot = &s;
      return;
    }
    // More than kMaxThreads threads signalling peers: unwatched (never the case in nicmuxd,
    // whose workers are few); logged once.
    NICMUX_LOG_RATELIMITED(kError, "peer I/O: more than %zu threads, calls unwatched", kMaxThreads);
  }
  ~ThreadSlot() {
    if (slot != nullptr) slot->state.store(Slot::kFree, std::memory_order_release);
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
