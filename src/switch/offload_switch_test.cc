// The switch and offload records (docs/offloads.md): passed through to destinations whose caps
// accept them, completed in software for the others (checksum completion, segmentation), and
// refused when they do not match the frame.
#include <gtest/gtest.h>

#include "switch/l2_switch.h"
#include "switch/xconnect.h"
#include "tests/support/frames.h"
#include "tests/support/mem_port.h"

namespace nicmux {
namespace {

using testing::Bytes;
using testing::ChecksumOk;
using testing::FrameSpec;
using testing::MakeTcpUdpFrame;
using testing::MemPort;

struct Net {
  explicit Net(int nports, std::vector<SwitchPortConfig> cfg = {}) : sw(SwitchOptions{}) {
    for (int i = 0; i < nports; ++i) {
      ports.push_back(std::make_unique<MemPort>("p" + std::to_string(i)));
      auto id = sw.AddPort(ports.back().get(), i < int(cfg.size()) ? cfg[i] : SwitchPortConfig{});
      EXPECT_TRUE(id.has_value());
    }
  }
  void Run() {
    for (int r = 0; r < 4; ++r) sw.worker(0)->ForwardAll();
  }
  MemPort& port(int i) { return *ports[i]; }
  L2Switch sw;
  std::vector<std::unique_ptr<MemPort>> ports;
};

Offload Tso(const FrameSpec& fs, uint16_t mss) {
  Offload o;
  o.gso_type = fs.udp ? GsoType::kUdpL4 : fs.ipv6 ? GsoType::kTcp6 : GsoType::kTcp4;
  o.gso_size = mss;
  o.hdr_len = static_cast<uint16_t>(fs.Hdrs());
  o.flags = Offload::kNeedsCsum;
  o.csum_start = static_cast<uint16_t>(fs.L4());
  o.csum_offset = fs.udp ? 6 : 16;
  return o;
}

constexpr PortCaps kTsoCaps{PortCaps::kCsum | PortCaps::kCsumValid | PortCaps::kTso4 | PortCaps::kTso6 |
                            PortCaps::kEcn};

// A 64 KiB TSO frame flooded to a port that takes TSO and one that does not: the first gets it
// as one packet with its record, the second 45 whole segments with valid checksums.
TEST(SwitchOffload, TsoPassesThroughOrIsSegmented) {
  for (bool v6 : {false, true}) {
    Net n(3);
    n.port(1).set_caps(kTsoCaps);
    FrameSpec fs;
    fs.ipv6 = v6;
    fs.tcp_options = 12;
    fs.payload = 65000;
    fs.partial_csum = true;
    const Bytes f = MakeTcpUdpFrame(fs);
    const uint16_t mss = 1448;
    n.port(0).Inject(f, Tso(fs, mss));
    n.Run();
    ASSERT_EQ(n.port(1).sent().size(), 1u);
    EXPECT_EQ(n.port(1).sent()[0], f) << "passed through, bytes untouched";
    EXPECT_TRUE(n.port(1).sent_offloads()[0].gso());
    EXPECT_EQ(n.port(1).sent_offloads()[0].gso_size, mss);
    const uint32_t segs = (fs.payload + mss - 1) / mss;
    ASSERT_EQ(n.port(2).sent().size(), segs);
    Bytes joined;
    for (uint32_t s = 0; s < segs; ++s) {
      const Bytes& q = n.port(2).sent()[s];
      EXPECT_TRUE(ChecksumOk(q, fs)) << s;
      EXPECT_TRUE(testing::IpHeaderOk(q, fs)) << s;
      EXPECT_EQ(testing::TcpSeq(q, fs), fs.seq + s * mss);
      EXPECT_FALSE(n.port(2).sent_offloads()[s].gso());
      EXPECT_FALSE(n.port(2).sent_offloads()[s].needs_csum());
      joined.insert(joined.end(), q.begin() + fs.Hdrs(), q.end());
    }
    EXPECT_TRUE(joined == Bytes(f.begin() + fs.Hdrs(), f.end()));
    EXPECT_EQ(n.sw.DropsFor(0, DropReason::kBadOffload), 0u);
  }
}

// A TSO frame towards ports without TSO: one that takes partial checksums gets its segments
// partial; one that sums in its copy (kCsumOnCopy, as vhost-user) gets them partial too and
// completes them itself, so the switch never reads the payload for them; only for a port with
// neither does the switch sum them.
TEST(SwitchOffload, SegmentChecksumsAreLeftToWhoeverCopies) {
  Net n(4);
  n.port(1).set_caps({PortCaps::kCsum});
  n.port(2).set_caps({PortCaps::kCsumOnCopy});
  FrameSpec fs;
  fs.payload = 20000;
  fs.partial_csum = true;
  const Bytes f = MakeTcpUdpFrame(fs);
  n.port(0).Inject(f, Tso(fs, 1000));
  n.Run();
  for (int d = 1; d <= 3; ++d) {
    ASSERT_EQ(n.port(d).sent().size(), 20u) << "port " << d;
    for (uint32_t s = 0; s < 20; ++s) {
      const Offload& o = n.port(d).sent_offloads()[s];
      EXPECT_FALSE(o.gso());
      EXPECT_EQ(o.needs_csum(), d != 3) << "port " << d << " segment " << s << ": handed over partial";
      EXPECT_EQ(ChecksumOk(n.port(d).sent()[s], fs), d != 1) << "port " << d << " segment " << s;
      if (d == 1) {
        Bytes q = n.port(d).sent()[s];
        testing::CompleteReference(q, o.csum_start, o.csum_offset);
        EXPECT_TRUE(ChecksumOk(q, fs)) << "the seed is the pseudo-header's sum, segment " << s;
      }
    }
  }
}

// A partial checksum towards a port without checksum offload is completed; towards one with it
// the record passes.
TEST(SwitchOffload, PartialChecksumCompletedWhereNotAccepted) {
  Net n(3);
  n.port(1).set_caps(kTsoCaps);
  FrameSpec fs;
  fs.udp = true;
  fs.payload = 999;
  fs.partial_csum = true;
  const Bytes f = MakeTcpUdpFrame(fs);
  Offload o;
  o.flags = Offload::kNeedsCsum;
  o.csum_start = static_cast<uint16_t>(fs.L4());
  o.csum_offset = 6;
  n.port(0).Inject(f, o);
  n.Run();
  ASSERT_EQ(n.port(1).sent().size(), 1u);
  ASSERT_EQ(n.port(2).sent().size(), 1u);
  EXPECT_TRUE(n.port(1).sent_offloads()[0].needs_csum());
  EXPECT_FALSE(ChecksumOk(n.port(1).sent()[0], fs)) << "the seed, as the sender left it";
  EXPECT_FALSE(n.port(2).sent_offloads()[0].needs_csum());
  EXPECT_TRUE(ChecksumOk(n.port(2).sent()[0], fs));
}

// Towards a trunk port (a tag added), segments and completed sums stay right: the offsets move
// with the tag.
TEST(SwitchOffload, SegmentsTaggedForATrunk) {
  SwitchPortConfig access, trunk;
  std::string v = "10", tl = "10";
  access.vlan = *ParseVlan("a", &v, nullptr);
  trunk.vlan = *ParseVlan("t", nullptr, &tl);
  Net n(2, {access, trunk});
  FrameSpec fs;
  fs.payload = 5000;
  fs.partial_csum = true;
  n.port(0).Inject(MakeTcpUdpFrame(fs), Tso(fs, 1448));
  n.Run();
  ASSERT_EQ(n.port(1).sent().size(), 4u);
  FrameSpec tagged = fs;
  tagged.vlan = true;
  for (const Bytes& q : n.port(1).sent()) {
    EXPECT_EQ(q[12], std::byte{0x81});
    EXPECT_TRUE(ChecksumOk(q, tagged));
    EXPECT_TRUE(testing::IpHeaderOk(q, tagged));
  }
}

// A TSO frame whose segments would exceed the destination's MTU is dropped (mtu), whether the
// destination takes TSO or not; one within it passes.
TEST(SwitchOffload, GsoSizeAboveTheMtuIsDropped) {
  SwitchPortConfig small;
  small.mtu = 1000;
  for (bool tso : {false, true}) {
    Net n(2, {SwitchPortConfig{}, small});
    if (tso) n.port(1).set_caps(kTsoCaps);
    FrameSpec fs;
    fs.payload = 5000;
    fs.partial_csum = true;
    n.port(0).Inject(MakeTcpUdpFrame(fs), Tso(fs, 1448));  // 54 + 1448 > 1000 + 14
    n.port(0).Inject(MakeTcpUdpFrame(fs), Tso(fs, 900));
    n.Run();
    EXPECT_EQ(n.sw.DropsFor(0, DropReason::kMtu), 1u) << tso;
    EXPECT_EQ(n.port(1).sent().size(), tso ? 1u : 6u) << tso;
  }
}

// A record that does not match its frame is dropped as bad_offload, alone: the packets around
// it in the same burst are forwarded.
TEST(SwitchOffload, BadRecordDroppedAlone) {
  Net n(2);
  FrameSpec fs;
  fs.payload = 3000;
  const Bytes f = MakeTcpUdpFrame(fs);
  Offload bad = Tso(fs, 1448);
  bad.gso_type = GsoType::kTcp6;  // the frame is IPv4
  FrameSpec small;
  small.payload = 10;
  n.port(0).Inject(MakeTcpUdpFrame(small));
  n.port(0).Inject(f, bad);
  n.port(0).Inject(MakeTcpUdpFrame(small));
  n.Run();
  EXPECT_EQ(n.port(1).sent().size(), 2u);
  EXPECT_EQ(n.sw.DropsFor(0, DropReason::kBadOffload), 1u);
}

// A destination whose ring fills while segments go: the rest are dropped and counted, nothing
// else breaks (a GSO frame is never held in part).
TEST(SwitchOffload, SegmentsBeyondRoomAreCountedDrops) {
  Net n(2);
  n.port(1).set_room(10);
  FrameSpec fs;
  fs.payload = 20000;
  n.port(0).Inject(MakeTcpUdpFrame(fs), Tso(fs, 1000));
  n.Run();
  EXPECT_EQ(n.port(1).sent().size(), 10u);
  EXPECT_EQ(n.sw.DropsFor(0, DropReason::kQueueFull), 10u);
}

// The cross-connect treats records as the switch does: a bad one dropped alone, a TSO frame cut
// for a destination without TSO (every segment valid), passed whole to one with TSO.
TEST(XconnectOffload, ChecksSegmentsAndPassesThrough) {
  FrameSpec fs;
  fs.payload = 10000;
  fs.partial_csum = true;
  const Bytes f = MakeTcpUdpFrame(fs);
  FrameSpec small;
  small.payload = 10;
  Offload bad = Tso(fs, 1448);
  bad.gso_type = GsoType::kTcp6;
  for (bool tso : {false, true}) {
    MemPort a("a"), b("b");
    if (tso) b.set_caps(kTsoCaps);
    Xconnect x(1);
    x.AddPair(&a, &b);
    a.Inject(MakeTcpUdpFrame(small));
    a.Inject(f, bad);
    a.Inject(f, Tso(fs, 1448));
    a.Inject(MakeTcpUdpFrame(small));
    for (int r = 0; r < 4; ++r) x.worker(0)->ForwardAll();
    EXPECT_EQ(a.pending(), 0u) << "every frame settled";
    const size_t segs = tso ? 1 : (fs.payload + 1447) / 1448;
    ASSERT_EQ(b.sent().size(), 2 + segs) << "the bad record dropped, the TSO frame " << (tso ? "whole" : "cut");
    for (size_t i = 1; i <= segs; ++i) {
      const Bytes& q = b.sent()[i];
      if (tso) {
        EXPECT_EQ(q, f);
        EXPECT_TRUE(b.sent_offloads()[i].gso());
      } else {
        EXPECT_TRUE(ChecksumOk(q, fs)) << i;
        EXPECT_EQ(testing::TcpSeq(q, fs), fs.seq + (i - 1) * 1448);
      }
    }
  }
}

}  // namespace
}  // namespace nicmux
