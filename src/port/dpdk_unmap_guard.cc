#include "port/dpdk_unmap_guard.h"

#include <dlfcn.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <rte_interrupts.h>

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
constexpr uint32_t kLogEveryMs = 5000;
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

// The next definitions of the calls this file defines: the sanitizers' interceptors when a
// runtime is linked (GCC's shared libasan/libtsan: the next in the lookup order; clang's static
// runtimes: in this executable, under __interceptor_NAME, which our definition would otherwise
// hide), else libc's. Resolved once, before main (single-threaded); a call before that (another
// constructor's) goes straight to the kernel.
using MunmapFn = int (*)(void*, size_t);
using CloseFn = int (*)(int);
using Mmap64Fn = void* (*)(void*, size_t, int, int, int, off64_t);

void* Next(const char* name, const char* interceptor) {
  if (void* f = dlsym(RTLD_DEFAULT, interceptor)) return f;
  return dlsym(RTLD_NEXT, name);
}

// Threads whose unmapping holds: DPDK's interrupt thread (where a PMD handles its peer's
// disconnect), and one a test marks. Not the others: a thread that unmaps while holding a lock a
// burst needs (DPDK's vhost library unmaps guest memory under its queues' access locks) would
// wait for a burst that waits for it; nicmuxd's own threads unmap only with the workers paused.
thread_local bool tl_holds = false;

bool HoldsHere() { return tl_holds || rte_thread_is_intr(); }

}  // namespace

std::atomic<bool> g_need_fence{false};
static MunmapFn g_real_munmap = nullptr;
static CloseFn g_real_close = nullptr;
static Mmap64Fn g_real_mmap64 = nullptr;

__attribute__((constructor)) static void ResolveNext() {
  g_real_munmap = reinterpret_cast<MunmapFn>(Next("munmap", "__interceptor_munmap"));
  g_real_close = reinterpret_cast<CloseFn>(Next("close", "__interceptor_close"));
  g_real_mmap64 = reinterpret_cast<Mmap64Fn>(Next("mmap64", "__interceptor_mmap64"));
}

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

void HoldOnThisThread(bool on) { tl_holds = on; }

bool HoldHere() { return g_armed.load(std::memory_order_acquire) && HoldsHere(); }

uint64_t HeldUnmaps() { return g_held.load(std::memory_order_relaxed); }

uint32_t WaitForBursts(uint32_t limit_ms) {
  if (!g_armed.load(std::memory_order_acquire)) return 0;
  // Called inside a burst (a holding thread's own burst; DPDK's interrupt thread makes none): it
  // would wait for itself, or two such threads for each other, with no limit. What a burst
  // unmaps in its own callbacks (a zero-copy release's guest-memory snapshot) is no device's.
  if (tl_slot != nullptr && (tl_slot->seq.load(std::memory_order_relaxed) & 1) != 0) return 0;
  // Every worker's "inside" store is made visible before the counters are read; a worker that
  // enters after this sees what the caller did before (the driver's "disconnected" flag).
  if (g_membarrier.load(std::memory_order_relaxed) &&
      syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) [[unlikely]] {
    // Refused after it was registered (not seen): from now on every burst fences itself; the
    // bursts in progress may not have, so this wait is best effort, and says so.
    g_need_fence.store(true, std::memory_order_relaxed);
    g_membarrier.store(false, std::memory_order_relaxed);
    NICMUX_LOG(kError, "DPDK: membarrier failed (%s): bursts fence themselves from now on", strerror(errno));
  }
  virtio::FullFence();
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
      deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(limit_ms != 0 ? limit_ms : kLogEveryMs);
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
        if (limit_ms != 0) {
          NICMUX_LOG(kError, "DPDK: a burst ran for more than %u ms while a driver unmapped memory: not waited for any longer", limit_ms);
          break;
        }
        // Unmapping under it would crash the worker; the interrupt thread waits on (link events
        // and alarms wait with it) and says so.
        NICMUX_LOG(kError, "DPDK: a burst has run for more than %u ms while a driver unmaps memory: still waiting", kLogEveryMs);
        deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kLogEveryMs);
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

// The process's munmap, close and mmap64 (exported: -Wl,--export-dynamic-symbol=...,
// src/port/CMakeLists.txt, so that a PMD loaded as a plugin binds to them). On DPDK's interrupt
// thread, once the EAL is up, each first waits for the bursts in progress: net_memif's
// disconnect closes the queues' interrupt eventfds (a burst writes 8 bytes to one: a number
// reused at once would take them) and unmaps the peer's regions (a burst reads and writes
// them); its connect maps the new regions before it sets "connected" again (a burst that
// loaded the old ring's address before its flag test, preempted over the whole reconnect,
// would use it). Everywhere else: the next definition and nothing more.
extern "C" int munmap(void* addr, size_t len) noexcept {
  if (nicmux::dpdk_guard::HoldHere()) [[unlikely]] nicmux::dpdk_guard::WaitForBursts(0);
  auto f = nicmux::dpdk_guard::g_real_munmap;
  return f ? f(addr, len) : static_cast<int>(syscall(SYS_munmap, addr, len));
}

extern "C" int close(int fd) {
  if (nicmux::dpdk_guard::HoldHere()) [[unlikely]] nicmux::dpdk_guard::WaitForBursts(0);
  auto f = nicmux::dpdk_guard::g_real_close;
  return f ? f(fd) : static_cast<int>(syscall(SYS_close, fd));
}

extern "C" void* mmap64(void* addr, size_t len, int prot, int flags, int fd, off64_t off) noexcept {
  if (nicmux::dpdk_guard::HoldHere()) [[unlikely]] nicmux::dpdk_guard::WaitForBursts(0);
  auto f = nicmux::dpdk_guard::g_real_mmap64;
  return f ? f(addr, len, prot, flags, fd, off) : reinterpret_cast<void*>(syscall(SYS_mmap, addr, len, prot, flags, fd, off));
}
