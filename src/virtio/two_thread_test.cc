// A driver thread and a device thread on two cores through one ring in shared memory: the
// memory ordering is right only if every byte of every packet arrives as written. 10 million
// packets each layout (NICMUX_TWO_THREAD_PACKETS overrides, for quick local runs); also built
// under the tsan preset, where ThreadSanitizer checks the acquire/release pairs.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <thread>

#include "tests/support/fake_guest.h"

namespace nicmux::virtio {
namespace {

using nicmux::testing::FakeGuest;
using nicmux::testing::PackedLayout;
using nicmux::testing::RingPair;
using nicmux::testing::SplitLayout;

constexpr uint32_t kRingSize = 256;
constexpr uint32_t kPayload = 64;
constexpr uint32_t kBurst = 32;

uint64_t PacketCount(uint64_t dflt) {
  const char* e = std::getenv("NICMUX_TWO_THREAD_PACKETS");
  return e ? std::strtoull(e, nullptr, 10) : dflt;
}

uint64_t Word(uint64_t seq, uint32_t i) { return seq * 0x9E3779B97F4A7C15ull + i * 0x100000001b3ull; }

template <typename L>
class TwoThreads : public ::testing::Test {};
using Layouts = ::testing::Types<SplitLayout, PackedLayout>;
TYPED_TEST_SUITE(TwoThreads, Layouts);

// Driver -> device: the driver thread writes packets, the device thread checks every byte.
TYPED_TEST(TwoThreads, TxEveryByteArrives) {
  const uint64_t packets = PacketCount(10'000'000);
  FakeGuest g(8u << 20);
  RingPair<TypeParam> rp(g, {.size = kRingSize});
  // One buffer per ring slot, chosen by sequence number: completions are in order, so the
  // buffer for seq is free again once seq - kRingSize has been reclaimed.
  GuestAddr area = g.Alloc(uint64_t{kRingSize} * kPayload);
  std::byte* host = g.Host(area, uint64_t{kRingSize} * kPayload);
  std::atomic<uint64_t> bad{0};
  uint64_t received = 0;

  std::thread device([&] {
    DescChain chains[kBurst];
    uint64_t expect = 0;
    while (expect < packets) {
      uint32_t n = rp.device.PopBurst(chains, kBurst);
      for (uint32_t k = 0; k < n; ++k, ++expect) {
        uint64_t words[kPayload / 8];
        ChainReader r(chains[k]);
        if (r.Read(words, kPayload) != kPayload) bad.fetch_add(1);
        for (uint32_t i = 0; i < kPayload / 8; ++i) {
          if (words[i] != Word(expect, i)) bad.fetch_add(1);
        }
        rp.device.Push(chains[k].id, 0);
      }
      rp.device.Flush();
      if (rp.device.broken()) break;
    }
    received = expect;
  });

  uint64_t sent = 0, reclaimed = 0;
  while (reclaimed < packets) {
    UsedBuffer u;
    while (rp.driver.PopUsed(&u) == PopStatus::kOk) ++reclaimed;
    if (rp.driver.broken()) break;
    uint32_t added = 0;
    while (sent < packets && added < kBurst && rp.driver.num_free() > 0) {
      std::byte* p = host + (sent % kRingSize) * kPayload;
      uint64_t words[kPayload / 8];
      for (uint32_t i = 0; i < kPayload / 8; ++i) words[i] = Word(sent, i);
      std::memcpy(p, words, kPayload);
      DriverBuffer b{GuestAddr{area.value + (sent % kRingSize) * kPayload}, kPayload, false};
      if (!rp.driver.Add({&b, 1})) break;
      ++sent;
      ++added;
    }
    if (added) rp.driver.Publish();
  }
  device.join();
  EXPECT_EQ(received, packets);
  EXPECT_EQ(reclaimed, packets);
  EXPECT_EQ(bad.load(), 0u);
  EXPECT_EQ(rp.device.drops().Total(), 0u);
  EXPECT_EQ(rp.driver.drops().Total(), 0u);
}

// Device -> driver: the device thread fills receive buffers, the driver thread checks them.
TYPED_TEST(TwoThreads, RxEveryByteArrives) {
  const uint64_t packets = PacketCount(10'000'000) / 5;
  FakeGuest g(8u << 20);
  RingPair<TypeParam> rp(g, {.size = kRingSize, .policy = ChainPolicy::kWriteOnly});
  GuestAddr area = g.Alloc(uint64_t{kRingSize} * kPayload);
  std::byte* host = g.Host(area, uint64_t{kRingSize} * kPayload);
  uint64_t written = 0;

  std::thread device([&] {
    DescChain chains[kBurst];
    uint64_t seq = 0;
    while (seq < packets) {
      uint32_t n = rp.device.PopBurst(chains, static_cast<uint32_t>(std::min<uint64_t>(kBurst, packets - seq)));
      for (uint32_t k = 0; k < n; ++k, ++seq) {
        uint64_t words[kPayload / 8];
        for (uint32_t i = 0; i < kPayload / 8; ++i) words[i] = Word(seq, i);
        ChainWriter w(chains[k]);
        rp.device.Push(chains[k].id, static_cast<uint32_t>(w.Write(words, kPayload)));
      }
      rp.device.Flush();
      if (rp.device.broken()) break;
    }
    written = seq;
  });

  uint64_t posted = 0, got = 0, bad = 0;
  // Buffer for the k-th posted chain: slot k % size (completions come back in order).
  while (got < packets) {
    UsedBuffer u;
    while (rp.driver.PopUsed(&u) == PopStatus::kOk) {
      const std::byte* p = host + (got % kRingSize) * kPayload;
      uint64_t words[kPayload / 8];
      std::memcpy(words, p, kPayload);
      if (u.len != kPayload) ++bad;
      for (uint32_t i = 0; i < kPayload / 8; ++i) bad += words[i] != Word(got, i);
      ++got;
    }
    if (rp.driver.broken()) break;
    uint32_t added = 0;
    while (added < kBurst && rp.driver.num_free() > 0) {
      DriverBuffer b{GuestAddr{area.value + (posted % kRingSize) * kPayload}, kPayload, true};
      if (!rp.driver.Add({&b, 1})) break;
      ++posted;
      ++added;
    }
    if (added) rp.driver.Publish();
  }
  device.join();
  EXPECT_EQ(written, packets);
  EXPECT_EQ(got, packets);
  EXPECT_EQ(bad, 0u);
}

}  // namespace
}  // namespace nicmux::virtio
