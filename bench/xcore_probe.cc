// xcore_probe: how long a cache line takes to move between two CPUs, now. On a VM whose
// vCPUs the host places sometimes close (shared cache) and sometimes far apart, this number
// tells which of the two states a benchmark run met; bench/run records it beside every point.
//   xcore_probe [CPU_A CPU_B [MILLISECONDS]]   (default 0 1 50)
// Prints "xcore_ns=N": the median one-way hand-over of a line (half a round trip), in ns.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

bool Pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

struct alignas(64) Line {
  std::atomic<uint64_t> v{0};
};

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
    std::printf("usage: xcore_probe [CPU_A CPU_B [MILLISECONDS]]  (default 0 1 50)\n");
    return 0;
  }
  const int a = argc > 2 ? std::atoi(argv[1]) : 0;
  const int b = argc > 2 ? std::atoi(argv[2]) : 1;
  const int ms = argc > 3 ? std::max(1, std::atoi(argv[3])) : 50;
  static Line line;
  std::atomic<bool> stop{false};
  std::atomic<bool> pinned_ok{true};
  std::thread echo([&] {
    if (!Pin(b)) pinned_ok = false;
    uint64_t seen = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const uint64_t x = line.v.load(std::memory_order_acquire);
      if (x != seen && (x & 1)) {  // odd: a ping; answer with the next even number
        seen = x + 1;
        line.v.store(seen, std::memory_order_release);
      }
    }
  });
  if (!Pin(a) || !pinned_ok) {
    std::fprintf(stderr, "xcore_probe: cannot pin to CPUs %d and %d\n", a, b);
    stop = true;
    echo.join();
    return 2;
  }
  std::vector<double> rtt;
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  uint64_t v = 0;
  while (std::chrono::steady_clock::now() < end && rtt.size() < 1000000) {
    const auto t0 = std::chrono::steady_clock::now();
    line.v.store(++v, std::memory_order_release);  // odd
    ++v;
    uint64_t spins = 0;
    while (line.v.load(std::memory_order_acquire) != v) {
      if (++spins > 100000000) break;  // the echo thread was descheduled for long: give up
    }
    rtt.push_back(std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count());
    line.v.store(v, std::memory_order_relaxed);
  }
  stop = true;
  echo.join();
  if (rtt.empty()) return 1;
  std::nth_element(rtt.begin(), rtt.begin() + rtt.size() / 2, rtt.end());
  std::printf("xcore_ns=%.0f\n", rtt[rtt.size() / 2] / 2);
  return 0;
}
