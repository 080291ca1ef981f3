#include "port/dpdk_unmap_guard.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace nicmux::dpdk_guard {
namespace {

using Clock = std::chrono::steady_clock;

// The hold as a driver meets it: a thread inside a burst reads a mapping that another thread
// (the EAL's interrupt thread, for net_memif) unmaps. munmap must not return before the burst
// has left, and the burst must read the mapping whole.
TEST(DpdkUnmapGuard, MunmapWaitsForTheBurstInProgress) {
  Arm();
  ASSERT_TRUE(Armed());
  constexpr size_t kLen = 1 << 20;
  void* p = mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  auto* bytes = static_cast<volatile uint8_t*>(p);
  for (size_t i = 0; i < kLen; i += 4096) bytes[i] = 7;
  std::atomic<bool> inside{false};
  std::atomic<int64_t> left_ns{0};
  uint64_t sum = 0;
  std::thread worker([&] {
    BurstSection burst;
    inside.store(true);
    // A long burst: it keeps reading the ring for 100 ms.
    const auto until = Clock::now() + std::chrono::milliseconds(100);
    while (Clock::now() < until) {
      for (size_t i = 0; i < kLen; i += 4096) sum += bytes[i];
    }
    left_ns.store(Clock::now().time_since_epoch().count());
  });
  while (!inside.load()) std::this_thread::yield();
  const uint64_t held_before = HeldUnmaps();
  ASSERT_EQ(munmap(p, kLen), 0);
  const int64_t unmapped_ns = Clock::now().time_since_epoch().count();
  worker.join();
  EXPECT_GT(unmapped_ns, left_ns.load()) << "munmap returned while the burst still read the mapping";
  EXPECT_EQ(HeldUnmaps(), held_before + 1);
  EXPECT_GT(sum, 0u);
}

// A thread outside any burst (asleep, paused) holds nothing up; a caller inside a burst waits
// for nobody.
TEST(DpdkUnmapGuard, IdleThreadsAndCallersInsideABurstDoNotHold) {
  Arm();
  std::atomic<bool> stop{false};
  std::atomic<bool> ready{false};
  std::thread idle([&] {
    { BurstSection once; }  // has a slot, even counter
    ready.store(true);
    while (!stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!ready.load()) std::this_thread::yield();
  EXPECT_EQ(WaitForBursts(), 0u);
  // Another thread inside a burst too: two workers each unmapping a snapshot inside their
  // burst (a zero-copy release) must not wait for each other.
  std::atomic<bool> other_in{false};
  std::atomic<bool> other_out{false};
  std::thread other([&] {
    BurstSection b;
    other_in.store(true);
    while (!other_out.load()) std::this_thread::yield();
  });
  while (!other_in.load()) std::this_thread::yield();
  {
    BurstSection mine;
    void* p = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(p, MAP_FAILED);
    const auto t0 = Clock::now();
    EXPECT_EQ(munmap(p, 4096), 0);
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
    EXPECT_EQ(WaitForBursts(), 0u);
  }
  other_out.store(true);
  other.join();
  stop.store(true);
  idle.join();
}

// Many threads come and go (workers are started and stopped with the scheduler's changes):
// their slots are given back, and the hold still sees a burst in a new thread.
TEST(DpdkUnmapGuard, SlotsOfExitedThreadsAreReused) {
  Arm();
  for (int round = 0; round < 20; ++round) {
    std::vector<std::thread> ts;
    for (int i = 0; i < 64; ++i) ts.emplace_back([] { BurstSection b; });
    for (auto& t : ts) t.join();
  }
  std::atomic<bool> inside{false};
  std::atomic<bool> release{false};
  std::thread w([&] {
    BurstSection b;
    inside.store(true);
    while (!release.load()) std::this_thread::yield();
  });
  while (!inside.load()) std::this_thread::yield();
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    release.store(true);
  });
  const auto t0 = Clock::now();
  EXPECT_EQ(WaitForBursts(), 1u);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(20));
  w.join();
  releaser.join();
}

// A burst that never ends is waited for only as long as the limit (logged), not forever.
TEST(DpdkUnmapGuard, AStuckBurstIsWaitedForOnlyUntilTheLimit) {
  Arm();
  std::atomic<bool> inside{false};
  std::atomic<bool> release{false};
  std::thread w([&] {
    BurstSection b;
    inside.store(true);
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!inside.load()) std::this_thread::yield();
  const auto t0 = Clock::now();
  EXPECT_EQ(WaitForBursts(50), 1u);
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, std::chrono::milliseconds(50));
  EXPECT_LT(took, std::chrono::seconds(2));
  release.store(true);
  w.join();
}

// A child of fork has none of the parent's workers: a burst the parent was in when it forked
// does not hold the child's munmaps (nicmuxd forks to check a config file).
TEST(DpdkUnmapGuard, AForkedChildIsNotHeldByTheParentsBursts) {
  Arm();
  std::atomic<bool> inside{false};
  std::atomic<bool> release{false};
  std::thread w([&] {
    BurstSection b;
    inside.store(true);
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!inside.load()) std::this_thread::yield();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    void* p = mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const auto t0 = Clock::now();
    const int rc = munmap(p, 4096);
    _exit(rc == 0 && Clock::now() - t0 < std::chrono::seconds(1) ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "the child's munmap waited for the parent's burst";
  release.store(true);
  w.join();
}

// The definition a plugin binds to is this one: the executable exports munmap.
TEST(DpdkUnmapGuard, MunmapIsExportedToPlugins) {
  void* self = dlopen(nullptr, RTLD_NOW);
  ASSERT_NE(self, nullptr);
  void* found = dlsym(self, "munmap");
  dlclose(self);
  EXPECT_EQ(found, reinterpret_cast<void*>(&::munmap));
}

}  // namespace
}  // namespace nicmux::dpdk_guard
