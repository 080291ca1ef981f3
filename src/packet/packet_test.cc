#include "packet/packet.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

namespace nicmux {
namespace {

// PacketFromFlat: a PacketRef over one buffer, for every length around the head's size.
TEST(Packet, FromFlatBufferEveryLength) {
  for (uint32_t len : {0u, 1u, 14u, 63u, 64u, 65u, 1514u, 9000u}) {
    std::vector<std::byte> buf(len + 1);
    for (uint32_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>(i * 13);
    PacketRef p;
    p.offload.flags = Offload::kNeedsCsum;
    Segment seg;
    PacketFromFlat(&p, &seg, buf.data(), len);
    EXPECT_EQ(p.len, len);
    EXPECT_EQ(p.head_len, std::min(len, kHeadBytes));
    EXPECT_TRUE(p.offload.none()) << "a stale record is cleared";
    std::vector<std::byte> out(len + 8, std::byte{0x5a});
    EXPECT_EQ(CopyPacketTo(p, out.data()), len);
    EXPECT_TRUE(std::equal(buf.begin(), buf.begin() + len, out.begin())) << len;
    EXPECT_EQ(out[len], std::byte{0x5a}) << "nothing past the end";
  }
}

TEST(Packet, BatchRefusesTheThirtyThird) {
  Batch b;
  for (uint32_t i = 0; i < kBurst; ++i) ASSERT_NE(b.TryPush(), nullptr);
  EXPECT_TRUE(b.full());
  EXPECT_EQ(b.TryPush(), nullptr);
  EXPECT_EQ(b.size(), kBurst);
}

}  // namespace
}  // namespace nicmux
