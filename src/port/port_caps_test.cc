#include <gtest/gtest.h>

#include "port/port.h"
#include "virtio/features.h"

namespace nicmux {
namespace {

TEST(PortCaps, AcceptsOnlyWhatItHas) {
  PortCaps none;
  Offload plain;
  EXPECT_TRUE(none.Accepts(plain));
  Offload csum;
  csum.flags = Offload::kNeedsCsum;
  EXPECT_FALSE(none.Accepts(csum));
  Offload valid;
  valid.flags = Offload::kCsumValid;
  EXPECT_FALSE(none.Accepts(valid));
  Offload tso4;
  tso4.gso_type = GsoType::kTcp4;
  tso4.flags = Offload::kNeedsCsum;
  Offload tso6 = tso4;
  tso6.gso_type = GsoType::kTcp6;
  Offload ecn = tso4;
  ecn.flags |= Offload::kEcn;

  PortCaps c{PortCaps::kCsum | PortCaps::kTso4};
  EXPECT_TRUE(c.Accepts(csum));
  EXPECT_TRUE(c.Accepts(tso4));
  EXPECT_FALSE(c.Accepts(tso6));
  EXPECT_FALSE(c.Accepts(ecn)) << "ECN needs its own bit";
  EXPECT_FALSE(c.Accepts(valid));
  c.offloads |= PortCaps::kEcn | PortCaps::kTso6 | PortCaps::kCsumValid;
  EXPECT_TRUE(c.Accepts(ecn));
  EXPECT_TRUE(c.Accepts(tso6));
  EXPECT_TRUE(c.Accepts(valid));
  Offload bad;
  bad.gso_type = GsoType::kInvalid;
  EXPECT_FALSE(PortCaps{0xff}.Accepts(bad)) << "an invalid record is never passed on";
}

TEST(PortCaps, PacksIntoOneWordAndPrints) {
  const PortCaps c{PortCaps::kCsum | PortCaps::kTso6, 9000, 65550};
  EXPECT_EQ(PortCaps::Unpack(c.Pack()), c);
  EXPECT_EQ(c.ToString(), "csum tso6, mtu 9000, max_frame 65550");
  EXPECT_EQ(PortCaps{}.ToString(), "none");
}

TEST(PortCaps, FeatureNames) {
  using namespace virtio;
  EXPECT_EQ(NetFeatureNames(Bit(kFVersion1) | Bit(kNetFCsum) | Bit(kNetFHostTso4) | Bit(61)),
            "csum host_tso4 version_1 bit61");
  EXPECT_EQ(NetFeatureNames(0), "");
}

}  // namespace
}  // namespace nicmux
