// The dpdk port's live upgrade (docs/dpdk.md "Live upgrade") over DPDK's net_null device, in
// this process's EAL: the old port closes its device at the precise point and hands over the
// frames it held as bytes; the new port, made from the record with the device still the old
// one's, opens it at ImportPositions and returns those frames first, byte for byte. A failed
// upgrade opens the device again in the old port. (Two real processes and a veth:
// tests/integration/upgrade_dpdk.sh.)
#include "port/dpdk_port.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <vector>

#include "packet/packet.h"

namespace nicmux {
namespace {

using Frame = std::vector<std::byte>;

Frame Bytes(const PacketRef& p) {
  Frame f(p.len);
  CopyPacketTo(p, f.data());
  return f;
}

DpdkPortOptions NullDevice(const char* devargs) {
  DpdkPortOptions o;
  o.name = "d";
  o.devargs = devargs;
  return o;
}

// Receives a burst from queue 0 and keeps it all (none sent): held by the port.
std::vector<Frame> HoldABurst(Port& p, size_t max) {
  Batch b;
  const size_t n = p.Rx(0, b, max);
  std::vector<Frame> got;
  for (uint32_t i = 0; i < n; ++i) got.push_back(Bytes(b[i]));
  p.RxDone(0, b, 0);
  return got;
}

TEST(DpdkHandover, DeviceClosedThenOpenedByTheNewPortWithTheHeldFramesFirst) {
  auto a = CreateDpdkPort(NullDevice("net_null40,size=100"));
  ASSERT_TRUE(a) << a.error().message();
  Port& old_port = **a;
  ASSERT_TRUE(old_port.CanHandOver());
  const std::vector<Frame> held = HoldABurst(old_port, 5);
  ASSERT_EQ(held.size(), 5u);
  for (const Frame& f : held) EXPECT_EQ(f.size(), 100u);

  HandoverRecord state, pos;
  ASSERT_TRUE(old_port.Export(&state));
  // The new port from the record: the device is still the old one's (not probed here).
  auto b = CreateDpdkPort(NullDevice("net_null40,size=100"), &state);
  ASSERT_TRUE(b) << b.error().message();
  Port& new_port = **b;
  EXPECT_EQ(new_port.State(), "device closed");
  EXPECT_EQ(new_port.NumQueuePairs(), 1u);
  EXPECT_EQ(new_port.Caps().offloads, old_port.Caps().offloads);
  // The precise point: the old port closes the device.
  auto e = old_port.ExportPositions(&pos);
  ASSERT_TRUE(e) << e.error().message();
  // The held frames and what the device had (net_null always has more: the drain stops at
  // its bound, 16384 a queue).
  EXPECT_EQ(*pos.Get("d.q.0.frames"), 16384u);
  EXPECT_EQ(old_port.State(), "device closed");
  {
    Batch none;
    EXPECT_EQ(old_port.Rx(0, none, 32), 0u);  // closed: nothing
  }
  auto ip = new_port.ImportPositions(pos);
  ASSERT_TRUE(ip) << ip.error().message();
  EXPECT_NE(new_port.State(), "device closed");
  (*a).reset();  // the old process goes (its port's device is already closed)

  // The held frames first, in order, byte for byte; then the device's own.
  Batch bt;
  const size_t n = new_port.Rx(0, bt, 8);
  ASSERT_EQ(n, 8u);
  for (uint32_t i = 0; i < 5; ++i) EXPECT_EQ(Bytes(bt[i]), held[i]) << "frame " << i;
  for (uint32_t i = 5; i < 8; ++i) EXPECT_EQ(bt[i].len, 100u);
  new_port.RxDone(0, bt, n);
  EXPECT_EQ(new_port.Stats().rx_packets, 8u);
}

TEST(DpdkPortNode, TheDevicesNumaNodeIsOneTheMachineHasOrNone) {
  // A virtual device: DPDK gives net_null the node of the core that probed it, or none (-1).
  // A PCI device's comes from sysfs (not on this machine). Never a node the machine lacks:
  // the scheduler would look for workers there.
  auto a = CreateDpdkPort(NullDevice("net_null42,size=64"));
  ASSERT_TRUE(a) << a.error().message();
  const int node = (*a)->numa_node();
  EXPECT_GE(node, -1);
  if (node >= 0) {
    EXPECT_TRUE(std::filesystem::exists("/sys/devices/system/node/node" + std::to_string(node)) ||
                (node == 0 && !std::filesystem::exists("/sys/devices/system/node")))
        << node;
  }
}

TEST(DpdkHandover, AFailedUpgradeOpensTheDeviceAgainInTheOldPort) {
  auto a = CreateDpdkPort(NullDevice("net_null41"));
  ASSERT_TRUE(a) << a.error().message();
  Port& p = **a;
  const std::vector<Frame> held = HoldABurst(p, 3);
  ASSERT_EQ(held.size(), 3u);
  HandoverRecord state, pos;
  ASSERT_TRUE(p.Export(&state));
  ASSERT_TRUE(p.ExportPositions(&pos));
  EXPECT_EQ(p.State(), "device closed");
  p.HandoverAborted();  // (the new process refused, or died)
  EXPECT_NE(p.State(), "device closed");
  // The frames it handed over are not lost: its own Rx delivers them first, then the device's.
  Batch bt;
  ASSERT_EQ(p.Rx(0, bt, 4), 4u);
  for (uint32_t i = 0; i < 3; ++i) EXPECT_EQ(Bytes(bt[i]), held[i]) << "frame " << i;
  p.RxDone(0, bt, bt.size());
  // And the same device can be handed over again later.
  HandoverRecord pos2;
  ASSERT_TRUE(p.ExportPositions(&pos2));
  p.HandoverAborted();
  EXPECT_NE(p.State(), "device closed");
}

TEST(DpdkHandover, ZeroCopyPortsRefuseAndTamperedRecordsAreRefused) {
  DpdkPortOptions zc = NullDevice("net_null42");
  zc.zerocopy_min = 512;
  auto z = CreateDpdkPort(zc);
  ASSERT_TRUE(z) << z.error().message();
  EXPECT_FALSE((*z)->CanHandOver());

  auto a = CreateDpdkPort(NullDevice("net_null43"));
  ASSERT_TRUE(a) << a.error().message();
  HandoverRecord state;
  ASSERT_TRUE((*a)->Export(&state));
  HandoverRecord two;
  two.mutable_values() = state.values();
  two.Set("d.queues", 2);
  auto r = CreateDpdkPort(NullDevice("net_null43"), &two);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("the old port had 2 queue(s), its spec here says 1"), std::string::npos) << r.error().message();
  // Held frames the memfd does not hold, or of a bad length: ImportPositions refuses.
  auto b = CreateDpdkPort(NullDevice("net_null43"), &state);
  ASSERT_TRUE(b) << b.error().message();
  HandoverRecord pos;
  ASSERT_TRUE((*a)->ExportPositions(&pos));
  pos.Set("d.q.0.frames", 1u << 20);
  auto ip = (*b)->ImportPositions(pos);
  ASSERT_FALSE(ip);
  EXPECT_NE(ip.error().message().find("d.q.0.frames"), std::string::npos) << ip.error().message();
  // One frame more than the memfd holds: cut short.
  auto c = CreateDpdkPort(NullDevice("net_null43"), &state);
  ASSERT_TRUE(c) << c.error().message();
  HandoverRecord pos2;
  pos2.mutable_values() = pos.values();
  pos2.Set("d.q.0.frames", 16385);
  ASSERT_TRUE(pos2.SetFd("d.q.0.data", pos.fds()[0].get()));  // (the first import refused before taking it)
  auto ip2 = (*c)->ImportPositions(pos2);
  ASSERT_FALSE(ip2);
  EXPECT_NE(ip2.error().message().find("cut short"), std::string::npos) << ip2.error().message();
}

}  // namespace
}  // namespace nicmux

// What the EAL leaves of a process (its runtime directory; hugepage files without
// --huge-unlink) is swept when an EAL starts, for nicmuxd processes that are gone and no
// other: a live process's (this one's, its parent's) and names that only look alike stay.
TEST(DpdkLeftovers, TheSweepRemovesOnlyWhatNicmuxdProcessesThatAreGoneLeft) {
  if (::getuid() != 0) GTEST_SKIP() << "the runtime directories are under /var/run/dpdk for root";
  namespace fs = std::filesystem;
  const pid_t dead = ::fork();
  ASSERT_GE(dead, 0);
  if (dead == 0) _exit(0);
  ASSERT_EQ(::waitpid(dead, nullptr, 0), dead);
  const fs::path base = "/var/run/dpdk";
  const std::string d = std::to_string(dead);
  const fs::path gone = base / ("nicmuxd" + d), self = base / ("nicmuxd" + std::to_string(::getpid())),
                 parent = base / ("nicmuxd" + std::to_string(::getppid())), alike = base / ("nicmuxd" + d + "x"),
                 other = base / ("testpmd" + d);
  for (const fs::path& p : {gone, self, parent, alike, other}) fs::create_directories(p);
  std::ofstream(gone / "config") << "x";
  // A hugetlbfs mount, if there is one: the gone process's files go, the others' stay.
  fs::path huge;
  std::ifstream mounts("/proc/mounts");
  for (std::string dev, dir, type, rest; mounts >> dev >> dir >> type && std::getline(mounts, rest);) {
    if (type == "hugetlbfs") huge = dir;
  }
  if (!huge.empty()) {
    std::ofstream(huge / ("nicmuxd" + d + "map_0"));
    std::ofstream(huge / ("nicmuxd" + std::to_string(::getppid()) + "map_0"));
  }
  EXPECT_GE(nicmux::SweepDpdkLeftovers(), 1u);
  EXPECT_FALSE(fs::exists(gone));
  for (const fs::path& p : {self, parent, alike, other}) EXPECT_TRUE(fs::exists(p)) << p;
  if (!huge.empty()) {
    EXPECT_FALSE(fs::exists(huge / ("nicmuxd" + d + "map_0")));
    EXPECT_TRUE(fs::exists(huge / ("nicmuxd" + std::to_string(::getppid()) + "map_0")));
    fs::remove(huge / ("nicmuxd" + std::to_string(::getppid()) + "map_0"));
  }
  for (const fs::path& p : {self, parent, alike, other}) fs::remove_all(p);
}
