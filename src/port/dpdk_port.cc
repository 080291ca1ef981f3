#include "port/dpdk_port.h"

#include <pthread.h>
#include <signal.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rte_bus.h>
#include <rte_dev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_version.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <string_view>

#include "base/log.h"
#include "packet/offload_ops.h"
#include "port/dpdk_unmap_guard.h"

namespace nicmux {
namespace {

std::mutex g_eal_mu;
std::vector<std::string> g_eal_args = {"--no-huge", "-m", "256", "--no-shconf", "--no-telemetry", "--no-pci"};
bool g_eal_up = false;
std::string g_eal_error;
std::string g_runtime_dir;  // the EAL's, once it started

// The prefix this code gives the EAL: "nicmuxd<pid>". The pid in name, if it starts with one
// followed by `rest` (0 if not).
constexpr std::string_view kPrefix = "nicmuxd";
pid_t PidIn(std::string_view name, std::string_view rest) {
  if (name.substr(0, kPrefix.size()) != kPrefix) return 0;
  name.remove_prefix(kPrefix.size());
  if (name.empty() || name[0] == '0') return 0;  // (no pid is written with a leading zero)
  uint64_t pid = 0;
  size_t i = 0;
  for (; i < name.size() && i < 10 && name[i] >= '0' && name[i] <= '9'; ++i) pid = pid * 10 + uint64_t(name[i] - '0');
  if (i == 0 || pid == 0 || pid > 4194304 || name.substr(i, rest.size()) != rest) return 0;
  if (rest.empty() && i != name.size()) return 0;
  return static_cast<pid_t>(pid);
}
bool Gone(pid_t pid) { return pid != getpid() && ::kill(pid, 0) < 0 && errno == ESRCH; }

// Where DPDK puts runtime directories (eal_create_runtime_dir): /var/run/dpdk for root, else
// $XDG_RUNTIME_DIR/dpdk, else /tmp/dpdk.
std::string RuntimeBase() {
  if (getuid() == 0) return "/var/run/dpdk";
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  return std::string(xdg && *xdg ? xdg : "/tmp") + "/dpdk";
}

// Starts the EAL once per process. rte_eal_init pins the calling thread to its main lcore;
// the control thread's CPU set is put back after, so the workers it starts are not pinned.
Result<void> EnsureEal() {
  std::lock_guard lock(g_eal_mu);
  if (g_eal_up) return Ok();
  if (!g_eal_error.empty()) return Error(g_eal_error);
  for (const auto& a : g_eal_args) {
    // Usage and version requests make the EAL print and exit the process.
    if (a == "-h" || a == "--help" || a == "-v" || a == "--version") {
      g_eal_error = "DPDK's EAL arguments may not hold " + a + " (the EAL would exit nicmuxd)";
      return Error(g_eal_error);
    }
  }
  std::vector<std::string> args = {"nicmuxd", "--file-prefix", "nicmuxd" + std::to_string(getpid())};
  args.insert(args.end(), g_eal_args.begin(), g_eal_args.end());
  // Hugepage files are unlinked once mapped, unless the arguments say otherwise: whatever way
  // the process ends (a live upgrade's _exit, SIGKILL), its hugepages go back to the system.
  if (std::none_of(g_eal_args.begin(), g_eal_args.end(), [](const std::string& a) {
        return a == "--no-huge" || a == "--in-memory" || a.rfind("--huge-unlink", 0) == 0;
      })) {
    args.push_back("--huge-unlink");
  }
  if (const size_t n = SweepDpdkLeftovers()) {
    NICMUX_LOG(kInfo, "DPDK: removed what the EAL left of %zu nicmuxd process(es) that are gone (runtime directories, hugepage files)", n);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  cpu_set_t cpus;
  const bool have_cpus = pthread_getaffinity_np(pthread_self(), sizeof cpus, &cpus) == 0;
  const int r = rte_eal_init(static_cast<int>(args.size()), argv.data());
  if (have_cpus) pthread_setaffinity_np(pthread_self(), sizeof cpus, &cpus);
  if (r < 0) {
    std::string joined;
    for (const auto& a : g_eal_args) joined += (joined.empty() ? "" : " ") + a;
    g_eal_error = "DPDK's EAL did not start (eal_args \"" + joined + "\"): " + rte_strerror(rte_errno);
    return Error(g_eal_error);
  }
  g_eal_up = true;
  dpdk_guard::Arm();
  g_runtime_dir = rte_eal_get_runtime_dir();
  std::atexit(RemoveDpdkLeftovers);
  NICMUX_LOG(kInfo, "DPDK EAL started (%s)", rte_version());
  return Ok();
}

// A driver may unmap a queue's memory from DPDK's own threads while a burst runs on it (net_memif
// when its peer goes: src/port/dpdk_unmap_guard.h); every burst is a section that unmapping
// waits for.
uint16_t RxBurst(uint16_t port, uint16_t q, rte_mbuf** m, uint16_t n) {
  dpdk_guard::BurstSection in_burst;
  return rte_eth_rx_burst(port, q, m, n);
}
uint16_t TxBurst(uint16_t port, uint16_t q, rte_mbuf** m, uint16_t n) {
  dpdk_guard::BurstSection in_burst;
  return rte_eth_tx_burst(port, q, m, n);
}

constexpr uint32_t kMaxSegs = 16;
constexpr uint32_t kEthHeaderBytes = 14;  // mbufs per received chain a PacketRef names

std::string OffloadNames(uint64_t bits, const char* (*name)(uint64_t)) {
  std::string s;
  for (int b = 0; b < 64; ++b) {
    if (!(bits & (uint64_t{1} << b))) continue;
    const char* n = name(uint64_t{1} << b);
    s += (s.empty() ? "" : " ") + (n ? std::string(n) : "bit" + std::to_string(b));
  }
  return s.empty() ? "none" : s;
}

// The names of rte_eth_rss_hf bits (the rest as bit numbers).
const char* RssName(uint64_t bit) {
  static constexpr std::pair<uint64_t, const char*> kNames[] = {
      {RTE_ETH_RSS_IPV4, "ipv4"},
      {RTE_ETH_RSS_FRAG_IPV4, "ipv4_frag"},
      {RTE_ETH_RSS_NONFRAG_IPV4_TCP, "ipv4_tcp"},
      {RTE_ETH_RSS_NONFRAG_IPV4_UDP, "ipv4_udp"},
      {RTE_ETH_RSS_NONFRAG_IPV4_SCTP, "ipv4_sctp"},
      {RTE_ETH_RSS_NONFRAG_IPV4_OTHER, "ipv4_other"},
      {RTE_ETH_RSS_IPV6, "ipv6"},
      {RTE_ETH_RSS_FRAG_IPV6, "ipv6_frag"},
      {RTE_ETH_RSS_NONFRAG_IPV6_TCP, "ipv6_tcp"},
      {RTE_ETH_RSS_NONFRAG_IPV6_UDP, "ipv6_udp"},
      {RTE_ETH_RSS_NONFRAG_IPV6_SCTP, "ipv6_sctp"},
      {RTE_ETH_RSS_NONFRAG_IPV6_OTHER, "ipv6_other"},
      {RTE_ETH_RSS_L2_PAYLOAD, "l2_payload"},
      {RTE_ETH_RSS_IPV6_EX, "ipv6_ex"},
      {RTE_ETH_RSS_IPV6_TCP_EX, "ipv6_tcp_ex"},
      {RTE_ETH_RSS_IPV6_UDP_EX, "ipv6_udp_ex"},
  };
  for (const auto& [b, n] : kNames) {
    if (b == bit) return n;
  }
  return nullptr;
}

// Zero copy towards the device (docs/dpdk.md "Zero copy"): a frame sent as a head mbuf with
// the switch's private copy of its first bytes, and external-buffer mbufs pointing at the rest
// in the source's memory, held (packet/hold.h) until the PMD frees them. One record per such
// frame: its hold and the external buffers' shared info, whose free callback releases the
// hold. Records come from the transmit queue's pool: taken by Tx (under the queue's TxLock),
// given back by the callback on whatever thread the PMD frees the mbufs (a lock-free stack
// the Tx side empties at once).
struct ZcPool;
struct ZcRecord {
  rte_mbuf_ext_shared_info shinfo;
  PacketHolder* holder = nullptr;
  uint32_t ticket = 0;
  bool cancelled = false;  // not sent after all (Tx's own thread): unheld, nothing to release
  ZcRecord* next = nullptr;
  ZcPool* pool = nullptr;
};
struct ZcPool {
  std::unique_ptr<ZcRecord[]> recs;
  uint32_t n = 0;
  ZcRecord* free = nullptr;                   // Tx's
  std::atomic<ZcRecord*> returned{nullptr};  // pushed by ZcFree, taken whole by Tx
  ZcRecord* Take() {
    if (free == nullptr) free = returned.exchange(nullptr, std::memory_order_acquire);
    ZcRecord* r = free;
    if (r) free = r->next;
    return r;
  }
  void Give(ZcRecord* r) {  // Tx's own, for a record it did not use
    r->next = free;
    free = r;
  }
  // Records not back (with Tx and the callbacks quiet: the port going away).
  uint32_t Outstanding() const {
    uint32_t k = 0;
    for (const ZcRecord* r = free; r; r = r->next) ++k;
    for (const ZcRecord* r = returned.load(std::memory_order_acquire); r; r = r->next) ++k;
    return n - k;
  }
};

// The external buffers' free callback: the PMD is done with the frame's bytes (any thread).
void ZcFree(void*, void* opaque) {
  auto* r = static_cast<ZcRecord*>(opaque);
  if (!r->cancelled) r->holder->Release(r->ticket);
  ZcPool* pool = r->pool;
  ZcRecord* head = pool->returned.load(std::memory_order_relaxed);
  do {
    r->next = head;
  } while (!pool->returned.compare_exchange_weak(head, r, std::memory_order_release, std::memory_order_relaxed));
}

// External mbufs one zero-copy frame may use (pieces of the source's segments after the head,
// each at most 64 KiB - 1 for an mbuf's 16-bit lengths).
constexpr uint32_t kMaxZcPieces = 8;

class DpdkPort final : public Port {
 public:
  explicit DpdkPort(const DpdkPortOptions& o) : Port(o.name), opt_(o) {}
  ~DpdkPort() override;
  // The EAL, the port's queues, then the device (OpenDevice).
  Result<void> Open();
  // Live upgrade (docs/dpdk.md "Live upgrade"): the new process's port, its device still the
  // old process's (the EAL's state cannot be handed over): the EAL started, the queues and
  // caps made from the old port's; ImportPositions opens the device at the precise point.
  Result<void> Adopt(HandoverRecord& in);

  uint32_t NumQueuePairs() const override { return static_cast<uint32_t>(q_.size()); }
  size_t Rx(uint32_t q, Batch& out, size_t max) override;
  void RxDone(uint32_t q, Batch& batch, size_t sent) override;
  size_t Tx(uint32_t q, std::span<const PacketRef* const> in) override;
  size_t TxRoom(uint32_t) override { return kBurst; }
  bool ArmNotify(uint32_t, std::vector<NotifyFd>*) override { return true; }
  void DisarmNotify(uint32_t) override {}
  bool CanSleep(uint32_t) const override { return false; }  // no Rx interrupts: the worker polls
  PortStats Stats() const override;
  PortStats QueueStats(uint32_t q) const override { return QueueStatsAt(q_, q); }
  uint64_t DropsFor(DropReason r) const override;
  std::string State() const override;
  // The device's node (rte_eth_dev_socket_id: a PCI device's from sysfs; -1 for a virtual
  // device that has none), read when the device is found: the scheduler puts its queues on a
  // worker of that node (docs/scheduler.md).
  int numa_node() const override { return node_; }
  std::vector<Detail> Details() const override;
  std::vector<Detail> DeviceCaps() const override;
  // A device cannot be handed over (its EAL state is this process's): the old process closes
  // it at the precise point and the new one opens it again; the gap is the close and the open.
  // Zero copy is refused: the device's frames would hold guest chains across the close.
  bool CanHandOver() const override { return opt_.zerocopy_min == 0; }
  Result<void> Export(HandoverRecord* out) override;
  Result<void> ExportPositions(HandoverRecord* out) override;
  Result<void> ImportPositions(HandoverRecord& in) override;
  void HandoverAborted() override;

 private:
  struct Queue;
  // Up to n frames of q's backlog into fresh mbufs at m (fewer when the pool runs short).
  uint32_t FromBacklog(Queue& q, rte_mbuf** m, uint32_t n);
  // Frames per queue the old process drains from the device at the precise point.
  static constexpr uint64_t kMaxBacklog = 16384;
  // Probes (or adopts), configures and starts the device; the queues' objects made once.
  Result<void> OpenDevice();
  // Stops, closes and unplugs the device and frees its pools; the frames held or in flight
  // are freed. The queues (their counters) stay.
  void CloseDevice();
  // Frames sent zero copy (or copied, while zero copy is on), over all queues.
  uint64_t zc_frames(bool zero_copy) const {
    uint64_t n = 0;
    for (const auto& q : q_) n += zero_copy ? q->tx_zerocopy.Get() : q->tx_copied.Get();
    return n;
  }
  // Hands p's offload request to the device in m's flags; false when the device cannot do
  // it (then the copy completes the checksum, as for a device without offloads).
  bool ToDevice(const PacketRef& p, rte_mbuf* m) const;
  // Builds m (a fresh mbuf) as p's head and external mbufs over the rest of p, held; nullptr
  // (m untouched) when it cannot (no record, no mbufs, the source refuses a hold): copy then.
  ZcRecord* AttachZeroCopy(Queue& q, const PacketRef& p, rte_mbuf* m);
  // Frees m, a chain Tx built and did not send: a zero-copy one is unheld first.
  static void FreeUnsent(rte_mbuf* m, ZcRecord* r) {
    if (r) {
      r->cancelled = true;
      r->holder->Unhold(r->ticket);
    }
    rte_pktmbuf_free(m);
  }
  struct Queue {
    std::array<rte_mbuf*, kBurst> rx{};  // the chains Rx returned, in order
    std::array<std::array<Segment, kMaxSegs>, kBurst> segs{};
    uint32_t n = 0;
    std::array<rte_mbuf*, kBurst> held{};  // not sent: returned first by the next Rx
    uint32_t nheld = 0;
    // A live upgrade's frames from the old process (its held ones and what it drained from the
    // device; in the old process, the same until the upgrade commits), as bytes (a 4-byte
    // length, then the frame): returned after the held ones and before the device's, copied
    // into mbufs a burst at a time. Empty otherwise.
    std::vector<std::byte> backlog;
    std::vector<uint32_t> backlog_len;
    size_t backlog_next = 0, backlog_off = 0;
    QueueCounters rxc, txc;
    ZcPool zc;                      // (empty without zero copy)
    Counter tx_zerocopy, tx_copied;  // frames sent each way (TxLock's holder)
  };

  DpdkPortOptions opt_;
  uint16_t port_id_ = 0;
  int node_ = -1;  // set by the control thread before the port is added, read by it after
  bool probed_ = false, have_port_ = false, started_ = false;
  bool multi_segs_ = false;  // the device takes mbuf chains
  // The device's own offloads, used where it has them (opt_.offloads): partial TCP/UDP
  // checksums, the IPv4 header checksum with TSO, and TCP segmentation.
  bool dev_csum_ = false, dev_ip_csum_ = false, dev_tso4_ = false, dev_tso6_ = false;
  uint16_t mtu_ = 1500;
  std::string dev_name_;
  rte_mempool* pool_ = nullptr;
  rte_mempool* attach_pool_ = nullptr;  // data-less mbufs for external buffers (zero copy)
  // Zero copy: frames of at least zc_min_ bytes (0: off; also off where the device takes no
  // chains or sits on a bus that needs DMA mappings of the source's memory).
  uint32_t zc_min_ = 0;
  bool zc_iova_va_ = false;  // the EAL's IOVA mode (fixed once it is up): external buffers' IOVA
  std::string zc_state_ = "off";
  rte_eth_dev_info info_{};
  std::vector<std::unique_ptr<Queue>> q_;
  uint64_t closed_ns_ = 0;  // how long the handover's close took (for the log)
  uint32_t nmbufs_ = 0;  // the pool's size (a new process's port makes its pool this large in step 1)
  // The last OpenDevice's steps, in us: probe; configure, pools and queues; start (for the log).
  std::array<uint64_t, 3> open_us_{};
};

Result<void> DpdkPort::Open() {
  NICMUX_TRY(EnsureEal());
  return OpenDevice();
}

Result<void> DpdkPort::OpenDevice() {
  const std::string what = "port " + opt_.name + ": devargs " + opt_.devargs;
  const uint64_t t_open = MonotonicNowNs();
  dev_name_ = opt_.devargs.substr(0, opt_.devargs.find(','));
  if (rte_eth_dev_get_port_by_name(dev_name_.c_str(), &port_id_) == 0) {
    // The EAL probed it at start (a PCI NIC named by -a in the EAL arguments, a --vdev), and
    // no port holds it (the registry's claims): adopted as it is. On removal it is closed and
    // unplugged like a device the port probed, so adding it again probes it by the devargs.
    if (opt_.devargs != dev_name_) {
      NICMUX_LOG(kWarning, "port %s: device %s was probed at the EAL's start: its options there hold, not \"%s\"",
                 opt_.name.c_str(), dev_name_.c_str(), opt_.devargs.c_str());
    }
    NICMUX_LOG(kInfo, "port %s: adopting DPDK device %s (probed at the EAL's start)", opt_.name.c_str(), dev_name_.c_str());
  } else {
    if (int r = rte_dev_probe(opt_.devargs.c_str()); r != 0) {
      return Error(what + ": DPDK refused the device: " + rte_strerror(-r));
    }
  }
  probed_ = true;
  const uint64_t t_probed = MonotonicNowNs();
  if (rte_eth_dev_get_port_by_name(dev_name_.c_str(), &port_id_) != 0) {
    return Error(what + ": probed, but no ethdev named " + dev_name_ +
                 " (a PCI device is named by its full address, 0000:01:00.0)");
  }
  have_port_ = true;
  node_ = std::max(rte_eth_dev_socket_id(port_id_), -1);  // SOCKET_ID_ANY, or an error: -1
  if (int r = rte_eth_dev_info_get(port_id_, &info_); r != 0) return Error(what + ": no device info: " + rte_strerror(-r));
  if (opt_.queues > info_.max_rx_queues || opt_.queues > info_.max_tx_queues) {
    return Error(what + ": queues=" + std::to_string(opt_.queues) + " but the device has " +
                 std::to_string(std::min(info_.max_rx_queues, info_.max_tx_queues)));
  }
  rte_eth_conf conf{};
  // Frames longer than one mbuf: chains both ways, where the device takes them.
  const uint64_t tx_capa = info_.tx_offload_capa, rx_capa = info_.rx_offload_capa;
  conf.txmode.offloads = tx_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS;
  multi_segs_ = conf.txmode.offloads != 0;
  conf.rxmode.offloads = rx_capa & RTE_ETH_RX_OFFLOAD_SCATTER;
  if (opt_.offloads) {
    constexpr uint64_t kL4 = RTE_ETH_TX_OFFLOAD_TCP_CKSUM | RTE_ETH_TX_OFFLOAD_UDP_CKSUM;
    dev_csum_ = (tx_capa & kL4) == kL4;
    dev_ip_csum_ = dev_csum_ && (tx_capa & RTE_ETH_TX_OFFLOAD_IPV4_CKSUM);
    // TSO frames are up to 64 KiB: chains of mbufs, so only with MULTI_SEGS. net_tap cuts
    // them with DPDK's GSO library, which knows TCP over IPv4 only.
    // net_tap (DPDK 22.11) is left out: its GSO library cuts TCP over IPv4 only, and it
    // refuses a TSO frame whose segments, Ethernet header included, exceed the MTU, which a
    // full-sized TCP stream's are (1448 + 66 > 1500): the switch cuts for it.
    const bool tap = std::strcmp(info_.driver_name ? info_.driver_name : "", "net_tap") == 0;
    dev_tso4_ = dev_csum_ && multi_segs_ && !tap && (tx_capa & RTE_ETH_TX_OFFLOAD_TCP_TSO);
    dev_tso6_ = dev_tso4_;
    if (dev_csum_) conf.txmode.offloads |= kL4 | (dev_ip_csum_ ? RTE_ETH_TX_OFFLOAD_IPV4_CKSUM : 0);
    if (dev_tso4_) conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_TCP_TSO;
    // Checksums the device verified on receive: marked valid for the next hop.
    conf.rxmode.offloads |= rx_capa & (RTE_ETH_RX_OFFLOAD_TCP_CKSUM | RTE_ETH_RX_OFFLOAD_UDP_CKSUM);
  }
  if (opt_.queues > 1) {
    conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
    conf.rx_adv_conf.rss_conf.rss_hf = info_.flow_type_rss_offloads & (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP);
  }
  if (int r = rte_eth_dev_configure(port_id_, static_cast<uint16_t>(opt_.queues), static_cast<uint16_t>(opt_.queues), &conf);
      r != 0) {
    return Error(what + ": cannot configure it: " + rte_strerror(-r));
  }
  uint16_t rxd = static_cast<uint16_t>(opt_.ring), txd = static_cast<uint16_t>(opt_.ring);
  rte_eth_dev_adjust_nb_rx_tx_desc(port_id_, &rxd, &txd);
  // Receive rings full, transmit rings full, what the switch holds and bursts in flight.
  const uint32_t nmbufs = opt_.queues * (uint32_t{rxd} + txd + 4 * kBurst) + 1024;
  // (A live upgrade's new port made its pool in step 1, as large as the old one's: most of an
  // open's time, kept out of the gap. Too small for what this device asks now: made anew.)
  if (pool_ && pool_->size < nmbufs) {
    rte_mempool_free(pool_);
    pool_ = nullptr;
  }
  nmbufs_ = nmbufs;
  if (!pool_) {
    const std::string pool_name = "nmx_" + std::to_string(port_id_) + "_" + std::to_string(getpid() % 100000);
    pool_ = rte_pktmbuf_pool_create(pool_name.c_str(), nmbufs, 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                    static_cast<int>(rte_eth_dev_socket_id(port_id_)) < 0 ? SOCKET_ID_ANY : rte_eth_dev_socket_id(port_id_));
    if (!pool_) return Error(what + ": no mbuf pool of " + std::to_string(nmbufs) + ": " + rte_strerror(rte_errno));
  }
  // Zero copy towards the device, where asked and possible: the frame goes as a chain (the
  // head from the switch's copy, the rest in the source's memory), so only with MULTI_SEGS;
  // and only for virtual devices (the vdev bus): a NIC would DMA from guest memory that is
  // not mapped for it (rte_extmem_register, rte_dev_dma_map: not done).
  const rte_bus* bus = info_.device ? rte_dev_bus(info_.device) : nullptr;
  const std::string bus_name = bus ? rte_bus_name(bus) : "?";
  if (opt_.zerocopy_min == 0) {
    zc_state_ = "off";
  } else if (!multi_segs_) {
    zc_state_ = "off (the device takes no mbuf chains)";
  } else if (bus_name != "vdev") {
    zc_state_ = "off (a " + bus_name + " device would need the guest memory DMA-mapped)";
  } else {
    const uint32_t nattach = opt_.queues * (uint32_t{txd} + 4 * kBurst) * 2 + 256;
    const std::string attach_name = "nmxa_" + std::to_string(port_id_) + "_" + std::to_string(getpid() % 100000);
    attach_pool_ = rte_pktmbuf_pool_create(attach_name.c_str(), nattach, 0, 0, 0, SOCKET_ID_ANY);
    if (!attach_pool_) return Error(what + ": no mbuf pool of " + std::to_string(nattach) + " for zero copy: " + rte_strerror(rte_errno));
    zc_min_ = opt_.zerocopy_min;
    zc_iova_va_ = rte_eal_iova_mode() == RTE_IOVA_VA;
    zc_state_ = "frames of " + std::to_string(zc_min_) + " bytes and more";
  }
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    const int sock = rte_eth_dev_socket_id(port_id_);
    if (int r = rte_eth_rx_queue_setup(port_id_, static_cast<uint16_t>(i), rxd, sock < 0 ? SOCKET_ID_ANY : sock, nullptr, pool_); r != 0) {
      return Error(what + ": receive queue " + std::to_string(i) + ": " + rte_strerror(-r));
    }
    if (int r = rte_eth_tx_queue_setup(port_id_, static_cast<uint16_t>(i), txd, sock < 0 ? SOCKET_ID_ANY : sock, nullptr); r != 0) {
      return Error(what + ": transmit queue " + std::to_string(i) + ": " + rte_strerror(-r));
    }
    if (q_.size() <= i) q_.push_back(std::make_unique<Queue>());
    if (zc_min_) {
      // One record per frame the transmit ring can hold, and the bursts on their way.
      ZcPool& z = q_[i]->zc;
      z.n = uint32_t{txd} + 4 * kBurst;
      z.recs.reset(new ZcRecord[z.n]);
      for (uint32_t k = 0; k < z.n; ++k) {
        z.recs[k].pool = &z;
        z.Give(&z.recs[k]);
      }
    }
  }
  const uint64_t t_setup = MonotonicNowNs();
  if (int r = rte_eth_dev_start(port_id_); r != 0) return Error(what + ": cannot start it: " + rte_strerror(-r));
  started_ = true;
  open_us_ = {(t_probed - t_open) / 1000, (t_setup - t_probed) / 1000, (MonotonicNowNs() - t_setup) / 1000};
  rte_eth_promiscuous_enable(port_id_);  // a switch port takes every frame (not all PMDs can)
  if (rte_eth_dev_get_mtu(port_id_, &mtu_) != 0 || mtu_ == 0) mtu_ = RTE_ETHER_MTU;
  PortCaps c;
  // Partial checksums: to the device where it sums them, else completed in our copy.
  c.offloads = PortCaps::kCsumOnCopy;
  if (dev_csum_) c.offloads |= PortCaps::kCsum;
  if (dev_tso4_) c.offloads |= PortCaps::kTso4;
  if (dev_tso6_) c.offloads |= PortCaps::kTso6;
  c.mtu = mtu_;
  // Without chains, a frame must fit one mbuf (the switch cuts GSO frames to the MTU anyway).
  if (!multi_segs_) c.max_frame = RTE_MBUF_DEFAULT_DATAROOM;
  SetCaps(c);
  NICMUX_LOG(kInfo, "port %s: DPDK %s (port %u, driver %s), %u queue(s), %u/%u descriptors, MTU %u, offloads to the device: %s, zero copy: %s",
             opt_.name.c_str(), dev_name_.c_str(), port_id_, info_.driver_name, opt_.queues, rxd, txd, mtu_,
             OffloadNames(conf.txmode.offloads & ~RTE_ETH_TX_OFFLOAD_MULTI_SEGS, rte_eth_dev_tx_offload_name).c_str(),
             zc_state_.c_str());
  return Ok();
}

DpdkPort::~DpdkPort() { CloseDevice(); }

void DpdkPort::CloseDevice() {
  for (auto& q : q_) {
    if (q->nheld) rte_pktmbuf_free_bulk(q->held.data(), q->nheld);
    if (q->n) rte_pktmbuf_free_bulk(q->rx.data(), q->n);
    q->nheld = q->n = 0;
  }
  // Mbufs the device still has are freed by it now (a NIC's completed ones by the cleanup,
  // the rest by stop and close): each zero-copy frame's callback releases its hold then,
  // and the source completes the guest's chain (or, gone, unmaps its memory).
  if (started_ && zc_min_) {
    for (uint32_t i = 0; i < q_.size(); ++i) rte_eth_tx_done_cleanup(port_id_, static_cast<uint16_t>(i), 0);
  }
  if (started_) rte_eth_dev_stop(port_id_);
  if (have_port_) rte_eth_dev_close(port_id_);  // (only the port this one found: never port 0 by default)
  if (probed_) {
    // A virtual device is removed from its bus too, so the same devargs can come back.
    if (rte_eal_hotplug_remove("vdev", dev_name_.c_str()) != 0 && rte_eal_hotplug_remove("pci", dev_name_.c_str()) != 0) {
      NICMUX_LOG(kWarning, "port %s: DPDK device %s was closed but not removed from its bus", name().c_str(),
                 dev_name_.c_str());
    }
  }
  started_ = have_port_ = probed_ = false;
  if (pool_) rte_mempool_free(pool_);
  pool_ = nullptr;
  // A PMD that kept a zero-copy frame's mbufs past its close would call back into the
  // records (and the attach pool) later: those are left allocated, never freed under it.
  uint32_t out = 0;
  for (auto& q : q_) out += q->zc.n ? q->zc.Outstanding() : 0;
  if (out != 0) {
    NICMUX_LOG(kWarning, "port %s: the device kept %u zero-copy frame(s) past its close: their records stay allocated",
               name().c_str(), out);
    for (auto& q : q_) (void)q.release();
    q_.clear();
    attach_pool_ = nullptr;
    return;
  }
  if (attach_pool_) rte_mempool_free(attach_pool_);
  attach_pool_ = nullptr;
}

size_t DpdkPort::Rx(uint32_t qi, Batch& out, size_t max) {
  Queue& q = *q_[qi];
  NICMUX_DCHECK(out.empty());
  if (!started_) return 0;  // (closed: handed over, or its reopening after a failed upgrade failed)
  max = std::min<size_t>(max, kBurst);
  rte_mbuf* m[kBurst];
  uint32_t got = 0;
  // What the switch did not take last time first, in order.
  const uint32_t from_held = std::min<uint32_t>(q.nheld, static_cast<uint32_t>(max));
  std::copy_n(q.held.data(), from_held, m);
  got = from_held;
  std::memmove(q.held.data(), q.held.data() + from_held, (q.nheld - from_held) * sizeof(rte_mbuf*));
  q.nheld -= from_held;
  if (got < max && !q.backlog_len.empty()) got += FromBacklog(q, m + got, static_cast<uint32_t>(max - got));
  // (Not past a backlog the pool could not take all of yet: the device's frames are newer.)
  if (got < max && q.backlog_len.empty()) got += RxBurst(port_id_, static_cast<uint16_t>(qi), m + got, static_cast<uint16_t>(max - got));
  q.n = 0;
  for (uint32_t i = 0; i < got; ++i) {
    rte_mbuf* b = m[i];
    // UNTRUSTED (the wire's): the chain's lengths are the PMD's; a chain longer than a
    // PacketRef names is dropped.
    if (b->nb_segs > kMaxSegs || b->pkt_len == 0) {
      q.rxc.dropped.Add();
      q.rxc.drops.Add(DropReason::kBadFrame);
      rte_pktmbuf_free(b);
      continue;
    }
    auto& segs = q.segs[q.n];
    uint16_t ns = 0;
    for (rte_mbuf* s = b; s; s = s->next) segs[ns++] = {rte_pktmbuf_mtod(s, std::byte*), s->data_len};
    PacketRef* p = out.TryPush();
    p->segs = segs.data();
    p->nsegs = ns;
    p->len = b->pkt_len;
    p->head_len = 0;
    p->seg = 0;
    p->seg_off = 0;
    p->offload = {};
    ExtendHead(p, std::min<uint32_t>(p->len, kHeadBytes));
    if ((b->ol_flags & RTE_MBUF_F_RX_L4_CKSUM_MASK) == RTE_MBUF_F_RX_L4_CKSUM_GOOD) p->offload.flags = Offload::kCsumValid;
    q.rx[q.n++] = b;
  }
  return out.size();
}

void DpdkPort::RxDone(uint32_t qi, Batch& batch, size_t sent) {
  Queue& q = *q_[qi];
  uint64_t bytes = 0;
  for (size_t k = 0; k < sent; ++k) bytes += batch[static_cast<uint32_t>(k)].len;
  q.rxc.packets.Add(sent);
  q.rxc.bytes.Add(bytes);
  if (sent) rte_pktmbuf_free_bulk(q.rx.data(), static_cast<unsigned>(sent));
  const uint32_t keep = q.n - static_cast<uint32_t>(sent);
  if (keep) {  // before any still held
    std::memmove(q.held.data() + keep, q.held.data(), q.nheld * sizeof(rte_mbuf*));
    std::copy_n(q.rx.data() + sent, keep, q.held.data());
    q.nheld += keep;
  }
  q.n = 0;
}

// Writes a frame into a chain of mbufs from pool, growing it as it goes; Patch rewrites bytes
// already written (a checksum field).
struct MbufWriter {
  rte_mempool* pool;
  rte_mbuf* head;
  rte_mbuf* cur;
  size_t Write(const void* src, size_t n) {
    const auto* from = static_cast<const std::byte*>(src);
    size_t done = 0;
    while (done < n) {
      uint16_t room = rte_pktmbuf_tailroom(cur);
      if (room == 0) {
        rte_mbuf* next = rte_pktmbuf_alloc(pool);
        if (!next) return done;
        cur->next = next;
        cur = next;
        ++head->nb_segs;
        room = rte_pktmbuf_tailroom(cur);
      }
      const size_t k = std::min<size_t>(room, n - done);
      std::memcpy(rte_pktmbuf_mtod_offset(cur, std::byte*, cur->data_len), from + done, k);
      cur->data_len = static_cast<uint16_t>(cur->data_len + k);
      head->pkt_len += static_cast<uint32_t>(k);
      done += k;
    }
    return done;
  }
  void Patch(size_t at, const void* src, size_t n) {
    const auto* from = static_cast<const std::byte*>(src);
    for (rte_mbuf* s = head; s && n; s = s->next) {
      if (at >= s->data_len) {
        at -= s->data_len;
        continue;
      }
      const size_t k = std::min<size_t>(n, s->data_len - at);
      std::memcpy(rte_pktmbuf_mtod_offset(s, std::byte*, at), from, k);
      from += k;
      n -= k;
      at = 0;
    }
  }
};

uint32_t DpdkPort::FromBacklog(Queue& q, rte_mbuf** m, uint32_t n) {
  uint32_t k = 0;
  for (; k < n && q.backlog_next < q.backlog_len.size(); ++k) {
    const uint32_t len = q.backlog_len[q.backlog_next];  // (checked, as the bytes' own prefix was)
    rte_mbuf* b = rte_pktmbuf_alloc(pool_);
    if (!b) break;
    MbufWriter w{pool_, b, b};
    if (w.Write(q.backlog.data() + q.backlog_off + sizeof(uint32_t), len) != len) {  // (the pool ran short: later)
      rte_pktmbuf_free(b);
      break;
    }
    m[k] = b;
    q.backlog_off += sizeof(uint32_t) + len;
    ++q.backlog_next;
  }
  if (q.backlog_next == q.backlog_len.size()) {  // worked off: the memory goes
    std::vector<std::byte>().swap(q.backlog);
    std::vector<uint32_t>().swap(q.backlog_len);
    q.backlog_next = q.backlog_off = 0;
  }
  return k;
}

bool DpdkPort::ToDevice(const PacketRef& p, rte_mbuf* m) const {
  const Offload& o = p.offload;
  if (!dev_csum_ || !o.needs_csum()) return false;
  // The record passed CheckOffload: csum_start + csum_offset + 2 is within the head copy.
  auto be16 = [&](uint32_t at) { return static_cast<uint16_t>(uint16_t(p.head[at]) << 8 | uint16_t(p.head[at + 1])); };
  uint32_t l2 = kEthHeaderBytes;
  uint16_t type = be16(12);
  if (type == 0x8100 && p.head_len >= 18) {
    l2 += 4;
    type = be16(16);
  }
  uint64_t fl;
  if (type == 0x0800) {
    fl = RTE_MBUF_F_TX_IPV4;
  } else if (type == 0x86dd) {
    fl = RTE_MBUF_F_TX_IPV6;
  } else {
    return false;
  }
  // UNTRUSTED (the source's record): where the L4 header is. l3 is what lies between; its
  // field in the mbuf has 9 bits. A source that names the wrong protocol's field gets its own
  // frame summed wrong, as it would have with the sum done here.
  if (o.csum_start <= l2 || o.csum_start - l2 > 511) return false;
  if (o.csum_offset == 16) {
    fl |= RTE_MBUF_F_TX_TCP_CKSUM;
  } else if (o.csum_offset == 6) {
    fl |= RTE_MBUF_F_TX_UDP_CKSUM;
  } else {
    return false;
  }
  m->l2_len = l2;
  m->l3_len = o.csum_start - l2;
  if (o.gso_type == GsoType::kTcp4 || o.gso_type == GsoType::kTcp6) {
    // Checked by CheckOffload: a TCP header at csum_start, hdr_len its end. The field holds
    // the pseudo-header's sum with the length, as Linux leaves it; rte_eth_tx_prepare
    // rewrites it the way the PMD wants (without the length, for most TSO engines).
    if ((o.gso_type == GsoType::kTcp4 ? !dev_tso4_ : !dev_tso6_) ||
        (fl & RTE_MBUF_F_TX_L4_MASK) != RTE_MBUF_F_TX_TCP_CKSUM) {  // (a 2-bit field, not flags)
      return false;
    }
    fl |= RTE_MBUF_F_TX_TCP_SEG;
    if (fl & RTE_MBUF_F_TX_IPV4 && dev_ip_csum_) fl |= RTE_MBUF_F_TX_IP_CKSUM;
    m->l4_len = o.hdr_len - o.csum_start;
    m->tso_segsz = o.gso_size;
  } else if (o.gso()) {
    return false;
  }
  m->ol_flags |= fl;
  return true;
}

ZcRecord* DpdkPort::AttachZeroCopy(Queue& q, const PacketRef& p, rte_mbuf* m) {
  // The bytes after the head, as the source names them, in pieces an mbuf can describe.
  struct Piece {
    std::byte* data;
    uint16_t len;
  };
  Piece pieces[kMaxZcPieces];
  uint32_t np = 0;
  uint32_t seg = p.seg, off = p.seg_off;
  size_t left = p.len - p.head_len;
  if (left == 0) return nullptr;
  while (left > 0) {
    if (seg >= p.nsegs) return nullptr;  // (the segments end first: not a frame to hold)
    const Segment& sg = p.segs[seg];
    if (off >= sg.len) {
      ++seg;
      off = 0;
      continue;
    }
    size_t k = std::min<size_t>(left, sg.len - off);
    while (k > 0) {
      if (np == kMaxZcPieces) return nullptr;
      const uint16_t c = static_cast<uint16_t>(std::min<size_t>(k, UINT16_MAX));
      pieces[np++] = {sg.data + off, c};
      off += c;
      k -= c;
      left -= c;
    }
  }
  if (info_.tx_desc_lim.nb_seg_max != 0 && np + 1 > info_.tx_desc_lim.nb_seg_max) return nullptr;
  ZcRecord* r = q.zc.Take();
  if (r == nullptr) return nullptr;
  rte_mbuf* ext[kMaxZcPieces];
  if (rte_pktmbuf_alloc_bulk(attach_pool_, ext, np) != 0) {
    q.zc.Give(r);
    return nullptr;
  }
  const uint32_t ticket = p.holder->Hold(p);
  if (ticket == PacketHolder::kNoHold) {  // the source's bound reached: copied
    rte_pktmbuf_free_bulk(ext, np);
    q.zc.Give(r);
    return nullptr;
  }
  r->holder = p.holder;
  r->ticket = ticket;
  r->cancelled = false;
  r->shinfo.free_cb = ZcFree;
  r->shinfo.fcb_opaque = r;
  rte_mbuf_ext_refcnt_set(&r->shinfo, static_cast<uint16_t>(np));
  // The head from the switch's private copy: the headers it classified (MACs, VLAN, what the
  // offload record names) are what the device sends, whatever the guest writes meanwhile.
  std::memcpy(rte_pktmbuf_mtod(m, std::byte*), p.head, p.head_len);
  m->data_len = static_cast<uint16_t>(p.head_len);
  m->pkt_len = p.len;
  m->nb_segs = static_cast<uint16_t>(1 + np);
  rte_mbuf* last = m;
  for (uint32_t i = 0; i < np; ++i) {
    // UNTRUSTED: the rest is read by the device straight from the source's memory: pieces of
    // segments the source checked (a guest's chain: translated inside one region of its
    // memory table), which the hold keeps mapped until the device frees the mbuf. A guest
    // that rewrites its buffer meanwhile changes only the payload of its own frame (its
    // headers went from the copy above); the host never reads outside the guest's memory.
    rte_mbuf* e = ext[i];
    rte_pktmbuf_attach_extbuf(e, pieces[i].data, zc_iova_va_ ? reinterpret_cast<rte_iova_t>(pieces[i].data) : RTE_BAD_IOVA,
                              pieces[i].len, &r->shinfo);
    e->data_len = pieces[i].len;
    last->next = e;
    last = e;
  }
  return r;
}

size_t DpdkPort::Tx(uint32_t qi, std::span<const PacketRef* const> in) {
  Queue& q = *q_[qi];
  rte_mbuf* m[kBurst];
  const uint32_t want = static_cast<uint32_t>(std::min<size_t>(in.size(), kBurst));
  // A device whose link is down (a memif without its peer) takes nothing: dropped here, not
  // copied into mbufs and refused by the burst, which looked like a full ring and kept the
  // source retrying (and copying) until the link came back.
  rte_eth_link link{};
  if (!started_ || (rte_eth_link_get_nowait(port_id_, &link) == 0 && !link.link_status)) {
    q.txc.dropped.Add(want);
    q.txc.drops.Add(DropReason::kPortDown, want);
    return want;
  }
  if (rte_pktmbuf_alloc_bulk(pool_, m, want) != 0) return 0;  // no mbufs now: backpressure
  uint32_t built = 0;
  uint32_t idx[kBurst], len[kBurst];
  ZcRecord* zc[kBurst];  // the zero-copy frames' records (nullptr: copied)
  // The longest frame the device sends: its MTU, the Ethernet header and one VLAN tag. A PMD
  // refuses longer ones in its burst, which would look like a full ring to us (and come back
  // forever): they are dropped here.
  const uint32_t max_len = uint32_t{mtu_} + kEthHeaderBytes + 4;
  auto drop = [&](uint32_t k, DropReason r) {
    rte_pktmbuf_free(m[k]);
    q.txc.dropped.Add();
    q.txc.drops.Add(r);
  };
  for (uint32_t k = 0; k < want; ++k) {
    const PacketRef& p = *in[k];
    if (!multi_segs_ && p.len > RTE_MBUF_DEFAULT_DATAROOM) {  // the device takes no chains
      drop(k, DropReason::kTooBig);
      continue;
    }
    const bool to_device = ToDevice(p, m[k]);
    const bool tso = m[k]->ol_flags & RTE_MBUF_F_TX_TCP_SEG;
    if (tso ? uint32_t{p.offload.hdr_len} + p.offload.gso_size > max_len : p.len > max_len) {
      drop(k, DropReason::kMtu);
      continue;
    }
    // Zero copy: a frame the switch sends whole and unchanged (its source offers a hold), long
    // enough, with nothing for this copy to complete.
    ZcRecord* r = nullptr;
    if (zc_min_ && p.holder && p.len >= zc_min_ && (to_device || !p.offload.needs_csum())) {
      r = AttachZeroCopy(q, p, m[k]);
    }
    if (r == nullptr) {
      MbufWriter w{pool_, m[k], m[k]};
      if ((to_device ? CopyPacket(p, w) : CopyPacketCompleting(p, w)) < p.len) {  // out of mbufs for a long frame
        drop(k, DropReason::kTooBig);
        continue;
      }
    }
    zc[built] = r;
    idx[built] = k;
    len[built] = p.len;
    m[built++] = m[k];
  }
  // The device's own checks and fix-ups of offload requests (pseudo-header sums, header
  // lengths, segment counts); a frame it refuses is dropped, never retried.
  uint32_t ready = 0;
  for (uint32_t at = 0; at < built;) {
    const uint16_t ok = rte_eth_tx_prepare(port_id_, static_cast<uint16_t>(qi), m + at, static_cast<uint16_t>(built - at));
    for (uint32_t i = at; i < at + ok; ++i) {
      idx[ready] = idx[i];
      len[ready] = len[i];
      zc[ready] = zc[i];
      m[ready++] = m[i];
    }
    at += ok;
    if (at < built) {
      NICMUX_LOG_RATELIMITED(kWarning, "port %s: the device refused a %u-byte frame's offload request: %s",
                             name().c_str(), len[at], rte_strerror(rte_errno));
      FreeUnsent(m[at], zc[at]);
      q.txc.dropped.Add();
      q.txc.drops.Add(DropReason::kBadOffload);
      ++at;
    }
  }
  // (Counted before the burst: the PMD may free a zero-copy frame, and its record with the
  // hold, inside it.)
  uint32_t zc_ready = 0;
  for (uint32_t i = 0; i < ready; ++i) zc_ready += zc[i] != nullptr;
  const uint16_t sent = ready ? TxBurst(port_id_, static_cast<uint16_t>(qi), m, static_cast<uint16_t>(ready)) : 0;
  for (uint32_t i = sent; i < ready; ++i) {
    zc_ready -= zc[i] != nullptr;
    FreeUnsent(m[i], zc[i]);
  }
  uint64_t sent_bytes = 0;
  for (uint16_t i = 0; i < sent; ++i) sent_bytes += len[i];  // (the PMD owns the sent mbufs now)
  q.txc.packets.Add(sent);
  q.txc.bytes.Add(sent_bytes);
  if (zc_min_) {
    q.tx_zerocopy.Add(zc_ready);
    q.tx_copied.Add(sent - zc_ready);
  }
  // Taken: everything up to the first packet the device refused (drops count as taken).
  return sent < ready ? idx[sent] : want;
}

PortStats DpdkPort::Stats() const { return SumQueueStats(q_); }

uint64_t DpdkPort::DropsFor(DropReason r) const { return SumQueueDrops(q_, r); }

std::string DpdkPort::State() const {
  if (!started_) return "device closed";
  rte_eth_link link{};
  if (rte_eth_link_get_nowait(port_id_, &link) != 0) return "unknown link";
  return link.link_status ? "link up, " + std::to_string(link.link_speed) + " Mbit/s" : "link down";
}

std::vector<Port::Detail> DpdkPort::Details() const {
  rte_eth_stats s{};
  rte_eth_stats_get(port_id_, &s);
  return {{"device", dev_name_},
          {"driver", std::string(info_.driver_name ? info_.driver_name : "?")},
          {"dpdk_port_id", uint64_t{port_id_}},
          {"device_imissed", s.imissed},
          {"device_ierrors", s.ierrors},
          {"device_oerrors", s.oerrors},
          {"device_rx_nombuf", s.rx_nombuf},
          {"zerocopy", zc_state_},
          {"tx_zerocopy", zc_frames(true)},
          {"tx_copied", zc_frames(false)}};
}

std::vector<Port::Detail> DpdkPort::DeviceCaps() const {
  std::string used;
  if (dev_csum_) used += "tcp_cksum udp_cksum";
  if (dev_ip_csum_) used += " ipv4_cksum";
  if (dev_tso4_) used += " tso4";
  if (dev_tso6_) used += " tso6";
  return {{"driver", std::string(info_.driver_name ? info_.driver_name : "?")},
          {"rx_offloads", OffloadNames(info_.rx_offload_capa, rte_eth_dev_rx_offload_name)},
          {"tx_offloads", OffloadNames(info_.tx_offload_capa, rte_eth_dev_tx_offload_name)},
          {"tx_offloads_used", used.empty() ? (opt_.offloads ? "none" : "none (offloads=off)") : used},
          {"max_rx_queues", uint64_t{info_.max_rx_queues}},
          {"max_tx_queues", uint64_t{info_.max_tx_queues}},
          {"max_rx_pktlen", uint64_t{info_.max_rx_pktlen}},
          {"min_mtu", uint64_t{info_.min_mtu}},
          {"max_mtu", uint64_t{info_.max_mtu}},
          {"mtu", uint64_t{mtu_}},
          {"tx_max_segments", uint64_t{info_.tx_desc_lim.nb_seg_max}},
          {"chains", multi_segs_ ? "yes" : "no"},
          {"rss_hash", info_.flow_type_rss_offloads ? OffloadNames(info_.flow_type_rss_offloads, RssName) : "none"}};
}

// --------------------------------------------------------------------------- live upgrade

// The largest frame Rx takes from a device (a chain of kMaxSegs mbufs of the port's pool):
// bounds what the new process reads back.
constexpr uint32_t kMaxHeldFrame = kMaxSegs * RTE_MBUF_DEFAULT_DATAROOM;
// The bytes a queue's handed-over frames may take (the drain stops there), and what the new
// process accepts: that, and the held frames and one burst past it.
constexpr uint64_t kMaxBacklogBytes = 64ull << 20;
constexpr uint64_t kMaxBacklogFile = kMaxBacklogBytes + 2 * kBurst * (sizeof(uint32_t) + kMaxHeldFrame);

Result<void> DpdkPort::Export(HandoverRecord* out) {
  // Only what the new process needs before the precise point: the caps the switch sees (the
  // device's own come back when it opens it). The device stays this process's until then.
  const PortCaps c = Caps();
  out->Set("d.caps.offloads", c.offloads);
  out->Set("d.caps.mtu", c.mtu);
  out->Set("d.caps.max_frame", c.max_frame);
  out->Set("d.queues", q_.size());
  out->Set("d.nmbufs", nmbufs_);
  out->Set("d.socket", static_cast<uint64_t>(std::max(rte_eth_dev_socket_id(port_id_), -1) + 1));  // 0: any
  return Ok();
}

Result<void> DpdkPort::Adopt(HandoverRecord& in) {
  const std::string what = "port " + opt_.name + ": handover";
  // UNTRUSTED (the old process, maybe another build): the queues as the spec says, the caps
  // within their fields (and replaced by the device's own once it opens).
  NICMUX_TRY_ASSIGN(queues, in.Get("d.queues", Port::kMaxQueues));
  if (queues != opt_.queues) {
    return Error(what + ": the old port had " + std::to_string(queues) + " queue(s), its spec here says " + std::to_string(opt_.queues));
  }
  NICMUX_TRY_ASSIGN(offloads, in.Get("d.caps.offloads", UINT8_MAX));
  NICMUX_TRY_ASSIGN(mtu, in.Get("d.caps.mtu", UINT16_MAX));
  NICMUX_TRY_ASSIGN(max_frame, in.Get("d.caps.max_frame", UINT32_MAX));
  // The most mbufs a port can want (every queue's rings at their longest) and a NUMA node.
  NICMUX_TRY_ASSIGN(nmbufs, in.GetOr("d.nmbufs", 0, Port::kMaxQueues * (2 * 4096 + 4 * kBurst) + 1024));
  NICMUX_TRY_ASSIGN(socket, in.GetOr("d.socket", 0, RTE_MAX_NUMA_NODES));  // the node + 1; 0: any
  // The EAL and the mbuf pool now, while the old process still forwards (they take tens of
  // milliseconds): not in the gap.
  NICMUX_TRY(EnsureEal());
  if (nmbufs > 0) {
    static std::atomic<uint32_t> seq{0};
    const std::string pool_name = "nmxh_" + std::to_string(getpid() % 100000) + "_" + std::to_string(seq++);
    pool_ = rte_pktmbuf_pool_create(pool_name.c_str(), static_cast<uint32_t>(nmbufs), 0, 0, RTE_MBUF_DEFAULT_BUF_SIZE,
                                    socket == 0 ? SOCKET_ID_ANY : static_cast<int>(socket) - 1);
    if (!pool_) return Error(what + ": no mbuf pool of " + std::to_string(nmbufs) + ": " + rte_strerror(rte_errno));
  }
  for (uint32_t i = 0; i < opt_.queues; ++i) q_.push_back(std::make_unique<Queue>());
  PortCaps c;
  c.offloads = static_cast<uint8_t>(offloads);
  c.mtu = static_cast<uint16_t>(mtu);
  c.max_frame = static_cast<uint32_t>(max_frame);
  SetCaps(c);
  dev_name_ = opt_.devargs.substr(0, opt_.devargs.find(','));
  return Ok();
}

namespace {

Result<void> WriteAll(int fd, const void* p, size_t n, const std::string& what) {
  for (size_t done = 0; done < n;) {
    const ssize_t k = ::write(fd, static_cast<const std::byte*>(p) + done, n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return Error::FromErrno(what);
    done += static_cast<size_t>(k);
  }
  return Ok();
}

}  // namespace

Result<void> DpdkPort::ExportPositions(HandoverRecord* out) {
  // The precise point: every batch completed. What the old process has of the device's
  // frames goes over as bytes in a memfd (a 4-byte length, then the frame; oldest first): the
  // frames a full destination has not taken yet, then what the device has received and nobody
  // read (drained now: a busy worker leaves its receive ring full, and closing it would lose
  // it). This process keeps the same bytes as its own backlog: should the upgrade fail, its
  // device opens again and they are delivered here instead. Then the device is closed for the
  // new process to open. (Frames the device took to send and has not sent are its own: a NIC
  // sends them before it stops, others may not.)
  for (uint32_t qi = 0; qi < q_.size(); ++qi) {
    Queue& q = *q_[qi];
    if (q.n != 0) return Error("port " + name() + ": queue " + std::to_string(qi) + ": a receive batch in flight");
  }
  std::vector<std::vector<std::byte>> raw(q_.size());
  std::vector<std::vector<uint32_t>> lens(q_.size());
  for (uint32_t qi = 0; qi < q_.size(); ++qi) {
    Queue& q = *q_[qi];
    std::vector<std::byte>& r = raw[qi];
    // (A frame Rx would not take, or past the bounds, is dropped and counted.)
    auto put = [&](const std::byte* b, uint32_t len) {
      if (len < kEthHeaderBytes || len > kMaxHeldFrame || r.size() >= kMaxBacklogBytes || lens[qi].size() >= kMaxBacklog) {
        q.rxc.dropped.Add();
        q.rxc.drops.Add(DropReason::kBadFrame);
        return;
      }
      const auto* l = reinterpret_cast<const std::byte*>(&len);
      r.insert(r.end(), l, l + sizeof len);
      r.insert(r.end(), b, b + len);
      lens[qi].push_back(len);
    };
    std::vector<std::byte> buf;
    auto put_mbuf = [&](const rte_mbuf* m) {
      buf.resize(m->pkt_len);
      put(static_cast<const std::byte*>(rte_pktmbuf_read(m, 0, m->pkt_len, buf.data())), m->pkt_len);
    };
    for (uint32_t i = 0; i < q.nheld; ++i) put_mbuf(q.held[i]);
    // (A backlog not worked off yet, from an upgrade before: after the held frames, as Rx.)
    for (size_t i = q.backlog_next, off = q.backlog_off; i < q.backlog_len.size(); ++i) {
      put(q.backlog.data() + off + sizeof(uint32_t), q.backlog_len[i]);
      off += sizeof(uint32_t) + q.backlog_len[i];
    }
    if (started_) {
      rte_mbuf* m[kBurst];
      uint32_t got = 0;
      while (r.size() < kMaxBacklogBytes && lens[qi].size() < kMaxBacklog &&
             (got = RxBurst(port_id_, static_cast<uint16_t>(qi), m, kBurst)) > 0) {
        for (uint32_t i = 0; i < got; ++i) {
          put_mbuf(m[i]);
          rte_pktmbuf_free(m[i]);
        }
      }
    }
  }
  for (uint32_t qi = 0; qi < q_.size(); ++qi) {
    if (lens[qi].empty()) continue;
    const std::string k = "d.q." + std::to_string(qi) + ".";
    UniqueFd mfd(::memfd_create("nicmux-dpdk-held", MFD_CLOEXEC));
    if (!mfd.valid()) return Error::FromErrno("port " + name() + ": memfd for held frames");
    NICMUX_TRY(WriteAll(mfd.get(), raw[qi].data(), raw[qi].size(), "port " + name() + ": writing held frames"));
    out->Set(k + "frames", lens[qi].size());
    NICMUX_TRY(out->SetFd(k + "data", mfd.get()));
  }
  const uint64_t t0 = MonotonicNowNs();
  CloseDevice();  // (frees the held mbufs: their bytes are in the backlog now)
  closed_ns_ = MonotonicNowNs() - t0;
  for (uint32_t qi = 0; qi < q_.size(); ++qi) {
    Queue& q = *q_[qi];
    q.backlog = std::move(raw[qi]);
    q.backlog_len = std::move(lens[qi]);
    q.backlog_next = q.backlog_off = 0;
  }
  return Ok();
}

Result<void> DpdkPort::ImportPositions(HandoverRecord& in) {
  // The frames first (reading them is not the device's time), then the device.
  std::vector<std::vector<std::byte>> data(q_.size());
  std::vector<std::vector<uint32_t>> lens(q_.size());
  uint64_t total = 0;
  for (uint32_t qi = 0; qi < q_.size(); ++qi) {
    const std::string k = "d.q." + std::to_string(qi) + ".";
    const std::string what = "port " + name() + ": handover: queue " + std::to_string(qi);
    // UNTRUSTED (the old process): a bounded count, a bounded file, each frame's length what
    // Rx takes, the file holding every byte named and no more. Kept as it is (lengths and
    // frames), read in place by Rx.
    NICMUX_TRY_ASSIGN(frames, in.GetOr(k + "frames", 0, kMaxBacklog + kBurst));
    if (frames == 0) continue;
    NICMUX_TRY_ASSIGN(mfd, in.TakeFd(k + "data"));
    struct stat st = {};
    if (::fstat(mfd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 0 ||
        static_cast<uint64_t>(st.st_size) > std::min<uint64_t>(kMaxBacklogFile, frames * (sizeof(uint32_t) + kMaxHeldFrame))) {
      return Error(what + ": " + k + "data is not a file of at most " + std::to_string(frames) + " frames");
    }
    std::vector<std::byte>& d = data[qi];
    d.resize(static_cast<size_t>(st.st_size));
    if (::pread(mfd.get(), d.data(), d.size(), 0) != static_cast<ssize_t>(d.size())) return Error(what + ": held frames cut short");
    size_t off = 0;
    for (uint64_t i = 0; i < frames; ++i) {
      uint32_t len = 0;
      if (d.size() - off < sizeof len) return Error(what + ": held frames cut short");
      std::memcpy(&len, d.data() + off, sizeof len);
      off += sizeof len;
      if (len < kEthHeaderBytes || len > kMaxHeldFrame || d.size() - off < len) {
        return Error(what + ": a held frame of " + std::to_string(len) + " bytes (or cut short)");
      }
      lens[qi].push_back(len);
      off += len;
    }
    if (off != d.size()) return Error(what + ": " + std::to_string(d.size() - off) + " bytes after the last held frame");
    total += frames;
  }
  const uint64_t t0 = MonotonicNowNs();
  NICMUX_TRY(OpenDevice());
  const uint64_t opened_ns = MonotonicNowNs() - t0;
  for (uint32_t qi = 0; qi < q_.size(); ++qi) {
    Queue& q = *q_[qi];
    q.backlog = std::move(data[qi]);
    q.backlog_len = std::move(lens[qi]);
    q.backlog_next = q.backlog_off = 0;
  }
  NICMUX_LOG(kInfo, "port %s: DPDK device %s opened again for the handover in %llu us (probe %llu, configure and pools %llu, start %llu); %llu frame(s) handed over",
             name().c_str(), dev_name_.c_str(), static_cast<unsigned long long>(opened_ns / 1000),
             static_cast<unsigned long long>(open_us_[0]), static_cast<unsigned long long>(open_us_[1]),
             static_cast<unsigned long long>(open_us_[2]), static_cast<unsigned long long>(total));
  return Ok();
}

void DpdkPort::HandoverAborted() {
  // The old process, its upgrade failed after the device was closed: it opens it again, and
  // its Rx delivers the frames it handed over (kept as its backlog) first.
  if (started_) return;
  NICMUX_LOG(kWarning, "port %s: the upgrade failed after the device was closed (%llu us): opening %s again",
             name().c_str(), static_cast<unsigned long long>(closed_ns_ / 1000), dev_name_.c_str());
  if (auto r = OpenDevice(); !r) {
    NICMUX_LOG(kError, "port %s: %s; the port stays down", name().c_str(), r.error().message().c_str());
    CloseDevice();
  }
}

}  // namespace

void RemoveDpdkLeftovers() {
  if (g_runtime_dir.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(g_runtime_dir, ec);
  // Hugepage files: none with --huge-unlink (the default) or --in-memory.
  const std::string mine = std::string(kPrefix) + std::to_string(getpid()) + "map_";
  std::ifstream mounts("/proc/mounts");
  for (std::string dev, dir, type, rest; mounts >> dev >> dir >> type && std::getline(mounts, rest);) {
    if (type != "hugetlbfs") continue;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      if (e.path().filename().string().rfind(mine, 0) == 0) std::filesystem::remove(e.path(), ec);
    }
  }
}

size_t SweepDpdkLeftovers() {
  std::set<pid_t> gone;
  std::error_code ec;
  // Only in a directory of this user's, not a link (/tmp/dpdk may be anyone's).
  struct stat st;
  const std::string base = RuntimeBase();
  const bool base_ok = ::lstat(base.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid();
  for (const auto& e : std::filesystem::directory_iterator(base_ok ? base : std::string("/nonexistent"), ec)) {
    const pid_t pid = PidIn(e.path().filename().string(), "");
    if (pid > 0 && Gone(pid) && std::filesystem::remove_all(e.path(), ec) != static_cast<std::uintmax_t>(-1)) {
      gone.insert(pid);
    }
  }
  std::ifstream mounts("/proc/mounts");
  for (std::string dev, dir, type, rest; mounts >> dev >> dir >> type && std::getline(mounts, rest);) {
    if (type != "hugetlbfs") continue;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      const pid_t pid = PidIn(e.path().filename().string(), "map_");
      if (pid > 0 && Gone(pid) && std::filesystem::remove(e.path(), ec)) gone.insert(pid);
    }
  }
  return gone.size();
}

void SetDpdkEalArgs(std::vector<std::string> args) {
  std::lock_guard lock(g_eal_mu);
  g_eal_args = std::move(args);
}

std::vector<std::string> DpdkEalArgs() {
  std::lock_guard lock(g_eal_mu);
  return g_eal_args;
}

Result<std::unique_ptr<Port>> CreateDpdkPort(const DpdkPortOptions& o, HandoverRecord* handover) {
  auto p = std::make_unique<DpdkPort>(o);
  if (handover) {
    NICMUX_TRY(p->Adopt(*handover));
  } else {
    NICMUX_TRY(p->Open());
  }
  return std::unique_ptr<Port>(std::move(p));
}

Result<uint32_t> ParseZeroCopyMin(const std::string& v) {
  if (v == "off" || v == "0") return 0u;
  char* end = nullptr;
  errno = 0;
  const unsigned long n = std::strtoul(v.c_str(), &end, 10);
  if (v.empty() || !std::isdigit(static_cast<unsigned char>(v[0])) || *end != '\0' || errno != 0 || n < kMinZeroCopyBytes ||
      n > 65535) {
    return Error("zerocopy_min=" + v + ": expected off, 0, or a frame size in bytes, " + std::to_string(kMinZeroCopyBytes) +
                 "..65535");
  }
  return static_cast<uint32_t>(n);
}

PortKind DpdkPortKind() {
  PortKind k;
  k.name = "dpdk";
  k.summary =
      "any DPDK ethdev (docs/dpdk.md): a NIC by PCI address or a virtual device by its devargs (net_memif, "
      "net_af_packet, net_tap, ...). nicmuxd starts DPDK's EAL with the first such port ([dpdk] eal_args in "
      "the config). The port's worker polls it (no interrupts).";
  k.max_queues = Port::kMaxQueues;
  k.privileged = true;
  k.hands_over = true;  // (the device itself is closed and opened again: docs/dpdk.md "Live upgrade")
  k.options = {
      {"devargs", OptionType::kString, "DEV[;k=v...]", "",
       "the device: a PCI address or a vdev's devargs; on the command line write its commas as ';'", 0, 0, true},
      {"queues", OptionType::kUInt, "N", "1", "queue pairs, 1..8 (RSS spreads what the device receives)", 1,
       Port::kMaxQueues},
      {"ring", OptionType::kUInt, "N", "1024", "descriptors per queue, 64..4096", 64, 4096},
      {"offloads", OptionType::kOnOff, "on|off", "on",
       "checksums and TSO done by the device where it has them (off: the switch and the port's copy do them)"},
      {"zerocopy_min", OptionType::kString, "BYTES|off", kDefaultZeroCopyMin,
       "zero copy towards the device: a guest's frames of at least BYTES (128..65535) are handed to it from "
       "the guest's memory, the guest's buffer held until the device frees it (docs/dpdk.md \"Zero copy\"; "
       "virtual devices with chains only); off or 0: every frame copied into the port's mbufs"},
  };
  auto devargs = [](const PortSpec& s) {
    std::string d = s.options.at("devargs");
    std::replace(d.begin(), d.end(), ';', ',');
    return d;
  };
  k.claims = [devargs](const PortSpec& s) {
    const std::string d = devargs(s);
    return "DPDK device " + d.substr(0, d.find(','));
  };
  k.create = [devargs](const PortSpec& s, const PortContext& ctx) -> Result<std::unique_ptr<Port>> {
    DpdkPortOptions o;
    o.name = s.name;
    o.devargs = devargs(s);
    NICMUX_TRY_ASSIGN(q, s.UInt("queues", 1, Port::kMaxQueues, 1));
    o.queues = static_cast<uint32_t>(q);
    NICMUX_TRY_ASSIGN(ring, s.UInt("ring", 64, 4096, 1024));
    o.ring = static_cast<uint32_t>(ring);
    NICMUX_TRY_ASSIGN(offloads, s.OnOff("offloads", true));
    o.offloads = offloads;
    NICMUX_TRY_ASSIGN(zc, ParseZeroCopyMin(s.Has("zerocopy_min") ? s.options.at("zerocopy_min") : kDefaultZeroCopyMin));
    o.zerocopy_min = zc;
    return CreateDpdkPort(o, ctx.handover);
  };
  return k;
}

}  // namespace nicmux
