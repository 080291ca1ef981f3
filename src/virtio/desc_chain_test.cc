#include "virtio/desc_chain.h"

#include <gtest/gtest.h>

#include "tests/support/fake_guest.h"

namespace nicmux::virtio {
namespace {

using testing::FakeGuest;

TEST(ChainBuilder, ReadableThenWritableAndStreams) {
  FakeGuest g(1 << 16);
  DescChain c;
  ChainBuilder b(g.mem(), ChainPolicy::kAny, &c);
  uint64_t base = FakeGuest::kDefaultGpa;
  ASSERT_FALSE(b.Add(base + 0, 3, false));
  ASSERT_FALSE(b.Add(base + 100, 0, false));  // zero length: no segment
  ASSERT_FALSE(b.Add(base + 200, 5, false));
  ASSERT_FALSE(b.Add(base + 300, 4, true));
  ASSERT_FALSE(b.Add(base + 400, 6, true));
  EXPECT_EQ(c.num_readable, 2);
  EXPECT_EQ(c.num_segments, 4);
  EXPECT_EQ(c.readable_bytes, 8u);
  EXPECT_EQ(c.writable_bytes, 10u);
  EXPECT_EQ(b.Add(base + 500, 1, false), DropReason::kReadableAfterWritable);

  std::memcpy(g.Host(GuestAddr{base}), "abc", 3);
  std::memcpy(g.Host(GuestAddr{base + 200}), "defgh", 5);
  ChainReader r(c);
  char out[9] = {};
  EXPECT_EQ(r.Skip(1), 1u);
  EXPECT_EQ(r.Read(out, 100), 7u);
  EXPECT_STREQ(out, "bcdefgh");
  EXPECT_EQ(r.remaining(), 0u);

  ChainWriter w(c);
  EXPECT_EQ(w.Write("0123456789XYZ", 13), 10u);
  EXPECT_EQ(std::memcmp(g.Host(GuestAddr{base + 300}), "0123", 4), 0);
  EXPECT_EQ(std::memcmp(g.Host(GuestAddr{base + 400}), "456789", 6), 0);
  EXPECT_EQ(w.written(), 10u);
  // A patch of bytes already written, across the two writable segments (a checksum field
  // completed after the copy).
  w.Patch(2, "ab", 2);
  w.Patch(3, "cd", 2);
  EXPECT_EQ(std::memcmp(g.Host(GuestAddr{base + 300}), "01ac", 4), 0);
  EXPECT_EQ(std::memcmp(g.Host(GuestAddr{base + 400}), "d56789", 6), 0);
  EXPECT_EQ(PatchChain(c, 9, reinterpret_cast<const std::byte*>("zz"), 2), 1u) << "only what the chain holds";
}

TEST(ChainBuilder, PolicyAndLimits) {
  FakeGuest g(1 << 16);
  uint64_t base = FakeGuest::kDefaultGpa;
  DescChain c;
  {
    ChainBuilder b(g.mem(), ChainPolicy::kReadOnly, &c);
    EXPECT_EQ(b.Add(base, 1, true), DropReason::kReadableExpected);
  }
  {
    ChainBuilder b(g.mem(), ChainPolicy::kWriteOnly, &c);
    EXPECT_EQ(b.Add(base, 1, false), DropReason::kWritableExpected);
  }
  {
    ChainBuilder b(g.mem(), ChainPolicy::kAny, &c);
    EXPECT_EQ(b.Add(base + (1 << 16) - 1, 2, false), DropReason::kDescOutsideMemory);
    for (uint32_t i = 0; i < kMaxChainSegments; ++i) ASSERT_FALSE(b.Add(base + i, 1, false));
    EXPECT_EQ(b.Add(base, 1, false), DropReason::kChainTooLong);
  }
}

}  // namespace
}  // namespace nicmux::virtio
