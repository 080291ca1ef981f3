#include "base/numa.h"

#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <set>

namespace nicmux {
namespace {

// From the kernel's uapi/linux/mempolicy.h (no libnuma headers needed).
constexpr unsigned long kMpolFNode = 1 << 0;
constexpr unsigned long kMpolFAddr = 1 << 1;
constexpr int kMpolPreferred = 1;
constexpr unsigned kMpolMfMove = 1 << 1;
// The highest node PreferNode names (the node mask it passes has this many bits).
constexpr int kMaxNodes = 1024;

size_t PageSize() {
  static const size_t page = [] {
    const long p = ::sysconf(_SC_PAGESIZE);
    return p > 0 ? static_cast<size_t>(p) : size_t{4096};
  }();
  return page;
}

bool Digits(const std::string& s) { return !s.empty() && s.size() <= 6 && s.find_first_not_of("0123456789") == std::string::npos; }

}  // namespace

bool ParseCpuList(const std::string& text, std::vector<int>* cpus) {
  std::string t = text;
  while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
  if (t.empty()) return true;  // a node without CPUs (memory only)
  size_t at = 0;
  while (at <= t.size()) {
    const size_t end = std::min(t.find(',', at), t.size());
    const std::string item = t.substr(at, end - at);
    const size_t dash = item.find('-');
    const std::string lo = item.substr(0, dash), hi = dash == std::string::npos ? lo : item.substr(dash + 1);
    if (!Digits(lo) || !Digits(hi)) return false;
    const int a = std::stoi(lo), b = std::stoi(hi);
    if (b < a || b > 65535) return false;
    for (int c = a; c <= b; ++c) cpus->push_back(c);
    at = end + 1;
  }
  return true;
}

NumaTopology NumaTopology::FromSysfs(const std::string& root) {
  std::vector<int> node_of_cpu;
  DIR* d = ::opendir(root.c_str());
  if (d == nullptr) return NumaTopology();
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() < 5 || name.compare(0, 4, "node") != 0 || !Digits(name.substr(4))) continue;
    const int node = std::stoi(name.substr(4));
    std::ifstream f(root + "/" + name + "/cpulist");
    std::string line;
    std::vector<int> cpus;
    if (!f || !std::getline(f, line) || !ParseCpuList(line, &cpus)) continue;
    for (int c : cpus) {
      if (static_cast<size_t>(c) >= node_of_cpu.size()) node_of_cpu.resize(static_cast<size_t>(c) + 1, -1);
      node_of_cpu[static_cast<size_t>(c)] = node;
    }
  }
  ::closedir(d);
  return NumaTopology(std::move(node_of_cpu));
}

int NumaTopology::NodeOfCpu(int cpu) const {
  if (cpu < 0) return -1;
  if (node_of_cpu_.empty()) return 0;
  return static_cast<size_t>(cpu) < node_of_cpu_.size() ? node_of_cpu_[static_cast<size_t>(cpu)] : -1;
}

int NumaTopology::nodes() const {
  std::set<int> s;
  for (int n : node_of_cpu_) {
    if (n >= 0) s.insert(n);
  }
  return s.empty() ? 1 : static_cast<int>(s.size());
}

int NodeOfNetdev(const std::string& ifname, const std::string& root) {
  // (An interface name has no '/'; one that had would name another file: refused.)
  if (ifname.empty() || ifname.find('/') != std::string::npos || ifname == "." || ifname == "..") return -1;
  std::ifstream f(root + "/" + ifname + "/device/numa_node");
  int node = -1;
  if (!(f >> node) || node < 0) return -1;
  return node;
}

int NodeOfAddress(const void* addr) {
  int node = -1;
  if (::syscall(SYS_get_mempolicy, &node, nullptr, 0ul, addr, kMpolFNode | kMpolFAddr) != 0) return -1;
  return node >= 0 ? node : -1;
}

void NodesOfPages(std::span<const void* const> pages, std::span<int> out) {
  std::fill(out.begin(), out.end(), -1);
  if (pages.empty() || out.size() != pages.size()) return;
  std::vector<int> status(pages.size(), -1);
  // nodes == nullptr: query only. Each status is a node, or a negative errno (-ENOENT: not
  // present, -EFAULT: not mapped).
  if (::syscall(SYS_move_pages, 0, pages.size(), pages.data(), nullptr, status.data(), 0) != 0) return;
  for (size_t i = 0; i < pages.size(); ++i) out[i] = status[i] >= 0 ? status[i] : -1;
}

int MajorityNode(std::span<const MemoryRange> ranges, size_t max_samples) {
  const size_t page = PageSize();
  const size_t per = ranges.empty() ? 0 : std::max<size_t>(1, max_samples / ranges.size());
  std::vector<const void*> pages;
  std::vector<uint64_t> weight;
  for (const MemoryRange& r : ranges) {
    if (r.size == 0) continue;
    const uintptr_t first = reinterpret_cast<uintptr_t>(r.base) & ~(uintptr_t{page} - 1);
    const size_t npages = (reinterpret_cast<uintptr_t>(r.base) + r.size - first + page - 1) / page;
    const size_t k = std::min(per, npages);
    for (size_t i = 0; i < k; ++i) {
      // Evenly spread: the middle page of each of k equal stretches.
      const size_t at = (2 * i + 1) * npages / (2 * k);
      pages.push_back(reinterpret_cast<const void*>(first + at * page));
      weight.push_back(r.size / k);
    }
  }
  std::vector<int> nodes(pages.size(), -1);
  NodesOfPages(pages, nodes);
  std::map<int, uint64_t> bytes;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (nodes[i] >= 0) bytes[nodes[i]] += weight[i];
  }
  int best = -1;
  uint64_t most = 0;
  for (const auto& [node, b] : bytes) {
    if (b > most) {
      most = b;
      best = node;
    }
  }
  return best;
}

bool PreferNode(void* addr, size_t len, int node) {
  if (node < 0 || node >= kMaxNodes) return false;
  const size_t page = PageSize();
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  const uintptr_t start = (a + page - 1) & ~(uintptr_t{page} - 1);
  const uintptr_t end = (a + len) & ~(uintptr_t{page} - 1);
  if (end <= start) return false;
  constexpr size_t kBits = 8 * sizeof(unsigned long);
  unsigned long mask[kMaxNodes / kBits] = {};
  mask[static_cast<size_t>(node) / kBits] = 1ul << (static_cast<size_t>(node) % kBits);
  // maxnode is one more than the mask's bits: the kernel reads maxnode - 1 of them.
  return ::syscall(SYS_mbind, start, end - start, kMpolPreferred, mask, static_cast<unsigned long>(kMaxNodes) + 1,
                   kMpolMfMove) == 0;
}

}  // namespace nicmux
