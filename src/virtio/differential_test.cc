// Differential test: one random workload (chains of random shape and content, some indirect,
// random burst sizes and completion orders) through a split ring and through a packed ring
// must deliver the same bytes both ways: what the device reads, what the driver gets back.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "tests/support/fake_guest.h"

namespace nicmux::virtio {
namespace {

using nicmux::testing::FakeGuest;
using nicmux::testing::PackedLayout;
using nicmux::testing::RingPair;
using nicmux::testing::SplitLayout;

struct Transcript {
  std::vector<std::vector<std::byte>> device_read;   // readable bytes of each chain, in pop order
  std::vector<std::vector<std::byte>> driver_got;    // bytes the driver found written, per chain
  std::vector<uint32_t> used_len;
};

template <typename L>
Transcript RunWorkload(uint64_t seed) {
  constexpr uint32_t kSize = 64;
  FakeGuest g(32u << 20);
  RingPair<L> rp(g, {.size = kSize, .features = Bit(kFRingIndirectDesc), .max_indirect = 8});
  std::mt19937_64 rng(seed);
  Transcript t;
  // Per in-flight id: the chain's writable buffers, to read back when it returns.
  std::vector<std::vector<DriverBuffer>> writable_of(kSize);
  std::vector<uint64_t> seq_of(kSize);
  uint64_t next_seq = 0;
  t.driver_got.resize(3000);
  t.used_len.resize(3000);
  for (int round = 0; round < 400 && next_seq < 3000; ++round) {
    // The driver adds a random number of random chains.
    int adds = 1 + static_cast<int>(rng() % 12);
    for (int a = 0; a < adds && next_seq < 3000; ++a) {
      uint32_t nseg = 1 + rng() % 8;
      uint32_t nread = static_cast<uint32_t>(rng() % (nseg + 1));
      bool indirect = rng() % 3 == 0;
      if (!indirect && rp.driver.num_free() < nseg) break;
      if (indirect && rp.driver.num_free() < 1) break;
      std::vector<DriverBuffer> bufs(nseg);
      for (uint32_t s = 0; s < nseg; ++s) {
        uint32_t len = 1 + rng() % 700;
        bufs[s] = {g.Alloc(len, 1), len, s >= nread};
        std::byte* p = g.Host(bufs[s].addr, len);
        for (uint32_t i = 0; i < len; ++i) p[i] = static_cast<std::byte>(rng());
      }
      auto id = rp.driver.Add(bufs, indirect);
      EXPECT_TRUE(id.has_value());
      if (!id) break;
      writable_of[*id].assign(bufs.begin() + nread, bufs.end());
      seq_of[*id] = next_seq++;
    }
    rp.driver.Publish();
    // The device takes a random burst and completes it in a random order.
    DescChain chains[16];
    uint32_t n = rp.device.PopBurst(chains, 1 + rng() % 16);
    std::vector<uint32_t> order(n);
    for (uint32_t k = 0; k < n; ++k) {
      std::vector<std::byte> bytes(chains[k].readable_bytes);
      ChainReader r(chains[k]);
      r.Read(bytes.data(), bytes.size());
      t.device_read.push_back(bytes);
      order[k] = k;
    }
    std::shuffle(order.begin(), order.end(), rng);
    for (uint32_t k : order) {
      // Reply: a function of what was read, cut to a random length.
      uint64_t room = chains[k].writable_bytes;
      uint64_t len = room ? rng() % (room + 1) : 0;
      std::vector<std::byte> reply(len);
      for (uint64_t i = 0; i < len; ++i) reply[i] = static_cast<std::byte>(rng() ^ i);
      ChainWriter w(chains[k]);
      w.Write(reply.data(), reply.size());
      rp.device.Push(chains[k].id, static_cast<uint32_t>(len));
    }
    rp.device.Flush();
    UsedBuffer u;
    while (rp.driver.PopUsed(&u) == PopStatus::kOk) {
      std::vector<std::byte> got;
      uint32_t left = u.len;
      for (const DriverBuffer& b : writable_of[u.id]) {
        uint32_t take = std::min(left, b.len);
        const std::byte* p = g.Host(b.addr, b.len);
        got.insert(got.end(), p, p + take);
        left -= take;
      }
      t.driver_got[seq_of[u.id]] = got;
      t.used_len[seq_of[u.id]] = u.len;
    }
  }
  EXPECT_EQ(rp.device.drops().Total(), 0u);
  EXPECT_EQ(rp.driver.drops().Total(), 0u);
  return t;
}

TEST(Differential, SplitAndPackedDeliverTheSameBytes) {
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    Transcript s = RunWorkload<SplitLayout>(seed);
    Transcript p = RunWorkload<PackedLayout>(seed);
    ASSERT_GT(s.device_read.size(), 1000u);
    ASSERT_EQ(s.device_read.size(), p.device_read.size()) << "seed " << seed;
    EXPECT_TRUE(s.device_read == p.device_read) << "seed " << seed;
    EXPECT_TRUE(s.driver_got == p.driver_got) << "seed " << seed;
    EXPECT_TRUE(s.used_len == p.used_len) << "seed " << seed;
  }
}

}  // namespace
}  // namespace nicmux::virtio
