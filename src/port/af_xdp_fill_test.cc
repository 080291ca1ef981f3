// The af_xdp port's fill-ring refill over a ring in plain memory, the kernel's side played by
// moving the consumer index: a frame that comes back while the kernel has not yet published
// the consumer index past its slot is owed, then given first once the slot shows free.
#include "port/af_xdp_fill.h"

#include <gtest/gtest.h>

#include <array>
#include <vector>

namespace nicmux {
namespace {

constexpr uint64_t kFrame = 4096;
constexpr uint64_t kMask = ~(kFrame - 1);

struct FakeFill {
  explicit FakeFill(uint32_t size) : slots(size) {
    ring.size = size;
    ring.mask = size - 1;
    ring.producer = &prod;
    ring.consumer = &cons;
    ring.ring = slots.data();
    ring.flags = &flags;
    ring.cached_prod = 0;
    ring.cached_cons = size;  // (libxdp's convention: a producer's cached_cons runs `size` ahead)
  }
  // The kernel takes n entries and publishes its consumer index.
  std::vector<uint64_t> Consume(uint32_t n) {
    std::vector<uint64_t> got;
    for (uint32_t i = 0; i < n; ++i) got.push_back(slots[(cons + i) & ring.mask]);
    cons += n;
    return got;
  }
  uint32_t prod = 0, cons = 0, flags = 0;
  std::vector<uint64_t> slots;
  xsk_ring_prod ring{};
};

TEST(AfXdpFill, AllFitsNothingOwed) {
  FakeFill f(8);
  std::vector<uint64_t> owed;
  const uint64_t a[] = {0 * kFrame + 256, 1 * kFrame + 256, 2 * kFrame};
  EXPECT_EQ(FillOrOwe(&f.ring, &owed, a, 3, kMask), 3u);
  EXPECT_TRUE(owed.empty());
  EXPECT_EQ(f.prod, 3u);
  EXPECT_EQ(f.Consume(3), (std::vector<uint64_t>{0, kFrame, 2 * kFrame}));  // masked to the frame
}

TEST(AfXdpFill, FrameBackBeforeTheConsumerIsPublishedIsOwedThenGivenFirst) {
  // Every frame of the queue is on the fill ring; the kernel took two (received into them)
  // but has not published its consumer index when they come back.
  FakeFill f(4);
  std::vector<uint64_t> owed;
  const uint64_t all[] = {0, kFrame, 2 * kFrame, 3 * kFrame};
  ASSERT_EQ(FillOrOwe(&f.ring, &owed, all, 4, kMask), 4u);
  const uint64_t back[] = {0 + 256, kFrame + 256};
  EXPECT_EQ(FillOrOwe(&f.ring, &owed, back, 2, kMask), 0u);
  EXPECT_EQ(owed, (std::vector<uint64_t>{0, kFrame}));
  EXPECT_EQ(f.prod, 4u);
  // The kernel publishes those two (their slots show free) and takes the other two, again
  // unpublished; one of those comes back too. Room for two: the owed ones go first, in order,
  // and the new one is owed.
  EXPECT_EQ(f.Consume(2), (std::vector<uint64_t>{0, kFrame}));
  const uint64_t more[] = {2 * kFrame + 256};
  EXPECT_EQ(FillOrOwe(&f.ring, &owed, more, 1, kMask), 2u);
  EXPECT_EQ(owed, (std::vector<uint64_t>{2 * kFrame}));
  // Published: a refill with nothing new gives what is owed.
  EXPECT_EQ(f.Consume(2), (std::vector<uint64_t>{2 * kFrame, 3 * kFrame}));
  EXPECT_EQ(FillOrOwe(&f.ring, &owed, nullptr, 0, kMask), 1u);
  EXPECT_TRUE(owed.empty());
  EXPECT_EQ(f.Consume(3), (std::vector<uint64_t>{0, kFrame, 2 * kFrame}));
  EXPECT_EQ(f.prod, 7u);
}

TEST(AfXdpFill, PartlyRoomTakesOwedBeforeNew) {
  FakeFill f(4);
  std::vector<uint64_t> owed = {kFrame};
  const uint64_t all[] = {0, 2 * kFrame, 3 * kFrame};
  ASSERT_EQ(FillOrOwe(&f.ring, &owed, all, 3, kMask), 4u);  // owed first, then the three
  EXPECT_EQ(f.Consume(4), (std::vector<uint64_t>{kFrame, 0, 2 * kFrame, 3 * kFrame}));
  // Room for 4 again; 1 owed + 5 new: the owed one and three new fit, two new are owed.
  owed = {kFrame};
  const uint64_t five[] = {0, 2 * kFrame, 3 * kFrame, 4 * kFrame, 5 * kFrame};
  EXPECT_EQ(FillOrOwe(&f.ring, &owed, five, 5, kMask), 4u);
  EXPECT_EQ(owed, (std::vector<uint64_t>{4 * kFrame, 5 * kFrame}));
  EXPECT_EQ(f.Consume(4), (std::vector<uint64_t>{kFrame, 0, 2 * kFrame, 3 * kFrame}));
}

}  // namespace
}  // namespace nicmux
