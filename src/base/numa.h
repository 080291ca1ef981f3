// NUMA: which node each CPU belongs to, and which node holds a page of memory — for placing
// workers next to the guest memory they copy into and out of (docs/scheduler.md "NUMA"). In
// base/ because ports probe their peers' memory and the scheduler places workers.
//
// No libnuma: the three system calls are made directly (get_mempolicy, move_pages, mbind).
// Every probe answers -1 ("unknown") where the kernel has no NUMA support (ENOSYS), a seccomp
// profile refuses the call (EPERM), or the page is not there; -1 means "any node" to the
// scheduler, so a machine or a container without NUMA behaves as before.
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace nicmux {

class NumaTopology {
 public:
  // One node, every CPU on it: what a machine without NUMA (or without /sys) is.
  NumaTopology() = default;
  // node_of_cpu[c]: the node of CPU c (tests inject a topology this way).
  explicit NumaTopology(std::vector<int> node_of_cpu) : node_of_cpu_(std::move(node_of_cpu)) {}
  // The machine's: /sys/devices/system/node/node*/cpulist (root: the directory, for tests).
  // Unreadable or empty: one node.
  static NumaTopology FromSysfs(const std::string& root = "/sys/devices/system/node");

  // The node of cpu, or -1 (cpu < 0: not pinned; a CPU the topology does not list). With one
  // node every CPU is on node 0.
  int NodeOfCpu(int cpu) const;
  // How many distinct nodes have CPUs (at least 1).
  int nodes() const;

 private:
  std::vector<int> node_of_cpu_;  // empty: one node
};

// The node of a network interface's device (/sys/class/net/IFNAME/device/numa_node under
// root), or -1: a virtual interface (veth, TAP) has no device, a machine without NUMA writes -1.
int NodeOfNetdev(const std::string& ifname, const std::string& root = "/sys/class/net");

// A cpulist as sysfs writes it ("0-3,8,10-11"); false when it is not one.
bool ParseCpuList(const std::string& text, std::vector<int>* cpus);

// The node holding the page at addr, by get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR); -1 on any
// error (ENOSYS, EFAULT for an address not mapped). The kernel faults the page in to answer:
// use it on nicmuxd's own memory only. For a peer's memory use NodesOfPages.
int NodeOfAddress(const void* addr);

// For each page address, the node holding it, without faulting anything in (move_pages(2) in
// its query mode): out[i] is the node, or -1 when the page is not present (never touched), not
// mapped, or the call is refused. out.size() == pages.size().
void NodesOfPages(std::span<const void* const> pages, std::span<int> out);

// The node holding most bytes of the regions [base, base + size), probing at most
// max_samples pages in all (evenly spread, at least one per region; each counts for its
// region's size over the region's samples). Pages not present count for nothing; -1 when none
// is present. Never faults a page in (NodesOfPages): the regions may be a guest's.
struct MemoryRange {
  const void* base;
  size_t size;
};
int MajorityNode(std::span<const MemoryRange> ranges, size_t max_samples = 64);

// Asks the kernel to keep the whole pages inside [addr, addr + len) on node (mbind
// MPOL_PREFERRED, moving the ones already elsewhere: MPOL_MF_MOVE). For a worker's own buffers,
// allocated page-aligned so that no other data shares their pages. False when refused (one
// node, ENOSYS, EPERM): the memory stays where it is, nothing else changes.
bool PreferNode(void* addr, size_t len, int node);
// What such buffers are aligned to (alignas): the x86-64 page. Where pages are larger, PreferNode
// still places the whole pages inside them and leaves the rest where it is.
inline constexpr size_t kNumaPageBytes = 4096;

}  // namespace nicmux
