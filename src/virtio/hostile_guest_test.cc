// The guest is an adversary (DESIGN.md "Errors", kind 1): every malformed ring the foundation
// issue lists, written raw into guest memory, ends in a counted error and either the chain
// completed with length 0 (the queue goes on) or the queue broken until reset — never a crash
// or an access outside the guest's regions (FakeGuest puts guard pages around every region, so
// such an access would fault here).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <iterator>
#include <random>
#include <vector>

#include "tests/support/fake_guest.h"
#include "virtio/ring_access.h"

namespace nicmux::virtio {
namespace {

using nicmux::testing::FakeGuest;
using nicmux::testing::PackedLayout;
using nicmux::testing::RingOptions;
using nicmux::testing::RingPair;
using nicmux::testing::SplitLayout;

constexpr uint64_t kRegion0 = 0x100000, kRegion0Size = 1 << 20;
constexpr uint64_t kRegion1 = 0x400000, kRegion1Size = 1 << 16;
constexpr uint32_t kSize = 8;

// ------------------------------------------------------------------------- split rings

class SplitHostile : public ::testing::Test {
 protected:
  explicit SplitHostile(RingOptions o = {.size = kSize, .features = Bit(kFRingIndirectDesc)})
      : g_({{kRegion0, kRegion0Size}, {kRegion1, kRegion1Size}}), rp_(g_, o) {
    desc_ = reinterpret_cast<VirtqDesc*>(g_.Host(rp_.ring[0], 16 * kSize));
    avail_ = reinterpret_cast<VirtqAvailHeader*>(g_.Host(rp_.ring[1], 6));
    used_ = reinterpret_cast<VirtqUsedHeader*>(g_.Host(rp_.ring[2], 6));
    good_buf_ = g_.Alloc(64);
  }

  static void Put(VirtqDesc* table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
                  uint16_t next = 0) {
    table[i] = {Le64::Of(addr), Le32::Of(len), Le16::Of(flags), Le16::Of(next)};
  }
  void Put(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    Put(desc_, i, addr, len, flags, next);
  }
  void Offer(uint16_t head) {
    AvailRing(avail_)[avail_idx_ % kSize] = Le16::Of(head);
    StoreRelease(avail_->idx, ++avail_idx_);
  }
  VirtqDesc* Table(GuestAddr at, uint32_t n) {
    return reinterpret_cast<VirtqDesc*>(g_.Host(at, 16ull * n));
  }

  // The chain at head was completed with length 0 under `why`, and the queue still works.
  void ExpectCompletedEmpty(uint16_t head, DropReason why) {
    DescChain c;
    EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kEmpty);
    EXPECT_EQ(rp_.device.drops().Get(why), 1u) << DropReasonName(why);
    EXPECT_FALSE(rp_.device.broken());
    rp_.device.Flush();
    ASSERT_EQ(LoadAcquire(used_->idx), ++used_idx_);
    EXPECT_EQ(UsedRing(used_)[(used_idx_ - 1) % kSize].id.get(), head);
    EXPECT_EQ(UsedRing(used_)[(used_idx_ - 1) % kSize].len.get(), 0u);
    // A good chain afterwards goes through.
    uint16_t good = (head + 5) % kSize;
    Put(good, good_buf_.value, 64, 0);
    Offer(good);
    ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
    EXPECT_EQ(c.id, good);
    EXPECT_EQ(c.readable_bytes, 64u);
    rp_.device.Push(c.id, 0);
    rp_.device.Flush();
    ++used_idx_;
  }

  void ExpectBroken(DropReason why) {
    DescChain c;
    EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kBroken);
    EXPECT_TRUE(rp_.device.broken());
    EXPECT_EQ(rp_.device.drops().Get(why), 1u) << DropReasonName(why);
    EXPECT_EQ(rp_.device.drops().Get(DropReason::kQueueBroken), 1u);
    // Stays broken, even for a good chain, until reset.
    Put(3, good_buf_.value, 64, 0);
    Offer(3);
    EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kBroken);
    EXPECT_FALSE(rp_.device.EnableKicks());
  }

  FakeGuest g_;
  RingPair<SplitLayout> rp_;
  VirtqDesc* desc_;
  VirtqAvailHeader* avail_;
  VirtqUsedHeader* used_;
  GuestAddr good_buf_;
  uint16_t avail_idx_ = 0;
  uint16_t used_idx_ = 0;
};

TEST_F(SplitHostile, DescOutsideEveryRegion) {
  Put(0, 0x900000, 64, 0);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kDescOutsideMemory);
}

TEST_F(SplitHostile, DescCrossesRegionEnd) {
  Put(1, kRegion1 + kRegion1Size - 8, 16, 0);
  Offer(1);
  ExpectCompletedEmpty(1, DropReason::kDescOutsideMemory);
}

TEST_F(SplitHostile, DescStartsInRegionAndRunsIntoTheNext) {
  // Region 0 ends at 0x200000; nothing is mapped between it and region 1.
  Put(1, kRegion0 + kRegion0Size - 4, 0x300000, 0);
  Offer(1);
  ExpectCompletedEmpty(1, DropReason::kDescOutsideMemory);
}

TEST_F(SplitHostile, DescAddrPlusLenWraps) {
  Put(2, UINT64_MAX - 3, 16, 0);
  Offer(2);
  ExpectCompletedEmpty(2, DropReason::kDescOutsideMemory);
}

TEST_F(SplitHostile, NextOutOfRange) {
  Put(0, good_buf_.value, 8, kDescFNext, kSize);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kDescNextOutOfRange);
}

// A loop is a bad chain with a valid head: completed empty (the walk that finds it is
// bounded), not a broken queue.
TEST_F(SplitHostile, LoopByNext) {
  Put(0, good_buf_.value, 8, kDescFNext, 1);
  Put(1, good_buf_.value, 8, kDescFNext, 2);
  Put(2, good_buf_.value, 8, kDescFNext, 0);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kDescLoop);
}

TEST_F(SplitHostile, SelfReference) {
  Put(4, good_buf_.value, 8, kDescFNext, 4);
  Offer(4);
  ExpectCompletedEmpty(4, DropReason::kDescLoop);
}

TEST_F(SplitHostile, LoopThroughIndirectTable) {
  GuestAddr t = g_.Alloc(16 * 4, 16);
  Put(Table(t, 4), 0, good_buf_.value, 8, kDescFNext, 1);
  Put(Table(t, 4), 1, good_buf_.value, 8, kDescFNext, 2);
  Put(Table(t, 4), 2, good_buf_.value, 8, kDescFNext, 0);
  Put(0, t.value, 16 * 4, kDescFIndirect);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kDescLoop);
}

TEST_F(SplitHostile, IndirectInsideIndirect) {
  GuestAddr inner = g_.Alloc(16, 16), outer = g_.Alloc(32, 16);
  Put(Table(inner, 1), 0, good_buf_.value, 8, 0);
  Put(Table(outer, 2), 0, good_buf_.value, 8, kDescFNext, 1);
  Put(Table(outer, 2), 1, inner.value, 16, kDescFIndirect);
  Put(0, outer.value, 32, kDescFIndirect);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kIndirectNested);
}

TEST_F(SplitHostile, IndirectLengthZero) {
  Put(0, g_.Alloc(16, 16).value, 0, kDescFIndirect);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kIndirectBadLen);
}

TEST_F(SplitHostile, IndirectLengthNotMultipleOf16) {
  Put(0, g_.Alloc(64, 16).value, 40, kDescFIndirect);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kIndirectBadLen);
}

TEST_F(SplitHostile, IndirectTableOutsideMemory) {
  Put(0, kRegion1 + kRegion1Size - 16, 32, kDescFIndirect);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kIndirectOutsideMemory);
}

TEST_F(SplitHostile, IndirectWithNext) {
  GuestAddr t = g_.Alloc(16, 16);
  Put(Table(t, 1), 0, good_buf_.value, 8, 0);
  Put(0, t.value, 16, kDescFIndirect | kDescFNext, 1);
  Put(1, good_buf_.value, 8, 0);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kIndirectWithNext);
}

TEST_F(SplitHostile, ChainLongerThanQueueSize) {
  GuestAddr t = g_.Alloc(16 * (kSize + 1), 16);
  for (uint16_t i = 0; i <= kSize; ++i) {
    Put(Table(t, kSize + 1), i, good_buf_.value, 8, i < kSize ? kDescFNext : 0, i + 1);
  }
  Put(0, t.value, 16 * (kSize + 1), kDescFIndirect);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kChainTooLong);
}

TEST_F(SplitHostile, AvailIdxJumpsPastQueueSize) {
  StoreRelease(avail_->idx, kSize + 1);
  avail_idx_ = kSize + 1;
  ExpectBroken(DropReason::kAvailIdxJump);
}

TEST_F(SplitHostile, HeadOutOfRange) {
  Offer(kSize);
  ExpectBroken(DropReason::kHeadOutOfRange);
}

TEST_F(SplitHostile, ReadableAfterWritable) {
  Put(0, good_buf_.value, 8, kDescFWrite | kDescFNext, 1);
  Put(1, good_buf_.value, 8, 0);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kReadableAfterWritable);
}

class SplitHostileRx : public SplitHostile {
 protected:
  SplitHostileRx() : SplitHostile({.size = kSize, .policy = ChainPolicy::kWriteOnly}) {}
};

TEST_F(SplitHostileRx, ReadableWhereWritableNeeded) {
  Put(0, good_buf_.value, 8, 0);
  Offer(0);
  DescChain c;
  EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kEmpty);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kWritableExpected), 1u);
  Put(1, good_buf_.value, 8, kDescFWrite);
  Offer(1);
  EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(c.writable_bytes, 8u);
}

TEST_F(SplitHostileRx, IndirectWithoutTheFeature) {
  GuestAddr t = g_.Alloc(16, 16);
  Put(Table(t, 1), 0, good_buf_.value, 8, kDescFWrite);
  Put(0, t.value, 16, kDescFIndirect);
  Offer(0);
  DescChain c;
  EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kEmpty);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kIndirectNotNegotiated), 1u);
}

class SplitHostileTx : public SplitHostile {
 protected:
  SplitHostileTx() : SplitHostile({.size = kSize, .policy = ChainPolicy::kReadOnly}) {}
};

TEST_F(SplitHostileTx, WritableWhereReadableNeeded) {
  Put(0, good_buf_.value, 8, kDescFWrite);
  Offer(0);
  ExpectCompletedEmpty(0, DropReason::kReadableExpected);
}

TEST(SplitHostileBig, ChainOfMoreThan2To32Bytes) {
  // A sparse 1 GiB region: five descriptors of 1 GiB each over the same memory.
  constexpr uint64_t kGiB = 1ull << 30;
  FakeGuest g({{0, kGiB}});
  RingPair<SplitLayout> rp(g, {.size = 8});
  auto* desc = reinterpret_cast<VirtqDesc*>(g.Host(rp.ring[0], 16 * 8));
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6));
  for (uint16_t i = 0; i < 5; ++i) {
    desc[i] = {Le64::Of(0), Le32::Of(static_cast<uint32_t>(kGiB)), Le16::Of(i < 4 ? kDescFNext : 0),
               Le16::Of(i + 1)};
  }
  AvailRing(avail)[0] = Le16::Of(0);
  StoreRelease(avail->idx, 1);
  DescChain c;
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kEmpty);
  EXPECT_EQ(rp.device.drops().Get(DropReason::kChainTooManyBytes), 1u);
  // Exactly 4 GiB (2^32) is allowed.
  desc[3].flags = Le16::Of(0);
  AvailRing(avail)[1] = Le16::Of(0);
  StoreRelease(avail->idx, 2);
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(c.readable_bytes, 4 * kGiB);
}

TEST(SplitHostileSetup, RingOutsideMemoryOrMisalignedIsRefused) {
  FakeGuest g({{kRegion0, kRegion0Size}});
  GuestAddr d = g.Alloc(16 * 8, 16), a = g.Alloc(64, 2), u = g.Alloc(128, 4);
  auto uva = [&](GuestAddr x) { return g.Uva(x); };
  EXPECT_TRUE(MapSplitRing(g.mem(), RingAddrSpace::kFrontendVirtual, uva(d), uva(a), uva(u), 8));
  auto outside = MapSplitRing(g.mem(), RingAddrSpace::kFrontendVirtual, 0x1000, uva(a), uva(u), 8);
  ASSERT_FALSE(outside);
  EXPECT_NE(outside.error().message().find("descriptor table"), std::string::npos);
  auto misaligned = MapSplitRing(g.mem(), RingAddrSpace::kFrontendVirtual, uva(d), uva(a), uva(u) + 2, 8);
  ASSERT_FALSE(misaligned);
  EXPECT_NE(misaligned.error().message().find("used ring"), std::string::npos);
  // The used ring's end runs past the region.
  uint64_t end = g.Uva(GuestAddr{kRegion0}) + kRegion0Size;
  EXPECT_FALSE(MapSplitRing(g.mem(), RingAddrSpace::kFrontendVirtual, uva(d), uva(a), end - 64, 8));
  auto npot = MapSplitRing(g.mem(), RingAddrSpace::kFrontendVirtual, uva(d), uva(a), uva(u), 6);
  ASSERT_FALSE(npot);
  EXPECT_NE(npot.error().message().find("not a power of two"), std::string::npos);
  EXPECT_FALSE(CheckQueueSize(65536, false));
  EXPECT_FALSE(CheckQueueSize(0, true));
  EXPECT_TRUE(CheckQueueSize(32768, false));
  EXPECT_TRUE(CheckQueueSize(1000, true));
}

TEST(SplitHostileSetup, UsedIdxFarBehindLastAvailIsRefused) {
  FakeGuest g({{kRegion0, kRegion0Size}});
  RingPair<SplitLayout> rp(g, {.size = 8});
  auto areas = MapSplitRing(g.mem(), RingAddrSpace::kGuestPhysical, rp.ring[0].value,
                            rp.ring[1].value, rp.ring[2].value, 8);
  ASSERT_TRUE(areas);
  SplitVring v;
  EXPECT_TRUE(v.Init({8, 0, ChainPolicy::kAny}, *areas, &g.mem(), 8));
  auto r = v.Init({8, 0, ChainPolicy::kAny}, *areas, &g.mem(), 9);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("used idx"), std::string::npos);
}

TEST(SplitHostileIsolation, ABrokenQueueDoesNotDisturbAnother) {
  FakeGuest g({{kRegion0, kRegion0Size}});
  RingPair<SplitLayout> bad(g, {.size = 8}), good(g, {.size = 8});
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(bad.ring[1], 6));
  StoreRelease(avail->idx, 100);
  DescChain c;
  EXPECT_EQ(bad.device.Pop(&c), PopStatus::kBroken);
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, false};
  ASSERT_TRUE(good.driver.Add({&b, 1}));
  good.driver.Publish();
  EXPECT_EQ(good.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(good.device.drops().Total(), 0u);
}

// ------------------------------------------------------------------------- packed rings

class PackedHostile : public ::testing::Test {
 protected:
  explicit PackedHostile(RingOptions o = {.size = kSize, .features = Bit(kFRingIndirectDesc)})
      : g_({{kRegion0, kRegion0Size}, {kRegion1, kRegion1Size}}), rp_(g_, o) {
    desc_ = reinterpret_cast<VirtqPackedDesc*>(g_.Host(rp_.ring[0], 16 * kSize));
    good_buf_ = g_.Alloc(64);
  }

  // Writes the descriptor at slot as available in the first lap (wrap counter 1): AVAIL set,
  // USED clear; flags stored last.
  void Put(uint16_t slot, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags) {
    desc_[slot].addr = Le64::Of(addr);
    desc_[slot].len = Le32::Of(len);
    desc_[slot].id = Le16::Of(id);
    StoreRelease(desc_[slot].flags, static_cast<uint16_t>(flags | kDescFAvail));
  }
  static void PutTable(VirtqPackedDesc* t, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags) {
    t[i] = {Le64::Of(addr), Le32::Of(len), Le16::Of(0), Le16::Of(flags)};
  }
  VirtqPackedDesc* Table(GuestAddr at, uint32_t n) {
    return reinterpret_cast<VirtqPackedDesc*>(g_.Host(at, 16ull * n));
  }

  void ExpectCompletedEmpty(uint16_t slot, uint16_t id, DropReason why) {
    DescChain c;
    EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kEmpty);
    EXPECT_EQ(rp_.device.drops().Get(why), 1u) << DropReasonName(why);
    EXPECT_FALSE(rp_.device.broken());
    rp_.device.Flush();
    const uint16_t flags = LoadAcquire(desc_[slot].flags);
    EXPECT_EQ(flags & (kDescFAvail | kDescFUsed), kDescFAvail | kDescFUsed);  // used, lap 1
    EXPECT_EQ(desc_[slot].id.get(), id);
    EXPECT_EQ(desc_[slot].len.get(), 0u);
  }

  void ExpectBroken(DropReason why) {
    DescChain c;
    EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kBroken);
    EXPECT_TRUE(rp_.device.broken());
    EXPECT_EQ(rp_.device.drops().Get(why), 1u) << DropReasonName(why);
    EXPECT_EQ(rp_.device.drops().Get(DropReason::kQueueBroken), 1u);
    EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kBroken);
  }

  FakeGuest g_;
  RingPair<PackedLayout> rp_;
  VirtqPackedDesc* desc_;
  GuestAddr good_buf_;
};

TEST_F(PackedHostile, DescOutsideEveryRegionThenAGoodChain) {
  Put(0, 0x900000, 64, 2, 0);
  ExpectCompletedEmpty(0, 2, DropReason::kDescOutsideMemory);
  Put(1, good_buf_.value, 64, 2, 0);  // id 2 is free again
  DescChain c;
  ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(c.id, 2);
}

TEST_F(PackedHostile, DescCrossesRegionEnd) {
  Put(0, kRegion1 + kRegion1Size - 8, 16, 0, 0);
  ExpectCompletedEmpty(0, 0, DropReason::kDescOutsideMemory);
}

TEST_F(PackedHostile, DescAddrPlusLenWraps) {
  Put(0, UINT64_MAX - 3, 16, 0, 0);
  ExpectCompletedEmpty(0, 0, DropReason::kDescOutsideMemory);
}

TEST_F(PackedHostile, NextDescriptorNotAvailable) {
  // Slot 1 left as it is (never made available: flags 0).
  Put(0, good_buf_.value, 8, 0, kDescFNext);
  ExpectBroken(DropReason::kPackedWrapInconsistent);
}

TEST_F(PackedHostile, NextDescriptorWithBothWrapBitsSet) {
  desc_[1].flags = Le16::Of(kDescFAvail | kDescFUsed);  // looks used, not available
  Put(0, good_buf_.value, 8, 0, kDescFNext);
  ExpectBroken(DropReason::kPackedWrapInconsistent);
}

TEST_F(PackedHostile, BufferIdOutOfRange) {
  Put(0, good_buf_.value, 8, kSize, 0);
  ExpectBroken(DropReason::kPackedIdOutOfRange);
}

TEST_F(PackedHostile, BufferIdReusedWhileInFlight) {
  Put(0, good_buf_.value, 8, 3, 0);
  DescChain c;
  ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
  Put(1, good_buf_.value, 8, 3, 0);
  ExpectBroken(DropReason::kPackedIdInFlight);
}

TEST_F(PackedHostile, EverySlotChained) {
  // After the last slot the chain comes back to slot 0 in the next lap, where the wrap bits
  // no longer say "available": the walk ends there instead of going round for ever.
  for (uint16_t s = 0; s < kSize; ++s) Put(s, good_buf_.value, 8, 0, kDescFNext);
  ExpectBroken(DropReason::kPackedWrapInconsistent);
}

TEST_F(PackedHostile, IndirectInsideIndirect) {
  GuestAddr inner = g_.Alloc(16, 16), outer = g_.Alloc(32, 16);
  PutTable(Table(inner, 1), 0, good_buf_.value, 8, 0);
  PutTable(Table(outer, 2), 0, good_buf_.value, 8, 0);
  PutTable(Table(outer, 2), 1, inner.value, 16, kDescFIndirect);
  Put(0, outer.value, 32, 1, kDescFIndirect);
  ExpectCompletedEmpty(0, 1, DropReason::kIndirectNested);
}

TEST_F(PackedHostile, IndirectBadLength) {
  Put(0, g_.Alloc(64, 16).value, 24, 1, kDescFIndirect);
  ExpectCompletedEmpty(0, 1, DropReason::kIndirectBadLen);
}

TEST_F(PackedHostile, IndirectLengthZero) {
  Put(0, g_.Alloc(64, 16).value, 0, 1, kDescFIndirect);
  ExpectCompletedEmpty(0, 1, DropReason::kIndirectBadLen);
}

TEST_F(PackedHostile, IndirectWithNext) {
  GuestAddr t = g_.Alloc(16, 16);
  PutTable(Table(t, 1), 0, good_buf_.value, 8, 0);
  Put(1, good_buf_.value, 8, 4, 0);
  Put(0, t.value, 16, 4, kDescFIndirect | kDescFNext);
  ExpectCompletedEmpty(0, 4, DropReason::kIndirectWithNext);
}

TEST_F(PackedHostile, IndirectTableLongerThanQueue) {
  GuestAddr t = g_.Alloc(16 * (kSize + 1), 16);
  for (uint16_t i = 0; i <= kSize; ++i) PutTable(Table(t, kSize + 1), i, good_buf_.value, 8, 0);
  Put(0, t.value, 16 * (kSize + 1), 0, kDescFIndirect);
  ExpectCompletedEmpty(0, 0, DropReason::kChainTooLong);
}

TEST_F(PackedHostile, ReadableAfterWritable) {
  Put(1, good_buf_.value, 8, 5, 0);
  Put(0, good_buf_.value, 8, 5, kDescFWrite | kDescFNext);
  ExpectCompletedEmpty(0, 5, DropReason::kReadableAfterWritable);
}

class PackedHostileRx : public PackedHostile {
 protected:
  PackedHostileRx() : PackedHostile({.size = kSize, .policy = ChainPolicy::kWriteOnly}) {}
};

TEST_F(PackedHostileRx, ReadableWhereWritableNeeded) {
  Put(0, good_buf_.value, 8, 0, 0);
  ExpectCompletedEmpty(0, 0, DropReason::kWritableExpected);
}

TEST_F(PackedHostileRx, IndirectWithoutTheFeature) {
  GuestAddr t = g_.Alloc(16, 16);
  PutTable(Table(t, 1), 0, good_buf_.value, 8, kDescFWrite);
  Put(0, t.value, 16, 0, kDescFIndirect);
  ExpectCompletedEmpty(0, 0, DropReason::kIndirectNotNegotiated);
}

class PackedHostileTx : public PackedHostile {
 protected:
  PackedHostileTx() : PackedHostile({.size = kSize, .policy = ChainPolicy::kReadOnly}) {}
};

TEST_F(PackedHostileTx, WritableWhereReadableNeeded) {
  Put(0, good_buf_.value, 8, 0, kDescFWrite);
  ExpectCompletedEmpty(0, 0, DropReason::kReadableExpected);
}

TEST_F(PackedHostileTx, IndirectEntriesMarkedWritableAreReadInATransmitQueue) {
  // DPDK 22.11's packed indirect tables carry WRITE on the header entry of a transmitted
  // packet; the device only reads in this queue, so the chain is taken as readable.
  ASSERT_TRUE(rp_.device.Init({kSize, Bit(kFRingIndirectDesc), ChainPolicy::kReadOnly},
                  *MapPackedRing(g_.mem(), RingAddrSpace::kGuestPhysical, rp_.ring[0].value,
                                 rp_.ring[1].value, rp_.ring[2].value, kSize),
                  &g_.mem()));
  GuestAddr t = g_.Alloc(32, 16);
  PutTable(Table(t, 2), 0, good_buf_.value, 12, kDescFWrite);
  PutTable(Table(t, 2), 1, good_buf_.value + 12, 52, 0);
  Put(0, t.value, 32, 0, kDescFIndirect);
  DescChain c;
  ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(c.readable_bytes, 64u);
  EXPECT_EQ(c.writable_bytes, 0u);
}

TEST_F(PackedHostileRx, IndirectEntryNotWritableInAReceiveQueue) {
  ASSERT_TRUE(rp_.device.Init({kSize, Bit(kFRingIndirectDesc), ChainPolicy::kWriteOnly},
                  *MapPackedRing(g_.mem(), RingAddrSpace::kGuestPhysical, rp_.ring[0].value,
                                 rp_.ring[1].value, rp_.ring[2].value, kSize),
                  &g_.mem()));
  GuestAddr t = g_.Alloc(16, 16);
  PutTable(Table(t, 1), 0, good_buf_.value, 64, 0);
  Put(0, t.value, 16, 0, kDescFIndirect);
  ExpectCompletedEmpty(0, 0, DropReason::kWritableExpected);
}

// ------------------------------------- PopBurst's batch path: four descriptors per cache line

class PackedBatch : public PackedHostile {
 protected:
  // Writes the descriptor at slot as available in the lap whose wrap counter is `wrap`.
  void PutLap(uint16_t slot, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags, bool wrap) {
    desc_[slot].addr = Le64::Of(addr);
    desc_[slot].len = Le32::Of(len);
    desc_[slot].id = Le16::Of(id);
    StoreRelease(desc_[slot].flags, static_cast<uint16_t>(flags | (wrap ? kDescFAvail : kDescFUsed)));
  }
  uint64_t batched() const { return rp_.device.chains_batched(); }
};

TEST_F(PackedBatch, FourPlainChainsAreTakenAsOneBatchInRingOrder) {
  for (uint16_t s = 0; s < 4; ++s) Put(s, good_buf_.value + 8 * s, 8, static_cast<uint16_t>(7 - s), 0);
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 4u);
  EXPECT_EQ(batched(), 4u);
  for (uint16_t s = 0; s < 4; ++s) {
    EXPECT_EQ(c[s].id, 7 - s);
    EXPECT_EQ(c[s].num_descs, 1);
    EXPECT_EQ(c[s].ring_pos, s);
    EXPECT_TRUE(c[s].ring_wrap);
    ASSERT_EQ(c[s].num_segments, 1);
    EXPECT_EQ(c[s].segs[0].data, g_.Host(GuestAddr{good_buf_.value + 8 * s}, 8));
    EXPECT_EQ(c[s].readable_bytes, 8u);
  }
  // Completed in another order: each id is free again and its slot counted once.
  for (int s = 3; s >= 0; --s) rp_.device.Push(c[s].id, 0);
  rp_.device.Flush();
  for (uint16_t s = 0; s < 4; ++s) EXPECT_EQ(desc_[s].id.get(), 4 + s);
  EXPECT_EQ(rp_.device.used_state(), (1u << 15) | 4);
}

TEST_F(PackedBatch, AGroupOnlyPartlyAvailableIsTakenOneByOne) {
  // The driver has published slots 0-2 (slot 3 not yet): no batch, no wait.
  for (uint16_t s = 0; s < 3; ++s) Put(s, good_buf_.value, 8, s, 0);
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 3u);
  EXPECT_EQ(batched(), 0u);
  Put(3, good_buf_.value, 8, 3, 0);
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 1u);
  EXPECT_EQ(c[0].id, 3);
  EXPECT_EQ(c[0].ring_pos, 3);
}

TEST_F(PackedBatch, AChainInsideAGroupIsWalked) {
  Put(0, good_buf_.value, 8, 0, 0);
  Put(2, good_buf_.value + 8, 8, 1, 0);
  Put(1, good_buf_.value, 8, 1, kDescFNext);
  Put(3, good_buf_.value, 8, 2, 0);
  Put(4, good_buf_.value, 8, 3, 0);
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 4u);
  EXPECT_EQ(batched(), 0u);
  EXPECT_EQ(c[1].id, 1);
  EXPECT_EQ(c[1].num_descs, 2);
  EXPECT_EQ(c[1].num_segments, 2);
  EXPECT_EQ(c[2].ring_pos, 3);
  EXPECT_EQ(c[3].ring_pos, 4);
}

TEST_F(PackedBatch, AnIndirectDescriptorInsideAGroupIsWalked) {
  const GuestAddr ta = g_.Alloc(32);
  VirtqPackedDesc* t = Table(ta, 2);
  PutTable(t, 0, good_buf_.value, 8, 0);
  PutTable(t, 1, good_buf_.value + 8, 8, 0);
  for (uint16_t s = 0; s < 4; ++s) {
    if (s == 2) {
      Put(s, ta.value, 32, s, kDescFIndirect);
    } else {
      Put(s, good_buf_.value, 8, s, 0);
    }
  }
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 4u);
  EXPECT_EQ(batched(), 0u);
  EXPECT_EQ(c[2].num_segments, 2);
  EXPECT_EQ(c[2].readable_bytes, 16u);
}

TEST_F(PackedBatch, TheSameIdTwiceInAGroupBreaksTheQueue) {
  Put(0, good_buf_.value, 8, 1, 0);
  Put(1, good_buf_.value, 8, 2, 0);
  Put(2, good_buf_.value, 8, 1, 0);
  Put(3, good_buf_.value, 8, 3, 0);
  DescChain c[4];
  EXPECT_EQ(rp_.device.PopBurst(c, 4), 2u);  // the two before the repeat
  EXPECT_EQ(batched(), 0u);
  ExpectBroken(DropReason::kPackedIdInFlight);
}

TEST_F(PackedBatch, AnIdInFlightInAGroupBreaksTheQueue) {
  Put(0, good_buf_.value, 8, 5, 0);
  DescChain first;
  ASSERT_EQ(rp_.device.Pop(&first), PopStatus::kOk);
  // Slot 0 is in flight; a group at 4-7 that reuses id 5.
  Put(1, good_buf_.value, 8, 1, 0);
  Put(2, good_buf_.value, 8, 2, 0);
  Put(3, good_buf_.value, 8, 3, 0);
  Put(4, good_buf_.value, 8, 4, 0);
  Put(5, good_buf_.value, 8, 6, 0);
  Put(6, good_buf_.value, 8, 5, 0);
  Put(7, good_buf_.value, 8, 7, 0);
  DescChain c[8];
  EXPECT_EQ(rp_.device.PopBurst(c, 8), 5u);  // slots 1-3 one by one, then 4 and 5
  EXPECT_EQ(batched(), 0u);
  ExpectBroken(DropReason::kPackedIdInFlight);
}

TEST_F(PackedBatch, AnIdOutOfRangeInAGroupBreaksTheQueue) {
  for (uint16_t s = 0; s < 4; ++s) Put(s, good_buf_.value, 8, s == 3 ? kSize : s, 0);
  DescChain c[4];
  EXPECT_EQ(rp_.device.PopBurst(c, 4), 3u);
  ExpectBroken(DropReason::kPackedIdOutOfRange);
}

TEST_F(PackedBatch, ABadBufferInAGroupIsCompletedEmptyAndTheRestDelivered) {
  Put(0, good_buf_.value, 8, 0, 0);
  Put(1, 0x900000, 8, 1, 0);  // outside memory
  Put(2, good_buf_.value, 8, 2, 0);
  Put(3, good_buf_.value, 0, 3, 0);  // empty: the walk judges it (a chain of no bytes)
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 3u);
  EXPECT_EQ(batched(), 0u);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kDescOutsideMemory), 1u);
  EXPECT_EQ(c[2].id, 3);
  EXPECT_EQ(c[2].num_segments, 0);
  EXPECT_EQ(c[0].id, 0);
  EXPECT_EQ(c[1].id, 2);
  EXPECT_NE(c[1].bad_seq, c[0].bad_seq);  // a bad chain was completed between them
  rp_.device.Flush();
  EXPECT_EQ(desc_[0].id.get(), 1);  // the bad one's completion, first in the used order
  EXPECT_EQ(desc_[0].len.get(), 0u);
}

TEST_F(PackedBatch, ReadableAndWritableBuffersInAQueueThatTakesBothAreOneBatch) {
  for (uint16_t s = 0; s < 4; ++s) Put(s, good_buf_.value, 8, s, s == 2 ? kDescFWrite : 0);
  // kAny accepts both; a receive queue's policy: PackedHostileRx below.
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 4u);
  EXPECT_EQ(batched(), 4u);
  EXPECT_EQ(c[2].num_readable, 0);
  EXPECT_EQ(c[2].writable_bytes, 8u);
}

TEST_F(PackedBatch, BuffersInTwoRegionsAreOneBatchEachTranslatedInItsOwn) {
  // A guest with memory below and above 4 GiB: the group's buffers alternate between the two
  // regions, so the last region's one check does not cover them; each is translated alone.
  const uint64_t hi = kRegion1 + 4096;
  for (uint16_t s = 0; s < 4; ++s) Put(s, s % 2 ? hi + 64 * s : good_buf_.value + 8 * s, 8, s, 0);
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 4u);
  EXPECT_EQ(batched(), 4u);
  for (uint16_t s = 0; s < 4; ++s) {
    const uint64_t a = s % 2 ? hi + 64 * s : good_buf_.value + 8 * s;
    EXPECT_EQ(c[s].segs[0].data, g_.Host(GuestAddr{a}, 8)) << s;
    EXPECT_EQ(c[s].readable_bytes, 8u);
  }
  // And a group wholly in the other region: the one-region check takes it.
  for (uint16_t s = 4; s < 8; ++s) Put(s, hi + 64 * s, 8, s, 0);
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 4u);
  EXPECT_EQ(batched(), 8u);
  for (uint16_t s = 4; s < 8; ++s) EXPECT_EQ(c[s - 4].segs[0].data, g_.Host(GuestAddr{hi + 64 * s}, 8));
}

TEST_F(PackedBatch, ABufferReachingPastItsRegionInAGroupIsCompletedEmpty) {
  // Inside the last region's start but past its end: the group check refuses it, the
  // one-by-one path judges it (completed empty), the others are delivered.
  for (uint16_t s = 0; s < 4; ++s) {
    Put(s, s == 1 ? kRegion0 + kRegion0Size - 4 : good_buf_.value, 8, s, 0);
  }
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 3u);
  EXPECT_EQ(c[0].id, 0);
  EXPECT_EQ(c[1].id, 2);
  EXPECT_EQ(c[2].id, 3);
  EXPECT_FALSE(rp_.device.broken());
}

TEST_F(PackedBatch, TheWrapCounterFlipsBetweenLaps) {
  // Three laps of the 8-slot ring, two groups per lap; the second lap's descriptors are
  // available with the wrap counter 0 (AVAIL clear, USED set).
  bool wrap = true;
  uint16_t id = 0;
  for (int lap = 0; lap < 3; ++lap) {
    for (uint16_t s = 0; s < kSize; ++s) PutLap(s, good_buf_.value, 8, (id + s) % kSize, 0, wrap);
    DescChain c[kSize];
    ASSERT_EQ(rp_.device.PopBurst(c, kSize), kSize) << lap;
    for (uint16_t s = 0; s < kSize; ++s) {
      EXPECT_EQ(c[s].ring_wrap, wrap);
      EXPECT_EQ(c[s].id, (id + s) % kSize);
    }
    // Nothing more: the slots still hold this lap's flags, which no longer read available.
    DescChain more;
    EXPECT_EQ(rp_.device.Pop(&more), PopStatus::kEmpty);
    for (uint16_t s = 0; s < kSize; ++s) rp_.device.Push(c[s].id, 0);
    rp_.device.Flush();
    wrap = !wrap;
    id = static_cast<uint16_t>(id + 3);
  }
  EXPECT_EQ(batched(), 3u * kSize);
  EXPECT_FALSE(rp_.device.broken());
}

TEST_F(PackedBatch, AGroupPastTheFreeSlotsIsNotTaken) {
  // Six slots in flight; slots 6, 7 and the next lap's 0, 1 are offered: only two are free,
  // and the driver reaching into slot 0 (in flight) is an overrun.
  for (uint16_t s = 0; s < 6; ++s) Put(s, good_buf_.value, 8, s, 0);
  DescChain c[8];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 4u);
  ASSERT_EQ(rp_.device.PopBurst(c + 4, 2), 2u);
  Put(6, good_buf_.value, 8, 6, 0);
  Put(7, good_buf_.value, 8, 7, 0);
  PutLap(0, good_buf_.value, 8, 0, 0, false);
  ASSERT_EQ(rp_.device.PopBurst(c + 6, 2), 2u);
  DescChain more[4];
  EXPECT_EQ(rp_.device.PopBurst(more, 4), 0u);
  EXPECT_TRUE(rp_.device.broken());
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kPackedRingOverrun), 1u);
}

TEST_F(PackedBatch, RewindAfterABatchGivesTheSameChainsAgain) {
  for (uint16_t s = 0; s < 8; ++s) Put(s, good_buf_.value + s, 8, s, 0);
  DescChain c[8];
  ASSERT_EQ(rp_.device.PopBurst(c, 8), 8u);
  ASSERT_TRUE(rp_.device.Rewind({c + 2, 6}));  // back into the first group
  DescChain d[8];
  ASSERT_EQ(rp_.device.PopBurst(d, 6), 6u);   // 2, 3 one by one, then 4-7 as a batch
  for (uint16_t s = 0; s < 6; ++s) {
    EXPECT_EQ(d[s].id, s + 2);
    EXPECT_EQ(d[s].ring_pos, s + 2);
  }
  EXPECT_EQ(batched(), 12u);
}

TEST_F(PackedHostileRx, AReadableBufferInAGroupIsCompletedEmptyAndTheRestDelivered) {
  for (uint16_t s = 0; s < 4; ++s) Put(s, good_buf_.value, 8, s, s == 1 ? 0 : kDescFWrite);
  DescChain c[4];
  ASSERT_EQ(rp_.device.PopBurst(c, 4), 3u);
  EXPECT_EQ(rp_.device.chains_batched(), 0u);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kWritableExpected), 1u);
  EXPECT_EQ(c[0].id, 0);
  EXPECT_EQ(c[1].id, 2);
  EXPECT_EQ(c[2].id, 3);
  EXPECT_EQ(c[2].writable_bytes, 8u);
}

TEST(PackedBatchSize, ARingWhoseSizeIsNoMultipleOfFourEndsInSingles) {
  // Packed rings may have any size: at 10 slots the group at 8 would reach past the end.
  FakeGuest g({{kRegion0, kRegion0Size}});
  RingPair<PackedLayout> rp(g, {.size = 10});
  auto* desc = reinterpret_cast<VirtqPackedDesc*>(g.Host(rp.ring[0], 16 * 10));
  const GuestAddr buf = g.Alloc(64);
  for (uint16_t lap = 0; lap < 2; ++lap) {
    const bool wrap = lap == 0;
    for (uint16_t s = 0; s < 10; ++s) {
      desc[s].addr = Le64::Of(buf.value);
      desc[s].len = Le32::Of(8);
      desc[s].id = Le16::Of(s);
      StoreRelease(desc[s].flags, wrap ? kDescFAvail : kDescFUsed);
    }
    DescChain c[10];
    ASSERT_EQ(rp.device.PopBurst(c, 10), 10u);
    for (uint16_t s = 0; s < 10; ++s) {
      EXPECT_EQ(c[s].ring_pos, s);
      rp.device.Push(c[s].id, 0);
    }
    rp.device.Flush();
  }
  EXPECT_EQ(rp.device.chains_batched(), 16u);  // slots 0-7 of each lap; 8 and 9 alone
  EXPECT_FALSE(rp.device.broken());
}

// ------------------------------------- PopBurst (with its batch path) against Pop() one by one

// Two rings on two guests with the same layout, fed the same hostile descriptor bytes: one
// taken with PopBurst, the other with Pop() in a loop (PopBurst before the batch path). What
// each returns, completes, counts and writes back must be the same.
TEST(PackedBatchDifferential, PopBurstTakesWhatPopWouldTake) {
  uint64_t batched = 0, popped = 0, broken = 0;
  for (uint64_t seed = 1; seed <= 400; ++seed) {
    std::mt19937_64 rng(seed);
    static constexpr uint32_t kSizes[] = {4, 5, 6, 8, 10, 12, 16, 32};
    const uint32_t size = kSizes[rng() % std::size(kSizes)];
    const ChainPolicy policy = static_cast<ChainPolicy>(rng() % 3);
    uint64_t features = Bit(kFRingIndirectDesc);
    if (rng() % 2) features |= Bit(kFInOrder);
    const RingOptions o{.size = size, .features = features, .policy = policy};
    FakeGuest ga({{kRegion0, kRegion0Size}, {kRegion1, kRegion1Size}});
    FakeGuest gb({{kRegion0, kRegion0Size}, {kRegion1, kRegion1Size}});
    RingPair<PackedLayout> a(ga, o), b(gb, o);
    ASSERT_EQ(a.ring[0].value, b.ring[0].value);
    auto* da = reinterpret_cast<VirtqPackedDesc*>(ga.Host(a.ring[0], 16 * size));
    auto* db = reinterpret_cast<VirtqPackedDesc*>(gb.Host(b.ring[0], 16 * size));
    const GuestAddr buf = ga.Alloc(256);
    ASSERT_EQ(gb.Alloc(256).value, buf.value);
    const GuestAddr table = ga.Alloc(64);
    ASSERT_EQ(gb.Alloc(64).value, table.value);
    for (uint32_t i = 0; i < 4; ++i) {
      VirtqPackedDesc e{Le64::Of(buf.value + 16 * i), Le32::Of(8), Le16::Of(0),
                        Le16::Of(static_cast<uint16_t>(rng() % 2 ? kDescFWrite : 0))};
      std::memcpy(ga.Host(GuestAddr{table.value + 16 * i}, 16), &e, 16);
      std::memcpy(gb.Host(GuestAddr{table.value + 16 * i}, 16), &e, 16);
    }
    auto off = [](const FakeGuest& g, const std::byte* p) -> int64_t {
      const std::byte* r0 = g.Host(GuestAddr{kRegion0}, 1);
      const std::byte* r1 = g.Host(GuestAddr{kRegion1}, 1);
      if (p >= r0 && p < r0 + kRegion0Size) return p - r0;
      if (p >= r1 && p < r1 + kRegion1Size) return (int64_t{1} << 40) + (p - r1);
      return -1;
    };
    std::vector<uint16_t> in_flight;
    uint32_t last_burst_start = 0, last_burst_n = 0;
    bool last_is_tail = false;
    std::vector<DescChain> last_a, last_b;
    bool wrap_guess = true;
    for (int op = 0; op < 300; ++op) {
      const uint32_t what = rng() % 10;
      if (what < 4) {
        // The driver writes a few descriptors, mostly plain and available in the lap it
        // believes current, around the device's next slot.
        const uint16_t pos = a.device.avail_state() & 0x7fff;
        wrap_guess = (a.device.avail_state() >> 15) != 0;
        // Mostly what a driver may do (free slots, ids not in flight), sometimes not.
        const uint32_t room = size - static_cast<uint32_t>(in_flight.size());
        const uint32_t count = 1 + rng() % (rng() % 16 == 0 ? 8 : std::max<uint32_t>(room, 1));
        std::vector<uint16_t> used_ids(in_flight);
        for (uint32_t k = 0; k < count; ++k) {
          uint32_t slot = (pos + k + (rng() % 32 == 0 ? rng() % size : 0)) % size;
          bool w = wrap_guess ^ (slot < pos);
          if (rng() % 64 == 0) w = !w;
          VirtqPackedDesc d{};
          const uint32_t kind = rng() % 48;
          uint64_t addr = buf.value + rng() % 200;
          uint32_t len = 1 + rng() % 40;
          if (kind == 0) addr = 0x900000;
          if (kind == 1) len = 0;
          if (kind == 2) addr = kRegion1 + kRegion1Size - 4;
          if (kind == 3) len = 0x7fffffff;
          if (kind >= 40) addr = kRegion1 + 256 + rng() % 200;  // the other region (see BuffersInTwoRegions...)
          uint16_t id = static_cast<uint16_t>(rng() % size);
          for (int tries = 0; tries < 8 && rng() % 32 != 0 &&
                              std::find(used_ids.begin(), used_ids.end(), id) != used_ids.end();
               ++tries) {
            id = static_cast<uint16_t>(rng() % size);
          }
          if (rng() % 64 == 0) id = static_cast<uint16_t>(size + rng() % 3);
          used_ids.push_back(id);
          uint16_t flags = policy == ChainPolicy::kWriteOnly   ? kDescFWrite
                           : policy == ChainPolicy::kReadOnly ? 0
                           : rng() % 2                        ? kDescFWrite
                                                              : 0;
          if (rng() % 16 == 0) flags ^= kDescFWrite;
          if (rng() % 24 == 0) flags |= kDescFNext;
          if (rng() % 24 == 0) {
            flags |= kDescFIndirect;
            addr = table.value;
            len = 16 * (1 + rng() % 4);
          }
          flags |= w ? kDescFAvail : kDescFUsed;
          if (rng() % 64 == 0) flags |= w ? kDescFUsed : kDescFAvail;  // both or neither
          d.addr = Le64::Of(addr);
          d.len = Le32::Of(len);
          d.id = Le16::Of(id);
          d.flags = Le16::Of(flags);
          std::memcpy(&da[slot], &d, 16);
          std::memcpy(&db[slot], &d, 16);
        }
      } else if (what < 7) {
        const uint32_t n = 1 + rng() % 12;
        std::vector<DescChain> ca(n), cb(n);
        const uint32_t got_a = a.device.PopBurst(ca.data(), n);
        uint32_t got_b = 0;
        while (got_b < n && b.device.Pop(&cb[got_b]) == PopStatus::kOk) ++got_b;
        ASSERT_EQ(got_a, got_b) << "seed " << seed << " op " << op;
        for (uint32_t i = 0; i < got_a; ++i) {
          const DescChain& x = ca[i];
          const DescChain& y = cb[i];
          ASSERT_EQ(x.id, y.id) << "seed " << seed << " op " << op << " chain " << i;
          ASSERT_EQ(x.num_descs, y.num_descs);
          ASSERT_EQ(x.ring_pos, y.ring_pos);
          ASSERT_EQ(x.ring_wrap, y.ring_wrap);
          ASSERT_EQ(x.bad_seq, y.bad_seq);
          ASSERT_EQ(x.num_segments, y.num_segments);
          ASSERT_EQ(x.num_readable, y.num_readable);
          ASSERT_EQ(x.readable_bytes, y.readable_bytes);
          ASSERT_EQ(x.writable_bytes, y.writable_bytes);
          for (uint32_t s = 0; s < x.num_segments; ++s) {
            ASSERT_EQ(off(ga, x.segs[s].data), off(gb, y.segs[s].data));
            ASSERT_NE(off(ga, x.segs[s].data), -1);
            ASSERT_EQ(x.segs[s].len, y.segs[s].len);
          }
          in_flight.push_back(x.id);
        }
        last_a.assign(ca.begin(), ca.begin() + got_a);
        last_b.assign(cb.begin(), cb.begin() + got_b);
        last_is_tail = got_a > 0;
        last_burst_start = static_cast<uint32_t>(in_flight.size()) - got_a;
        last_burst_n = got_a;
      } else if (what < 8 && last_is_tail) {
        const uint32_t from = rng() % last_burst_n;
        const bool ra = a.device.Rewind({last_a.data() + from, last_burst_n - from});
        const bool rb = b.device.Rewind({last_b.data() + from, last_burst_n - from});
        ASSERT_EQ(ra, rb) << "seed " << seed << " op " << op;
        if (ra) {
          in_flight.erase(in_flight.begin() + last_burst_start + from, in_flight.end());
        } else {
          for (uint32_t i = from; i < last_burst_n; ++i) {
            a.device.Push(last_a[i].id, 0);
            b.device.Push(last_b[i].id, 0);
          }
          in_flight.erase(in_flight.begin() + last_burst_start + from, in_flight.end());
        }
        last_is_tail = false;
      } else if (what < 9 && !in_flight.empty()) {
        const uint32_t k = 1 + rng() % in_flight.size();
        for (uint32_t i = 0; i < k && !in_flight.empty(); ++i) {
          const size_t at = rng() % in_flight.size();
          const uint16_t id = in_flight[at];
          in_flight.erase(in_flight.begin() + at);
          const uint32_t len = rng() % 64;
          a.device.Push(id, len);
          b.device.Push(id, len);
        }
        last_is_tail = false;
      } else {
        ASSERT_EQ(a.device.Flush(), b.device.Flush());
        ASSERT_EQ(std::memcmp(da, db, 16 * size), 0) << "seed " << seed << " op " << op;
      }
      ASSERT_EQ(a.device.broken(), b.device.broken()) << "seed " << seed << " op " << op;
      ASSERT_EQ(a.device.avail_state(), b.device.avail_state()) << "seed " << seed << " op " << op;
      ASSERT_EQ(a.device.used_state(), b.device.used_state());
      for (uint32_t r = 0; r < kNumDropReasons; ++r) {
        ASSERT_EQ(a.device.drops().Get(static_cast<DropReason>(r)),
                  b.device.drops().Get(static_cast<DropReason>(r)))
            << "seed " << seed << " op " << op << " " << DropReasonName(static_cast<DropReason>(r));
      }
      if (a.device.broken()) break;
    }
    batched += a.device.chains_batched();
    popped += a.device.chains_popped();
    broken += a.device.broken();
  }
  // The workload reaches the batch path (about a fifth of the chains; every ring ends broken
  // sooner or later, at 20000 seeds too, with no difference found).
  EXPECT_GT(batched, popped / 20);
  EXPECT_GT(broken, 0u);
}

// Split rings: PopBurst's run of one-descriptor chains (TakeRun) against Pop() one by one, on
// two identical guests driven by the same random driver, mostly well-behaved, sometimes not.
TEST(SplitBurstDifferential, PopBurstTakesWhatPopWouldTake) {
  uint64_t popped = 0, broken = 0;
  for (uint64_t seed = 1; seed <= 400; ++seed) {
    std::mt19937_64 rng(seed);
    static constexpr uint32_t kSizes[] = {4, 8, 16, 32};
    const uint32_t size = kSizes[rng() % std::size(kSizes)];
    const ChainPolicy policy = static_cast<ChainPolicy>(rng() % 3);
    const RingOptions o{.size = size, .features = Bit(kFRingIndirectDesc), .policy = policy};
    FakeGuest ga({{kRegion0, kRegion0Size}, {kRegion1, kRegion1Size}});
    FakeGuest gb({{kRegion0, kRegion0Size}, {kRegion1, kRegion1Size}});
    RingPair<SplitLayout> a(ga, o), b(gb, o);
    ASSERT_EQ(a.ring[0].value, b.ring[0].value);
    auto ptrs = [&](FakeGuest& g, RingPair<SplitLayout>& r) {
      return std::tuple{reinterpret_cast<VirtqDesc*>(g.Host(r.ring[0], 16 * size)),
                        reinterpret_cast<VirtqAvailHeader*>(g.Host(r.ring[1], 6 + 2 * size)),
                        reinterpret_cast<VirtqUsedHeader*>(g.Host(r.ring[2], 6 + 8 * size))};
    };
    auto [da, aa, ua] = ptrs(ga, a);
    auto [db, ab, ub] = ptrs(gb, b);
    const GuestAddr buf = ga.Alloc(256);
    ASSERT_EQ(gb.Alloc(256).value, buf.value);
    auto off = [](const FakeGuest& g, const std::byte* p) -> int64_t {
      const std::byte* r0 = g.Host(GuestAddr{kRegion0}, 1);
      const std::byte* r1 = g.Host(GuestAddr{kRegion1}, 1);
      if (p >= r0 && p < r0 + kRegion0Size) return p - r0;
      if (p >= r1 && p < r1 + kRegion1Size) return (int64_t{1} << 40) + (p - r1);
      return -1;
    };
    uint16_t avail_idx = 0;
    std::vector<uint16_t> in_flight;
    std::vector<DescChain> last_a, last_b;
    bool last_is_tail = false;
    for (int op = 0; op < 300; ++op) {
      const uint32_t what = rng() % 10;
      if (what < 4) {
        // The driver fills a few descriptors and offers heads: mostly one plain buffer each,
        // sometimes chained, indirect, empty, outside memory, a head out of range or an idx
        // that jumps.
        // Mostly no more than the ring holds beyond what the device has taken (else the idx
        // jumps: the queue breaks).
        const uint32_t ahead = static_cast<uint16_t>(avail_idx - a.device.last_avail_idx());
        const uint32_t room = ahead >= size ? 0 : size - ahead;
        const uint32_t count = rng() % 32 == 0 ? 1 + rng() % size : room == 0 ? 0 : 1 + rng() % room;
        for (uint32_t k = 0; k < count; ++k) {
          const uint16_t head = static_cast<uint16_t>(rng() % size);
          const uint32_t kind = rng() % 48;
          uint64_t addr = buf.value + rng() % 200;
          uint32_t len = 1 + rng() % 40;
          uint16_t flags = policy == ChainPolicy::kWriteOnly   ? kDescFWrite
                           : policy == ChainPolicy::kReadOnly ? 0
                           : rng() % 2                        ? kDescFWrite
                                                              : 0;
          if (kind == 0) addr = 0x900000;
          if (kind == 1) len = 0;
          if (kind == 2) addr = kRegion1 + kRegion1Size - 4;
          if (kind == 3) flags ^= kDescFWrite;
          if (kind == 4) flags |= kDescFNext;
          if (kind == 5) flags |= kDescFIndirect, len = 16;
          if (kind >= 40) addr = kRegion1 + 256 + rng() % 200;
          const VirtqDesc d{Le64::Of(addr), Le32::Of(len), Le16::Of(flags),
                            Le16::Of(static_cast<uint16_t>(rng() % (size + 1)))};
          std::memcpy(&da[head], &d, 16);
          std::memcpy(&db[head], &d, 16);
          uint16_t offered = rng() % 512 == 0 ? static_cast<uint16_t>(size + rng() % 3) : head;
          AvailRing(aa)[avail_idx % size] = Le16::Of(offered);
          AvailRing(ab)[avail_idx % size] = Le16::Of(offered);
          ++avail_idx;
        }
        if (rng() % 256 == 0) avail_idx = static_cast<uint16_t>(avail_idx + size + 1);
        StoreRelease(aa->idx, avail_idx);
        StoreRelease(ab->idx, avail_idx);
      } else if (what < 7) {
        const uint32_t n = 1 + rng() % 12;
        std::vector<DescChain> ca(n), cb(n);
        const uint32_t got_a = a.device.PopBurst(ca.data(), n);
        uint32_t got_b = 0;
        while (got_b < n && b.device.Pop(&cb[got_b]) == PopStatus::kOk) ++got_b;
        ASSERT_EQ(got_a, got_b) << "seed " << seed << " op " << op;
        for (uint32_t i = 0; i < got_a; ++i) {
          const DescChain& x = ca[i];
          const DescChain& y = cb[i];
          ASSERT_EQ(x.id, y.id) << "seed " << seed << " op " << op << " chain " << i;
          ASSERT_EQ(x.ring_pos, y.ring_pos);
          ASSERT_EQ(x.bad_seq, y.bad_seq);
          ASSERT_EQ(x.num_segments, y.num_segments);
          ASSERT_EQ(x.num_readable, y.num_readable);
          ASSERT_EQ(x.readable_bytes, y.readable_bytes);
          ASSERT_EQ(x.writable_bytes, y.writable_bytes);
          for (uint32_t s = 0; s < x.num_segments; ++s) {
            ASSERT_EQ(off(ga, x.segs[s].data), off(gb, y.segs[s].data));
            ASSERT_NE(off(ga, x.segs[s].data), -1);
            ASSERT_EQ(x.segs[s].len, y.segs[s].len);
          }
          in_flight.push_back(x.id);
        }
        last_a.assign(ca.begin(), ca.begin() + got_a);
        last_b.assign(cb.begin(), cb.begin() + got_b);
        last_is_tail = got_a > 0;
      } else if (what < 8 && last_is_tail) {
        const uint32_t from = rng() % last_a.size();
        const bool ra = a.device.Rewind({last_a.data() + from, last_a.size() - from});
        const bool rb = b.device.Rewind({last_b.data() + from, last_b.size() - from});
        ASSERT_EQ(ra, rb) << "seed " << seed << " op " << op;
        if (!ra) {
          for (size_t i = from; i < last_a.size(); ++i) {
            a.device.Push(last_a[i].id, 0);
            b.device.Push(last_b[i].id, 0);
          }
        }
        in_flight.resize(in_flight.size() - (last_a.size() - from));
        last_is_tail = false;
      } else if (what < 9 && !in_flight.empty()) {
        const uint32_t k = 1 + rng() % in_flight.size();
        for (uint32_t i = 0; i < k && !in_flight.empty(); ++i) {
          const size_t at = rng() % in_flight.size();
          const uint16_t id = in_flight[at];
          in_flight.erase(in_flight.begin() + at);
          const uint32_t len = rng() % 64;
          a.device.Push(id, len);
          b.device.Push(id, len);
        }
        last_is_tail = false;
      } else {
        ASSERT_EQ(a.device.Flush(), b.device.Flush());
        ASSERT_EQ(std::memcmp(ua, ub, 6 + 8 * size), 0) << "seed " << seed << " op " << op;
      }
      ASSERT_EQ(a.device.broken(), b.device.broken()) << "seed " << seed << " op " << op;
      ASSERT_EQ(a.device.last_avail_idx(), b.device.last_avail_idx()) << "seed " << seed << " op " << op;
      for (uint32_t r = 0; r < kNumDropReasons; ++r) {
        ASSERT_EQ(a.device.drops().Get(static_cast<DropReason>(r)),
                  b.device.drops().Get(static_cast<DropReason>(r)))
            << "seed " << seed << " op " << op << " " << DropReasonName(static_cast<DropReason>(r));
      }
      if (a.device.broken()) break;
    }
    popped += a.device.chains_popped();
    broken += a.device.broken();
  }
  printf("split burst differential: %llu chains popped, %llu rings broken\n", (unsigned long long)popped, (unsigned long long)broken);
  EXPECT_GT(popped, 10000u);
  EXPECT_GT(broken, 0u);
}

TEST(PackedHostileSetup, BadBaseOrRingIsRefused) {
  FakeGuest g({{kRegion0, kRegion0Size}});
  RingPair<PackedLayout> rp(g, {.size = 8});
  auto areas = MapPackedRing(g.mem(), RingAddrSpace::kGuestPhysical, rp.ring[0].value,
                             rp.ring[1].value, rp.ring[2].value, 8);
  ASSERT_TRUE(areas);
  PackedVring v;
  auto r = v.Init({8, 0, ChainPolicy::kAny}, *areas, &g.mem(), 8);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("base"), std::string::npos);
  auto ev = MapPackedRing(g.mem(), RingAddrSpace::kGuestPhysical, rp.ring[0].value,
                          rp.ring[1].value + 2, rp.ring[2].value, 8);
  ASSERT_FALSE(ev);
  EXPECT_NE(ev.error().message().find("driver event area"), std::string::npos);
  EXPECT_FALSE(MapPackedRing(g.mem(), RingAddrSpace::kGuestPhysical, 0, rp.ring[1].value,
                             rp.ring[2].value, 8));
}

// ------------------------------------------------------------------------- hostile devices

// Our driver (the frontend we offer) faces devices it does not trust either.
TEST(HostileDevice, SplitUsedIdOutOfRangeOrNotInFlight) {
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = 8});
  auto* used = reinterpret_cast<VirtqUsedHeader*>(g.Host(rp.ring[2], 6));
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, true};
  ASSERT_TRUE(rp.driver.Add({&b, 1}));
  rp.driver.Publish();
  UsedRing(used)[0] = {Le32::Of(5), Le32::Of(10)};  // id 5 was never handed out
  StoreRelease(used->idx, 1);
  UsedBuffer u;
  EXPECT_EQ(rp.driver.PopUsed(&u), PopStatus::kBroken);
  EXPECT_EQ(rp.driver.drops().Get(DropReason::kUsedIdOutOfRange), 1u);
}

TEST(HostileDevice, SplitUsedIdxJumpAndLongLength) {
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = 8});
  auto* used = reinterpret_cast<VirtqUsedHeader*>(g.Host(rp.ring[2], 6));
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, true};
  auto id = rp.driver.Add({&b, 1});
  ASSERT_TRUE(id);
  rp.driver.Publish();
  UsedRing(used)[0] = {Le32::Of(*id), Le32::Of(1 << 20)};  // longer than the buffer
  StoreRelease(used->idx, 1);
  UsedBuffer u;
  ASSERT_EQ(rp.driver.PopUsed(&u), PopStatus::kOk);
  EXPECT_EQ(u.len, 64u);  // clamped
  EXPECT_EQ(rp.driver.drops().Get(DropReason::kUsedLenTooLong), 1u);
  StoreRelease(used->idx, 3);  // two more used, none in flight
  EXPECT_EQ(rp.driver.PopUsed(&u), PopStatus::kBroken);
  EXPECT_EQ(rp.driver.drops().Get(DropReason::kUsedIdxJump), 1u);
}

TEST(HostileDevice, PackedUsedIdNotInFlight) {
  FakeGuest g;
  RingPair<PackedLayout> rp(g, {.size = 8});
  auto* desc = reinterpret_cast<VirtqPackedDesc*>(g.Host(rp.ring[0], 16 * 8));
  GuestAddr buf = g.Alloc(64);
  DriverBuffer b{buf, 64, true};
  ASSERT_TRUE(rp.driver.Add({&b, 1}));
  rp.driver.Publish();
  desc[0].id = Le16::Of(6);
  StoreRelease(desc[0].flags, kDescFAvail | kDescFUsed);
  UsedBuffer u;
  EXPECT_EQ(rp.driver.PopUsed(&u), PopStatus::kBroken);
  EXPECT_EQ(rp.driver.drops().Get(DropReason::kUsedIdOutOfRange), 1u);
}

// --------------------------------------------------- IN_ORDER: one used descriptor per batch

class PackedInOrder : public PackedHostile {
 protected:
  PackedInOrder() : PackedHostile({.size = kSize, .features = Bit(kFInOrder)}) {}
};

TEST_F(PackedInOrder, BatchIsOneUsedDescriptorWithTheLastId) {
  // Three chains: ids 3, 4 (two descriptors) and 5, in slots 0, 1-2, 3.
  Put(0, good_buf_.value, 16, 3, 0);
  Put(2, good_buf_.value + 16, 16, 4, 0);
  Put(1, good_buf_.value, 16, 4, kDescFNext);  // head last, as a driver does
  Put(3, good_buf_.value, 16, 5, 0);
  DescChain c[3];
  ASSERT_EQ(rp_.device.PopBurst(c, 3), 3u);
  ASSERT_TRUE(rp_.device.PushInOrderBatch({c, 3}));
  rp_.device.Flush();
  EXPECT_EQ(LoadAcquire(desc_[0].flags) & (kDescFAvail | kDescFUsed), kDescFAvail | kDescFUsed);
  EXPECT_EQ(desc_[0].id.get(), 5);
  EXPECT_EQ(desc_[0].len.get(), 0u);
  // The slots the batch skipped are left as the driver wrote them.
  for (uint16_t s = 1; s < 4; ++s) EXPECT_EQ(desc_[s].flags.get() & kDescFUsed, 0) << s;
  // The next completion goes where the batch ended (slot 4), and ids are free again.
  Put(4, good_buf_.value, 16, 3, 0);
  DescChain d;
  ASSERT_EQ(rp_.device.Pop(&d), PopStatus::kOk);
  rp_.device.Push(d.id, 0);
  rp_.device.Flush();
  EXPECT_EQ(LoadAcquire(desc_[4].flags) & kDescFUsed, kDescFUsed);
  EXPECT_EQ(desc_[4].id.get(), 3);
}

TEST_F(PackedInOrder, RefusedAfterABadChainCompletedOutOfTurn) {
  Put(0, good_buf_.value, 16, 1, 0);
  Put(1, 0x900000, 16, 2, 0);  // outside memory: completed empty at once, ahead of id 1
  Put(2, good_buf_.value, 16, 3, 0);
  DescChain c[2];
  ASSERT_EQ(rp_.device.PopBurst(c, 2), 2u);
  EXPECT_FALSE(rp_.device.PushInOrderBatch({c, 2}));
  rp_.device.Push(c[0].id, 0);  // the caller's fallback still works
  rp_.device.Push(c[1].id, 0);
  rp_.device.Flush();
  EXPECT_EQ(desc_[0].id.get(), 2);
  EXPECT_EQ(desc_[1].id.get(), 1);
  EXPECT_EQ(desc_[2].id.get(), 3);
}

TEST_F(PackedHostile, InOrderBatchNeedsTheFeature) {
  Put(0, good_buf_.value, 16, 1, 0);
  DescChain c;
  ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
  EXPECT_FALSE(rp_.device.PushInOrderBatch({&c, 1}));
}


// ------------------------------------------- issue 17: bounded walks and bounded ring laps

// A ring larger than kMaxChainDescs, so that the queue size is not the bound that bites.
constexpr uint32_t kBigSize = 512;

TEST(ChainAmplification, SplitChainOfEmptyDescriptorsIsCutAtTheWalkBound) {
  // 300 zero-length descriptors then one buffer: under the queue size, over kMaxChainDescs.
  // Before the bound it was walked in full (a 32768-descriptor one cost the worker 134-200 us
  // each time the guest reposted it) and accepted.
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = kBigSize});
  auto* desc = reinterpret_cast<VirtqDesc*>(g.Host(rp.ring[0], 16 * kBigSize));
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6));
  auto* used = reinterpret_cast<VirtqUsedHeader*>(g.Host(rp.ring[2], 6));
  GuestAddr buf = g.Alloc(64);
  for (uint16_t i = 0; i <= 300; ++i) {
    desc[i] = {Le64::Of(buf.value), Le32::Of(i < 300 ? 0 : 64), Le16::Of(i < 300 ? kDescFNext : 0),
               Le16::Of(i + 1)};
  }
  AvailRing(avail)[0] = Le16::Of(0);
  StoreRelease(avail->idx, 1);
  DescChain c;
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kEmpty);
  EXPECT_EQ(rp.device.drops().Get(DropReason::kChainTooLong), 1u);
  EXPECT_FALSE(rp.device.broken());
  rp.device.Flush();
  ASSERT_EQ(LoadAcquire(used->idx), 1);
  EXPECT_EQ(UsedRing(used)[0].id.get(), 0u);
  EXPECT_EQ(UsedRing(used)[0].len.get(), 0u);
  // kMaxChainDescs descriptors, empty ones counted, are still a chain.
  for (uint32_t i = 0; i < kMaxChainDescs; ++i) {
    desc[i] = {Le64::Of(buf.value), Le32::Of(i + 1 < kMaxChainDescs ? 0 : 64),
               Le16::Of(i + 1 < kMaxChainDescs ? kDescFNext : 0), Le16::Of(static_cast<uint16_t>(i + 1))};
  }
  AvailRing(avail)[1] = Le16::Of(0);
  StoreRelease(avail->idx, 2);
  ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(c.readable_bytes, 64u);
}

TEST(ChainAmplification, SplitLoopInABigTableIsCompletedNotWalkedRound) {
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = kBigSize});
  auto* desc = reinterpret_cast<VirtqDesc*>(g.Host(rp.ring[0], 16 * kBigSize));
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6));
  GuestAddr buf = g.Alloc(64);
  for (uint16_t i = 0; i < 3; ++i) {
    desc[i] = {Le64::Of(buf.value), Le32::Of(8), Le16::Of(kDescFNext), Le16::Of((i + 1) % 3)};
  }
  AvailRing(avail)[0] = Le16::Of(0);
  StoreRelease(avail->idx, 1);
  DescChain c;
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kEmpty);
  // 64 segments are reached first (non-empty descriptors); with empty ones, the walk bound.
  EXPECT_EQ(rp.device.drops().Get(DropReason::kChainTooLong), 1u);
  EXPECT_FALSE(rp.device.broken());
  for (uint16_t i = 0; i < 3; ++i) desc[i].len = Le32::Of(0);
  AvailRing(avail)[1] = Le16::Of(0);
  StoreRelease(avail->idx, 2);
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kEmpty);
  EXPECT_EQ(rp.device.drops().Get(DropReason::kChainTooLong), 2u);
  EXPECT_FALSE(rp.device.broken());
}

TEST(ChainAmplification, SplitIndirectTableLongerThanTheWalkBound) {
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = kBigSize, .features = Bit(kFRingIndirectDesc)});
  auto* desc = reinterpret_cast<VirtqDesc*>(g.Host(rp.ring[0], 16 * kBigSize));
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6));
  GuestAddr buf = g.Alloc(64);
  constexpr uint32_t n = kMaxChainDescs + 1;
  GuestAddr t = g.Alloc(16 * n, 16);
  auto* table = reinterpret_cast<VirtqDesc*>(g.Host(t, 16 * n));
  for (uint32_t i = 0; i < n; ++i) {
    table[i] = {Le64::Of(buf.value), Le32::Of(0), Le16::Of(i + 1 < n ? kDescFNext : 0),
                Le16::Of(static_cast<uint16_t>(i + 1))};
  }
  desc[0] = {Le64::Of(t.value), Le32::Of(16 * n), Le16::Of(kDescFIndirect), Le16::Of(0)};
  AvailRing(avail)[0] = Le16::Of(0);
  StoreRelease(avail->idx, 1);
  DescChain c;
  EXPECT_EQ(rp.device.Pop(&c), PopStatus::kEmpty);
  EXPECT_EQ(rp.device.drops().Get(DropReason::kChainTooLong), 1u);
}

// The packed fixture with a bigger ring: Put() of PackedHostile, with the lap's wrap bit.
class PackedBig : public ::testing::Test {
 protected:
  explicit PackedBig(uint32_t size = kBigSize, uint64_t features = Bit(kFRingIndirectDesc))
      : size_(size), rp_(g_, {.size = size, .features = features}) {
    desc_ = reinterpret_cast<VirtqPackedDesc*>(g_.Host(rp_.ring[0], 16ull * size));
    buf_ = g_.Alloc(64);
  }
  // Makes slot available in the lap whose driver wrap counter is `wrap`.
  void Put(uint16_t slot, uint32_t len, uint16_t id, uint16_t flags, bool wrap = true) {
    desc_[slot].addr = Le64::Of(buf_.value);
    desc_[slot].len = Le32::Of(len);
    desc_[slot].id = Le16::Of(id);
    const uint16_t wrap_bits = wrap ? kDescFAvail : kDescFUsed;
    StoreRelease(desc_[slot].flags, static_cast<uint16_t>(flags | wrap_bits));
  }
  // A chain of n descriptors from slot (in lap `wrap`), all empty but the last; head last.
  void PutChain(uint16_t slot, uint32_t n, uint16_t id, bool wrap = true) {
    std::vector<std::pair<uint16_t, bool>> at;
    for (uint32_t i = 0; i < n; ++i) {
      at.emplace_back(slot, wrap);
      if (++slot == size_) {
        slot = 0;
        wrap = !wrap;
      }
    }
    for (uint32_t i = n; i-- > 0;) {
      Put(at[i].first, i + 1 < n ? 0 : 64, id, i + 1 < n ? kDescFNext : 0, at[i].second);
    }
  }

  uint32_t size_;
  FakeGuest g_;
  RingPair<PackedLayout> rp_;
  VirtqPackedDesc* desc_;
  GuestAddr buf_;
};

TEST_F(PackedBig, ChainLongerThanTheWalkBoundBreaksTheQueue) {
  // Its id is in its last descriptor, past the bound: nothing to complete it with.
  PutChain(0, kMaxChainDescs + 1, 7);
  EXPECT_EQ(rp_.device.Available(32), 1u);  // counted, so that Pop() judges it
  DescChain c;
  EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kBroken);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kChainTooLong), 1u);
  EXPECT_EQ(rp_.device.Available(32), 0u);
}

TEST_F(PackedBig, ChainOfTheWalkBoundIsAChain) {
  PutChain(0, kMaxChainDescs, 7);
  EXPECT_EQ(rp_.device.Available(32), 1u);
  DescChain c;
  ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(c.num_descs, kMaxChainDescs);
  EXPECT_EQ(c.readable_bytes, 64u);
}

TEST_F(PackedBig, IndirectTableLongerThanTheWalkBoundIsCompletedEmpty) {
  constexpr uint32_t n = kMaxChainDescs + 1;
  GuestAddr t = g_.Alloc(16 * n, 16);
  auto* table = reinterpret_cast<VirtqPackedDesc*>(g_.Host(t, 16 * n));
  for (uint32_t i = 0; i < n; ++i) table[i] = {Le64::Of(buf_.value), Le32::Of(8), Le16::Of(0), Le16::Of(0)};
  desc_[0].addr = Le64::Of(t.value);
  desc_[0].len = Le32::Of(16 * n);
  desc_[0].id = Le16::Of(3);
  StoreRelease(desc_[0].flags, static_cast<uint16_t>(kDescFIndirect | kDescFAvail));
  DescChain c;
  EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kEmpty);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kChainTooLong), 1u);
  EXPECT_FALSE(rp_.device.broken());
}

// Issue 17, item 10: a chain whose head is available and whose next slot is not. Pop() broke
// the queue, but on a receive queue Pop() is only called when Available() says there is a
// buffer, and Available() counted no chain: the driver waited for ever, unjudged.
TEST_F(PackedBig, ChainIntoASlotNotMadeAvailableIsJudgedThroughAvailable) {
  Put(0, 0, 4, kDescFNext);  // slot 1 never made available
  EXPECT_EQ(rp_.device.Available(32), 1u);
  DescChain c;
  EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kBroken);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kPackedWrapInconsistent), 1u);
}

TEST_F(PackedBig, IdOutOfRangeIsJudgedThroughAvailable) {
  Put(0, 64, 0xffff, 0);
  EXPECT_EQ(rp_.device.Available(32), 1u);
  DescChain c;
  EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kBroken);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kPackedIdOutOfRange), 1u);
}

TEST_F(PackedBig, AvailableReadsABoundedNumberOfSlots) {
  // Every free slot chained in runs of kMaxChainDescs - 1: Available(32) stops after a
  // bounded walk and never counts more than Pop() would return.
  uint16_t slot = 0;
  uint16_t id = 0;
  while (slot + kMaxChainDescs - 1 <= size_) {
    PutChain(slot, kMaxChainDescs - 1, id++);
    slot = static_cast<uint16_t>(slot + kMaxChainDescs - 1);
  }
  const uint32_t counted = rp_.device.Available(32);
  EXPECT_GE(counted, 1u);
  EXPECT_LE(counted, 2u);  // 2 * kMaxChainDescs slots read at most
  DescChain c;
  for (uint32_t i = 0; i < counted; ++i) ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
}

// Issue 17, item 1 (critical): with IN_ORDER, a driver that reuses slots still in flight
// (chain A covering the whole ring, then chain B in A's head slot one lap later) made two
// chains span more than a lap; PushInOrderBatch advanced the used position by more than the
// ring size, Advance() wrapped it once, and the next used descriptor was written past the end
// of the descriptor ring, into whatever was mapped after it (another guest's memory).
class PackedLapOverrun : public PackedBig {
 protected:
  PackedLapOverrun() : PackedBig(8, Bit(kFInOrder)) {}
};

TEST_F(PackedLapOverrun, ChainsInFlightNeverCoverMoreThanTheRing) {
  // Move both positions to slot 5 with five one-descriptor chains.
  DescChain c[8];
  for (uint16_t s = 0; s < 5; ++s) Put(s, 64, s, 0);
  ASSERT_EQ(rp_.device.PopBurst(c, 5), 5u);
  ASSERT_TRUE(rp_.device.PushInOrderBatch({c, 5}));
  rp_.device.Flush();
  // What lies after the descriptor ring, to see that nothing is written there.
  std::byte* after = reinterpret_cast<std::byte*>(desc_ + size_);
  std::vector<std::byte> before(after, after + 64);

  PutChain(5, 8, 1);  // A: every slot of the ring, slots 5..7 and 0..4 of the next lap
  DescChain a;
  ASSERT_EQ(rp_.device.Pop(&a), PopStatus::kOk);
  EXPECT_EQ(a.num_descs, 8);
  // B: at slot 5 again, in the lap after A's head, while A is in flight.
  PutChain(5, 4, 2, /*wrap=*/false);
  EXPECT_EQ(rp_.device.Available(32), 1u);  // Pop() must judge it
  DescChain b;
  EXPECT_EQ(rp_.device.Pop(&b), PopStatus::kBroken);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kPackedRingOverrun), 1u);
  // A completes where it began; nothing was written past the ring.
  ASSERT_TRUE(rp_.device.PushInOrderBatch({&a, 1}));
  rp_.device.Flush();
  EXPECT_EQ(desc_[5].id.get(), 1);
  EXPECT_EQ(std::memcmp(after, before.data(), before.size()), 0);
}

TEST_F(PackedLapOverrun, OneDescriptorChainsPastAFullRing) {
  // Eight one-descriptor chains fill the ring; a ninth in slot 0's next lap is an overrun,
  // on the fast path as on the walk.
  for (uint16_t s = 0; s < 8; ++s) Put(s, 64, s, 0);
  DescChain c[8];
  ASSERT_EQ(rp_.device.PopBurst(c, 8), 8u);
  Put(0, 64, 0, 0, /*wrap=*/false);  // id 0 is still in flight too; the overrun is found first
  DescChain d;
  EXPECT_EQ(rp_.device.Pop(&d), PopStatus::kBroken);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kPackedRingOverrun), 1u);
}

TEST_F(PackedLapOverrun, RewoundChainsFreeTheirSlots) {
  for (uint16_t s = 0; s < 8; ++s) Put(s, 64, s, 0);
  DescChain c[8];
  ASSERT_EQ(rp_.device.PopBurst(c, 8), 8u);
  ASSERT_TRUE(rp_.device.Rewind({c, 8}));
  ASSERT_EQ(rp_.device.PopBurst(c, 8), 8u);  // the same eight again, no overrun
  EXPECT_FALSE(rp_.device.broken());
  ASSERT_TRUE(rp_.device.PushInOrderBatch({c, 8}));
  rp_.device.Flush();
  // The next lap: the ring is free again.
  Put(0, 64, 3, 0, /*wrap=*/false);
  DescChain d;
  ASSERT_EQ(rp_.device.Pop(&d), PopStatus::kOk);
  EXPECT_EQ(d.id, 3);
}


// Review finding: Pop() completed bad chains for as long as the driver posted them, and a
// driver with a second vCPU that reposts each one as soon as it is completed kept the worker
// in one Pop() for ever. Now one call completes at most kMaxBadChainsPerPop of them.
TEST(BadChainStorm, SplitPopCompletesBadChainsInBoundedSlices) {
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = kBigSize});
  auto* desc = reinterpret_cast<VirtqDesc*>(g.Host(rp.ring[0], 16 * kBigSize));
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6));
  GuestAddr buf = g.Alloc(64);
  constexpr uint16_t kBad = 100;
  for (uint16_t i = 0; i <= kBad; ++i) {
    const uint64_t addr = i < kBad ? UINT64_MAX - 3 : buf.value;  // the last one is good
    desc[i] = {Le64::Of(addr), Le32::Of(16), Le16::Of(0), Le16::Of(0)};
    AvailRing(avail)[i] = Le16::Of(i);
  }
  StoreRelease(avail->idx, kBad + 1);
  DescChain c;
  uint64_t done = 0;
  for (int call = 0; call < 3; ++call) {
    ASSERT_EQ(rp.device.Pop(&c), PopStatus::kEmpty);
    done += kMaxBadChainsPerPop;
    EXPECT_EQ(rp.device.drops().Get(DropReason::kDescOutsideMemory), done);
  }
  ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);  // the last 4 bad ones, then the good one
  EXPECT_EQ(c.id, kBad);
  EXPECT_EQ(rp.device.drops().Get(DropReason::kDescOutsideMemory), kBad);
}

TEST_F(PackedBig, PopCompletesBadChainsInBoundedSlices) {
  constexpr uint16_t kBad = 100;
  for (uint16_t s = 0; s < kBad; ++s) {
    desc_[s].addr = Le64::Of(UINT64_MAX - 3);
    desc_[s].len = Le32::Of(16);
    desc_[s].id = Le16::Of(s);
    StoreRelease(desc_[s].flags, static_cast<uint16_t>(kDescFAvail));
  }
  Put(kBad, 64, kBad, 0);
  DescChain c;
  for (uint32_t call = 1; call <= 3; ++call) {
    ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kEmpty);
    EXPECT_EQ(rp_.device.drops().Get(DropReason::kDescOutsideMemory), call * kMaxBadChainsPerPop);
  }
  ASSERT_EQ(rp_.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(c.id, kBad);
}

// Hostile review (2026-12-03): bad chains between good ones multiplied the bound by the
// burst: each Pop() completed 31 and then returned the good chain after them, so one PopBurst
// of 32 completed ~1000 bad chains. All the Pop()s of one burst share one budget now.
TEST(BadChainStorm, SplitPopBurstSharesOneBadChainBudget) {
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = kBigSize});
  auto* desc = reinterpret_cast<VirtqDesc*>(g.Host(rp.ring[0], 16 * kBigSize));
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6));
  GuestAddr buf = g.Alloc(64);
  for (uint16_t i = 0; i < kBigSize; ++i) {
    const bool good = i % kMaxBadChainsPerPop == kMaxBadChainsPerPop - 1;  // 31 bad, 1 good, ...
    desc[i] = {Le64::Of(good ? buf.value : UINT64_MAX - 3), Le32::Of(16), Le16::Of(0), Le16::Of(0)};
    AvailRing(avail)[i] = Le16::Of(i);
  }
  StoreRelease(avail->idx, static_cast<uint16_t>(kBigSize));
  DescChain c[kMaxBadChainsPerPop];
  EXPECT_EQ(rp.device.PopBurst(c, kMaxBadChainsPerPop), 1u);  // 31 bad, the good one, 1 bad
  EXPECT_EQ(c[0].id, kMaxBadChainsPerPop - 1);
  EXPECT_EQ(rp.device.drops().Get(DropReason::kDescOutsideMemory), kMaxBadChainsPerPop);
  // A caller's budget spans its calls: spent, the next burst takes nothing.
  uint32_t budget = 0;
  EXPECT_EQ(rp.device.PopBurst(c, kMaxBadChainsPerPop, &budget), 0u);
  EXPECT_EQ(rp.device.drops().Get(DropReason::kDescOutsideMemory), kMaxBadChainsPerPop);
  // A new call goes on where the last stopped.
  EXPECT_EQ(rp.device.PopBurst(c, kMaxBadChainsPerPop), 1u);
  EXPECT_EQ(c[0].id, 2 * kMaxBadChainsPerPop - 1);
  EXPECT_FALSE(rp.device.broken());
}

TEST_F(PackedBig, PopBurstSharesOneBadChainBudget) {
  for (uint16_t s = 0; s < kBigSize; ++s) {
    const bool good = s % kMaxBadChainsPerPop == kMaxBadChainsPerPop - 1;
    Put(s, 16, s, 0);
    if (!good) desc_[s].addr = Le64::Of(UINT64_MAX - 3);
  }
  DescChain c[kMaxBadChainsPerPop];
  EXPECT_EQ(rp_.device.PopBurst(c, kMaxBadChainsPerPop), 1u);
  EXPECT_EQ(c[0].id, kMaxBadChainsPerPop - 1);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kDescOutsideMemory), kMaxBadChainsPerPop);
  EXPECT_FALSE(rp_.device.broken());
}

// Hostile review (2026-12-03): after a Rewind the avail idx loaded before it could be more than
// a ring ahead of the rewound position (loaded, and checked, from further on), and the next
// burst took entries of the next lap as if they were this one's. Rewind makes the next pop load
// the idx again and check it from where the ring now is.
TEST(SplitRewind, TheAvailIdxIsCheckedAgainFromTheRewoundPosition) {
  constexpr uint16_t kSize = 16;
  FakeGuest g;
  RingPair<SplitLayout> rp(g, {.size = kSize});
  auto* desc = reinterpret_cast<VirtqDesc*>(g.Host(rp.ring[0], 16 * kSize));
  auto* avail = reinterpret_cast<VirtqAvailHeader*>(g.Host(rp.ring[1], 6));
  GuestAddr buf = g.Alloc(64);
  for (uint16_t i = 0; i < kSize; ++i) {
    desc[i] = {Le64::Of(buf.value), Le32::Of(16), Le16::Of(0), Le16::Of(0)};
    AvailRing(avail)[i] = Le16::Of(i);
  }
  StoreRelease(avail->idx, uint16_t{8});
  DescChain c[2 * kSize];
  ASSERT_EQ(rp.device.PopBurst(c, 8), 8u);
  StoreRelease(avail->idx, static_cast<uint16_t>(8 + kSize));  // a ring ahead of 8: allowed
  ASSERT_EQ(rp.device.PopBurst(&c[8], 1), 1u);
  ASSERT_TRUE(rp.device.Rewind({c, 9}));  // back to 0: the idx is now more than a ring ahead
  EXPECT_EQ(rp.device.PopBurst(c, 2 * kSize), 0u);
  EXPECT_TRUE(rp.device.broken());
  EXPECT_EQ(rp.device.broken_reason(), DropReason::kAvailIdxJump);
}

// Hostile review (2026-12-03): a driver that reposts the completions it already sees (all but
// a burst's first, whose flags wait for Flush) can bring the used position a whole lap round
// before Flush; the deferred first flags then went out over the newer completion in that slot.
TEST(PackedLap, APushThatLapsTheBurstsFirstSlotPublishesItFirst) {
  constexpr uint16_t kSize = 4;
  FakeGuest g;
  RingPair<PackedLayout> rp(g, {.size = kSize});
  auto* desc = reinterpret_cast<VirtqPackedDesc*>(g.Host(rp.ring[0], 16 * kSize));
  GuestAddr buf = g.Alloc(64);
  auto put = [&](uint16_t slot, uint16_t id, bool wrap) {
    desc[slot].addr = Le64::Of(buf.value);
    desc[slot].len = Le32::Of(16);
    desc[slot].id = Le16::Of(id);
    StoreRelease(desc[slot].flags, static_cast<uint16_t>(wrap ? kDescFAvail : kDescFUsed));
  };
  for (uint16_t s = 0; s < kSize; ++s) put(s, s, true);
  DescChain c;
  for (uint16_t s = 0; s < kSize; ++s) {  // pop and complete one at a time, no Flush
    ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
    rp.device.Push(c.id, 0);
  }
  // The driver saw slots 1..3 used and reposts slot 0 in the next lap without waiting.
  put(0, 2, false);
  ASSERT_EQ(rp.device.Pop(&c), PopStatus::kOk);
  EXPECT_EQ(c.id, 2);
  rp.device.Push(c.id, 0);  // lands on slot 0, the first burst's first slot
  // Slot 0's first completion (id 0, used in lap 1) was published before the slot was reused;
  // the new completion (id 2, lap 2) waits for Flush, then shows with its own flags.
  rp.device.Flush();
  const uint16_t f = LoadAcquire(desc[0].flags);
  EXPECT_EQ(f & (kDescFAvail | kDescFUsed), 0);  // used in the lap whose wrap counter is 0
  EXPECT_EQ(desc[0].id.get(), 2);
  EXPECT_FALSE(rp.device.broken());
}

// Review finding: a packed chain of direct descriptors ending in an indirect one read its
// table on top of them (up to 255 descriptors); the walk bound covers both together.
TEST_F(PackedBig, DirectDescriptorsAndAnIndirectTableShareTheWalkBound) {
  constexpr uint32_t kDirect = kMaxChainDescs - 1;  // then one indirect descriptor
  constexpr uint32_t kEntries = 2;                  // one more than the bound leaves
  GuestAddr t = g_.Alloc(16 * kEntries, 16);
  auto* table = reinterpret_cast<VirtqPackedDesc*>(g_.Host(t, 16 * kEntries));
  for (uint32_t i = 0; i < kEntries; ++i) table[i] = {Le64::Of(buf_.value), Le32::Of(8), Le16::Of(0), Le16::Of(0)};
  desc_[kDirect].addr = Le64::Of(t.value);
  desc_[kDirect].len = Le32::Of(16 * kEntries);
  desc_[kDirect].id = Le16::Of(5);
  StoreRelease(desc_[kDirect].flags, static_cast<uint16_t>(kDescFIndirect | kDescFAvail));
  for (uint32_t i = kDirect; i-- > 0;) Put(static_cast<uint16_t>(i), 0, 5, kDescFNext);
  DescChain c;
  EXPECT_EQ(rp_.device.Pop(&c), PopStatus::kEmpty);
  EXPECT_EQ(rp_.device.drops().Get(DropReason::kChainTooLong), 1u);
  EXPECT_FALSE(rp_.device.broken());
}

}  // namespace
}  // namespace nicmux::virtio
