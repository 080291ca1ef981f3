#include "port/dpdk_unmap_guard.h"

#include <dlfcn.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "base/check.h"
#include "base/log.h"

namespace nicmux::dpdk_guard {
namespace {

// More threads than ever call bursts at once (workers are at most one per CPU, plus the
// control thread's drain at a port's close); a slot is given back when its thread exits.
constexpr uint32_t kSlots = 1024;
Slot g_slots[kSlots];
std::atomic<uint32_t> g_high{0};  // slots [0, g_high) have been used
std::atomic<bool> g_armed{false};
std::atomic<bool> g_membarrier{false};
std::atomic<uint64_t> g_held{0};

thread_local Slot* tl_slot = nullptr;

struct SlotOwner {
  ~SlotOwner() {
    if (tl_slot) tl_slot->used.store(false, std::memory_order_release);
    tl_slot = nullptr;
  }
};

Slot* TakeSlot() {
  thread_local SlotOwner owner;  // gives the slot back at thread exit
  for (uint32_t i = 0; i < kSlots; ++i) {
    bool was = false;
    if (g_slots[i].used.load(std::memory_order_relaxed) ||
        !g_slots[i].used.compare_exchange_strong(was, true, std::memory_order_acq_rel)) {
      continue;
    }
    uint32_t h = g_high.load(std::memory_order_relaxed);
    while (h < i + 1 && !g_high.compare_exchange_weak(h, i + 1, std::memory_order_acq_rel)) {
    }
    return &g_slots[i];
  }
  NICMUX_CHECK_MSG(false, "more than 1024 threads call DPDK bursts at once");
  return nullptr;
}

using MunmapFn = int (*)(void*, size_t);
std::atomic<MunmapFn> g_real_munmap{nullptr};
thread_local bool tl_resolving = false;

int RealMunmap(void* addr, size_t len) {
  MunmapFn f = g_real_munmap.load(std::memory_order_acquire);
  if (f == nullptr && !tl_resolving) {
    // The next definition: the sanitizers' interceptor when one is linked, else libc's.
    tl_resolving = true;
    f = reinterpret_cast<MunmapFn>(dlsym(RTLD_NEXT, "munmap"));
    tl_resolving = false;
    if (f != nullptr) g_real_munmap.store(f, std::memory_order_release);
  }
  if (f == nullptr) return static_cast<int>(syscall(SYS_munmap, addr, len));  // (while resolving)
  return f(addr, len);
}

}  // namespace

std::atomic<bool> g_need_fence{false};

Slot* ThisThread() {
  if (tl_slot == nullptr) [[unlikely]] tl_slot = TakeSlot();
  return tl_slot;
}

void Arm() {
  if (g_armed.load(std::memory_order_acquire)) return;
  const bool mb = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  g_membarrier.store(mb, std::memory_order_relaxed);
  // Without it, every section entry orders its store before the driver's loads itself.
  g_need_fence.store(!mb, std::memory_order_relaxed);
  virtio::FullFence();
  // A child of fork (the config check's) has none of the workers: counters it copied odd
  // would hold its munmaps for nothing.
  static const int atfork = pthread_atfork(nullptr, nullptr, [] { g_armed.store(false, std::memory_order_relaxed); });
  (void)atfork;
  g_armed.store(true, std::memory_order_release);
  if (!mb) {
    NICMUX_LOG(kInfo, "DPDK: membarrier(PRIVATE_EXPEDITED) unavailable (%s): bursts pay a fence each", strerror(errno));
  }
}

bool Armed() { return g_armed.load(std::memory_order_acquire); }

uint64_t HeldUnmaps() { return g_held.load(std::memory_order_relaxed); }

uint32_t WaitForBursts(uint32_t limit_ms) {
  if (!g_armed.load(std::memory_order_acquire)) return 0;
  // Called inside a burst: a PMD freeing a zero-copy frame whose release drops the last hold on
  // a guest-memory snapshot, which unmaps it. That memory is no device's (its holds are all
  // released), and two workers doing so at once must not wait for each other's burst.
  if (tl_slot != nullptr && (tl_slot->seq.load(std::memory_order_relaxed) & 1) != 0) return 0;
  // Every worker's "inside" store is made visible before the counters are read; a worker that
  // enters after this sees what the caller did before (the driver's "disconnected" flag).
  if (!g_membarrier.load(std::memory_order_relaxed) ||
      syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
    virtio::FullFence();
  }
  const uint32_t n = g_high.load(std::memory_order_acquire);
  uint32_t waited = 0;
  std::chrono::steady_clock::time_point deadline{};
  for (uint32_t i = 0; i < n; ++i) {
    Slot& s = g_slots[i];
    if (!s.used.load(std::memory_order_acquire)) continue;
    const uint64_t v = s.seq.load(std::memory_order_acquire);
    if ((v & 1) == 0) continue;
    ++waited;
    if (deadline == std::chrono::steady_clock::time_point{}) {
      deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(limit_ms);
    }
    for (uint32_t spin = 0; s.seq.load(std::memory_order_acquire) == v; ++spin) {
      if (spin < 256) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        continue;
      }
      sched_yield();
      if (spin % 64 == 0 && std::chrono::steady_clock::now() > deadline) {
        NICMUX_LOG(kError, "DPDK: a burst ran for more than %u ms while a driver unmapped memory: not waited for any longer", limit_ms);
        break;
      }
    }
  }
  if (waited) {
    const uint64_t held = g_held.fetch_add(1, std::memory_order_relaxed) + 1;
    NICMUX_LOG_RATELIMITED(kInfo, "DPDK: an unmapping waited for %u burst(s) in progress (%llu so far)", waited,
                           static_cast<unsigned long long>(held));
  }
  return waited;
}

}  // namespace nicmux::dpdk_guard

// The process's munmap (exported: -Wl,--export-dynamic-symbol=munmap, src/port/CMakeLists.txt):
// a driver's unmapping of a queue's memory waits for the bursts in progress. Before the EAL is
// up, and in processes without DPDK ports, it is the next munmap and nothing more.
extern "C" int munmap(void* addr, size_t len) noexcept {
  if (nicmux::dpdk_guard::Armed()) nicmux::dpdk_guard::WaitForBursts();
  return nicmux::dpdk_guard::RealMunmap(addr, len);
}
