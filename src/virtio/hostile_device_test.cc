// A hostile device against the driver side of both layouts (DriverSplitVring /
// DriverPackedVring): what a vhost-user backend that a virtio-user port or nicmux-pktgen drives
// can write into the rings it shares. The driver must return only what it handed out, clamp
// lengths, and stop the queue (broken, for good) rather than free a descriptor twice or take
// one it never gave. fuzz/driver_used_fuzz.cc drives the same with any bytes anywhere;
// hostile_guest_test.cc's HostileDevice tests are the first three cases of this.
#include <gtest/gtest.h>

#include <cstring>

#include "tests/support/fake_guest.h"

namespace nicmux::virtio {
namespace {

using testing::FakeGuest;
using testing::PackedLayout;
using testing::RingOptions;
using testing::RingPair;
using testing::SplitLayout;

constexpr uint32_t kSize = 8;

template <typename L>
class HostileDeviceDriver : public ::testing::Test {
 protected:
  HostileDeviceDriver() : g_(1u << 20), rp_(g_, RingOptions{.size = kSize, .max_indirect = 4}) {
    buf_ = g_.Alloc(4096, 64);
  }
  // A chain of one readable 16-byte buffer and one writable one of `writable` bytes.
  uint16_t Add(uint32_t writable) {
    DriverBuffer b[2] = {{buf_, 16, false}, {GuestAddr{buf_.value + 1024}, writable, true}};
    auto id = rp_.driver.Add({b, 2});
    EXPECT_TRUE(id.has_value());
    return id.value_or(0);
  }
  // The device completes `id` with `len` at its next used position, as a device would write it
  // (whatever id and len it chooses). slots: how far the packed device moves on.
  void Complete(uint16_t id, uint32_t len, uint32_t slots = 2) {
    if constexpr (L::kPacked) {
      auto* desc = reinterpret_cast<VirtqPackedDesc*>(g_.Host(rp_.ring[0], kSize * sizeof(VirtqPackedDesc)));
      VirtqPackedDesc u{};
      u.id.set(id);
      u.len.set(len);
      u.flags.set(wrap_ ? static_cast<uint16_t>(kDescFAvail | kDescFUsed) : uint16_t{0});
      std::memcpy(&desc[pos_], &u, sizeof u);
      pos_ += slots;
      if (pos_ >= kSize) {
        pos_ -= kSize;
        wrap_ = !wrap_;
      }
    } else {
      auto* used = reinterpret_cast<VirtqUsedHeader*>(g_.Host(rp_.ring[2], SplitRingLayout::UsedBytes(kSize)));
      VirtqUsedElem e{};
      e.id.set(id);
      e.len.set(len);
      std::memcpy(&UsedRing(used)[idx_ % kSize], &e, sizeof e);
      used->idx.set(++idx_);
    }
  }
  void ExpectBrokenFor(DropReason why) {
    UsedBuffer u;
    EXPECT_EQ(rp_.driver.PopUsed(&u), PopStatus::kBroken);
    EXPECT_TRUE(rp_.driver.broken());
    EXPECT_EQ(rp_.driver.drops().Get(why), 1u);
    // Broken for good: nothing more comes out, whatever the device writes next.
    Complete(0, 1);
    EXPECT_EQ(rp_.driver.PopUsed(&u), PopStatus::kBroken);
    EXPECT_FALSE(rp_.driver.id_in_flight(0));
  }

  FakeGuest g_;
  RingPair<L> rp_;
  GuestAddr buf_{0};
  uint16_t idx_ = 0;
  uint16_t pos_ = 0;
  bool wrap_ = true;
};

using Layouts = ::testing::Types<SplitLayout, PackedLayout>;
TYPED_TEST_SUITE(HostileDeviceDriver, Layouts);

TYPED_TEST(HostileDeviceDriver, AnHonestCompletionComesBackOnce) {
  const uint16_t a = this->Add(100);
  this->rp_.driver.Publish();
  this->Complete(a, 60);
  UsedBuffer u;
  ASSERT_EQ(this->rp_.driver.PopUsed(&u), PopStatus::kOk);
  EXPECT_EQ(u.id, a);
  EXPECT_EQ(u.len, 60u);
  EXPECT_EQ(this->rp_.driver.PopUsed(&u), PopStatus::kEmpty);
  EXPECT_EQ(this->rp_.driver.num_free(), kSize);
  EXPECT_FALSE(this->rp_.driver.broken());
}

TYPED_TEST(HostileDeviceDriver, ALengthAboveTheBufferIsClampedAndCounted) {
  const uint16_t a = this->Add(100);
  this->rp_.driver.Publish();
  this->Complete(a, 0xffffffffu);
  UsedBuffer u;
  ASSERT_EQ(this->rp_.driver.PopUsed(&u), PopStatus::kOk);
  EXPECT_EQ(u.len, 100u);
  EXPECT_EQ(this->rp_.driver.drops().Get(DropReason::kUsedLenTooLong), 1u);
  EXPECT_FALSE(this->rp_.driver.broken());
}

TYPED_TEST(HostileDeviceDriver, AnIdNeverHandedOutBreaksTheQueue) {
  this->Add(100);
  this->rp_.driver.Publish();
  this->Complete(5, 4);  // no chain has id 5
  this->ExpectBrokenFor(DropReason::kUsedIdOutOfRange);
}

TYPED_TEST(HostileDeviceDriver, AnIdBeyondTheRingBreaksTheQueue) {
  this->Add(100);
  this->rp_.driver.Publish();
  this->Complete(0xffff, 4);
  this->ExpectBrokenFor(DropReason::kUsedIdOutOfRange);
}

TYPED_TEST(HostileDeviceDriver, TheSameIdTwiceBreaksTheQueueInsteadOfFreeingItTwice) {
  const uint16_t a = this->Add(100);
  this->Add(100);
  this->rp_.driver.Publish();
  this->Complete(a, 4);
  this->Complete(a, 4);
  UsedBuffer u;
  ASSERT_EQ(this->rp_.driver.PopUsed(&u), PopStatus::kOk);
  EXPECT_EQ(u.id, a);
  this->ExpectBrokenFor(DropReason::kUsedIdOutOfRange);
  // The free list was not corrupted by a second free: the counts still add up to what the
  // driver handed out (one chain of two descriptors or slots in flight).
  EXPECT_EQ(this->rp_.driver.num_free(), kSize - 2);
}

TYPED_TEST(HostileDeviceDriver, ASecondDescriptorOfAChainIsNotAnIdInFlight) {
  const uint16_t a = this->Add(100);
  this->rp_.driver.Publish();
  // Split: the chain's second descriptor (a + 1 in a fresh ring) is not a head; packed: the id
  // is a buffer id, and a + 1 was never given.
  this->Complete(static_cast<uint16_t>(a + 1), 4);
  this->ExpectBrokenFor(DropReason::kUsedIdOutOfRange);
}

TEST(HostileDeviceSplit, AUsedIdxJumpBeyondWhatIsInFlightBreaksTheQueue) {
  FakeGuest g(1u << 20);
  RingPair<SplitLayout> rp(g, RingOptions{.size = kSize, .max_indirect = 0});
  const GuestAddr b = g.Alloc(256, 64);
  DriverBuffer one[1] = {{b, 64, true}};
  ASSERT_TRUE(rp.driver.Add({one, 1}).has_value());
  ASSERT_TRUE(rp.driver.Add({one, 1}).has_value());
  rp.driver.Publish();
  // Two in flight; the device claims three used entries (the third would be whatever stale
  // entry lies in the ring: a chain completed twice).
  auto* used = reinterpret_cast<VirtqUsedHeader*>(g.Host(rp.ring[2], SplitRingLayout::UsedBytes(kSize)));
  used->idx.set(3);
  UsedBuffer u;
  EXPECT_EQ(rp.driver.PopUsed(&u), PopStatus::kBroken);
  EXPECT_EQ(rp.driver.drops().Get(DropReason::kUsedIdxJump), 1u);
  EXPECT_TRUE(rp.driver.broken());
  // A jump backwards is a jump of ~65535 forwards: the same.
  FakeGuest g2(1u << 20);
  RingPair<SplitLayout> rp2(g2, RingOptions{.size = kSize, .max_indirect = 0});
  const GuestAddr b2 = g2.Alloc(256, 64);
  DriverBuffer one2[1] = {{b2, 64, true}};
  ASSERT_TRUE(rp2.driver.Add({one2, 1}).has_value());
  rp2.driver.Publish();
  reinterpret_cast<VirtqUsedHeader*>(g2.Host(rp2.ring[2], SplitRingLayout::UsedBytes(kSize)))->idx.set(0xffff);
  EXPECT_EQ(rp2.driver.PopUsed(&u), PopStatus::kBroken);
  EXPECT_EQ(rp2.driver.drops().Get(DropReason::kUsedIdxJump), 1u);
}

TEST(HostileDevicePacked, FlagsOfTheWrongWrapAreNotAUsedDescriptor) {
  FakeGuest g(1u << 20);
  RingPair<PackedLayout> rp(g, RingOptions{.size = kSize, .max_indirect = 0});
  const GuestAddr b = g.Alloc(256, 64);
  DriverBuffer one[1] = {{b, 64, true}};
  const auto id = rp.driver.Add({one, 1});
  ASSERT_TRUE(id.has_value());
  rp.driver.Publish();
  auto* desc = reinterpret_cast<VirtqPackedDesc*>(g.Host(rp.ring[0], kSize * sizeof(VirtqPackedDesc)));
  // AVAIL without USED (what the driver itself wrote), and USED without AVAIL: neither is a
  // used descriptor of this lap.
  for (uint16_t flags : {uint16_t{kDescFAvail}, uint16_t{kDescFUsed}}) {
    VirtqPackedDesc u{};
    u.id.set(*id);
    u.len.set(8);
    u.flags.set(flags);
    std::memcpy(&desc[0], &u, sizeof u);
    UsedBuffer out;
    EXPECT_EQ(rp.driver.PopUsed(&out), PopStatus::kEmpty);
    EXPECT_TRUE(rp.driver.id_in_flight(*id));
  }
  EXPECT_FALSE(rp.driver.broken());
}

}  // namespace
}  // namespace nicmux::virtio
