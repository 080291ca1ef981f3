// memcpy_bw: one core's memcpy bandwidth, the physical limit of a switch that copies each byte
// once (issue #6's TSO targets are set against it). Two figures: 64 KiB copies between buffers
// that stay in the cache hierarchy as a ring of guest buffers would (a 16 MiB ring of 64 KiB
// frames, copied frame by frame into another), and one copy of 256 MiB (memory to memory).
// Usage: memcpy_bw [SECONDS]   prints "memcpy_gbps_frames=X memcpy_gbps_large=Y" (Gbit/s).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  const double secs = argc > 1 ? std::atof(argv[1]) : 2.0;
  using Clock = std::chrono::steady_clock;
  auto rate = [&](size_t chunk, size_t total) {
    std::vector<char> a(total, 1), b(total, 2);
    size_t bytes = 0;
    const auto t0 = Clock::now();
    double el = 0;
    do {
      for (size_t off = 0; off + chunk <= total; off += chunk) std::memcpy(b.data() + off, a.data() + off, chunk);
      bytes += total / chunk * chunk;
      el = std::chrono::duration<double>(Clock::now() - t0).count();
    } while (el < secs);
    volatile char sink = b[total / 2];
    (void)sink;
    return bytes * 8 / el / 1e9;
  };
  const double frames = rate(65536, 16u << 20);
  const double large = rate(256u << 20, 256u << 20);
  std::printf("memcpy_gbps_frames=%.1f memcpy_gbps_large=%.1f\n", frames, large);
  return 0;
}
