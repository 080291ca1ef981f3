#include "base/peer_mapping.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include "base/check.h"
#include "base/log.h"

namespace nicmux {
namespace {

// Slot states. Free -> Filling (Register) -> Live; Live -> Replacing -> Poisoned (handler);
// Live or Poisoned -> Free (Unregister).
enum : uint32_t { kFree, kFilling, kLive, kReplacing, kPoisoned };

// One frontend maps at most 64 regions (vhost::kMaxMemSlots); this serves 256 frontends at
// their maximum, and thousands as QEMU and DPDK use it (a handful each).
constexpr size_t kSlots = 16384;

struct Slot {
  std::atomic<uint32_t> state{kFree};
  std::atomic<uintptr_t> start{0};
  std::atomic<size_t> len{0};
  std::atomic<int> notify_fd{-1};
};
Slot g_slots[kSlots];
std::atomic<uint64_t> g_faults{0};
struct sigaction g_previous;
std::once_flag g_install;

// Replaces exactly [start, start + len), the extent registered (GuestMemory::MapRegion rounds
// it to the mapping's page size, huge pages included), with anonymous memory. Never more: a
// larger range could take a neighbouring mapping with it.
bool Replace(uintptr_t start, size_t len) {
  void* p = ::mmap(reinterpret_cast<void*>(start), len, PROT_READ | PROT_WRITE,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p != MAP_FAILED;
}

void OnSigbus(int sig, siginfo_t* info, void* ctx) {
  const int saved_errno = errno;
  const uintptr_t a = reinterpret_cast<uintptr_t>(info->si_addr);
  for (Slot& s : g_slots) {
    uint32_t st = s.state.load(std::memory_order_acquire);
    if (st != kLive && st != kReplacing && st != kPoisoned) continue;
    uintptr_t start = s.start.load(std::memory_order_relaxed);
    if (a < start || a - start >= s.len.load(std::memory_order_relaxed)) continue;
    if (st == kLive && s.state.compare_exchange_strong(st, kReplacing, std::memory_order_acq_rel)) {
      // Ours now (Unregister waits while it is kReplacing): read the extent again, it is the
      // one registered and cannot change under us.
      start = s.start.load(std::memory_order_relaxed);
      const size_t len = s.len.load(std::memory_order_relaxed);
      if (a < start || a - start >= len) {
        s.state.store(kLive, std::memory_order_release);
        break;
      }
      const bool ok = Replace(start, len);
      s.state.store(ok ? kPoisoned : kLive, std::memory_order_release);
      if (!ok) break;  // cannot recover: as if unprotected
      g_faults.fetch_add(1, std::memory_order_relaxed);
      const int fd = s.notify_fd.load(std::memory_order_relaxed);
      if (fd >= 0) {
        const uint64_t one = 1;
        ssize_t n = ::write(fd, &one, sizeof one);  // our own non-blocking eventfd
        (void)n;
      }
      errno = saved_errno;
      return;
    }
    // Another thread is replacing it (or has): wait, then retry the access.
    while (s.state.load(std::memory_order_acquire) == kReplacing) {
    }
    if (s.state.load(std::memory_order_acquire) == kPoisoned) {
      errno = saved_errno;
      return;
    }
    break;
  }
  // Not ours: whoever handled SIGBUS before us.
  if (g_previous.sa_flags & SA_SIGINFO) {
    g_previous.sa_sigaction(sig, info, ctx);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
  } else {
    // The default action: restore it; the access faults again and the process ends with
    // SIGBUS, as it would have without us.
    signal(SIGBUS, SIG_DFL);
  }
  errno = saved_errno;
}

void Install() {
  std::call_once(g_install, [] {
    struct sigaction sa = {};
    sa.sa_sigaction = OnSigbus;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    NICMUX_CHECK(sigaction(SIGBUS, &sa, &g_previous) == 0);
  });
}

}  // namespace

int RegisterPeerMapping(void* addr, size_t len, int notify_fd) {
  Install();
  for (size_t i = 0; i < kSlots; ++i) {
    uint32_t expected = kFree;
    if (g_slots[i].state.load(std::memory_order_relaxed) != kFree) continue;
    if (!g_slots[i].state.compare_exchange_strong(expected, kFilling, std::memory_order_acq_rel)) continue;
    g_slots[i].start.store(reinterpret_cast<uintptr_t>(addr), std::memory_order_relaxed);
    g_slots[i].len.store(len, std::memory_order_relaxed);
    g_slots[i].notify_fd.store(notify_fd, std::memory_order_relaxed);
    g_slots[i].state.store(kLive, std::memory_order_release);
    return static_cast<int>(i);
  }
  NICMUX_LOG_RATELIMITED(kError, "peer mappings: all %zu slots in use; a mapping is not protected against SIGBUS",
                         kSlots);
  return -1;
}

void UnregisterPeerMapping(int handle) {
  if (handle < 0) return;
  Slot& s = g_slots[handle];
  // Free it only from a settled state: a handler replacing the mapping finishes first (else it
  // could map over whatever takes the range after our munmap).
  for (;;) {
    uint32_t st = s.state.load(std::memory_order_acquire);
    if (st == kReplacing) continue;
    if (s.state.compare_exchange_weak(st, kFree, std::memory_order_acq_rel)) return;
  }
}

bool PeerMappingPoisoned(int handle) {
  return handle >= 0 && g_slots[handle].state.load(std::memory_order_acquire) == kPoisoned;
}

uint64_t PeerMappingFaults() { return g_faults.load(std::memory_order_relaxed); }

}  // namespace nicmux
