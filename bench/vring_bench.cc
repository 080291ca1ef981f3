// Virtqueue micro-benchmarks: what one packet costs on the device side of a split and a packed
// ring (SplitVring / PackedVring, the code every virtio port polls), with the fake guest's
// driver-side ring (DriverSplitVring / DriverPackedVring) on the same memfd-backed memory.
// Every benchmark is a template over the ring layout: the datapath is written once over both.
//
// BM_DevicePopPush<Layout>/ring: one thread, everything in cache. Per iteration the driver adds
//   32 chains of one 64-byte device-readable buffer and publishes them; the device pops the
//   burst, pushes every chain back and flushes; the driver reclaims the 32 used buffers.
//   Counters: ns_per_pkt (all of that per packet), dev_ns_per_pkt (PopBurst + Push + Flush
//   only, timed with the TSC around the device part and calibrated against the wall clock over
//   the run), drv_ns_per_pkt (the rest: Add, Publish, PopUsed and the loop). This is the
//   instruction cost of the ring code; no cache line moves between cores.
//
// BM_CrossCore<Layout>/ring/pkts: the same exchange between two threads pinned to two CPUs,
//   busy-polling, no notifications. The producer (the guest's driver) writes a 64-byte payload
//   carrying a sequence number into a buffer, adds it, publishes every 32 and reclaims used
//   buffers; the consumer (the device, as a port's Rx would) pops bursts of 32, copies each
//   payload out with ChainReader, checks the sequence number, pushes and flushes. Each iteration
//   moves a fixed number of packets; the consumer must see every one of them in order, else the
//   benchmark fails (SkipWithError). Counters: Mpps (wall clock) and c2c_rtt_ns, the round
//   trip of one cache line between the two CPUs measured just before: here the cost is the
//   cache lines that cross between the cores (ring entries, indexes/flags, the payloads), so
//   the packet rate follows that latency, which in a VM depends on where the host placed the
//   vCPUs (on the 2-vCPU development VM it flips between about 100 ns and about 500 ns, with
//   the rate dropping about threefold; compare runs by it). The rate is that of the slower
//   side: with the rings as they are, the producer (the driver side), so the figure bounds the
//   device side from below.
//
// Run from an optimised build (cmake --preset release), on an otherwise idle machine; the
// cross-core benchmark needs two CPUs to itself.
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#endif

#include <benchmark/benchmark.h>

#include "base/check.h"
#include "tests/support/fake_guest.h"
#include "virtio/desc_chain.h"
#include "virtio/vring.h"

namespace nicmux {
namespace {

using testing::FakeGuest;
using testing::PackedLayout;
using testing::SplitLayout;
using virtio::DescChain;
using virtio::DriverBuffer;
using virtio::PopStatus;
using virtio::UsedBuffer;

constexpr uint32_t kBurst = 32;         // DESIGN.md: a worker pops up to 32 chains at a time
constexpr uint32_t kPayloadBytes = 64;  // one cache line: the smallest Ethernet frame + header

// A cheap cycle counter for timing part of an iteration; converted to ns with a rate measured
// against steady_clock over the same run, so no fixed TSC frequency is assumed.
inline uint64_t Ticks() {
#if defined(__x86_64__) || defined(__i386__)
  return __rdtsc();
#else
  return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#endif
}

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// The first two CPUs this process may run on, or nullopt when it has fewer than two.
std::optional<std::pair<int, int>> TwoCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return std::nullopt;
  int found[2];
  int n = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE && n < 2; ++cpu) {
    if (CPU_ISSET(cpu, &set)) found[n++] = cpu;
  }
  if (n < 2) return std::nullopt;
  return std::make_pair(found[0], found[1]);
}

bool PinThisThread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

// Round trip of one cache line between the two CPUs (a store seen by the other CPU, answered by
// a store seen back), for reading the cross-core figures: the host may place the two vCPUs of a
// VM on cores that share a cache or not, and the packet rate follows this latency.
double CacheLineRoundTripNs(int cpu_a, int cpu_b) {
  constexpr uint64_t kRounds = 20'000;
  struct alignas(64) Line {
    std::atomic<uint64_t> v{0};
  };
  Line ping, pong;
  std::thread other([&] {
    PinThisThread(cpu_b);
    for (uint64_t i = 1; i <= kRounds; ++i) {
      while (ping.v.load(std::memory_order_acquire) != i) CpuRelax();
      pong.v.store(i, std::memory_order_release);
    }
  });
  PinThisThread(cpu_a);
  const uint64_t start_ns = NowNs();
  for (uint64_t i = 1; i <= kRounds; ++i) {
    ping.v.store(i, std::memory_order_release);
    while (pong.v.load(std::memory_order_acquire) != i) CpuRelax();
  }
  const uint64_t elapsed_ns = NowNs() - start_ns;
  other.join();
  return static_cast<double>(elapsed_ns) / kRounds;
}

// Both sides of one ring on the fake guest's memory, set up as testing::RingPair does (the
// device reads the rings through frontend virtual addresses, as under vhost-user), but each side
// on cache lines of its own. RingPair keeps driver and device next to each other, so whether a
// field one thread writes shares a line with one the other thread reads depends on the classes'
// sizes. At commit 8507e92 it did: the split driver's broken_ flag (read on every Add and
// PopUsed) sat on the line of the split device's indexes (written on every Pop), which cut the
// split cross-core rate by about a quarter. That is the harness's cost, not the rings'.
template <typename Layout>
class Rings {
 public:
  Rings(FakeGuest& guest, uint32_t size) {
    using namespace virtio;
    if constexpr (Layout::kPacked) {
      ring_[0] = guest.Alloc(PackedRingLayout::DescBytes(size), 64);
      ring_[1] = guest.Alloc(PackedRingLayout::kEventBytes, 64);
      ring_[2] = guest.Alloc(PackedRingLayout::kEventBytes, 64);
    } else {
      ring_[0] = guest.Alloc(SplitRingLayout::DescBytes(size), 64);
      ring_[1] = guest.Alloc(SplitRingLayout::AvailBytes(size), 64);
      ring_[2] = guest.Alloc(SplitRingLayout::UsedBytes(size), 64);
    }
    DriverRingConfig dc;
    dc.size = size;
    for (int i = 0; i < 3; ++i) dc.ring[i] = ring_[i];
    auto r = driver_->side.Init(guest.mem(), dc);
    NICMUX_CHECK_MSG(r.has_value(), r ? "" : r.error().message().c_str());
    // A guest's TX queue (our Rx): device-readable buffers only.
    const VringConfig vc{size, 0, ChainPolicy::kReadOnly};
    if constexpr (Layout::kPacked) {
      auto areas = MapPackedRing(guest.mem(), RingAddrSpace::kFrontendVirtual, guest.Uva(ring_[0]),
                                 guest.Uva(ring_[1]), guest.Uva(ring_[2]), size);
      NICMUX_CHECK(areas.has_value());
      NICMUX_CHECK(device_->side.Init(vc, *areas, &guest.mem()).has_value());
    } else {
      auto areas = MapSplitRing(guest.mem(), RingAddrSpace::kFrontendVirtual, guest.Uva(ring_[0]),
                                guest.Uva(ring_[1]), guest.Uva(ring_[2]), size);
      NICMUX_CHECK(areas.has_value());
      NICMUX_CHECK(device_->side.Init(vc, *areas, &guest.mem()).has_value());
    }
  }

  typename Layout::Driver& driver() { return driver_->side; }
  typename Layout::Device& device() { return device_->side; }

 private:
  // alignas rounds the size up to whole lines, and aligned new places it on a line boundary.
  template <typename T>
  struct alignas(64) OwnLines {
    T side;
  };

  GuestAddr ring_[3];
  std::unique_ptr<OwnLines<typename Layout::Driver>> driver_ =
      std::make_unique<OwnLines<typename Layout::Driver>>();
  std::unique_ptr<OwnLines<typename Layout::Device>> device_ =
      std::make_unique<OwnLines<typename Layout::Device>>();
};

// ------------------------------------------------------------------ one thread: pop + push

template <typename Layout>
void BM_DevicePopPush(benchmark::State& state) {
  const uint32_t ring_size = static_cast<uint32_t>(state.range(0));
  FakeGuest guest;
  Rings<Layout> rings(guest, ring_size);
  auto& driver = rings.driver();
  auto& device = rings.device();

  const GuestAddr area = guest.Alloc(uint64_t{kBurst} * kPayloadBytes, 4096);
  std::memset(guest.Host(area, uint64_t{kBurst} * kPayloadBytes), 0x5a,
              uint64_t{kBurst} * kPayloadBytes);
  DriverBuffer bufs[kBurst];
  for (uint32_t i = 0; i < kBurst; ++i) {
    bufs[i] = {GuestAddr{area.value + uint64_t{i} * kPayloadBytes}, kPayloadBytes, false};
  }
  std::vector<DescChain> chains(kBurst);

  uint64_t device_ticks = 0;
  const uint64_t start_ns = NowNs();
  const uint64_t start_ticks = Ticks();
  for (auto _ : state) {
    for (uint32_t i = 0; i < kBurst; ++i) {
      if (!driver.Add({&bufs[i], 1})) {
        state.SkipWithError("driver ring full: used buffers were not all reclaimed");
        return;
      }
    }
    driver.Publish();

    const uint64_t t0 = Ticks();
    const uint32_t n = device.PopBurst(chains.data(), kBurst);
    for (uint32_t i = 0; i < n; ++i) device.Push(chains[i].id, 0);
    device.Flush();
    device_ticks += Ticks() - t0;

    uint32_t reclaimed = 0;
    UsedBuffer used;
    while (driver.PopUsed(&used) == PopStatus::kOk) ++reclaimed;
    if (n != kBurst || reclaimed != kBurst) {
      state.SkipWithError(("popped " + std::to_string(n) + " and reclaimed " +
                           std::to_string(reclaimed) + " of a burst of 32")
                              .c_str());
      return;
    }
  }
  const double elapsed_ns = static_cast<double>(NowNs() - start_ns);
  const double ticks_per_ns = static_cast<double>(Ticks() - start_ticks) / elapsed_ns;
  if (device.broken() || driver.broken() || device.drops().Total() != 0 ||
      driver.drops().Total() != 0) {
    state.SkipWithError("a ring broke or counted drops");
    return;
  }

  const double packets = static_cast<double>(state.iterations()) * kBurst;
  const double device_ns = static_cast<double>(device_ticks) / ticks_per_ns;
  state.SetItemsProcessed(static_cast<int64_t>(packets));
  state.counters["ns_per_pkt"] = elapsed_ns / packets;
  state.counters["dev_ns_per_pkt"] = device_ns / packets;
  state.counters["drv_ns_per_pkt"] = (elapsed_ns - device_ns) / packets;
}

BENCHMARK_TEMPLATE(BM_DevicePopPush, SplitLayout)->ArgName("ring")->Arg(256);
BENCHMARK_TEMPLATE(BM_DevicePopPush, PackedLayout)->ArgName("ring")->Arg(256);

// ------------------------------------------------------------------ two threads: cross-core

// What the producer writes into each buffer: the sequence number at both ends, so a payload
// that is stale, torn or from another packet fails the check.
struct Payload {
  uint64_t seq;
  uint64_t filler[6];
  uint64_t seq_check;  // ~seq
};
static_assert(sizeof(Payload) == kPayloadBytes);
constexpr uint64_t kFiller[6] = {0x0123456789abcdef, 0x2468acf13579bdf0, 0x369c0258be147ad0,
                                 0x48d159e26af37b04, 0x5b05b05b05b05b05, 0x6d3a06d3a06d3a06};
static_assert(sizeof kFiller == sizeof Payload::filler);

// Writes packet `seq` into a guest buffer, field by field as a driver fills a packet. (Building
// a Payload on the stack and copying it would reload the fresh seq stores with wider loads: a
// store-forwarding stall per packet that would be the benchmark's cost, not the ring's.)
inline void WritePayload(std::byte* dst, uint64_t seq) {
  const uint64_t check = ~seq;
  std::memcpy(dst + offsetof(Payload, seq), &seq, sizeof seq);
  std::memcpy(dst + offsetof(Payload, filler), kFiller, sizeof kFiller);
  std::memcpy(dst + offsetof(Payload, seq_check), &check, sizeof check);
}

// State both threads touch, each field on its own cache line so that it does not share one
// with anything polled on the hot path.
struct CrossCoreShared {
  alignas(64) std::atomic<bool> stop{false};  // set by whichever side fails
  alignas(64) std::string error;              // written before stop (release)
};

// The device side: pops until it has seen `packets` packets or the producer gave up. Returns the
// number of packets it took in sequence; on a mismatch sets shared.error and shared.stop.
template <typename Layout>
uint64_t Consume(typename Layout::Device& device, uint64_t first_seq, uint64_t packets,
                 CrossCoreShared& shared) {
  std::vector<DescChain> chains(kBurst);
  uint64_t expect = first_seq;
  const uint64_t end = first_seq + packets;
  auto fail = [&](std::string why) {
    shared.error = std::move(why);
    shared.stop.store(true, std::memory_order_release);
  };
  while (expect < end) {
    const uint32_t n = device.PopBurst(chains.data(), kBurst);
    if (n == 0) {
      if (device.broken()) {
        fail("device ring broke");
        break;
      }
      if (shared.stop.load(std::memory_order_relaxed)) break;
      CpuRelax();
      continue;
    }
    for (uint32_t i = 0; i < n; ++i) {
      alignas(64) Payload p;
      virtio::ChainReader reader(chains[i]);
      const size_t got = reader.Read(&p, sizeof p);
      if (got != sizeof p || p.seq != expect || p.seq_check != ~expect) {
        fail("consumer expected packet " + std::to_string(expect) + ", got seq " +
             std::to_string(p.seq) + " (" + std::to_string(got) + " bytes)");
        return expect - first_seq;
      }
      ++expect;
      device.Push(chains[i].id, 0);
    }
    device.Flush();
  }
  return expect - first_seq;
}

template <typename Layout>
void BM_CrossCore(benchmark::State& state) {
  const uint32_t ring_size = static_cast<uint32_t>(state.range(0));
  const uint64_t packets = static_cast<uint64_t>(state.range(1));  // per iteration
  const auto cpus = TwoCpus();
  if (!cpus) {
    state.SkipWithError("needs two CPUs");
    return;
  }
  cpu_set_t old_affinity;
  pthread_getaffinity_np(pthread_self(), sizeof old_affinity, &old_affinity);
  const double rtt_ns = CacheLineRoundTripNs(cpus->first, cpus->second);
  PinThisThread(cpus->first);

  FakeGuest guest;
  Rings<Layout> rings(guest, ring_size);
  auto& driver = rings.driver();
  auto& device = rings.device();

  // As many buffers as ring entries, used in FIFO order (as a driver's TX queue would), so
  // the payload addresses walk through memory and no buffer is rewritten while in flight.
  const GuestAddr area = guest.Alloc(uint64_t{ring_size} * kPayloadBytes, 4096);
  std::byte* const area_host = guest.Host(area, uint64_t{ring_size} * kPayloadBytes);
  std::memset(area_host, 0, uint64_t{ring_size} * kPayloadBytes);
  // A FIFO of free buffer indexes: taken at free_head, returned at free_tail, both wrapping at
  // ring_size (compares, not %: a division per packet shows up at these rates).
  std::vector<uint32_t> free_bufs(ring_size);
  for (uint32_t i = 0; i < ring_size; ++i) free_bufs[i] = i;
  uint32_t free_head = 0, free_tail = 0, num_free = ring_size;
  std::vector<uint32_t> buf_of_id(ring_size, 0);

  uint64_t seq = 0;  // continues across iterations, as the rings do
  double busy_ns = 0;
  std::string error;
  for (auto _ : state) {
    CrossCoreShared shared;
    uint64_t consumed = 0;
    const uint64_t first_seq = seq;
    const uint64_t start_ns = NowNs();
    std::thread consumer([&, consumer_cpu = cpus->second] {
      PinThisThread(consumer_cpu);
      consumed = Consume<Layout>(device, first_seq, packets, shared);
    });

    const uint64_t end = first_seq + packets;
    uint64_t reclaimed = 0;
    while (reclaimed < packets) {
      if (shared.stop.load(std::memory_order_acquire)) break;
      UsedBuffer used;
      PopStatus st;
      while ((st = driver.PopUsed(&used)) == PopStatus::kOk) {
        free_bufs[free_tail] = buf_of_id[used.id];
        if (++free_tail == ring_size) free_tail = 0;
        ++num_free;
        ++reclaimed;
      }
      if (st == PopStatus::kBroken) {
        error = "driver ring broke";
        break;
      }
      const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kBurst, end - seq));
      if (n == 0 || num_free < n) {
        CpuRelax();
        continue;
      }
      for (uint32_t i = 0; i < n; ++i, ++seq) {
        const uint32_t buf = free_bufs[free_head];
        if (++free_head == ring_size) free_head = 0;
        --num_free;
        WritePayload(area_host + uint64_t{buf} * kPayloadBytes, seq);
        const DriverBuffer b{GuestAddr{area.value + uint64_t{buf} * kPayloadBytes}, kPayloadBytes,
                             false};
        const std::optional<uint16_t> id = driver.Add({&b, 1});
        if (!id) {
          error = "driver ring full with free buffers left";
          break;
        }
        buf_of_id[*id] = buf;
      }
      driver.Publish();
      if (!error.empty()) break;
    }
    if (!error.empty()) shared.stop.store(true, std::memory_order_release);
    consumer.join();
    busy_ns += static_cast<double>(NowNs() - start_ns);

    if (error.empty() && !shared.error.empty()) error = shared.error;
    if (error.empty() && (consumed != packets || reclaimed != packets)) {
      error = "lost packets: sent " + std::to_string(seq - first_seq) + ", consumed " +
              std::to_string(consumed) + ", reclaimed " + std::to_string(reclaimed) + " of " +
              std::to_string(packets);
    }
    if (!error.empty()) break;
  }
  pthread_setaffinity_np(pthread_self(), sizeof old_affinity, &old_affinity);
  if (error.empty() && (device.broken() || driver.broken() || device.drops().Total() != 0 ||
                        driver.drops().Total() != 0)) {
    error = "a ring broke or counted drops";
  }
  if (!error.empty()) {
    state.SkipWithError(error.c_str());
    return;
  }

  const double total = static_cast<double>(state.iterations()) * static_cast<double>(packets);
  state.SetItemsProcessed(static_cast<int64_t>(total));
  state.counters["Mpps"] = total / busy_ns * 1e3;
  state.counters["ns_per_pkt"] = busy_ns / total;
  state.counters["c2c_rtt_ns"] = rtt_ns;
}

void CrossCoreArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"ring", "pkts"})
      ->Args({256, 10'000'000})
      ->Args({1024, 10'000'000})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}
BENCHMARK_TEMPLATE(BM_CrossCore, SplitLayout)->Apply(CrossCoreArgs);
BENCHMARK_TEMPLATE(BM_CrossCore, PackedLayout)->Apply(CrossCoreArgs);

}  // namespace
}  // namespace nicmux

BENCHMARK_MAIN();
