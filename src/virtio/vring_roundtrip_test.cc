// Driver <-> device round trips through memfd-backed guest memory, both ring layouts, one set
// of tests (typed over the layout).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "tests/support/fake_guest.h"
#include "virtio/ring_access.h"

namespace nicmux::virtio {
namespace {

using nicmux::testing::FakeGuest;
using nicmux::testing::PackedLayout;
using nicmux::testing::RingOptions;
using nicmux::testing::RingPair;
using nicmux::testing::SplitLayout;
using nicmux::testing::CheckPattern;
using nicmux::testing::FillPattern;

template <typename L>
class VringRoundTrip : public ::testing::Test {};
using Layouts = ::testing::Types<SplitLayout, PackedLayout>;
TYPED_TEST_SUITE(VringRoundTrip, Layouts);

// Reads a chain's readable bytes into a vector.
std::vector<std::byte> ReadAll(const DescChain& c) {
  std::vector<std::byte> v(c.readable_bytes);
  ChainReader r(c);
  EXPECT_EQ(r.Read(v.data(), v.size()), v.size());
  return v;
}

TYPED_TEST(VringRoundTrip, TxBuffersArriveIntact) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 256});
  for (uint64_t i = 0; i < 1000; ++i) {
    uint32_t len = 1 + static_cast<uint32_t>(i % 1500);
    GuestAddr buf = g.Alloc(len, 8);
    FillPattern(g.Host(buf, len), len, i);
    DriverBuffer b{buf, len, false};
    auto id = rp.driver.Add({&b, 1});
    ASSERT_TRUE(id);
    rp.driver.Publish();
    DescChain c;
    ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
    EXPECT_EQ(c.id, *id);
    auto bytes = ReadAll(c);
    ASSERT_EQ(bytes.size(), len);
    EXPECT_TRUE(CheckPattern(bytes.data(), len, i)) << "packet " << i;
    EXPECT_EQ(rp.device.Pop(&c), PopStatus::kEmpty);
    rp.device.Push(c.id, 0);
    rp.device.Flush();
    UsedBuffer u;
    ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
    EXPECT_EQ(u.id, *id);
    EXPECT_EQ(u.len, 0u);
    EXPECT_EQ(rp.driver.PopUsed(&u), PopStatus::kEmpty);
  }
  EXPECT_EQ(rp.device.drops().Total(), 0u);
}

TYPED_TEST(VringRoundTrip, RxDeviceWritesWhatDriverReads) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 64});
  GuestAddr bufs[64];
  for (auto& b : bufs) b = g.Alloc(2048);
  for (uint64_t i = 0; i < 500; ++i) {
    DriverBuffer b{bufs[i % 64], 2048, true};
    auto id = rp.driver.Add({&b, 1});
    ASSERT_TRUE(id);
    rp.driver.Publish();
    DescChain c;
    ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
    EXPECT_EQ(c.readable_bytes, 0u);
    EXPECT_EQ(c.writable_bytes, 2048u);
    uint32_t len = 60 + static_cast<uint32_t>(i * 7 % 1900);
    std::vector<std::byte> pkt(len);
    FillPattern(pkt.data(), len, i);
    ChainWriter w(c);
    ASSERT_EQ(w.Write(pkt.data(), len), len);
    rp.device.Push(c.id, len);
    rp.device.Flush();
    UsedBuffer u;
    ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
    EXPECT_EQ(u.id, *id);
    ASSERT_EQ(u.len, len);
    EXPECT_TRUE(CheckPattern(g.Host(bufs[i % 64], len), len, i));
  }
}

// Small ring, many laps: split indexes run past 65536, packed wrap counters flip thousands of
// times, and chains of 1..3 descriptors keep packed slots from lining up with ids.
TYPED_TEST(VringRoundTrip, IndexesRunPast65536) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 8});
  GuestAddr area = g.Alloc(8 * 3 * 64);
  uint64_t seq = 0, checked = 0;
  std::mt19937 rng(1);
  while (seq < 70000) {
    // Add as many chains as fit, each of 1..3 segments of 64 bytes.
    std::vector<std::pair<uint16_t, uint64_t>> added;
    for (;;) {
      uint32_t nseg = 1 + rng() % 3;
      if (rp.driver.num_free() < nseg) break;
      DriverBuffer b[3];
      // Buffer memory chosen by slot: in-flight chains never share it.
      uint64_t slot = seq % 8;
      for (uint32_t s = 0; s < nseg; ++s) {
        b[s] = {GuestAddr{area.value + (slot * 3 + s) * 64}, 64, false};
        FillPattern(g.Host(b[s].addr, 64), 64, seq * 4 + s);
      }
      auto id = rp.driver.Add({b, nseg});
      ASSERT_TRUE(id);
      added.push_back({*id, seq});
      ++seq;
      if (added.size() == 8) break;
    }
    rp.driver.Publish();
    std::vector<DescChain> chains(added.size() + 1);
    uint32_t got = rp.device.PopBurst(chains.data(), static_cast<uint32_t>(chains.size()));
    ASSERT_EQ(got, added.size());
    for (uint32_t k = 0; k < got; ++k) {
      ASSERT_EQ(chains[k].id, added[k].first);
      auto bytes = ReadAll(chains[k]);
      for (size_t s = 0; s < bytes.size() / 64; ++s) {
        ASSERT_TRUE(CheckPattern(bytes.data() + s * 64, 64, added[k].second * 4 + s));
        ++checked;
      }
      rp.device.Push(chains[k].id, 0);
    }
    rp.device.Flush();
    UsedBuffer u;
    for (uint32_t k = 0; k < got; ++k) {
      ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
      EXPECT_EQ(u.id, added[k].first);
    }
    ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kEmpty);
  }
  EXPECT_GT(checked, 70000u);
  EXPECT_EQ(rp.driver.num_free(), 8u);
  EXPECT_EQ(rp.device.drops().Total(), 0u);
  if constexpr (!TypeParam::kPacked) {
    EXPECT_EQ(rp.device.last_avail_idx(), seq % 65536);
  }
}

TYPED_TEST(VringRoundTrip, ChainsOfOneToMaxSegments) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 256});
  for (uint32_t n = 1; n <= kMaxChainSegments; ++n) {
    for (uint32_t readable = 0; readable <= n; readable += std::max(1u, n / 4)) {
      std::vector<DriverBuffer> bufs(n);
      uint64_t expect_read = 0, expect_write = 0;
      for (uint32_t s = 0; s < n; ++s) {
        uint32_t len = 1 + (s * 37 + n) % 200;
        bufs[s] = {g.Alloc(len, 1), len, s >= readable};
        if (s < readable) {
          FillPattern(g.Host(bufs[s].addr, len), len, n * 1000 + s);
          expect_read += len;
        } else {
          expect_write += len;
        }
      }
      auto id = rp.driver.Add(bufs);
      ASSERT_TRUE(id);
      rp.driver.Publish();
      DescChain c;
      ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk) << n << " segments";
      EXPECT_EQ(c.num_segments, n);
      EXPECT_EQ(c.num_readable, readable);
      EXPECT_EQ(c.readable_bytes, expect_read);
      EXPECT_EQ(c.writable_bytes, expect_write);
      for (uint32_t s = 0; s < readable; ++s) {
        EXPECT_TRUE(CheckPattern(c.segs[s].data, c.segs[s].len, n * 1000 + s));
      }
      std::vector<std::byte> fill(expect_write, std::byte{0xee});
      ChainWriter w(c);
      EXPECT_EQ(w.Write(fill.data(), fill.size()), expect_write);
      rp.device.Push(c.id, static_cast<uint32_t>(expect_write));
      rp.device.Flush();
      UsedBuffer u;
      ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
      EXPECT_EQ(u.id, *id);
      EXPECT_EQ(u.len, expect_write);
      for (uint32_t s = readable; s < n; ++s) {
        EXPECT_EQ(*g.Host(bufs[s].addr), std::byte{0xee});
      }
    }
  }
}

TYPED_TEST(VringRoundTrip, IndirectTables) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 16, .features = Bit(kFRingIndirectDesc), .max_indirect = 16});
  for (uint32_t round = 0; round < 100; ++round) {
    uint32_t n = 1 + round % 16;
    std::vector<DriverBuffer> bufs(n);
    for (uint32_t s = 0; s < n; ++s) {
      bufs[s] = {g.Alloc(32, 1), 32, s + 1 == n};
      FillPattern(g.Host(bufs[s].addr, 32), 32, round * 100 + s);
    }
    auto id = rp.driver.Add(bufs, /*indirect=*/true);
    ASSERT_TRUE(id);
    EXPECT_EQ(rp.driver.num_free(), 15u);  // one ring slot for the whole chain
    rp.driver.Publish();
    DescChain c;
    ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
    EXPECT_EQ(c.num_segments, n);
    EXPECT_EQ(c.num_readable, n - 1);
    EXPECT_EQ(c.num_descs, 1);
    for (uint32_t s = 0; s + 1 < n; ++s) EXPECT_TRUE(CheckPattern(c.segs[s].data, 32, round * 100 + s));
    rp.device.Push(c.id, 32);
    rp.device.Flush();
    UsedBuffer u;
    ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
    EXPECT_EQ(u.id, *id);
    EXPECT_EQ(u.len, 32u);
  }
}

TYPED_TEST(VringRoundTrip, FullRingOutOfOrderCompletion) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 32});
  GuestAddr area = g.Alloc(32 * 16);
  for (int round = 0; round < 50; ++round) {
    std::vector<uint16_t> ids;
    for (uint32_t i = 0; i < 32; ++i) {
      DriverBuffer b{GuestAddr{area.value + i * 16}, 16, true};
      auto id = rp.driver.Add({&b, 1});
      ASSERT_TRUE(id);
      ids.push_back(*id);
    }
    DriverBuffer extra{area, 16, true};
    EXPECT_FALSE(rp.driver.Add({&extra, 1}));  // full
    rp.driver.Publish();
    DescChain chains[33];
    ASSERT_EQ(rp.device.PopBurst(chains, 33), 32u);
    // Complete in reverse order, lengths by position.
    for (int k = 31; k >= 0; --k) rp.device.Push(chains[k].id, static_cast<uint32_t>(k % 16));
    rp.device.Flush();
    UsedBuffer u;
    for (int k = 31; k >= 0; --k) {
      ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
      EXPECT_EQ(u.id, ids[k]);
      EXPECT_EQ(u.len, static_cast<uint32_t>(k % 16));
    }
    EXPECT_EQ(rp.driver.num_free(), 32u);
  }
}

// Notification suppression, both directions, with and without EVENT_IDX.
template <typename L>
void CheckNotifications(uint64_t features) {
  FakeGuest g;
  RingPair<L> rp(g, {.size = 16, .features = features});
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, true};
  auto add_one = [&] {
    ASSERT_TRUE(rp.driver.Add({&b, 1}));
    rp.driver.Publish();
  };
  auto complete_all = [&] {
    DescChain c;
    while (rp.device.Pop(&c) == PopStatus::kOk) rp.device.Push(c.id, 1);
    return rp.device.Flush();
  };
  auto reclaim = [&] {
    UsedBuffer u;
    while (rp.driver.PopUsed(&u) == PopStatus::kOk) {
    }
  };

  // Kicks enabled by default: the first add wants a kick.
  add_one();
  EXPECT_TRUE(rp.driver.NeedKick());
  // Calls enabled by default: completing wants a call.
  EXPECT_TRUE(complete_all());
  reclaim();

  // Device polls: kicks off. The driver must not kick.
  rp.device.DisableKicks();
  add_one();
  EXPECT_FALSE(rp.driver.NeedKick());
  // Going back to sleep finds the pending chain.
  EXPECT_TRUE(rp.device.EnableKicks());
  complete_all();
  reclaim();
  EXPECT_FALSE(rp.device.EnableKicks());
  add_one();
  EXPECT_TRUE(rp.driver.NeedKick());
  EXPECT_FALSE(rp.driver.NeedKick());  // nothing new since

  // Driver polls: calls off. The device must not call.
  rp.driver.DisableCalls();
  EXPECT_FALSE(complete_all());
  EXPECT_TRUE(rp.driver.EnableCalls());  // used buffers are pending
  reclaim();
  EXPECT_FALSE(rp.driver.EnableCalls());
  add_one();
  EXPECT_TRUE(complete_all());
  reclaim();
}

TYPED_TEST(VringRoundTrip, NotificationSuppressionFlags) { CheckNotifications<TypeParam>(0); }
TYPED_TEST(VringRoundTrip, NotificationSuppressionEventIdx) {
  CheckNotifications<TypeParam>(Bit(kFRingEventIdx));
}

TYPED_TEST(VringRoundTrip, ReinitRestoresABrokenQueue) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 8});
  // Break it: for split, a head out of range; for packed, an id out of range.
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, false};
  ASSERT_TRUE(rp.driver.Add({&b, 1}));
  if constexpr (TypeParam::kPacked) {
    reinterpret_cast<VirtqPackedDesc*>(g.Host(rp.ring[0], 16))[0].id = Le16::Of(99);
  } else {
    AvailRing(reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6)))[0] = Le16::Of(99);
  }
  rp.driver.Publish();
  DescChain c;
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kBroken);
  EXPECT_TRUE(rp.device.broken());
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kBroken);
  EXPECT_EQ(rp.device.drops().Get(DropReason::kQueueBroken), 1u);
  // The peer resets the queue: both sides start over on the same rings.
  rp.Reset();
  EXPECT_FALSE(rp.device.broken());
  ASSERT_TRUE(rp.driver.Add({&b, 1}));
  rp.driver.Publish();
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kOk);
}

TYPED_TEST(VringRoundTrip, RewindGivesBackUnusedChains) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 8});
  GuestAddr buf = g.Alloc(64);
  std::vector<uint16_t> ids;
  for (int i = 0; i < 4; ++i) {
    DriverBuffer b[2] = {{buf, 32, false}, {GuestAddr{buf.value + 32}, 32, false}};
    auto id = rp.driver.Add({b, static_cast<size_t>(1 + i % 2)});
    ASSERT_TRUE(id);
    ids.push_back(*id);
  }
  rp.driver.Publish();
  DescChain c[4];
  ASSERT_EQ(rp.device.PopBurst(c, 4), 4u);
  // Use the first, give back the other three; they come again, in order.
  ASSERT_TRUE(rp.device.Rewind({c + 1, 3}));
  rp.device.Push(c[0].id, 0);
  DescChain again[4];
  ASSERT_EQ(rp.device.PopBurst(again, 4), 3u);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(again[k].id, ids[k + 1]);
  for (int k = 0; k < 3; ++k) rp.device.Push(again[k].id, 0);
  rp.device.Flush();
  UsedBuffer u;
  for (int k = 0; k < 4; ++k) {
    ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
    EXPECT_EQ(u.id, ids[k]);
  }
  EXPECT_EQ(rp.device.drops().Total(), 0u);
}

TYPED_TEST(VringRoundTrip, RewindRefusedAfterABadChainWasCompleted) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 8});
  GuestAddr buf = g.Alloc(64);
  DriverBuffer good{buf, 64, false}, bad{GuestAddr{0x7fff0000}, 64, false};
  ASSERT_TRUE(rp.driver.Add({&good, 1}));
  ASSERT_TRUE(rp.driver.Add({&bad, 1}));
  ASSERT_TRUE(rp.driver.Add({&good, 1}));
  rp.driver.Publish();
  DescChain c[3];
  ASSERT_EQ(rp.device.PopBurst(c, 3), 2u);  // the bad one in between was completed empty
  EXPECT_FALSE(rp.device.Rewind({c, 2}));
  EXPECT_TRUE(rp.device.Rewind({c + 1, 1}));  // popped after the bad one: fine
  DescChain again;
  ASSERT_EQ(rp.device.Pop(&again), PopStatus::kOk);
  EXPECT_EQ(again.id, c[1].id);
}

// Live upgrade: the driver's shadow saved mid-stream (chains in flight, some completed and not
// yet popped) and restored by a second driver over the same ring memory, which goes on
// exactly there; a state that does not hold together is refused.
TYPED_TEST(VringRoundTrip, HandoverMidStreamGoesOnExactly) {
  FakeGuest g;
  RingPair<TypeParam> rp(g, {.size = 128, .max_indirect = 0});
  std::vector<uint16_t> in_flight;  // ids added, in order
  auto add = [&](auto& driver, uint64_t i) {
    std::vector<DriverBuffer> b;
    for (uint64_t k = 0; k <= i % 3; ++k) b.push_back({g.Alloc(64, 8), 64, k == 2});
    auto id = driver.Add(b);
    if (id) in_flight.push_back(*id);
    return id.has_value();
  };
  for (uint64_t i = 0; i < 40; ++i) ASSERT_TRUE(add(rp.driver, i));
  rp.driver.Publish();
  DescChain c;
  for (int i = 0; i < 25; ++i) ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
  // The device completes the first 20, in order; the driver pops 10 of them.
  for (int i = 0; i < 20; ++i) rp.device.Push(in_flight[i], 0);
  rp.device.Flush();
  UsedBuffer u;
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
    ASSERT_EQ(u.id, in_flight[i]);
  }
  HandoverRecord rec;
  ASSERT_TRUE(rp.driver.Save(&rec, "r.").has_value());

  DriverRingConfig dc;
  dc.size = 128;
  for (int i = 0; i < 3; ++i) dc.ring[i] = rp.ring[i];
  typename TypeParam::Driver next;
  ASSERT_TRUE(next.Init(g.mem(), dc, /*clear=*/false).has_value());
  EXPECT_TRUE(next.broken());  // nothing is used before Restore
  auto restored = next.Restore(rec, "r.", 64);
  ASSERT_TRUE(restored.has_value()) << restored.error().message();
  EXPECT_EQ(next.in_flight(), 30u);
  EXPECT_EQ(next.num_free(), rp.driver.num_free());
  // The 10 completed ones not popped yet, then everything else, in order, each once.
  size_t popped = 10;
  for (; popped < 20; ++popped) {
    ASSERT_EQ(next.PopUsed(&u), PopStatus::kOk);
    ASSERT_EQ(u.id, in_flight[popped]);
  }
  EXPECT_EQ(next.PopUsed(&u), PopStatus::kEmpty);
  for (uint64_t i = 40; add(next, i); ++i) {
  }
  next.Publish();
  while (rp.device.Pop(&c) == PopStatus::kOk) {
  }
  for (size_t i = 20; i < in_flight.size(); ++i) rp.device.Push(in_flight[i], 0);
  rp.device.Flush();
  for (; popped < in_flight.size(); ++popped) {
    ASSERT_EQ(next.PopUsed(&u), PopStatus::kOk) << popped;
    ASSERT_EQ(u.id, in_flight[popped]);
  }
  EXPECT_FALSE(next.broken());
  EXPECT_EQ(next.in_flight(), 0u);
  EXPECT_EQ(next.num_free(), 128u);

  // Refused: one more in flight than the chains say; a list cut short.
  auto refused = [&](const std::string& key, const std::string& value) {
    HandoverRecord bad;
    bad.mutable_values() = rec.values();
    bad.mutable_values()[key] = value;
    typename TypeParam::Driver d;
    EXPECT_TRUE(d.Init(g.mem(), dc, false).has_value());
    auto r = d.Restore(bad, "r.", 64);
    EXPECT_FALSE(r.has_value()) << key << "=" << value;
    EXPECT_TRUE(d.broken());
  };
  refused("r.in_flight", std::to_string(std::stoul(rec.values().at("r.in_flight")) + 1));
  refused("r.writable", "0,0");
  refused("r.num_free", "128");
  {  // a writable size above the bound the caller gives
    typename TypeParam::Driver d;
    ASSERT_TRUE(d.Init(g.mem(), dc, false).has_value());
    EXPECT_FALSE(d.Restore(rec, "r.", 63).has_value());
  }
}

}  // namespace
}  // namespace nicmux::virtio
