// The port registry: a spec is checked against its kind's option table (each rule names what
// is wrong), --help is made from the tables, and a kind added to a registry is known to all of
// it (the one-line registration of a new kind).
#include "port/registry.h"

#include <gtest/gtest.h>

#include <sstream>

namespace nicmux {
namespace {

std::string CheckError(const PortRegistry& r, const std::string& text) {
  auto s = ParsePortSpec(text);
  if (!s) return "parse: " + s.error().message();
  auto k = r.Check(*s);
  return k ? std::string("(accepted)") : k.error().message();
}

TEST(PortRegistry, ChecksEachRuleAndNamesWhatIsWrong) {
  const PortRegistry& r = PortRegistry::Builtin();
  EXPECT_EQ(r.Names(), "vhost-user, virtio-user, tap, af_xdp, dpdk, pv");
  EXPECT_EQ(CheckError(r, "vhost-user:vm1:socket=/s,client,queues=8,max_memory=16G,offloads=off,vlan=10,mtu=9000"),
            "(accepted)");
  EXPECT_EQ(CheckError(r, "tap:t0"), "(accepted)") << "no option is required for a TAP";
  EXPECT_EQ(CheckError(r, "afxdp:up0:iface=eth0"),
            "port up0: unknown kind 'afxdp'; known: vhost-user, virtio-user, tap, af_xdp, dpdk, pv");
  EXPECT_EQ(CheckError(r, "tap:t0:queus=2"),
            "port t0: unknown option 'queus' for port kind tap; known: ifname, queues, address, down, up, offloads, "
            "vlan, trunk, mtu, mac_limit, allowed_macs, queue_affinity");
  EXPECT_EQ(CheckError(r, "vhost-user:vm1:socket=/s,client=yes"), "port vm1: 'client' takes no value");
  EXPECT_EQ(CheckError(r, "vhost-user:vm1:socket"), "port vm1: socket=PATH needs a value");
  EXPECT_EQ(CheckError(r, "vhost-user:vm1:client"), "port vm1: socket=PATH is required for port kind vhost-user");
  EXPECT_EQ(CheckError(r, "vhost-user:vm1:socket=/s,queues=9"), "port vm1: queues=9 is outside 1..8");
  EXPECT_EQ(CheckError(r, "virtio-user:u:socket=/s,queues=0"), "port u: queues=0 is outside 1..8");
  EXPECT_EQ(CheckError(r, "tap:t0:offloads=yes"), "port t0: offloads=yes: expected on or off");
  EXPECT_EQ(CheckError(r, "vhost-user:vm1:socket=/s,max_memory=1K"), "port vm1: max_memory=1K: outside 1M..4T");
  EXPECT_EQ(CheckError(r, "tap:t0:mtu=67"), "port t0: mtu=67 is outside 68..65535");
  EXPECT_EQ(CheckError(r, "tap:t0:mac_limit=x"), "port t0: mac_limit='x' is not a number");
}

// The queue bound of each kind is its own, and its queues= option is checked against it.
TEST(PortRegistry, QueueLimitsComeFromTheKind) {
  for (const PortKind& k : PortRegistry::Builtin().kinds()) {
    for (const PortOption& o : k.options) {
      if (std::string(o.name) == "queues") {
        EXPECT_EQ(o.hi, k.max_queues) << k.name;
      }
    }
  }
}

TEST(PortRegistry, HelpIsMadeFromTheTables) {
  const PortRegistry& r = PortRegistry::Builtin();
  const std::string h = r.Help(92);
  EXPECT_NE(h.find("  vhost-user:NAME:socket=PATH[,client][,queues=N][,max_memory=SIZE][,socket_group=GROUP][,socket_mode=MODE][,offloads=on|off][,rx_usecs=N][,rx_frames=N][,tx_usecs=N][,tx_frames=N]\n"),
            std::string::npos)
      << h;
  EXPECT_NE(h.find("  tap:NAME[:ifname=IF][,queues=N]"), std::string::npos) << h;
  for (const PortKind& k : r.kinds()) {
    for (const PortOption& o : k.options) EXPECT_NE(h.find(std::string("      ") + o.name), std::string::npos) << o.name;
  }
  for (const PortOption& o : PortRegistry::SwitchOptions()) EXPECT_NE(h.find(o.name), std::string::npos) << o.name;
  std::istringstream lines(h);
  for (std::string line; std::getline(lines, line);) {
    // A word longer than the room may stick out (a long option name), nothing else.
    if (line.find(' ', 30) != std::string::npos) {
      EXPECT_LE(line.size(), 92u) << line;
    }
  }
}

// A kind added to a registry: checked, listed and built by its table alone.
TEST(PortRegistry, AKindIsItsTableAndItsConstructor) {
  PortRegistry r;
  PortKind k;
  k.name = "sink";
  k.summary = "drops every frame";
  k.max_queues = 4;
  k.options = {{"queues", OptionType::kUInt, "N", "1", "queues", 1, 4}, {"quiet", OptionType::kFlag, "", "", "say nothing"}};
  int built = 0;
  k.create = [&](const PortSpec&, const PortContext&) -> Result<std::unique_ptr<Port>> {
    ++built;
    return Error("sink: not a real port");
  };
  r.Add(k);
  EXPECT_EQ(CheckError(r, "sink:s0:queues=4,quiet,vlan=3"), "(accepted)");
  EXPECT_EQ(CheckError(r, "sink:s0:queues=5"), "port s0: queues=5 is outside 1..4");
  EXPECT_EQ(CheckError(r, "tap:t0"), "port t0: unknown kind 'tap'; known: sink");
  EXPECT_NE(r.Help().find("  sink:NAME[:queues=N][,quiet]\n"), std::string::npos) << r.Help();
  auto s = ParsePortSpec("sink:s0:quiet");
  ASSERT_TRUE(s);
  auto kind = r.Check(*s);
  ASSERT_TRUE(kind);
  EXPECT_FALSE((*kind)->create(*s, PortContext{}));
  EXPECT_EQ(built, 1);
}

}  // namespace
}  // namespace nicmux
