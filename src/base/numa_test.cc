// base/numa.h on this machine (one node: the placement logic is tested with an injected
// topology in sched/scheduler_test.cc) and the sysfs parsing on a made-up tree.
#include "base/numa.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace nicmux {
namespace {

TEST(Numa, CpuListsAndAMadeUpSysfsTree) {
  std::vector<int> cpus;
  ASSERT_TRUE(ParseCpuList("0-2,5,7-8\n", &cpus));
  EXPECT_EQ(cpus, (std::vector<int>{0, 1, 2, 5, 7, 8}));
  cpus.clear();
  EXPECT_TRUE(ParseCpuList("\n", &cpus));  // a node with memory only
  EXPECT_TRUE(cpus.empty());
  EXPECT_FALSE(ParseCpuList("3-1", &cpus));
  EXPECT_FALSE(ParseCpuList("x", &cpus));
  EXPECT_FALSE(ParseCpuList("1,,2", &cpus));

  char dir[] = "/tmp/numa_test.XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string root = dir;
  std::filesystem::create_directories(root + "/node0");
  std::filesystem::create_directories(root + "/node1");
  std::filesystem::create_directories(root + "/power");  // not a node
  std::ofstream(root + "/node0/cpulist") << "0-1,4\n";
  std::ofstream(root + "/node1/cpulist") << "2-3\n";
  const NumaTopology t = NumaTopology::FromSysfs(root);
  EXPECT_EQ(t.nodes(), 2);
  EXPECT_EQ(t.NodeOfCpu(0), 0);
  EXPECT_EQ(t.NodeOfCpu(3), 1);
  EXPECT_EQ(t.NodeOfCpu(4), 0);
  EXPECT_EQ(t.NodeOfCpu(9), -1);   // not listed
  EXPECT_EQ(t.NodeOfCpu(-1), -1);  // not pinned
  std::filesystem::remove_all(root);

  // No tree: one node, every CPU on it.
  const NumaTopology none = NumaTopology::FromSysfs("/nonexistent");
  EXPECT_EQ(none.nodes(), 1);
  EXPECT_EQ(none.NodeOfCpu(3), 0);
  // This machine's (one node here; whatever it has, every node is valid).
  const NumaTopology here = NumaTopology::FromSysfs();
  EXPECT_GE(here.nodes(), 1);
  EXPECT_GE(here.NodeOfCpu(0), 0);
}

TEST(Numa, ANetworkDevicesNodeFromAMadeUpSysfsTree) {
  char dir[] = "/tmp/numa_netdev_test.XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string root = dir;
  std::filesystem::create_directories(root + "/ens1f0/device");
  std::filesystem::create_directories(root + "/ens2/device");
  std::filesystem::create_directories(root + "/veth0");  // no device
  std::filesystem::create_directories(root + "/bad/device");
  std::ofstream(root + "/ens1f0/device/numa_node") << "1\n";
  std::ofstream(root + "/ens2/device/numa_node") << "-1\n";  // a machine without NUMA
  std::ofstream(root + "/bad/device/numa_node") << "x\n";
  EXPECT_EQ(NodeOfNetdev("ens1f0", root), 1);
  EXPECT_EQ(NodeOfNetdev("ens2", root), -1);
  EXPECT_EQ(NodeOfNetdev("veth0", root), -1);
  EXPECT_EQ(NodeOfNetdev("bad", root), -1);
  EXPECT_EQ(NodeOfNetdev("missing", root), -1);
  EXPECT_EQ(NodeOfNetdev("../ens1f0", root + "/veth0"), -1);  // a name with '/' names no interface
  EXPECT_EQ(NodeOfNetdev("", root), -1);
  std::filesystem::remove_all(root);
  // This machine's loopback: no device.
  EXPECT_EQ(NodeOfNetdev("lo"), -1);
}

TEST(Numa, ProbesOnThisMachine) {
  // This machine has one node: a touched page is on node 0 (any node is >= 0 elsewhere).
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  const size_t len = 8 * page;
  void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(m, MAP_FAILED);
  auto* b = static_cast<volatile char*>(m);
  b[0] = 1;  // only the first page is touched
  const int here = NumaTopology::FromSysfs().nodes() == 1 ? 0 : -2;
  const int node = NodeOfAddress(m);
  if (node == -1) GTEST_SKIP() << "get_mempolicy refused here (seccomp or no NUMA support)";
  if (here == 0) {
    EXPECT_EQ(node, 0);
  }
  EXPECT_GE(node, 0);

  // move_pages' query: the touched page has the node, an untouched one none (nothing faulted
  // in), an unmapped address none.
  void* unmapped = ::mmap(nullptr, page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(unmapped, MAP_FAILED);
  ASSERT_EQ(::munmap(unmapped, page), 0);
  EXPECT_EQ(NodeOfAddress(unmapped), -1);
  const void* pages[3] = {m, static_cast<char*>(m) + 4 * page, unmapped};
  int nodes[3] = {-7, -7, -7};
  NodesOfPages(pages, nodes);
  EXPECT_EQ(nodes[0], node);
  EXPECT_EQ(nodes[1], -1);
  EXPECT_EQ(nodes[2], -1);
  unsigned char present = 1;
  ASSERT_EQ(::mincore(static_cast<char*>(m) + 4 * page, page, &present), 0);
  EXPECT_EQ(present & 1, 0) << "the query faulted the page in";

  // The majority: one region of which a page is present, and one never touched.
  void* cold = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(cold, MAP_FAILED);
  const MemoryRange none[] = {{cold, len}};
  EXPECT_EQ(MajorityNode(none), -1);
  for (size_t i = 0; i < len; i += page) b[i] = 1;
  const MemoryRange both[] = {{m, len}, {cold, len}};
  EXPECT_EQ(MajorityNode(both), node);

  // PreferNode on whole pages: they stay readable and on the node asked for.
  if (PreferNode(m, len, node)) {
    EXPECT_EQ(NodeOfAddress(static_cast<char*>(m) + page), node);
  }
  EXPECT_FALSE(PreferNode(static_cast<char*>(m) + 1, page, node)) << "no whole page inside";
  EXPECT_FALSE(PreferNode(m, len, -1));
  ::munmap(m, len);
  ::munmap(cold, len);
}

}  // namespace
}  // namespace nicmux
