#include "pv/pv_port.h"

#include <endian.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cctype>
#include <cstddef>
#include <cstring>
#include <utility>

#include "base/event_fd.h"
#include "base/fd_reaper.h"
#include "base/log.h"
#include "base/peer_io.h"
#include "base/unix_socket.h"
#include "packet/offload_ops.h"
#include "port/port_spec.h"
#include "pv/pv_flow.h"
#include "pv/pv_region.h"
#include "virtio/ring_access.h"

namespace nicmux {
namespace {

constexpr uint32_t kEthHeader = 14;
constexpr uint32_t kMinMtu = 68;
constexpr uint64_t kTxOffloadsAlways = NMX_PV_TX_IPV4_CKSUM | NMX_PV_TX_TCP_CKSUM | NMX_PV_TX_UDP_CKSUM;
constexpr uint64_t kRxOffloadsAlways = NMX_PV_RX_IPV4_CKSUM | NMX_PV_RX_TCP_CKSUM | NMX_PV_RX_UDP_CKSUM;
// After a driver made one of its eventfds block a thread of ours, or its region fault under us:
// new drivers are refused for this long, doubling per repeat (forgotten after an hour), as for
// vhost-user frontends.
constexpr uint64_t kQuarantineFirstMs = 1000, kQuarantineMaxMs = 60000;
constexpr uint64_t kQuarantineForgetNs = 3600ull * 1000000000;

template <typename T>
T LoadAcquire(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T>
void StoreRelease(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

std::string MacString(const uint8_t* m) {
  char s[18];
  std::snprintf(s, sizeof s, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  return s;
}

bool ParseMac(const std::string& s, uint8_t* out) {
  unsigned v[6];
  char tail;
  if (std::sscanf(s.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &tail) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) out[i] = static_cast<uint8_t>(v[i]);
  return true;
}

// A file of the driver's own memory (MEM_ADD, and a live upgrade's registered regions): the
// checks, then a peer mapping of [fd_offset, fd_offset + size) signalling fault_fd when an access
// faults. The error says what is wrong with the file (errno: mmap's, or 0).
// UNTRUSTED: the fd (any kind of file), the offset and the size. Only memory the kernel holds
// (shmem: a memfd or a tmpfs file; hugetlbfs), asked without touching the file's filesystem: a
// file on a disk or a FUSE mount the driver serves would make the fstat, and every worker's
// access later, wait on that filesystem (a FUSE server that never answers: for ever).
Result<MappedRegion> MapDriverMemory(int fd, uint64_t fd_offset, uint64_t size, int fault_fd) {
  struct stat st;
  if (!IsMemoryFile(fd) || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return Error("the fd is not a memfd, tmpfs or hugetlbfs file");
  }
  // The file's page: hugetlbfs reports its huge page size here; mmap and munmap need it.
  const uint64_t page = st.st_blksize >= 4096 && !(st.st_blksize & (st.st_blksize - 1)) ? st.st_blksize : 4096;
  if (fd_offset % page || size % page) {
    return Error("offset " + std::to_string(fd_offset) + " and size " + std::to_string(size) +
                 " must be multiples of the file's page size " + std::to_string(page));
  }
  const uint64_t file = static_cast<uint64_t>(st.st_size);
  if (fd_offset > file || size > file - fd_offset) {
    return Error("bytes " + std::to_string(fd_offset) + " + " + std::to_string(size) +
                 " are past the end of the file (" + std::to_string(file) + " bytes)");
  }
  return MappedRegion::MapPeerFd(fd, fd_offset, size, fault_fd);
}

class PvPort final : public Port {
 public:
  PvPort(const PvPortOptions& o, EventLoop* loop, Pausable* workers);
  ~PvPort() override;
  Result<void> Listen();

  uint32_t NumQueuePairs() const override { return opt_.queues; }
  size_t Rx(uint32_t q, Batch& out, size_t max) override;
  void RxDone(uint32_t q, Batch& batch, size_t sent) override;
  size_t Tx(uint32_t q, std::span<const PacketRef* const> in) override;
  size_t TxRoom(uint32_t q) override;
  bool ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) override;
  void DisarmNotify(uint32_t q) override;
  bool CanSleep(uint32_t) const override { return true; }
  PortStats Stats() const override;
  PortStats QueueStats(uint32_t q) const override { return QueueStatsAt(q_, q); }
  uint64_t DropsFor(DropReason r) const override;
  std::string State() const override;
  std::vector<Detail> Details() const override;
  std::vector<Detail> DeviceCaps() const override;
  std::vector<std::vector<Detail>> FlowRules() const override;
  std::string Follows() const override { return opt_.uplink; }
  void FollowedChanged(const Port* uplink) override;

  // Live upgrade (docs/pv-protocol.md "Live upgrade").
  bool CanHandOver() const override { return true; }
  Result<void> Export(HandoverRecord* out) override;
  Result<void> ExportPositions(HandoverRecord* out) override;
  Result<void> ImportPositions(HandoverRecord& in) override;
  void HandoverCommitted() override;
  std::string HandoverWarning() const override { return handover_warning_; }
  // The new process's side of Export: everything but the ring positions, which
  // ImportPositions takes; nothing is written into the shared region before the commit.
  Result<void> Adopt(HandoverRecord& in);

 private:
  struct Queue {
    // Set by the control thread (START, STOP, a broken driver); read by the worker first.
    std::atomic<bool> fill_on{false};   // the driver's rx ring: Tx fills it
    std::atomic<bool> drain_on{false};  // its tx ring: Rx drains it
    bool rx_setup = false, tx_setup = false;  // QUEUE_SETUP done (control thread)
    // The worker's own copies of the indexes it owns.
    uint32_t drained = 0;  // done on the tx ring
    uint32_t filled = 0;   // done on the rx ring
    // The last Rx: each batch entry's ring position, where it stopped, what it dropped.
    std::array<uint32_t, kBurst> pos{};
    uint32_t scan_end = 0;
    std::array<uint32_t, kBurst> bad_pos{};
    std::array<DropReason, kBurst> bad_why{};
    uint32_t nbad = 0;
    bool ran = false;  // the last Rx found the queue on (RxDone has work)
    std::array<Segment, kBurst> segs{};
    QueueCounters rxc, txc;
    Counter no_buffers;  // frames Tx could not take: no posted rx buffer (the switch drops them)
    EventFd kick, irq;   // doorbell 1 + q
    // With flow rules a frame may go to any rx ring, from whichever worker sends to this port:
    // the ring's fill side is taken under this lock then (never two at a time).
    TxLock fill_lock;
  };
  struct Steer {  // a flow rule's verdict for one frame of a burst
    const PacketRef* p;
    bool mark, rss;
    uint32_t mark_value, hash;
  };

  // Control thread.
  Result<void> WatchFault();
  pv::Layout RegionLayout() const;
  Result<void> AdoptConnection(HandoverRecord& in);
  Result<void> AdoptMemory(HandoverRecord& in);
  Result<void> AdoptFlows(HandoverRecord& in);
  void OnAccept();
  void OnFault();
  void OnConnReadable(uint32_t events);
  void ServeSockRequest();
  int32_t HandleMem(const nmx_pv_sock_req& m, std::vector<UniqueFd>& fds, std::string* reason);
  void Attach(UniqueFd conn);
  Result<void> SendHello(int sock, const pv::Region& region, const std::vector<EventFd>& fds) const;
  Result<void> SendIvshmemSetup(int sock, const pv::Region& region, const std::vector<EventFd>& fds) const;
  void OnIvshmemReadable(uint32_t events);
  void Disconnect(const std::string& why, bool hostile = false);
  void ServeControl();
  int32_t Handle(const nmx_pv_msg& req, nmx_pv_msg& resp, std::string* reason);
  int32_t HandleFlow(const nmx_pv_msg& req, nmx_pv_msg& resp, std::string* reason);
  void ClearFlows();
  void FillInfo(nmx_pv_info* info) const;
  void StopQueues();
  void ResetStats();
  void SignalControl();
  void PublishCaps();
  uint64_t TxOffloadsOffered() const;
  uint64_t QuarantineLeftMs() const;  // 0: not in quarantine

  // Any thread.
  bool SignalDriver(int fd);

  // Workers (and the control thread, for a fault in registered memory).
  void Break(const std::string& why);
  std::string BadBuffer(const nmx_pv_desc& d) const;
  // A posted receive buffer that cannot hold an Ethernet header: the reason that names it.
  static std::string TooShort(const nmx_pv_desc& d) {
    return "region " + std::to_string(d.region) + " offset " + std::to_string(d.offset) + " len " +
           std::to_string(d.len) + " cannot hold an Ethernet header (" + std::to_string(kEthHeader) + " bytes)";
  }
  bool ToOffload(PacketRef* p, const nmx_pv_desc& d);
  void MaybeIrq(uint32_t qi, Queue& q, nmx_pv_ring* r);
  size_t TxFlows(uint32_t qi, std::span<const PacketRef* const> in);
  void FillSteered(uint32_t ti, const Steer* s, size_t n);

  PvPortOptions opt_;
  EventLoop* loop_;
  Pausable* workers_;
  UniqueFd listen_fd_, conn_;
  EventFd ctrl_kick_, ctrl_irq_;
  EventFd fault_;  // ours: signalled when an access to the region faulted (pv::Region)
  std::unique_ptr<pv::Region> region_;  // replaced only with the workers paused
  std::vector<std::unique_ptr<Queue>> q_;
  uint32_t generation_ = 0;
  uint32_t answered_ = 0;  // the last request answered
  uint32_t events_ = 0;
  uint64_t connections_ = 0;
  // What the driver configured (control thread writes, workers read after START).
  uint32_t nb_rx_ = 0, nb_tx_ = 0;
  uint64_t tx_offloads_ = 0, rx_offloads_ = 0;
  bool configured_ = false, started_ = false;
  std::atomic<uint32_t> mtu_;
  std::atomic<uint64_t> mac_;  // the device's MAC, 6 bytes in the low 48 bits (frame order)
  std::atomic<bool> promisc_{true};
  std::atomic<bool> breaking_{false};  // claimed by the first worker to break the device
  std::atomic<bool> broken_{false};    // set after broken_reason_ is written
  std::string broken_reason_;
  std::atomic<bool> broken_logged_{false};
  // A write to one of this driver's eventfds blocked and the peer-I/O watchdog broke it off:
  // nothing is signalled to it again, and its hanging up starts a quarantine (control thread).
  std::atomic<bool> peer_blocked_{false};
  // Registered memory faulted under us (a file the driver shrank): the device is broken, and
  // its hanging up starts a quarantine (control thread).
  bool mem_faulted_ = false;
  // The socket's requests (MEM_ADD, MEM_DEL): the bytes of the one being read, and the fds that
  // came with them (control thread).
  std::array<std::byte, sizeof(nmx_pv_sock_req)> sock_msg_{};
  size_t sock_got_ = 0;
  std::vector<UniqueFd> sock_fds_;
  uint64_t hostile_disconnects_ = 0;
  uint64_t quarantine_ms_ = 0, quarantine_until_ns_ = 0;  // monotonic
  // UNTRUSTED: everything a driver can make us log goes through this port's own limiters: a
  // driver reconnecting in a loop cannot flood the log, nor silence another port's messages
  // (a call site's limiter is shared by every pv port).
  LogRateLimiter log_conn_, log_error_, log_request_, log_mem_;
  // The uplink's view (control thread).
  PortCaps uplink_caps_;
  std::string uplink_desc_ = "none";  // "up0 (net_virtio_user)"
  uint32_t uplink_speed_ = 0;          // Mbit/s, from its state ("link up, 10000 Mbit/s"); 0: not known
  bool uplink_present_ = false;
  struct Base {
    uint64_t packets = 0, bytes = 0, dropped = 0;
  };
  std::array<Base, NMX_PV_MAX_QUEUE_PAIRS> rx_base_{}, tx_base_{};
  std::array<uint64_t, NMX_PV_MAX_QUEUE_PAIRS> no_buffers_base_{};
  // The driver's flow rules: changed by the control thread with the workers paused, read by
  // the workers in Tx (empty: Tx is the plain path).
  pv::FlowTable flows_;
  // Live upgrade. A port built from a handover is not this process's until the commit: it
  // writes nothing into the shared region and does not remove the socket file before it.
  bool committed_ = true;
  bool owns_socket_file_ = true;
  // What the driver was last told of the uplink (event_seq) when the port was handed over;
  // FollowedChanged before the commit only notes that it must tell again.
  bool event_pending_ = false;
  std::string told_uplink_;
  std::string UplinkView() const {
    return std::to_string(uplink_present_) + " " + std::to_string(uplink_caps_.Pack()) + " " +
           std::to_string(uplink_speed_) + " " + uplink_desc_;
  }
  // The driver's rings did not check out in the new process: the device goes over broken, and
  // is marked so in the header at the commit.
  std::string import_break_;
  std::string handover_warning_;
};

uint64_t MacBits(const uint8_t* m) {
  uint64_t v = 0;
  std::memcpy(&v, m, 6);
  return v;
}

PvPort::PvPort(const PvPortOptions& o, EventLoop* loop, Pausable* workers)
    : Port(o.name), opt_(o), loop_(loop), workers_(workers), mtu_(o.mtu), mac_(MacBits(o.mac)) {
  for (uint32_t i = 0; i < o.queues; ++i) q_.push_back(std::make_unique<Queue>());
  PublishCaps();
}

PvPort::~PvPort() {
  // (The port is destroyed after the daemon removed it from the switch with the workers paused:
  // no worker reaches it. One handed over but not committed leaves the region to the process
  // that serves it.)
  if (committed_ && conn_.valid() && opt_.ivshmem && region_ && !region_->poisoned()) {
    region_->MarkGone("nicmuxd stopped serving port " + name() +
                      " (deleted, or nicmuxd stopped): restart the VM once nicmuxd serves it again");
  }
  if (conn_.valid()) {
    loop_->Unwatch(conn_.get());
    loop_->Unwatch(ctrl_kick_.fd());
  }
  if (fault_.valid()) loop_->Unwatch(fault_.fd());
  if (listen_fd_.valid()) {
    loop_->Unwatch(listen_fd_.get());
    // Not a socket file handed over by a process that still serves it (a failed upgrade).
    if (owns_socket_file_) ::unlink(opt_.socket_path.c_str());
  }
}

Result<void> PvPort::WatchFault() {
  NICMUX_TRY_ASSIGN(fault, EventFd::Create());
  fault_ = std::move(fault);
  return loop_->Watch(fault_.fd(), EPOLLIN, [this](uint32_t) { OnFault(); });
}

Result<void> PvPort::Listen() {
  NICMUX_TRY(WatchFault());
  NICMUX_TRY_ASSIGN(fd, ListenUnix(opt_.socket_path));
  listen_fd_ = std::move(fd);
  NICMUX_TRY(loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); }));
  NICMUX_LOG(kInfo, "port %s: pv device listening on %s", name().c_str(), opt_.socket_path.c_str());
  return Ok();
}

void PvPort::OnAccept() {
  UniqueFd s(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!s.valid()) return;
  if (conn_.valid()) {
    NICMUX_LOG_RATELIMITED_BY(log_conn_, kWarning, "port %s: a pv driver is already connected; refusing another",
                              name().c_str());
    return;  // s closes
  }
  if (const uint64_t left = QuarantineLeftMs()) {
    NICMUX_LOG_RATELIMITED_BY(log_conn_, kWarning,
                              "port %s: refusing pv drivers for %llu ms more after the last one attacked it",
                              name().c_str(), static_cast<unsigned long long>(left));
    return;  // s closes
  }
  Attach(std::move(s));
}

pv::Layout PvPort::RegionLayout() const {
  pv::Layout l;
  l.queue_pairs = opt_.queues;
  l.ring_size = opt_.ring;
  l.buf_size = opt_.buf_size;
  // The VM transport has no channel for the driver's fds (registered memory), and QEMU maps
  // the whole file as a PCI BAR, whose size is a power of two.
  l.max_mem_bytes = opt_.ivshmem ? 0 : opt_.max_memory;
  l.pow2_size = opt_.ivshmem;
  l.flows = opt_.max_flows > 0;
  return l;
}

// A fresh region and doorbells for each connection: nothing a previous driver left (or still
// holds mapped) reaches the new one.
void PvPort::Attach(UniqueFd conn) {
  auto region = pv::Region::Create(RegionLayout(), ++generation_, fault_.fd());
  if (!region) {
    NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: no region for the pv driver: %s", name().c_str(),
                              region.error().message().c_str());
    return;
  }
  std::vector<EventFd> fds;
  for (uint32_t i = 0; i < 2 * (1 + opt_.queues); ++i) {
    auto e = EventFd::Create();
    if (!e) {
      NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: %s", name().c_str(), e.error().message().c_str());
      return;
    }
    fds.push_back(std::move(*e));
  }
  if (auto r = opt_.ivshmem ? SendIvshmemSetup(conn.get(), **region, fds) : SendHello(conn.get(), **region, fds); !r) {
    NICMUX_LOG_RATELIMITED_BY(log_conn_, kWarning, "port %s: pv %s: %s", name().c_str(),
                              opt_.ivshmem ? "ivshmem setup" : "hello", r.error().message().c_str());
    return;
  }
  {
    PauseGuard pause(*workers_);
    region_ = std::move(*region);
    ctrl_kick_ = std::move(fds[0]);
    ctrl_irq_ = std::move(fds[1]);
    for (uint32_t i = 0; i < opt_.queues; ++i) {
      Queue& q = *q_[i];
      q.kick = std::move(fds[2 + 2 * i]);
      q.irq = std::move(fds[3 + 2 * i]);
      q.rx_setup = q.tx_setup = false;
      q.drained = q.filled = 0;
    }
    breaking_.store(false, std::memory_order_relaxed);
    broken_.store(false, std::memory_order_relaxed);
    peer_blocked_.store(false, std::memory_order_relaxed);
    broken_logged_.store(false, std::memory_order_relaxed);
    broken_reason_.clear();
    flows_.Clear();  // the previous driver's rules are not the new one's
  }
  conn_ = std::move(conn);
  answered_ = 0;
  configured_ = started_ = false;
  mem_faulted_ = false;
  sock_got_ = 0;
  sock_fds_.clear();
  nb_rx_ = nb_tx_ = 0;
  tx_offloads_ = rx_offloads_ = 0;
  promisc_.store(true, std::memory_order_relaxed);
  // UNTRUSTED (the previous driver's): the MAC and MTU it set and the counters of what it moved
  // are not the new driver's (GET_INFO, the frames it receives, STATS_GET).
  mac_.store(MacBits(opt_.mac), std::memory_order_relaxed);
  mtu_.store(opt_.mtu, std::memory_order_relaxed);
  PublishCaps();
  ResetStats();
  ++connections_;
  auto w1 = loop_->Watch(conn_.get(), EPOLLIN | EPOLLRDHUP, [this](uint32_t ev) {
    if (opt_.ivshmem) {
      OnIvshmemReadable(ev);
    } else {
      OnConnReadable(ev);
    }
  });
  auto w2 = loop_->Watch(ctrl_kick_.fd(), EPOLLIN, [this](uint32_t) { ServeControl(); });
  if (!w1 || !w2) {
    NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: cannot watch the pv driver", name().c_str());
    Disconnect("watch failed");
    return;
  }
  NICMUX_LOG_RATELIMITED_BY(log_conn_, kInfo, "port %s: pv driver connected (region %llu bytes, generation %u)",
                            name().c_str(), static_cast<unsigned long long>(region_->size()), generation_);
}

// The process transport's hello: the region's memfd, then a kick and an irq per doorbell.
Result<void> PvPort::SendHello(int sock, const pv::Region& region, const std::vector<EventFd>& fds) const {
  nmx_pv_hello hello{};
  hello.magic = NMX_PV_MAGIC;
  hello.version = NMX_PV_VERSION;
  hello.num_doorbells = 1 + opt_.queues;
  hello.region_size = region.size();
  std::vector<int> send = {region.fd()};
  for (const EventFd& e : fds) send.push_back(e.fd());
  return SendWithFds(sock, std::as_bytes(std::span(&hello, 1)), send);
}

// The VM transport: the ivshmem server's messages (QEMU's docs/specs/ivshmem-spec.rst), each a
// little-endian int64 with at most one fd, in ivshmem-server's order: the protocol version (0),
// the guest's peer id, the region (-1 with its fd: QEMU's realize reads up to here and maps it
// as BAR2), then per vector v our peer's eventfd v (the kick of doorbell v: the guest's
// doorbell write HOST_PEER << 16 | v signals it) and the guest's own eventfd v (the irq of
// doorbell v). QEMU takes at most its `vectors=` eventfds per peer and logs the rest. Every
// message is one sendmsg of 8 bytes, so a reader taking 8 bytes at a time (QEMU) gets its fd
// with it. A few hundred bytes in all: a fresh socket takes them without blocking.
Result<void> PvPort::SendIvshmemSetup(int sock, const pv::Region& region, const std::vector<EventFd>& fds) const {
  auto msg = [&](int64_t v, int fd) -> Result<void> {
    const int64_t le = static_cast<int64_t>(htole64(static_cast<uint64_t>(v)));
    std::span<const int> f;
    if (fd >= 0) f = std::span<const int>(&fd, 1);
    return SendWithFds(sock, std::as_bytes(std::span(&le, 1)), f);
  };
  NICMUX_TRY(msg(0, -1));
  NICMUX_TRY(msg(NMX_PV_IVSHMEM_GUEST_PEER, -1));
  NICMUX_TRY(msg(-1, region.fd()));
  const uint32_t doorbells = 1 + opt_.queues;
  for (uint32_t d = 0; d < doorbells; ++d) NICMUX_TRY(msg(NMX_PV_IVSHMEM_HOST_PEER, fds[2 * d].fd()));
  for (uint32_t d = 0; d < doorbells; ++d) NICMUX_TRY(msg(NMX_PV_IVSHMEM_GUEST_PEER, fds[2 * d + 1].fd()));
  return Ok();
}

// A notice of the SIGBUS recovery (pv::Region): the driver's region faulted under us.
void PvPort::OnFault() {
  fault_.Drain();
  if (!region_) return;
  if (region_->poisoned()) {
    Disconnect("its region faulted under nicmuxd (a page it punched out could not be allocated again)", true);
    return;
  }
  // UNTRUSTED (the driver's own files): registered memory that shrank under a worker's copy.
  // The copy was recovered (it read zeros or wrote nowhere); the device is broken, and hanging
  // up quarantines the port.
  if (const uint32_t id = region_->PoisonedMemory()) {
    mem_faulted_ = true;
    Break("registered region " + std::to_string(id) +
          " faulted under nicmuxd (its file shrank, or a page of it could not be allocated)");
  }
}

// The socket after the hello: the driver's memory requests (MEM_ADD, MEM_DEL), each exactly a
// struct nmx_pv_sock_req, MEM_ADD's fd on its bytes. At most 16 reads per wakeup (the loop
// comes back for the rest); end of file or an error is the driver gone.
void PvPort::OnConnReadable(uint32_t ev) {
  for (int budget = 16; budget > 0 && conn_.valid(); --budget) {
    iovec iov{sock_msg_.data() + sock_got_, sock_msg_.size() - sock_got_};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(conn_.get(), &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
    // UNTRUSTED: any number of fds of any kind: taken into our own UniqueFds at once (closed
    // when not wanted); at most 4 per message kept, the rest closed (more than fit the control
    // buffer were closed by the kernel: MSG_CTRUNC). A message with the wrong count is refused.
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        UniqueFd owned(fd);
        if (sock_fds_.size() < 4) sock_fds_.push_back(std::move(owned));
      }
    }
    if ((mh.msg_flags & MSG_CTRUNC) && sock_fds_.size() < 5) sock_fds_.emplace_back();  // "more than 4"
    if (n <= 0) {
      Disconnect(n == 0 ? "the driver closed the connection" : std::strerror(errno));
      return;
    }
    sock_got_ += static_cast<size_t>(n);
    if (sock_got_ == sock_msg_.size()) {
      ServeSockRequest();
      sock_got_ = 0;
      sock_fds_.clear();
    }
  }
  if (conn_.valid() && (ev & (EPOLLHUP | EPOLLERR))) Disconnect("the connection failed");
}

// The VM transport's socket after the setup: the ivshmem protocol has no client messages.
// UNTRUSTED: whatever arrives (bytes, fds) is read once, its fds closed at once, and closes the
// connection: QEMU never writes here, so a writer is not QEMU.
void PvPort::OnIvshmemReadable(uint32_t ev) {
  std::array<std::byte, 64> junk;
  iovec iov{junk.data(), junk.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  const ssize_t n = ::recvmsg(conn_.get(), &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); n >= 0 && c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);  // bounded by the control buffer
    for (size_t i = 0; i < k; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      UniqueFd owned(fd);  // closed here
    }
  }
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
    if (ev & (EPOLLHUP | EPOLLERR)) Disconnect("the ivshmem connection failed");
    return;
  }
  if (n == 0) {
    Disconnect("QEMU closed the ivshmem connection");
  } else if (n < 0) {
    Disconnect(std::string("the ivshmem connection: ") + std::strerror(errno));
  } else {
    Disconnect("the ivshmem client sent " + std::to_string(n) + " bytes (the protocol has no client messages)");
  }
}

void PvPort::ServeSockRequest() {
  nmx_pv_sock_req m;
  std::memcpy(&m, sock_msg_.data(), sizeof m);  // copy, then check, then use
  nmx_pv_sock_resp r{};
  r.type = m.type;
  r.seq = m.seq;
  r.id = m.id;
  std::string reason;
  r.status = HandleMem(m, sock_fds_, &reason);
  if (r.status < 0) {
    const size_t k = std::min(reason.size(), sizeof r.reason - 1);
    std::memcpy(r.reason, reason.data(), k);
    NICMUX_LOG_RATELIMITED_BY(log_request_, kInfo, "port %s: pv memory request refused: %s", name().c_str(),
                              reason.c_str());
  }
  if (!conn_.valid()) return;
  // UNTRUSTED: a driver that does not read its answers fills its socket: never waited for (the
  // socket is non-blocking); a partial answer would put the stream out of step.
  const ssize_t n = ::send(conn_.get(), &r, sizeof r, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n != static_cast<ssize_t>(sizeof r)) {
    Disconnect(n < 0 && errno != EAGAIN ? std::strerror(errno)
                                        : "the driver does not read the answers to its memory requests");
  }
}

int32_t PvPort::HandleMem(const nmx_pv_sock_req& m, std::vector<UniqueFd>& fds, std::string* reason) {
  const bool add = m.type == NMX_PV_SOCK_MEM_ADD;
  const char* what = add ? "MEM_ADD" : "MEM_DEL";
  // UNTRUSTED: every field of m, and the fds, checked before use.
  if (m.type != NMX_PV_SOCK_MEM_ADD && m.type != NMX_PV_SOCK_MEM_DEL) {
    *reason = "unknown socket request type " + std::to_string(m.type);
    return -EINVAL;
  }
  if (fds.size() != (add ? 1u : 0u)) {
    *reason = std::string(what) + ": " + (fds.size() > 4 ? std::string("more than 4") : std::to_string(fds.size())) +
              " fds with the request, not " + (add ? "1" : "0");
    return -EINVAL;
  }
  if (!region_) return -ENOTCONN;
  if (broken_.load(std::memory_order_acquire)) {
    *reason = std::string(what) + ": the device is broken (" + broken_reason_ + "): reconnect";
    return -EIO;
  }
  // Stopped: no worker translates a descriptor of this device, so the table changes under
  // nobody (START, which turns the queues on, pauses the workers after it: they see it).
  if (started_) {
    *reason = std::string(what) + ": the device is started; STOP first";
    return -EBUSY;
  }
  if (m.id < 1 || m.id > NMX_PV_MAX_MEM_REGIONS) {
    *reason = std::string(what) + ": region id " + std::to_string(m.id) + " is outside 1.." +
              std::to_string(NMX_PV_MAX_MEM_REGIONS);
    return -EINVAL;
  }
  if (!add) {
    if (!region_->HasMemory(m.id)) {
      *reason = "MEM_DEL: region " + std::to_string(m.id) + " is not registered";
      return -ENOENT;
    }
    // A fault whose notice is still on its way counts all the same.
    if (region_->PoisonedMemory() == m.id) {
      mem_faulted_ = true;
      Break("registered region " + std::to_string(m.id) + " faulted under nicmuxd (its file shrank)");
      *reason = "MEM_DEL: region " + std::to_string(m.id) + " faulted under nicmuxd: the device is broken";
      return -EIO;
    }
    region_->TakeMemory(m.id);  // unmapped here
    return 0;
  }
  if (region_->HasMemory(m.id)) {
    *reason = "MEM_ADD: region " + std::to_string(m.id) + " is registered already";
    return -EEXIST;
  }
  if (m.size == 0) {
    *reason = "MEM_ADD: region " + std::to_string(m.id) + " of 0 bytes";
    return -EINVAL;
  }
  if (m.size > opt_.max_memory - region_->MemoryBytes()) {
    *reason = "MEM_ADD: region " + std::to_string(m.id) + " of " + std::to_string(m.size) + " bytes over max_memory=" +
              SizeToString(opt_.max_memory) + " (" + std::to_string(region_->MemoryBytes()) + " bytes registered)";
    return -ENOSPC;
  }
  // UNTRUSTED (the file): a peer mapping: if the driver shrinks the file later, our access
  // faults and is recovered (OnFault).
  auto map = MapDriverMemory(fds[0].get(), m.fd_offset, m.size, fault_.fd());
  if (!map) {
    *reason = "MEM_ADD: region " + std::to_string(m.id) + ": " + map.error().message();
    return -(map.error().sys_errno() ? map.error().sys_errno() : EINVAL);
  }
  region_->SetMemory(m.id, std::move(*map), std::move(fds[0]), m.fd_offset);
  NICMUX_LOG_RATELIMITED_BY(log_mem_, kInfo,
                            "port %s: pv driver registered region %u: %llu bytes at its 0x%llx (%u regions, %llu bytes)",
                            name().c_str(), m.id, static_cast<unsigned long long>(m.size),
                            static_cast<unsigned long long>(m.addr), region_->MemoryCount(),
                            static_cast<unsigned long long>(region_->MemoryBytes()));
  return 0;
}

void PvPort::Disconnect(const std::string& why, bool hostile) {
  if (!conn_.valid()) return;
  loop_->Unwatch(conn_.get());
  loop_->Unwatch(ctrl_kick_.fd());
  // A fault in registered memory whose notice has not been served yet counts too.
  const bool mem_fault = mem_faulted_ || (region_ && region_->PoisonedMemory() != 0);
  {
    PauseGuard pause(*workers_);
    // The VM transport: QEMU keeps the region mapped as the guest's BAR2 (and cannot take a new
    // one from us): the guest learns here that nothing serves it any more (no worker writes
    // the header meanwhile: they are paused).
    if (opt_.ivshmem && region_ && !region_->poisoned()) {
      region_->MarkGone("nicmuxd closed the ivshmem connection: " + why);
    }
    for (auto& q : q_) {
      q->fill_on.store(false, std::memory_order_relaxed);
      q->drain_on.store(false, std::memory_order_relaxed);
      q->kick = EventFd();
      q->irq = EventFd();
    }
    region_.reset();  // no worker holds a PacketRef into it now
    flows_.Clear();
  }
  ctrl_kick_ = EventFd();
  ctrl_irq_ = EventFd();
  conn_.Reset();
  sock_fds_.clear();
  started_ = configured_ = false;
  PeerGone();
  NICMUX_LOG_RATELIMITED_BY(log_conn_, kInfo, "port %s: pv driver disconnected (%s)", name().c_str(), why.c_str());
  // UNTRUSTED: a driver that held a thread of ours through an eventfd, or made its region fault
  // under us, would reconnect and do it again at once (each time a worker, and every port on
  // it, held 20 to 40 ms): the next drivers wait.
  if (hostile || mem_fault || peer_blocked_.load(std::memory_order_relaxed)) {
    ++hostile_disconnects_;
    const uint64_t now = MonotonicNowNs();
    if (now - quarantine_until_ns_ > kQuarantineForgetNs) quarantine_ms_ = 0;
    quarantine_ms_ = quarantine_ms_ == 0 ? kQuarantineFirstMs : std::min(quarantine_ms_ * 2, kQuarantineMaxMs);
    quarantine_until_ns_ = now + quarantine_ms_ * 1000000;
    NICMUX_LOG_RATELIMITED_BY(log_error_, kError,
                              "port %s: the pv driver attacked nicmuxd (%s); new drivers refused for %llu ms",
                              name().c_str(),
                              hostile     ? why.c_str()
                              : mem_fault ? "memory it registered faulted under a thread of ours"
                                          : "it made an eventfd block a thread of ours",
                              static_cast<unsigned long long>(quarantine_ms_));
  }
}

uint64_t PvPort::QuarantineLeftMs() const {
  const uint64_t now = MonotonicNowNs();
  return now < quarantine_until_ns_ ? (quarantine_until_ns_ - now) / 1000000 + 1 : 0;
}

// UNTRUSTED: the driver shares each eventfd's file description: it can clear O_NONBLOCK and
// fill the counter so that our write blocks, which the peer-I/O watchdog breaks off after 20 to
// 40 ms (base/peer_io.h). The first time that happens, no eventfd of this driver is written
// again (false from then on): it holds a thread of ours once per connection, not at every
// burst.
bool PvPort::SignalDriver(int fd) {
  if (peer_blocked_.load(std::memory_order_relaxed)) return false;
  if (SignalPeerEventFd(fd) != PeerIoStatus::kInterrupted) return true;
  peer_blocked_.store(true, std::memory_order_relaxed);
  return false;
}

void PvPort::SignalControl() {
  if (ctrl_irq_.valid() && !SignalDriver(ctrl_irq_.fd())) Disconnect("the driver made its control irq eventfd block");
}

// The mailbox: the newest request is answered once (a driver that writes several before one
// answer gets the last answered). Read once into a private copy, checked, then handled.
void PvPort::ServeControl() {
  DrainPeerEventFd(ctrl_kick_.fd());
  if (!region_) return;
  if (broken_.load(std::memory_order_acquire) && !broken_logged_.exchange(true)) {
    NICMUX_LOG_RATELIMITED_BY(log_error_, kError,
                              "port %s: pv driver broke the protocol: %s; the device is stopped until it reconnects",
                              name().c_str(), broken_reason_.c_str());
  }
  nmx_pv_ctrl* c = region_->ctrl();
  // UNTRUSTED: req_seq and the request are the driver's; a sequence number equal to the last
  // one answered means nothing new.
  const uint32_t seq = LoadAcquire(&c->req_seq);
  if (seq == answered_) return;
  nmx_pv_msg req;
  std::memcpy(&req, &c->req, sizeof req);
  nmx_pv_msg resp{};
  resp.seq = seq;
  resp.type = req.type;
  std::string reason;
  resp.status = Handle(req, resp, &reason);
  if (resp.status < 0) {
    const size_t n = std::min(reason.size(), sizeof resp.reason - 1);
    std::memcpy(resp.reason, reason.data(), n);
    NICMUX_LOG_RATELIMITED_BY(log_request_, kInfo, "port %s: pv request %u refused: %s", name().c_str(),
                              unsigned{req.type}, reason.c_str());
  }
  if (!region_) return;  // (a handler may not disconnect, but be sure)
  std::memcpy(&c->resp, &resp, sizeof resp);
  StoreRelease(&c->resp_seq, seq);
  answered_ = seq;
  SignalControl();
}

uint64_t PvPort::TxOffloadsOffered() const {
  uint64_t o = kTxOffloadsAlways;
  // TSO frames cross whole only to an uplink that takes them, and must fit one buffer.
  if (uplink_present_ && uplink_caps_.has(PortCaps::kTso4) && uplink_caps_.has(PortCaps::kTso6) &&
      opt_.buf_size >= kMaxGsoFrameBytes) {
    o |= NMX_PV_TX_TCP_TSO;
  }
  return o;
}

void PvPort::FillInfo(nmx_pv_info* info) const {
  info->max_rx_queues = opt_.queues;
  info->max_tx_queues = opt_.queues;
  info->ring_size = opt_.ring;
  info->buf_size = opt_.buf_size;
  info->min_mtu = kMinMtu;
  info->max_mtu = opt_.buf_size - kEthHeader - 4;
  info->mtu = mtu_.load(std::memory_order_relaxed);
  info->max_frame = (TxOffloadsOffered() & NMX_PV_TX_TCP_TSO) ? kMaxGsoFrameBytes : opt_.buf_size;
  const uint64_t mac = mac_.load(std::memory_order_relaxed);
  std::memcpy(info->mac, &mac, 6);
  info->link_up = 1;  // the device is on the switch
  info->promisc = promisc_.load(std::memory_order_relaxed);
  info->link_speed_mbps = uplink_present_ ? uplink_speed_ : 0;  // 0: not known
  info->tx_offloads = TxOffloadsOffered();
  info->rx_offloads = kRxOffloadsAlways;
  info->generation = generation_;
  std::snprintf(info->uplink, sizeof info->uplink, "%s", uplink_desc_.c_str());
  if (opt_.max_flows) pv::FillFlowInfo(info, opt_.max_flows);
}

std::string OffloadNames(uint64_t bits, bool tx) {
  static const char* kTx[] = {"ipv4_cksum", "tcp_cksum", "udp_cksum", "tcp_tso"};
  static const char* kRx[] = {"ipv4_cksum", "tcp_cksum", "udp_cksum", "rss_hash"};
  std::string s;
  for (int b = 0; b < 64; ++b) {
    if (!(bits & (uint64_t{1} << b))) continue;
    s += s.empty() ? "" : " ";
    s += b < 4 ? (tx ? kTx[b] : kRx[b]) : "bit" + std::to_string(b);
  }
  return s.empty() ? "none" : s;
}

// One table: what each request's payload must be and who answers it.
struct RequestRule {
  uint16_t type;
  const char* name;
  uint16_t len;  // the payload's exact size
};
constexpr RequestRule kRules[] = {
    {NMX_PV_MSG_GET_INFO, "GET_INFO", 0},
    {NMX_PV_MSG_CONFIGURE, "CONFIGURE", sizeof(nmx_pv_configure)},
    {NMX_PV_MSG_QUEUE_SETUP, "QUEUE_SETUP", sizeof(nmx_pv_queue_req)},
    {NMX_PV_MSG_QUEUE_RELEASE, "QUEUE_RELEASE", sizeof(nmx_pv_queue_req)},
    {NMX_PV_MSG_START, "START", 0},
    {NMX_PV_MSG_STOP, "STOP", 0},
    {NMX_PV_MSG_STATS_GET, "STATS_GET", 0},
    {NMX_PV_MSG_STATS_RESET, "STATS_RESET", 0},
    {NMX_PV_MSG_LINK_GET, "LINK_GET", 0},
    {NMX_PV_MSG_MTU_SET, "MTU_SET", sizeof(nmx_pv_u32)},
    {NMX_PV_MSG_MAC_SET, "MAC_SET", sizeof(nmx_pv_mac)},
    {NMX_PV_MSG_PROMISC_SET, "PROMISC_SET", sizeof(nmx_pv_u32)},
    {NMX_PV_MSG_FLOW_VALIDATE, "FLOW_VALIDATE", sizeof(nmx_pv_flow_rule)},
    {NMX_PV_MSG_FLOW_CREATE, "FLOW_CREATE", sizeof(nmx_pv_flow_rule)},
    {NMX_PV_MSG_FLOW_DESTROY, "FLOW_DESTROY", sizeof(nmx_pv_flow_id)},
    {NMX_PV_MSG_FLOW_FLUSH, "FLOW_FLUSH", 0},
};

int32_t PvPort::Handle(const nmx_pv_msg& req, nmx_pv_msg& resp, std::string* reason) {
  const RequestRule* rule = nullptr;
  for (const RequestRule& r : kRules) {
    if (r.type == req.type) rule = &r;
  }
  if (!rule) {
    *reason = "unknown request type " + std::to_string(req.type);
    return -EINVAL;
  }
  if (req.len != rule->len) {
    *reason = std::string(rule->name) + ": payload of " + std::to_string(req.len) + " bytes, not " + std::to_string(rule->len);
    return -EINVAL;
  }
  if (broken_.load(std::memory_order_acquire)) {
    *reason = "the device is broken (" + broken_reason_ + "): reconnect";
    return -EIO;
  }
  auto payload = [&](auto* out) {
    static_assert(sizeof *out <= NMX_PV_MSG_PAYLOAD);
    std::memcpy(out, req.payload, sizeof *out);
  };
  auto answer = [&](const auto& v) {
    static_assert(sizeof v <= NMX_PV_MSG_PAYLOAD);
    std::memcpy(resp.payload, &v, sizeof v);
    resp.len = sizeof v;
  };
  switch (req.type) {
    case NMX_PV_MSG_GET_INFO: {
      nmx_pv_info info{};
      FillInfo(&info);
      answer(info);
      return 0;
    }
    case NMX_PV_MSG_CONFIGURE: {
      nmx_pv_configure c;
      payload(&c);
      if (started_) {
        *reason = "CONFIGURE: the device is started; STOP first";
        return -EBUSY;
      }
      // UNTRUSTED: every field checked against what GET_INFO offers.
      if (c.nb_rx_queues < 1 || c.nb_rx_queues > opt_.queues || c.nb_tx_queues < 1 || c.nb_tx_queues > opt_.queues) {
        *reason = "CONFIGURE: " + std::to_string(c.nb_rx_queues) + " rx and " + std::to_string(c.nb_tx_queues) +
                  " tx queues asked; the device has 1.." + std::to_string(opt_.queues) + " of each";
        return -EINVAL;
      }
      if (const uint64_t extra = c.tx_offloads & ~TxOffloadsOffered()) {
        *reason = "CONFIGURE: tx offload " + OffloadNames(extra, true) + " is not offered (uplink: " + uplink_desc_ + ")";
        return -ENOTSUP;
      }
      if (const uint64_t extra = c.rx_offloads & ~kRxOffloadsAlways) {
        *reason = "CONFIGURE: rx offload " + OffloadNames(extra, false) + " is not offered";
        return -ENOTSUP;
      }
      if (c.mtu != 0 && (c.mtu < kMinMtu || c.mtu > opt_.buf_size - kEthHeader - 4)) {
        *reason = "CONFIGURE: mtu " + std::to_string(c.mtu) + " is outside " + std::to_string(kMinMtu) + ".." +
                  std::to_string(opt_.buf_size - kEthHeader - 4);
        return -EINVAL;
      }
      if (c.mtu) mtu_.store(c.mtu, std::memory_order_relaxed);
      nb_rx_ = c.nb_rx_queues;
      nb_tx_ = c.nb_tx_queues;
      tx_offloads_ = c.tx_offloads;
      rx_offloads_ = c.rx_offloads;
      configured_ = true;
      // The rules named queues of the old configuration (rte_flow: rules do not survive a
      // reconfiguration).
      ClearFlows();
      for (auto& q : q_) q->rx_setup = q->tx_setup = false;
      PublishCaps();
      return 0;
    }
    case NMX_PV_MSG_QUEUE_SETUP:
    case NMX_PV_MSG_QUEUE_RELEASE: {
      nmx_pv_queue_req r;
      payload(&r);
      const bool setup = req.type == NMX_PV_MSG_QUEUE_SETUP;
      const char* what = setup ? "QUEUE_SETUP" : "QUEUE_RELEASE";
      const uint32_t nb = r.dir == NMX_PV_QUEUE_RX ? nb_rx_ : nb_tx_;
      if (!configured_ || r.dir > NMX_PV_QUEUE_TX || r.queue >= nb) {
        *reason = std::string(what) + ": queue " + std::to_string(r.queue) + (r.dir == NMX_PV_QUEUE_RX ? " rx" : " tx") +
                  (configured_ ? " is not configured" : ": CONFIGURE first");
        return -EINVAL;
      }
      if (started_) {
        *reason = std::string(what) + ": the device is started; STOP first";
        return -EBUSY;
      }
      Queue& q = *q_[r.queue];
      nmx_pv_ring* ring = r.dir == NMX_PV_QUEUE_RX ? region_->rx_ring(r.queue) : region_->tx_ring(r.queue);
      if (setup) {
        // The ring starts empty: the driver has written posted = 0 before asking.
        // UNTRUSTED: posted, read once.
        if (const uint32_t posted = LoadAcquire(&ring->posted); posted != 0) {
          *reason = "QUEUE_SETUP: the ring's posted is " + std::to_string(posted) + ", not 0";
          return -EINVAL;
        }
        StoreRelease(&ring->done, 0u);
        StoreRelease(&ring->host_flags, 0u);
        (r.dir == NMX_PV_QUEUE_RX ? q.filled : q.drained) = 0;
      }
      (r.dir == NMX_PV_QUEUE_RX ? q.rx_setup : q.tx_setup) = setup;
      return 0;
    }
    case NMX_PV_MSG_START: {
      if (!configured_) {
        *reason = "START: CONFIGURE first";
        return -EINVAL;
      }
      for (uint32_t i = 0; i < nb_rx_; ++i) {
        if (!q_[i]->rx_setup) {
          *reason = "START: rx queue " + std::to_string(i) + " has no QUEUE_SETUP";
          return -EINVAL;
        }
      }
      for (uint32_t i = 0; i < nb_tx_; ++i) {
        if (!q_[i]->tx_setup) {
          *reason = "START: tx queue " + std::to_string(i) + " has no QUEUE_SETUP";
          return -EINVAL;
        }
      }
      // UNTRUSTED (a driver repeating START): started, the queues are on; turning them on
      // again would pause every worker for nothing, and would turn on again the queues of a
      // device a worker broke meanwhile (a broken device running: its lie is never consumed,
      // and Break runs once, so the worker finds work forever and never sleeps).
      if (started_) return 0;
      {
        // Paused: a worker asleep on the fds of the queues it had armed wakes, and arms the new
        // queues' kick fds before it sleeps again.
        PauseGuard pause(*workers_);
        // UNTRUSTED: a worker that broke the device while we waited for it to pause must not
        // have its queues turned on behind it. (Stopped, no queue runs and none can break: this
        // holds as long as START is what turns queues on.)
        if (broken_.load(std::memory_order_acquire)) {
          *reason = "START: the device is broken (" + broken_reason_ + "): reconnect";
          return -EIO;
        }
        for (uint32_t i = 0; i < opt_.queues; ++i) {
          q_[i]->fill_on.store(i < nb_rx_, std::memory_order_release);
          q_[i]->drain_on.store(i < nb_tx_, std::memory_order_release);
        }
      }
      started_ = true;
      return 0;
    }
    case NMX_PV_MSG_STOP:
      // UNTRUSTED (a driver repeating STOP, which needs no CONFIGURE): stopped, the queues are
      // off already; pausing every worker again would only take their time from other ports.
      if (!started_) return 0;
      StopQueues();
      started_ = false;
      return 0;
    case NMX_PV_MSG_STATS_GET: {
      nmx_pv_stats s{};
      s.nb_rx_queues = nb_rx_;
      s.nb_tx_queues = nb_tx_;
      for (uint32_t i = 0; i < opt_.queues; ++i) {
        const Queue& q = *q_[i];
        // The driver's rx is what this port sent it (txc), its tx what this port took (rxc).
        s.rx[i] = {q.txc.packets.Get() - tx_base_[i].packets, q.txc.bytes.Get() - tx_base_[i].bytes,
                   q.txc.dropped.Get() - tx_base_[i].dropped};
        s.tx[i] = {q.rxc.packets.Get() - rx_base_[i].packets, q.rxc.bytes.Get() - rx_base_[i].bytes,
                   q.rxc.dropped.Get() - rx_base_[i].dropped};
      }
      for (uint32_t i = 0; i < opt_.queues; ++i) s.rx_no_buffers += q_[i]->no_buffers.Get() - no_buffers_base_[i];
      answer(s);
      return 0;
    }
    case NMX_PV_MSG_STATS_RESET:
      ResetStats();
      return 0;
    case NMX_PV_MSG_LINK_GET: {
      nmx_pv_info info{};
      FillInfo(&info);
      answer(nmx_pv_link{1, info.link_speed_mbps});
      return 0;
    }
    case NMX_PV_MSG_MTU_SET: {
      nmx_pv_u32 v;
      payload(&v);
      if (v.value < kMinMtu || v.value > opt_.buf_size - kEthHeader - 4) {
        *reason = "MTU_SET: " + std::to_string(v.value) + " is outside " + std::to_string(kMinMtu) + ".." +
                  std::to_string(opt_.buf_size - kEthHeader - 4) + " (buf_size " + std::to_string(opt_.buf_size) + ")";
        return -EINVAL;
      }
      mtu_.store(v.value, std::memory_order_relaxed);
      PublishCaps();
      return 0;
    }
    case NMX_PV_MSG_MAC_SET: {
      nmx_pv_mac m;
      payload(&m);
      if ((m.mac[0] & 1) || MacBits(m.mac) == 0) {
        *reason = "MAC_SET: " + MacString(m.mac) + " is multicast or zero";
        return -EINVAL;
      }
      mac_.store(MacBits(m.mac), std::memory_order_relaxed);
      return 0;
    }
    case NMX_PV_MSG_PROMISC_SET: {
      nmx_pv_u32 v;
      payload(&v);
      if (v.value > 1) {
        *reason = "PROMISC_SET: " + std::to_string(v.value) + " is not 0 or 1";
        return -EINVAL;
      }
      promisc_.store(v.value == 1, std::memory_order_relaxed);
      return 0;
    }
    case NMX_PV_MSG_FLOW_VALIDATE:
    case NMX_PV_MSG_FLOW_CREATE:
    case NMX_PV_MSG_FLOW_DESTROY:
    case NMX_PV_MSG_FLOW_FLUSH:
      return HandleFlow(req, resp, reason);
  }
  *reason = "unhandled request";
  return -EINVAL;
}

// FLOW_*: the rules checked by pv::CheckFlowRule against the configuration, at most
// max_flows of them; the table changes with the workers paused (they read it in Tx).
int32_t PvPort::HandleFlow(const nmx_pv_msg& req, nmx_pv_msg& resp, std::string* reason) {
  const RequestRule* rule = nullptr;
  for (const RequestRule& r : kRules) {
    if (r.type == req.type) rule = &r;
  }
  const std::string what = rule ? rule->name : "FLOW";
  if (opt_.max_flows == 0) {
    *reason = what + ": flow rules are off on this port (flows=0)";
    return -ENOTSUP;
  }
  if (req.type == NMX_PV_MSG_FLOW_FLUSH) {
    ClearFlows();
    return 0;
  }
  if (req.type == NMX_PV_MSG_FLOW_DESTROY) {
    nmx_pv_flow_id id;
    std::memcpy(&id, req.payload, sizeof id);
    // UNTRUSTED: any id; only compared with the table's.
    if (id.reserved != 0) {
      *reason = what + ": reserved must be 0";
      return -EINVAL;
    }
    bool found = false;
    for (const auto& r : flows_.rules()) found |= r->id == id.id;
    if (!found) {
      *reason = what + ": no rule " + std::to_string(id.id);
      return -ENOENT;
    }
    PauseGuard pause(*workers_);
    flows_.Remove(id.id);
    return 0;
  }
  nmx_pv_flow_rule r;
  std::memcpy(&r, req.payload, sizeof r);  // copy, then check, then use
  if (!configured_) {
    *reason = what + ": CONFIGURE first (a rule names rx queues)";
    return -EINVAL;
  }
  // UNTRUSTED: every field of r, bounded by CheckFlowRule (queues < nb_rx_, known bits, the
  // RSS list's length).
  if (std::string why = pv::CheckFlowRule(r, nb_rx_); !why.empty()) {
    *reason = what + ": " + why.substr(why.find(": ") + 2);
    return why.find("not offered") != std::string::npos ? -ENOTSUP : -EINVAL;
  }
  // UNTRUSTED: the number of rules is bounded by flows= (each is tried per frame).
  if (flows_.size() >= opt_.max_flows) {
    *reason = what + ": the device has its " + std::to_string(opt_.max_flows) + " rules (flows=" +
              std::to_string(opt_.max_flows) + ")";
    return -ENOSPC;
  }
  if (req.type == NMX_PV_MSG_FLOW_VALIDATE) return 0;
  uint32_t id;
  {
    PauseGuard pause(*workers_);
    id = flows_.Add(r);
  }
  nmx_pv_flow_id out{id, 0};
  std::memcpy(resp.payload, &out, sizeof out);
  resp.len = sizeof out;
  NICMUX_LOG_RATELIMITED_BY(log_request_, kInfo, "port %s: flow rule %u: %s", name().c_str(), id,
                            pv::DescribeFlowRule(r).c_str());
  return 0;
}

void PvPort::ClearFlows() {
  if (flows_.empty()) return;
  PauseGuard pause(*workers_);
  flows_.Clear();
}

// The driver's counters (STATS_GET) start again from here; the port's own go on.
void PvPort::ResetStats() {
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    const Queue& q = *q_[i];
    tx_base_[i] = {q.txc.packets.Get(), q.txc.bytes.Get(), q.txc.dropped.Get()};
    rx_base_[i] = {q.rxc.packets.Get(), q.rxc.bytes.Get(), q.rxc.dropped.Get()};
    no_buffers_base_[i] = q.no_buffers.Get();
  }
}

void PvPort::StopQueues() {
  PauseGuard pause(*workers_);
  for (auto& q : q_) {
    q->fill_on.store(false, std::memory_order_relaxed);
    q->drain_on.store(false, std::memory_order_relaxed);
  }
}

void PvPort::PublishCaps() {
  PortCaps c;
  // Partial checksums completed in the copy into the driver's buffer; the "checksum good"
  // mark passed on in the descriptor (NMX_PV_DESC_L4_GOOD). No TSO towards the driver.
  c.offloads = PortCaps::kCsumOnCopy | PortCaps::kCsumValid;
  c.mtu = static_cast<uint16_t>(std::min<uint32_t>(mtu_.load(std::memory_order_relaxed), 0xffff));
  c.max_frame = opt_.buf_size;
  SetCaps(c);
}

void PvPort::FollowedChanged(const Port* up) {
  const bool present = up != nullptr;
  const PortCaps caps = up ? up->Caps() : PortCaps{};
  std::string desc = "none";
  uint32_t speed = 0;
  if (up) {
    desc = opt_.uplink;
    for (const auto& [k, v] : up->DeviceCaps()) {
      if (k == "driver") desc += " (" + std::get<std::string>(v) + ")";
    }
    // A speed the uplink states ("link up, 10000 Mbit/s") is passed on.
    const std::string st = up->State();
    if (const auto at = st.find(" Mbit/s"); at != std::string::npos) {
      size_t from = at;
      while (from > 0 && std::isdigit(static_cast<unsigned char>(st[from - 1]))) --from;
      if (from < at) speed = static_cast<uint32_t>(std::strtoul(st.c_str() + from, nullptr, 10));
    }
  }
  if (present == uplink_present_ && caps == uplink_caps_ && desc == uplink_desc_ && speed == uplink_speed_) return;
  uplink_present_ = present;
  uplink_caps_ = caps;
  uplink_desc_ = desc;
  uplink_speed_ = speed;
  // A port handed over tells its driver once it is this process's (HandoverCommitted).
  if (!committed_) {
    event_pending_ = true;
    return;
  }
  // The driver is told: event_seq moves and the control doorbell rings; it asks GET_INFO.
  if (region_) {
    StoreRelease(&region_->ctrl()->event_seq, ++events_);
    SignalControl();
  }
}

// --- data path ----------------------------------------------------------------------------

void PvPort::Break(const std::string& why) {
  if (breaking_.exchange(true, std::memory_order_acq_rel)) return;
  broken_reason_ = why;  // read by the control thread only after it sees broken_
  broken_.store(true, std::memory_order_release);
  for (auto& q : q_) {
    q->fill_on.store(false, std::memory_order_relaxed);
    q->drain_on.store(false, std::memory_order_relaxed);
  }
  region_->MarkBroken(why);
  NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: the pv driver broke the protocol: %s; the device is stopped",
                            name().c_str(), why.c_str());
  if (ctrl_irq_.valid()) SignalDriver(ctrl_irq_.fd());
}

// Why Buffer() refused a descriptor, for broken_reason (the copy's fields; the region's table
// is only read for a valid id).
std::string PvPort::BadBuffer(const nmx_pv_desc& d) const {
  std::string s = "region " + std::to_string(d.region) + " offset " + std::to_string(d.offset) + " len " +
                  std::to_string(d.len);
  if (d.region == 0) return s + " is outside the buffer area";
  if (d.region > NMX_PV_MAX_MEM_REGIONS || !region_->HasMemory(d.region)) return s + " names no registered region";
  return s + " is outside registered region " + std::to_string(d.region) + " (" +
         std::to_string(region_->MemorySize(d.region)) + " bytes)";
}

bool PvPort::ToOffload(PacketRef* p, const nmx_pv_desc& d) {
  constexpr uint16_t kRequests = NMX_PV_DESC_TCP_CKSUM | NMX_PV_DESC_UDP_CKSUM | NMX_PV_DESC_IP_CKSUM | NMX_PV_DESC_TSO;
  const uint16_t req = d.flags & kRequests;
  if (!req) return true;
  // UNTRUSTED: the flags and lengths are the driver's; each request must be one it configured
  // and must fit the frame (RequestL4Checksum, FillIpv4HeaderChecksum and, for TSO, the
  // switch's CheckOffload check the rest).
  const bool v4 = d.flags & NMX_PV_DESC_IPV4, v6 = d.flags & NMX_PV_DESC_IPV6;
  if (v4 == v6) return false;
  const bool tcp = d.flags & NMX_PV_DESC_TCP_CKSUM, udp = d.flags & NMX_PV_DESC_UDP_CKSUM;
  if ((tcp && udp) || ((req & NMX_PV_DESC_TCP_CKSUM) && !(tx_offloads_ & NMX_PV_TX_TCP_CKSUM)) ||
      ((req & NMX_PV_DESC_UDP_CKSUM) && !(tx_offloads_ & NMX_PV_TX_UDP_CKSUM)) ||
      ((req & NMX_PV_DESC_IP_CKSUM) && !(tx_offloads_ & NMX_PV_TX_IPV4_CKSUM)) ||
      ((req & NMX_PV_DESC_TSO) && (!(tx_offloads_ & NMX_PV_TX_TCP_TSO) || !tcp))) {
    return false;
  }
  const uint32_t l3 = d.l2_len;
  if (req & NMX_PV_DESC_IP_CKSUM) {
    if (!v4 || !FillIpv4HeaderChecksum(*p, l3, d.l3_len)) return false;
  }
  if ((tcp || udp) && !RequestL4Checksum(*p, l3, d.l3_len, v6, tcp)) return false;
  if (req & NMX_PV_DESC_TSO) {
    p->offload.gso_type = v6 ? GsoType::kTcp6 : GsoType::kTcp4;
    p->offload.gso_size = d.tso_segsz;
    p->offload.hdr_len = static_cast<uint16_t>(l3 + d.l3_len + d.l4_len);
  }
  return true;
}

size_t PvPort::Rx(uint32_t qi, Batch& out, size_t max) {
  Queue& q = *q_[qi];
  q.nbad = 0;
  q.ran = false;
  // Off, drained belongs to the control thread (QUEUE_SETUP resets it): not read here.
  if (!q.drain_on.load(std::memory_order_acquire)) return 0;
  q.ran = true;
  q.scan_end = q.drained;
  nmx_pv_ring* r = region_->tx_ring(qi);
  const uint32_t ring_size = opt_.ring;
  // UNTRUSTED: posted is the driver's. More than a ring ahead of what was finished is a lie.
  const uint32_t posted = LoadAcquire(&r->posted);
  const uint32_t avail = posted - q.drained;
  if (avail > ring_size) {
    Break("tx ring " + std::to_string(qi) + ": posted " + std::to_string(posted) + " is " + std::to_string(avail) +
          " ahead of done " + std::to_string(q.drained) + " (ring of " + std::to_string(ring_size) + ")");
    return 0;
  }
  const uint32_t n = std::min<uint32_t>({avail, static_cast<uint32_t>(max), kBurst});
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t at = q.drained + i;
    nmx_pv_desc d;
    std::memcpy(&d, &r->desc[at & (ring_size - 1)], sizeof d);  // copy, then check, then use
    // UNTRUSTED: (region, offset, len) must name bytes inside the buffer area (region 0) or a
    // registered region (Buffer: the one translation).
    std::byte* buf = region_->Buffer(d.region, d.offset, d.len);
    if (!buf) {
      Break("tx ring " + std::to_string(qi) + " descriptor " + std::to_string(at) + ": " + BadBuffer(d));
      break;  // what was read before it still goes
    }
    q.scan_end = at + 1;
    if (d.len < kEthHeader || d.len > kMaxGsoFrameBytes) {
      q.bad_pos[q.nbad] = at;
      q.bad_why[q.nbad++] = DropReason::kBadFrame;
      continue;
    }
    const uint32_t k = out.size();
    PacketRef* p = out.TryPush();
    PacketFromFlat(p, &q.segs[k], buf, d.len);
    if (!ToOffload(p, d)) {
      out.Pop();
      q.bad_pos[q.nbad] = at;
      q.bad_why[q.nbad++] = DropReason::kBadOffload;
      continue;
    }
    q.pos[k] = at;
  }
  return out.size();
}

void PvPort::MaybeIrq(uint32_t qi, Queue& q, nmx_pv_ring* r) {
  // Published done first (release), then the driver's flag: a driver that sets the flag and
  // then re-checks done cannot miss both (the fence orders our store before our load).
  virtio::FullFence();
  // UNTRUSTED: any value; only one bit is read.
  if (!(LoadAcquire(&r->driver_flags) & NMX_PV_DRIVER_WANTS_IRQ)) return;
  // UNTRUSTED: the irq eventfd may have been made to block (SignalDriver): the write that the
  // watchdog broke off held this worker (and, in Tx, the TxLock of every worker sending here);
  // the device is broken so that nothing of it runs again.
  if (!SignalDriver(q.irq.fd())) {
    Break("doorbell " + std::to_string(1 + qi) + ": the irq eventfd was made to block the host (blocking mode, " +
          "full counter)");
  }
}

void PvPort::RxDone(uint32_t qi, Batch& batch, size_t sent) {
  Queue& q = *q_[qi];
  if (!q.ran) return;  // Rx found the queue off: nothing was read
  // In order: done moves to the first packet not sent (it is read again next time), or past
  // everything looked at; dropped descriptors before that point are finished and counted.
  const uint32_t done = sent < batch.size() ? q.pos[sent] : q.scan_end;
  for (uint32_t i = 0; i < q.nbad; ++i) {
    if (q.bad_pos[i] - q.drained < done - q.drained) {
      q.rxc.dropped.Add();
      q.rxc.drops.Add(q.bad_why[i]);
    }
  }
  q.nbad = 0;
  uint64_t bytes = 0;
  for (size_t k = 0; k < sent; ++k) bytes += batch[static_cast<uint32_t>(k)].len;
  q.rxc.packets.Add(sent);
  q.rxc.bytes.Add(bytes);
  if (done == q.drained) return;
  q.drained = done;
  nmx_pv_ring* r = region_->tx_ring(qi);
  StoreRelease(&r->done, done);
  MaybeIrq(qi, q, r);
}

size_t PvPort::TxRoom(uint32_t qi) {
  // With flow rules a frame's ring is known only in Tx, which then takes every frame (one
  // whose ring is full is dropped, as a NIC's queue would).
  if (!flows_.empty()) return kBurst;
  Queue& q = *q_[qi];
  if (!q.fill_on.load(std::memory_order_acquire)) return kBurst;  // Tx drops: never a stall
  // UNTRUSTED: posted; a lie is caught by Tx.
  const uint32_t avail = LoadAcquire(&region_->rx_ring(qi)->posted) - q.filled;
  return std::min<uint32_t>(avail, kBurst);
}

size_t PvPort::Tx(uint32_t qi, std::span<const PacketRef* const> in) {
  if (!flows_.empty()) return TxFlows(qi, in);  // no rules: one test, the plain path below
  Queue& q = *q_[qi];
  if (!q.fill_on.load(std::memory_order_acquire)) {
    q.txc.dropped.Add(in.size());
    q.txc.drops.Add(DropReason::kPortDown, in.size());
    return in.size();
  }
  nmx_pv_ring* r = region_->rx_ring(qi);
  const uint32_t ring_size = opt_.ring;
  // UNTRUSTED: posted is the driver's.
  const uint32_t posted = LoadAcquire(&r->posted);
  const uint32_t avail = posted - q.filled;
  if (avail > ring_size) {
    Break("rx ring " + std::to_string(qi) + ": posted " + std::to_string(posted) + " is " + std::to_string(avail) +
          " ahead of done " + std::to_string(q.filled) + " (ring of " + std::to_string(ring_size) + ")");
    q.txc.dropped.Add(in.size());
    q.txc.drops.Add(DropReason::kPortDown, in.size());
    return in.size();
  }
  const bool promisc = promisc_.load(std::memory_order_relaxed);
  const uint64_t mac = mac_.load(std::memory_order_relaxed);
  const uint32_t start = q.filled;
  uint64_t bytes = 0;
  size_t k = 0;
  for (; k < in.size(); ++k) {
    const PacketRef& p = *in[k];
    if (!promisc && !(uint8_t(p.head[0]) & 1)) {  // unicast for another MAC
      uint64_t dst = 0;
      std::memcpy(&dst, p.head, 6);
      if (dst != mac) {
        q.txc.dropped.Add();
        q.txc.drops.Add(DropReason::kNoRoute);
        continue;
      }
    }
    if (q.filled - start == avail) {  // no posted buffer left: not taken
      q.no_buffers.Add(in.size() - k);
      break;
    }
    const uint32_t at = q.filled & (ring_size - 1);
    nmx_pv_desc d;
    std::memcpy(&d, &r->desc[at], sizeof d);
    // UNTRUSTED: the posted buffer must lie inside the buffer area or a registered region.
    std::byte* buf = region_->Buffer(d.region, d.offset, d.len);
    // UNTRUSTED: and hold an Ethernet header: a shorter one would stay posted for ever, every
    // frame for the application dropped as too big behind it.
    if (!buf || d.len < kEthHeader) {
      Break("rx ring " + std::to_string(qi) + " descriptor " + std::to_string(q.filled) + ": " +
            (buf ? TooShort(d) : BadBuffer(d)));
      q.txc.dropped.Add(in.size() - k);
      q.txc.drops.Add(DropReason::kPortDown, in.size() - k);
      k = in.size();
      break;
    }
    if (p.len > d.len) {  // the buffer stays posted for the next frame
      q.txc.dropped.Add();
      q.txc.drops.Add(DropReason::kTooBig);
      continue;
    }
    CopyPacketCompletingTo(p, buf);
    // The host writes only the result fields; the offset stays the driver's.
    nmx_pv_desc* out = &r->desc[at];
    out->len = p.len;
    // A checksum completed here or verified by the source is good.
    out->flags = (p.offload.csum_valid() || p.offload.needs_csum()) ? NMX_PV_DESC_L4_GOOD : 0;
    out->rss_hash = 0;
    out->mark = 0;
    ++q.filled;
    bytes += p.len;
  }
  const uint32_t filled = q.filled - start;
  q.txc.packets.Add(filled);
  q.txc.bytes.Add(bytes);
  if (filled) {
    StoreRelease(&r->done, q.filled);
    MaybeIrq(qi, q, r);
  }
  return k;
}

// Tx with flow rules: each frame's rule picks its ring (or drops it, or marks it); frames for
// one ring are filled in order under that ring's fill_lock, one ring at a time. Every frame is
// taken: one whose ring has no buffer left is dropped (queue_full, and rx_no_buffers).
size_t PvPort::TxFlows(uint32_t qi, std::span<const PacketRef* const> in) {
  const uint32_t nq = opt_.queues;
  for (size_t from = 0; from < in.size(); from += kBurst) {
    const size_t n = std::min<size_t>(kBurst, in.size() - from);
    std::array<std::array<Steer, kBurst>, NMX_PV_MAX_QUEUE_PAIRS> to;
    std::array<uint32_t, NMX_PV_MAX_QUEUE_PAIRS> cnt{};
    uint32_t dropped = 0;
    for (size_t i = 0; i < n; ++i) {
      const PacketRef* p = in[from + i];
      const pv::FlowVerdict v = flows_.Classify(*p);
      if (v.drop) {
        ++dropped;
        continue;
      }
      // A rule's queue was checked against the configuration when it was made; CONFIGURE
      // clears the rules. Bounded again here, as the ring index it becomes.
      const uint32_t t = v.queue >= 0 ? static_cast<uint32_t>(v.queue) : qi;
      if (t >= nq) {
        ++dropped;
        continue;
      }
      to[t][cnt[t]++] = {p, v.mark, v.rss, v.mark_value, v.hash};
    }
    if (dropped) {
      // Queue qi's tx counters have one writer at a time: whoever holds its fill_lock (another
      // worker may be filling ring qi with frames its rules steered there).
      Queue& own = *q_[qi];
      own.fill_lock.lock();
      own.txc.dropped.Add(dropped);
      own.txc.drops.Add(DropReason::kFlowDrop, dropped);
      own.fill_lock.unlock();
    }
    for (uint32_t t = 0; t < nq; ++t) {
      if (!cnt[t]) continue;
      Queue& q = *q_[t];
      q.fill_lock.lock();
      FillSteered(t, to[t].data(), cnt[t]);
      q.fill_lock.unlock();
    }
  }
  return in.size();
}

void PvPort::FillSteered(uint32_t ti, const Steer* s, size_t n) {
  Queue& q = *q_[ti];
  if (!q.fill_on.load(std::memory_order_acquire) || broken_.load(std::memory_order_acquire)) {
    q.txc.dropped.Add(n);
    q.txc.drops.Add(DropReason::kPortDown, n);
    return;
  }
  nmx_pv_ring* r = region_->rx_ring(ti);
  const uint32_t ring_size = opt_.ring;
  // UNTRUSTED: posted is the driver's.
  const uint32_t posted = LoadAcquire(&r->posted);
  const uint32_t avail = posted - q.filled;
  if (avail > ring_size) {
    Break("rx ring " + std::to_string(ti) + ": posted " + std::to_string(posted) + " is " + std::to_string(avail) +
          " ahead of done " + std::to_string(q.filled) + " (ring of " + std::to_string(ring_size) + ")");
    q.txc.dropped.Add(n);
    q.txc.drops.Add(DropReason::kPortDown, n);
    return;
  }
  const bool promisc = promisc_.load(std::memory_order_relaxed);
  const uint64_t mac = mac_.load(std::memory_order_relaxed);
  const uint32_t start = q.filled;
  uint64_t bytes = 0;
  for (size_t k = 0; k < n; ++k) {
    const PacketRef& p = *s[k].p;
    if (!promisc && !(uint8_t(p.head[0]) & 1)) {  // unicast for another MAC
      uint64_t dst = 0;
      std::memcpy(&dst, p.head, 6);
      if (dst != mac) {
        q.txc.dropped.Add();
        q.txc.drops.Add(DropReason::kNoRoute);
        continue;
      }
    }
    if (q.filled - start == avail) {  // no posted buffer left: dropped (a NIC's full queue)
      q.no_buffers.Add(n - k);
      q.txc.dropped.Add(n - k);
      q.txc.drops.Add(DropReason::kQueueFull, n - k);
      break;
    }
    const uint32_t at = q.filled & (ring_size - 1);
    nmx_pv_desc d;
    std::memcpy(&d, &r->desc[at], sizeof d);
    // UNTRUSTED: the posted buffer must lie inside the buffer area or a registered region.
    std::byte* buf = region_->Buffer(d.region, d.offset, d.len);
    if (!buf || d.len < kEthHeader) {  // UNTRUSTED: as in Tx
      Break("rx ring " + std::to_string(ti) + " descriptor " + std::to_string(q.filled) + ": " +
            (buf ? TooShort(d) : BadBuffer(d)));
      q.txc.dropped.Add(n - k);
      q.txc.drops.Add(DropReason::kPortDown, n - k);
      break;
    }
    if (p.len > d.len) {  // the buffer stays posted for the next frame
      q.txc.dropped.Add();
      q.txc.drops.Add(DropReason::kTooBig);
      continue;
    }
    CopyPacketCompletingTo(p, buf);
    nmx_pv_desc* out = &r->desc[at];
    out->len = p.len;
    uint16_t flags = (p.offload.csum_valid() || p.offload.needs_csum()) ? NMX_PV_DESC_L4_GOOD : 0;
    if (s[k].mark) flags |= NMX_PV_DESC_MARK;
    if (s[k].rss) flags |= NMX_PV_DESC_RSS;
    out->flags = flags;
    out->rss_hash = s[k].rss ? s[k].hash : 0;
    out->mark = s[k].mark ? s[k].mark_value : 0;
    ++q.filled;
    bytes += p.len;
  }
  const uint32_t filled = q.filled - start;
  q.txc.packets.Add(filled);
  q.txc.bytes.Add(bytes);
  if (filled) {
    StoreRelease(&r->done, q.filled);
    MaybeIrq(ti, q, r);
  }
}

bool PvPort::ArmNotify(uint32_t i, std::vector<NotifyFd>* fds) {
  Queue& q = *q_[i];
  if (!q.drain_on.load(std::memory_order_acquire)) return false;
  nmx_pv_ring* r = region_->tx_ring(i);
  StoreRelease(&r->host_flags, NMX_PV_HOST_NEEDS_KICK);
  virtio::FullFence();
  fds->push_back({q.kick.fd(), true});
  // UNTRUSTED: only compared.
  return LoadAcquire(&r->posted) != q.drained;
}

void PvPort::DisarmNotify(uint32_t i) {
  Queue& q = *q_[i];
  if (!q.drain_on.load(std::memory_order_acquire)) return;
  StoreRelease(&region_->tx_ring(i)->host_flags, 0u);
}

PortStats PvPort::Stats() const {
  PortStats s = SumQueueStats(q_);
  s.connected = conn_.valid();
  return s;
}

uint64_t PvPort::DropsFor(DropReason r) const { return SumQueueDrops(q_, r); }

std::string PvPort::State() const {
  if (!conn_.valid()) {
    const uint64_t left = QuarantineLeftMs();
    if (left == 0) return "waiting";
    return "quarantined (" + std::to_string(left) + " ms left, " + std::to_string(hostile_disconnects_) +
           " hostile disconnects)";
  }
  if (broken_.load(std::memory_order_acquire)) return "broken";
  return started_ ? "running" : "connected";
}

std::vector<Port::Detail> PvPort::Details() const {
  const uint64_t mac = mac_.load(std::memory_order_relaxed);
  uint8_t m[8] = {};
  std::memcpy(m, &mac, 6);
  std::vector<Detail> d = {{"socket", opt_.socket_path},
                           {"transport", std::string(opt_.ivshmem ? "ivshmem" : "socket")},
                           {"mac", MacString(m)},
                           {"connections", connections_},
                           {"generation", uint64_t{generation_}},
                           {"uplink", uplink_desc_}};
  uint64_t nb = 0;
  for (const auto& q : q_) nb += q->no_buffers.Get();
  d.push_back({"rx_no_buffers", nb});
  if (hostile_disconnects_) d.push_back({"hostile_disconnects", hostile_disconnects_});
  if (conn_.valid()) {
    d.push_back({"configured_queues", std::to_string(nb_rx_) + " rx, " + std::to_string(nb_tx_) + " tx"});
    if (region_) {
      d.push_back({"registered_memory", std::to_string(region_->MemoryCount()) + " regions, " +
                                            SizeToString(region_->MemoryBytes())});
    }
    d.push_back({"driver_tx_offloads", OffloadNames(tx_offloads_, true)});
    if (opt_.max_flows) d.push_back({"flow_rules", uint64_t{flows_.size()}});
  }
  if (broken_.load(std::memory_order_acquire)) d.push_back({"broken", broken_reason_});
  return d;
}

std::vector<Port::Detail> PvPort::DeviceCaps() const {
  return {{"tx_offloads", OffloadNames(TxOffloadsOffered(), true)},
          {"rx_offloads", OffloadNames(kRxOffloadsAlways, false)},
          {"ring_size", uint64_t{opt_.ring}},
          {"buf_size", uint64_t{opt_.buf_size}},
          {"max_mtu", uint64_t{opt_.buf_size - kEthHeader - 4}},
          {"max_memory", opt_.ivshmem ? std::string("none (transport=ivshmem)") : SizeToString(opt_.max_memory)},
          {"transport", std::string(opt_.ivshmem ? "ivshmem" : "socket")},
          {"flow_rules", opt_.max_flows ? "eth vlan ipv4 ipv6 tcp udp -> queue drop mark rss, at most " +
                                              std::to_string(opt_.max_flows) + " (software)"
                                        : std::string("none (flows=0)")},
          {"uplink", uplink_desc_}};
}

std::vector<std::vector<Port::Detail>> PvPort::FlowRules() const {
  std::vector<std::vector<Detail>> out;
  for (const auto& r : flows_.rules()) {
    out.push_back({{"id", uint64_t{r->id}},
                   {"priority", uint64_t{r->wire.priority}},
                   {"rule", pv::DescribeFlowRule(r->wire)},
                   {"hits", r->hits.load(std::memory_order_relaxed)},
                   // Pushed down to an uplink's rte_flow is a later step: every rule runs here.
                   {"runs", std::string("software")}});
  }
  return out;
}

// --- live upgrade (docs/pv-protocol.md "Live upgrade") -------------------------------------
//
// Step 1 (Export, every worker paused; Adopt in the new process while the old one forwards
// on): the sockets, the region's memfd, the doorbells' eventfds, the registered memory's files
// and everything the control thread keeps of the device. Between the two steps the old control
// thread only waits for the new process, so none of that changes: no mailbox request, socket
// request, accept or disconnect is served. Step 2 (ExportPositions, the workers paused again):
// what the workers change — the host's ring indexes, the queues' on/off (a worker breaking the
// device turns them off), the broken state, the counters the driver reads, the rules' hits. The
// driver-owned indexes (posted, driver_flags) are in the shared region, read there as always.

std::string HexOf(const void* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t b = static_cast<const uint8_t*>(p)[i];
    s += kDigits[b >> 4];
    s += kDigits[b & 15];
  }
  return s;
}

// UNTRUSTED (a record's text): exactly n bytes as 2n lowercase hex digits, or false.
bool BytesOfHex(const std::string& s, void* out, size_t n) {
  if (s.size() != 2 * n) return false;
  auto nibble = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  for (size_t i = 0; i < n; ++i) {
    const int hi = nibble(s[2 * i]), lo = nibble(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    static_cast<uint8_t*>(out)[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

std::string QueueKey(uint32_t q, const char* what) { return "pv.q." + std::to_string(q) + "." + what; }

Result<void> PvPort::Export(HandoverRecord* out) {
  out->Set("pv.queues", opt_.queues);
  out->Set("pv.ring", opt_.ring);
  out->Set("pv.buf_size", opt_.buf_size);
  out->Set("pv.ivshmem", opt_.ivshmem ? 1 : 0);
  out->Set("pv.connections", connections_);
  out->Set("pv.generation", generation_);
  out->Set("pv.hostile_disconnects", hostile_disconnects_);
  out->Set("pv.quarantine_until_ns", quarantine_until_ns_);
  out->Set("pv.quarantine_ms", quarantine_ms_);
  NICMUX_TRY(out->SetFd("pv.listen", listen_fd_.get()));
  if (!conn_.valid()) return Ok();
  NICMUX_TRY(out->SetFd("pv.conn", conn_.get()));
  NICMUX_TRY(out->SetFd("pv.region", region_->fd()));
  NICMUX_TRY(out->SetFd("pv.ctrl_kick", ctrl_kick_.fd()));
  NICMUX_TRY(out->SetFd("pv.ctrl_irq", ctrl_irq_.fd()));
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    const Queue& q = *q_[i];
    NICMUX_TRY(out->SetFd(QueueKey(i, "kick"), q.kick.fd()));
    NICMUX_TRY(out->SetFd(QueueKey(i, "irq"), q.irq.fd()));
    out->Set(QueueKey(i, "setup"), (q.rx_setup ? 1 : 0) | (q.tx_setup ? 2 : 0));
  }
  out->Set("pv.answered", answered_);
  out->Set("pv.events", events_);
  out->Set("pv.configured", configured_ ? 1 : 0);
  out->Set("pv.started", started_ ? 1 : 0);
  out->Set("pv.nb_rx", nb_rx_);
  out->Set("pv.nb_tx", nb_tx_);
  out->Set("pv.tx_offloads", tx_offloads_);
  out->Set("pv.rx_offloads", rx_offloads_);
  out->Set("pv.mtu", mtu_.load(std::memory_order_relaxed));
  out->Set("pv.mac", mac_.load(std::memory_order_relaxed));
  out->Set("pv.promisc", promisc_.load(std::memory_order_relaxed) ? 1 : 0);
  out->Set("pv.mem_faulted", mem_faulted_ ? 1 : 0);
  // What the driver was told of the uplink (GET_INFO): the new process tells it again only if
  // its own uplink differs.
  out->Set("pv.uplink_present", uplink_present_ ? 1 : 0);
  out->Set("pv.uplink_caps", uplink_caps_.Pack());
  out->SetText("pv.uplink_desc", uplink_desc_);
  out->Set("pv.uplink_speed", uplink_speed_);
  // A socket request half read: its bytes and fds go over, the new process reads the rest.
  out->Set("pv.sock_got", sock_got_);
  out->SetText("pv.sock_bytes", HexOf(sock_msg_.data(), sock_got_));
  out->Set("pv.sock_fds", sock_fds_.size());
  for (size_t k = 0; k < sock_fds_.size(); ++k) {
    // (An invalid one stands for "more than 4": the count says it.)
    if (sock_fds_[k].valid()) NICMUX_TRY(out->SetFd("pv.sock_fd." + std::to_string(k), sock_fds_[k].get()));
  }
  for (uint32_t id = 1; id <= NMX_PV_MAX_MEM_REGIONS; ++id) {
    if (!region_->HasMemory(id)) continue;
    const std::string k = "pv.mem." + std::to_string(id) + ".";
    NICMUX_TRY(out->SetFd(k + "fd", region_->MemoryFd(id)));
    out->Set(k + "offset", region_->MemoryOffset(id));
    out->Set(k + "size", region_->MemorySize(id));
  }
  out->Set("pv.flows", flows_.size());
  out->Set("pv.flow_next_id", flows_.next_id());
  for (size_t k = 0; k < flows_.size(); ++k) {
    const pv::FlowRule& r = *flows_.rules()[k];
    out->Set("pv.flow." + std::to_string(k) + ".id", r.id);
    out->SetText("pv.flow." + std::to_string(k) + ".rule", HexOf(&r.wire, sizeof r.wire));
  }
  return Ok();
}

Result<void> PvPort::Adopt(HandoverRecord& in) {
  // UNTRUSTED (the old process, maybe another build): every value within what this port's
  // spec and the protocol allow, every fd what it claims to be. Nothing is written into the
  // shared region or to the driver here: the old process still serves it.
  NICMUX_TRY_ASSIGN(queues, in.Get("pv.queues", NMX_PV_MAX_QUEUE_PAIRS));
  NICMUX_TRY_ASSIGN(ring, in.Get("pv.ring", NMX_PV_MAX_RING));
  NICMUX_TRY_ASSIGN(buf_size, in.Get("pv.buf_size", pv::kMaxBufSize));
  NICMUX_TRY_ASSIGN(ivshmem, in.Get("pv.ivshmem", 1));
  if (queues != opt_.queues || ring != opt_.ring || buf_size != opt_.buf_size || (ivshmem != 0) != opt_.ivshmem) {
    return Error("the old port had queues=" + std::to_string(queues) + ", ring=" + std::to_string(ring) +
                 ", buf_size=" + std::to_string(buf_size) + (ivshmem ? ", transport=ivshmem" : ", transport=socket") +
                 "; its spec here says otherwise");
  }
  NICMUX_TRY_ASSIGN(connections, in.Get("pv.connections"));
  NICMUX_TRY_ASSIGN(generation, in.Get("pv.generation", UINT32_MAX));
  NICMUX_TRY_ASSIGN(hostile, in.Get("pv.hostile_disconnects"));
  // (A quarantine ends at most its longest span from now: the same clock in both processes.)
  NICMUX_TRY_ASSIGN(quarantine_until, in.Get("pv.quarantine_until_ns", MonotonicNowNs() + kQuarantineMaxMs * 1'000'000));
  NICMUX_TRY_ASSIGN(quarantine_ms, in.Get("pv.quarantine_ms", kQuarantineMaxMs));
  NICMUX_TRY_ASSIGN(listen, in.TakeFd("pv.listen"));
  // UNTRUSTED: a listening UNIX socket, bound to this port's path (else drivers would connect
  // to a socket nobody here accepts on).
  int listening = 0, domain = 0;
  socklen_t len = sizeof listening, dlen = sizeof domain;
  sockaddr_un bound{};
  socklen_t blen = sizeof bound;
  if (::getsockopt(listen.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening ||
      ::getsockopt(listen.get(), SOL_SOCKET, SO_DOMAIN, &domain, &dlen) != 0 || domain != AF_UNIX ||
      ::getsockname(listen.get(), reinterpret_cast<sockaddr*>(&bound), &blen) != 0 ||
      blen <= offsetof(sockaddr_un, sun_path) ||
      std::string(bound.sun_path, strnlen(bound.sun_path, blen - offsetof(sockaddr_un, sun_path))) != opt_.socket_path) {
    return Error("pv.listen is not a UNIX socket listening on " + opt_.socket_path);
  }
  NICMUX_TRY(WatchFault());
  // The same monotonic clock in both processes: a quarantine goes on where it was.
  connections_ = connections;
  generation_ = static_cast<uint32_t>(generation);
  hostile_disconnects_ = hostile;
  quarantine_until_ns_ = quarantine_until;
  quarantine_ms_ = quarantine_ms;
  committed_ = false;
  owns_socket_file_ = false;  // the old process's until the commit
  if (in.Has("pv.conn")) NICMUX_TRY(AdoptConnection(in));
  listen_fd_ = std::move(listen);
  NICMUX_TRY(loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); }));
  return Ok();
}

Result<void> PvPort::AdoptConnection(HandoverRecord& in) {
  // UNTRUSTED: the driver's connection must be a UNIX stream socket (the loop reads it).
  NICMUX_TRY_ASSIGN(conn, in.TakeFd("pv.conn"));
  int type = 0, domain = 0;
  socklen_t len = sizeof type, dlen = sizeof domain;
  if (::getsockopt(conn.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM ||
      ::getsockopt(conn.get(), SOL_SOCKET, SO_DOMAIN, &domain, &dlen) != 0 || domain != AF_UNIX) {
    return Error("pv.conn is not a UNIX stream socket");
  }
  NICMUX_TRY_ASSIGN(region_fd, in.TakeFd("pv.region"));
  auto region = pv::Region::Adopt(std::move(region_fd), RegionLayout(), fault_.fd());
  if (!region) return region.error().Wrap("pv.region");
  // UNTRUSTED: every doorbell fd an eventfd (anything else could block the thread that
  // signals or drains it).
  auto bell = [&](const std::string& key) -> Result<EventFd> {
    NICMUX_TRY_ASSIGN(fd, in.TakeFd(key));
    if (!IsEventFd(fd.get())) return Error(key + " is not an eventfd");
    return EventFd(std::move(fd));
  };
  NICMUX_TRY_ASSIGN(ctrl_kick, bell("pv.ctrl_kick"));
  NICMUX_TRY_ASSIGN(ctrl_irq, bell("pv.ctrl_irq"));
  std::vector<std::pair<EventFd, EventFd>> bells;
  std::vector<uint64_t> setup;
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    NICMUX_TRY_ASSIGN(kick, bell(QueueKey(i, "kick")));
    NICMUX_TRY_ASSIGN(irq, bell(QueueKey(i, "irq")));
    bells.emplace_back(std::move(kick), std::move(irq));
    NICMUX_TRY_ASSIGN(s, in.Get(QueueKey(i, "setup"), 3));
    setup.push_back(s);
  }
  // UNTRUSTED: the device's configuration: each value one the control requests could have
  // set. (answered and events: any u32; a wrong one answers a request twice or not at all, or
  // tells an event again: the driver's wait, never our memory.)
  NICMUX_TRY_ASSIGN(answered, in.Get("pv.answered", UINT32_MAX));
  NICMUX_TRY_ASSIGN(events, in.Get("pv.events", UINT32_MAX));
  NICMUX_TRY_ASSIGN(configured, in.Get("pv.configured", 1));
  NICMUX_TRY_ASSIGN(started, in.Get("pv.started", 1));
  NICMUX_TRY_ASSIGN(nb_rx, in.Get("pv.nb_rx", opt_.queues));
  NICMUX_TRY_ASSIGN(nb_tx, in.Get("pv.nb_tx", opt_.queues));
  NICMUX_TRY_ASSIGN(tx_offloads, in.Get("pv.tx_offloads"));
  NICMUX_TRY_ASSIGN(rx_offloads, in.Get("pv.rx_offloads"));
  NICMUX_TRY_ASSIGN(mtu, in.Get("pv.mtu", opt_.buf_size - kEthHeader - 4));
  NICMUX_TRY_ASSIGN(mac, in.Get("pv.mac", 0xffffffffffffull));
  NICMUX_TRY_ASSIGN(promisc, in.Get("pv.promisc", 1));
  NICMUX_TRY_ASSIGN(mem_faulted, in.Get("pv.mem_faulted", 1));
  if (configured ? (nb_rx < 1 || nb_tx < 1) : (nb_rx || nb_tx || started)) {
    return Error("pv.configured " + std::to_string(configured) + " with " + std::to_string(nb_rx) + " rx and " +
                 std::to_string(nb_tx) + " tx queues, started " + std::to_string(started));
  }
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    // A queue set up is a configured one; a started device has every configured queue set up
    // (START's rule).
    const bool rx = setup[i] & 1, tx = setup[i] & 2;
    if ((rx && i >= nb_rx) || (tx && i >= nb_tx) || (started && ((i < nb_rx && !rx) || (i < nb_tx && !tx)))) {
      return Error(QueueKey(i, "setup") + " " + std::to_string(setup[i]) + " does not fit " + std::to_string(nb_rx) +
                   " rx / " + std::to_string(nb_tx) + " tx queues, started " + std::to_string(started));
    }
  }
  const uint64_t tx_possible = kTxOffloadsAlways | (opt_.buf_size >= kMaxGsoFrameBytes ? NMX_PV_TX_TCP_TSO : 0);
  if ((tx_offloads & ~tx_possible) || (rx_offloads & ~kRxOffloadsAlways)) {
    return Error("pv.tx_offloads " + OffloadNames(tx_offloads, true) + " / pv.rx_offloads " +
                 OffloadNames(rx_offloads, false) + ": not what this port can offer");
  }
  uint8_t mac_bytes[8] = {};
  std::memcpy(mac_bytes, &mac, 6);
  if (mtu < kMinMtu || (mac_bytes[0] & 1) || mac == 0) {
    return Error("pv.mtu " + std::to_string(mtu) + " or pv.mac " + MacString(mac_bytes) + " out of range");
  }
  NICMUX_TRY_ASSIGN(up_present, in.Get("pv.uplink_present", 1));
  NICMUX_TRY_ASSIGN(up_caps, in.Get("pv.uplink_caps"));
  NICMUX_TRY_ASSIGN(up_desc, in.GetText("pv.uplink_desc"));
  NICMUX_TRY_ASSIGN(up_speed, in.Get("pv.uplink_speed", UINT32_MAX));
  if (up_desc.size() > 256) return Error("pv.uplink_desc is " + std::to_string(up_desc.size()) + " bytes long");
  // UNTRUSTED: the socket's half-read request: fewer bytes than a request, exactly that many
  // in hex, at most 4 fds and the "more than 4" mark (OnConnReadable's bounds).
  NICMUX_TRY_ASSIGN(sock_got, in.Get("pv.sock_got", sock_msg_.size() - 1));
  NICMUX_TRY_ASSIGN(sock_bytes, in.GetText("pv.sock_bytes"));
  NICMUX_TRY_ASSIGN(sock_nfds, in.Get("pv.sock_fds", 5));
  std::array<std::byte, sizeof(nmx_pv_sock_req)> sock_msg{};
  if (!BytesOfHex(sock_bytes, sock_msg.data(), sock_got)) return Error("pv.sock_bytes is not pv.sock_got bytes of hex");
  std::vector<UniqueFd> sock_fds;
  for (uint64_t k = 0; k < sock_nfds; ++k) {
    const std::string key = "pv.sock_fd." + std::to_string(k);
    if (k == 4) {
      sock_fds.emplace_back();  // "more than 4" (OnConnReadable's marker)
    } else {
      NICMUX_TRY_ASSIGN(fd, in.TakeFd(key));
      sock_fds.push_back(std::move(fd));
    }
  }

  // Everything checked: the port takes it (the workers stay paused until the commit, and the
  // queues off until ImportPositions).
  region_ = std::move(*region);
  ctrl_kick_ = std::move(ctrl_kick);
  ctrl_irq_ = std::move(ctrl_irq);
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    Queue& q = *q_[i];
    q.kick = std::move(bells[i].first);
    q.irq = std::move(bells[i].second);
    q.rx_setup = setup[i] & 1;
    q.tx_setup = setup[i] & 2;
  }
  answered_ = static_cast<uint32_t>(answered);
  events_ = static_cast<uint32_t>(events);
  configured_ = configured;
  started_ = started;
  nb_rx_ = static_cast<uint32_t>(nb_rx);
  nb_tx_ = static_cast<uint32_t>(nb_tx);
  tx_offloads_ = tx_offloads;
  rx_offloads_ = rx_offloads;
  mtu_.store(static_cast<uint32_t>(mtu), std::memory_order_relaxed);
  mac_.store(mac, std::memory_order_relaxed);
  promisc_.store(promisc != 0, std::memory_order_relaxed);
  mem_faulted_ = mem_faulted;
  uplink_present_ = up_present;
  uplink_caps_ = PortCaps::Unpack(up_caps);
  uplink_desc_ = up_desc;
  uplink_speed_ = static_cast<uint32_t>(up_speed);
  sock_msg_ = sock_msg;
  sock_got_ = sock_got;
  sock_fds_ = std::move(sock_fds);
  told_uplink_ = UplinkView();
  NICMUX_TRY(AdoptMemory(in));
  NICMUX_TRY(AdoptFlows(in));
  PublishCaps();
  conn_ = std::move(conn);
  NICMUX_TRY(loop_->Watch(conn_.get(), EPOLLIN | EPOLLRDHUP, [this](uint32_t ev) {
    if (opt_.ivshmem) {
      OnIvshmemReadable(ev);
    } else {
      OnConnReadable(ev);
    }
  }));
  return loop_->Watch(ctrl_kick_.fd(), EPOLLIN, [this](uint32_t) { ServeControl(); });
}

// The driver's registered regions: each file mapped again with MEM_ADD's checks, within
// max_memory all together.
Result<void> PvPort::AdoptMemory(HandoverRecord& in) {
  for (uint32_t id = 1; id <= NMX_PV_MAX_MEM_REGIONS; ++id) {
    const std::string k = "pv.mem." + std::to_string(id) + ".";
    if (!in.Has(k + "size")) continue;
    if (opt_.ivshmem) return Error(k + "size: transport=ivshmem has no registered memory");
    // UNTRUSTED: the size within what max_memory leaves, the file and its bytes as MEM_ADD
    // checks them.
    NICMUX_TRY_ASSIGN(size, in.Get(k + "size", opt_.max_memory - region_->MemoryBytes()));
    NICMUX_TRY_ASSIGN(offset, in.Get(k + "offset"));
    NICMUX_TRY_ASSIGN(fd, in.TakeFd(k + "fd"));
    if (size == 0) return Error(k + "size is 0");
    auto map = MapDriverMemory(fd.get(), offset, size, fault_.fd());
    if (!map) return map.error().Wrap("registered region " + std::to_string(id));
    region_->SetMemory(id, std::move(*map), std::move(fd), offset);
  }
  return Ok();
}

// The driver's flow rules, in the old table's order under their ids.
// UNTRUSTED: at most flows= rules, each checked as FLOW_CREATE checks it (CheckFlowRule against
// the configuration), ids unique and below the next one.
Result<void> PvPort::AdoptFlows(HandoverRecord& in) {
  NICMUX_TRY_ASSIGN(n, in.Get("pv.flows", opt_.max_flows));
  NICMUX_TRY_ASSIGN(next_id, in.Get("pv.flow_next_id", UINT32_MAX));
  if (n && !configured_) return Error("pv.flows: " + std::to_string(n) + " rules on a device not configured");
  std::vector<uint32_t> ids;
  for (uint64_t k = 0; k < n; ++k) {
    const std::string key = "pv.flow." + std::to_string(k) + ".";
    NICMUX_TRY_ASSIGN(id, in.Get(key + "id", UINT32_MAX));
    NICMUX_TRY_ASSIGN(text, in.GetText(key + "rule"));
    nmx_pv_flow_rule r;
    if (!BytesOfHex(text, &r, sizeof r)) return Error(key + "rule is not a rule's " + std::to_string(sizeof r) + " bytes");
    if (std::string why = pv::CheckFlowRule(r, nb_rx_); !why.empty()) return Error(key + "rule: " + why);
    // Ids: never 0, each once, none past where new ones start (or FLOW_CREATE would give one
    // twice).
    if (id == 0 || id > next_id || std::find(ids.begin(), ids.end(), id) != ids.end()) {
      return Error(key + "id " + std::to_string(id) + " is 0, above pv.flow_next_id or taken");
    }
    if (k > 0) {
      // In the table's order: priority never decreasing (a table out of order would try its
      // rules in another order than the driver was told).
      const nmx_pv_flow_rule& prev = flows_.rules().back()->wire;
      if (r.priority < prev.priority) return Error(key + "rule is out of priority order");
    }
    ids.push_back(static_cast<uint32_t>(id));
    flows_.Restore(r, static_cast<uint32_t>(id));
  }
  flows_.set_next_id(static_cast<uint32_t>(next_id));
  return Ok();
}

Result<void> PvPort::ExportPositions(HandoverRecord* out) {
  if (!conn_.valid()) return Ok();
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    const Queue& q = *q_[i];
    out->Set(QueueKey(i, "filled"), q.filled);
    out->Set(QueueKey(i, "drained"), q.drained);
    out->Set(QueueKey(i, "on"), (q.fill_on.load(std::memory_order_relaxed) ? 1 : 0) |
                                    (q.drain_on.load(std::memory_order_relaxed) ? 2 : 0));
    // What the driver's STATS_GET reads now: it goes on from there.
    out->SetList<uint64_t>(QueueKey(i, "stats"),
                           {q.txc.packets.Get() - tx_base_[i].packets, q.txc.bytes.Get() - tx_base_[i].bytes,
                            q.txc.dropped.Get() - tx_base_[i].dropped, q.rxc.packets.Get() - rx_base_[i].packets,
                            q.rxc.bytes.Get() - rx_base_[i].bytes, q.rxc.dropped.Get() - rx_base_[i].dropped,
                            q.no_buffers.Get() - no_buffers_base_[i]});
  }
  const bool broken = broken_.load(std::memory_order_acquire);
  out->Set("pv.broken", broken ? 1 : 0);
  out->SetText("pv.broken_reason", broken ? broken_reason_ : "");
  out->Set("pv.peer_blocked", peer_blocked_.load(std::memory_order_relaxed) ? 1 : 0);
  std::vector<uint64_t> hits;
  for (const auto& r : flows_.rules()) hits.push_back(r->hits.load(std::memory_order_relaxed));
  out->SetList("pv.flow_hits", hits);
  return Ok();
}

Result<void> PvPort::ImportPositions(HandoverRecord& in) {
  if (!conn_.valid()) return Ok();
  // UNTRUSTED (the old process): u32 indexes, on/off only where the device runs the queue,
  // counters as numbers; then the indexes against the rings (below).
  std::vector<uint64_t> filled, drained, on;
  std::vector<std::vector<uint64_t>> stats;
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    NICMUX_TRY_ASSIGN(f, in.Get(QueueKey(i, "filled"), UINT32_MAX));
    NICMUX_TRY_ASSIGN(d, in.Get(QueueKey(i, "drained"), UINT32_MAX));
    NICMUX_TRY_ASSIGN(o, in.Get(QueueKey(i, "on"), 3));
    NICMUX_TRY_ASSIGN(st, in.GetList(QueueKey(i, "stats"), 7, UINT64_MAX));
    if (((o & 1) && (!started_ || i >= nb_rx_)) || ((o & 2) && (!started_ || i >= nb_tx_))) {
      return Error(QueueKey(i, "on") + " " + std::to_string(o) + ": a queue the device does not run");
    }
    filled.push_back(f);
    drained.push_back(d);
    on.push_back(o);
    stats.push_back(std::move(st));
  }
  NICMUX_TRY_ASSIGN(broken, in.Get("pv.broken", 1));
  NICMUX_TRY_ASSIGN(reason, in.GetText("pv.broken_reason"));
  NICMUX_TRY_ASSIGN(peer_blocked, in.Get("pv.peer_blocked", 1));
  NICMUX_TRY_ASSIGN(hits, in.GetList("pv.flow_hits", flows_.size(), UINT64_MAX));
  if (broken && (std::any_of(on.begin(), on.end(), [](uint64_t o) { return o != 0; }) || reason.empty() ||
                 reason.size() > 1024)) {
    return Error("pv.broken with queues on or a reason of " + std::to_string(reason.size()) + " bytes");
  }
  // A started device that is not broken runs every queue START turned on (STOP, a broken
  // device and a disconnect turn them all off): none fewer, or its traffic would stop with no
  // reason told.
  for (uint32_t i = 0; i < opt_.queues && !broken && started_; ++i) {
    const uint64_t want = (i < nb_rx_ ? 1 : 0) | (i < nb_tx_ ? 2 : 0);
    if (on[i] != want) {
      return Error(QueueKey(i, "on") + " " + std::to_string(on[i]) + ": the started device runs " + std::to_string(want) + " there");
    }
  }
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    Queue& q = *q_[i];
    q.filled = static_cast<uint32_t>(filled[i]);
    q.drained = static_cast<uint32_t>(drained[i]);
    // The driver's counters go on from what it read last: base = -(that), mod 2^64.
    tx_base_[i] = {0 - stats[i][0], 0 - stats[i][1], 0 - stats[i][2]};
    rx_base_[i] = {0 - stats[i][3], 0 - stats[i][4], 0 - stats[i][5]};
    no_buffers_base_[i] = 0 - stats[i][6];
  }
  for (size_t k = 0; k < hits.size(); ++k) flows_.rules()[k]->hits.store(hits[k], std::memory_order_relaxed);
  peer_blocked_.store(peer_blocked != 0, std::memory_order_relaxed);
  if (broken) {
    breaking_.store(true, std::memory_order_relaxed);
    broken_reason_ = reason;
    broken_logged_.store(true, std::memory_order_relaxed);  // the old process logged it
    broken_.store(true, std::memory_order_release);
    return Ok();
  }
  // The host's index of every ring that runs is the `done` it published there last (Rx and
  // Tx publish every move). UNTRUSTED: `done` is in the driver's memory; only the host writes
  // it, but a driver can. One that does not match costs this driver its device, which goes over
  // broken (marked at the commit), not everyone's upgrade.
  // Every ring that is set up, running or not: a stopped one starts again from its index.
  for (uint32_t i = 0; i < opt_.queues && import_break_.empty(); ++i) {
    const uint32_t rx_done = LoadAcquire(&region_->rx_ring(i)->done);
    const uint32_t tx_done = LoadAcquire(&region_->tx_ring(i)->done);
    if (q_[i]->rx_setup && rx_done != filled[i]) {
      import_break_ = "handed over to a new nicmuxd: rx ring " + std::to_string(i) + ": done " +
                      std::to_string(rx_done) + " is not the host's " + std::to_string(filled[i]);
    } else if (q_[i]->tx_setup && tx_done != drained[i]) {
      import_break_ = "handed over to a new nicmuxd: tx ring " + std::to_string(i) + ": done " +
                      std::to_string(tx_done) + " is not the host's " + std::to_string(drained[i]);
    }
  }
  if (!import_break_.empty()) {
    breaking_.store(true, std::memory_order_relaxed);
    broken_reason_ = import_break_;
    broken_logged_.store(true, std::memory_order_relaxed);  // HandoverCommitted logs it
    broken_.store(true, std::memory_order_release);
    handover_warning_ = "port " + name() + ": pv device broken (" + import_break_ + "): the driver must reconnect";
    return Ok();
  }
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    q_[i]->fill_on.store(on[i] & 1, std::memory_order_release);
    q_[i]->drain_on.store(on[i] & 2, std::memory_order_release);
  }
  return Ok();
}

void PvPort::HandoverCommitted() {
  committed_ = true;
  owns_socket_file_ = true;
  if (!conn_.valid()) return;
  if (!import_break_.empty()) {
    // The driver learns it as from a worker's Break: the header, then the control doorbell.
    if (!region_->poisoned()) region_->MarkBroken(import_break_);
    NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: %s; the device is stopped", name().c_str(),
                              import_break_.c_str());
    if (ctrl_irq_.valid()) SignalDriver(ctrl_irq_.fd());
  }
  const bool tell = std::exchange(event_pending_, false) && UplinkView() != told_uplink_;
  if (tell && region_) {
    // FollowedChanged ran before the commit (the uplink as this process sees it, which its
    // ports added one by one changed meanwhile): an event only if the end of it is not what
    // the driver was told.
    StoreRelease(&region_->ctrl()->event_seq, ++events_);
    SignalControl();
  }
  // A request the driver wrote while the old process waited for us: its kick is still in
  // the eventfd, but answering now costs nothing.
  if (conn_.valid()) ServeControl();
}

}  // namespace

Result<std::unique_ptr<Port>> CreatePvPort(const PvPortOptions& o, EventLoop* loop, Pausable* workers,
                                           HandoverRecord* handover) {
  pv::Layout l;
  l.queue_pairs = o.queues;
  l.ring_size = o.ring;
  l.buf_size = o.buf_size;
  if (auto r = pv::CheckLayout(l); !r) return r.error().Wrap("port " + o.name);
  if (o.max_memory < kPvMinMaxMemory || o.max_memory > kPvMaxMaxMemory) {
    return Error("port " + o.name + ": max_memory=" + std::to_string(o.max_memory) + " is outside " +
                 std::to_string(kPvMinMaxMemory) + ".." + std::to_string(kPvMaxMaxMemory) + " bytes");
  }
  if (o.max_flows > pv::kMaxMaxFlows) {
    return Error("port " + o.name + ": flows=" + std::to_string(o.max_flows) + " is over " +
                 std::to_string(pv::kMaxMaxFlows));
  }
  if (o.mtu < kMinMtu || o.mtu > o.buf_size - kEthHeader - 4) {
    return Error("port " + o.name + ": mtu " + std::to_string(o.mtu) + " does not fit buf_size " + std::to_string(o.buf_size));
  }
  auto p = std::make_unique<PvPort>(o, loop, workers);
  if (handover) {
    if (auto r = p->Adopt(*handover); !r) return r.error().Wrap("port " + o.name + ": handover");
    NICMUX_LOG(kInfo, "port %s: pv device on %s handed over (%s)", o.name.c_str(), o.socket_path.c_str(),
               p->State().c_str());
    return std::unique_ptr<Port>(std::move(p));
  }
  if (auto r = p->Listen(); !r) return r.error().Wrap("port " + o.name);
  return std::unique_ptr<Port>(std::move(p));
}

PortKind PvPortKind() {
  PortKind k;
  k.name = "pv";
  k.summary =
      "a pvdev device (docs/pv-protocol.md) for a DPDK application or a program using nicmux's pv library: "
      "nicmuxd serves PATH; the application gets a shared region with batched rings and asks the device's "
      "capabilities (those of its uplink=) through a mailbox in it.";
  k.max_queues = NMX_PV_MAX_QUEUE_PAIRS;
  k.hands_over = true;
  k.options = {
      {"socket", OptionType::kString, "PATH", "",
       "the UNIX socket the application connects to (transport=ivshmem: QEMU's ivshmem-doorbell chardev)", 0, 0,
       true},
      {"transport", OptionType::kString, "socket|ivshmem", "socket",
       "socket: a process maps the region it gets on PATH (nicmux_pv.h, the PMD); ivshmem: nicmuxd is the ivshmem "
       "server of one QEMU VM (-chardev socket,path=PATH,id=C -device ivshmem-doorbell,chardev=C,vectors=1+queues), "
       "the guest maps BAR2 (the region, padded to a power of two) and rings BAR0's doorbell; no registered memory. "
       "A restarted nicmuxd cannot re-offer the region to a running VM: restart the VM"},
      {"queues", OptionType::kUInt, "N", "1", "queue pairs, 1..8", 1, NMX_PV_MAX_QUEUE_PAIRS},
      {"ring", OptionType::kUInt, "N", "1024", "descriptors per ring, a power of two 64..4096", NMX_PV_MIN_RING,
       NMX_PV_MAX_RING},
      {"buf_size", OptionType::kUInt, "N", "2048",
       "the buffer size the application is told (frames up to it cross; a multiple of 64, 256..66560; TSO is offered "
       "only with 66560, which holds a 64 KiB frame)",
       pv::kMinBufSize, pv::kMaxBufSize},
      {"mac", OptionType::kString, "xx:xx:xx:xx:xx:xx", "from the name", "the device's MAC address"},
      {"uplink", OptionType::kString, "PORT", "",
       "the port whose capabilities the device reports (TSO offered when it takes TSO whole)"},
      {"max_memory", OptionType::kSize, "SIZE", "64G",
       "the most memory of its own the application may register (MEM_ADD: nicmuxd then copies straight "
       "from and into its buffers), all regions together, bytes or with a K, M, G or T suffix (1024-based), "
       "1M..4T. Pages nicmuxd touches first are charged to nicmuxd's memory cgroup",
       kPvMinMaxMemory, kPvMaxMaxMemory},
      {"flows", OptionType::kUInt, "N", "256",
       "flow rules the application may create (FLOW_CREATE: match eth/vlan/ipv4/ipv6/tcp/udp, steer to a queue, "
       "RSS over queues, drop, mark), 0..4096; each is tried per frame delivered to the device; 0: none offered",
       0, pv::kMaxMaxFlows},
  };
  k.claims = [](const PortSpec& s) { return "socket " + s.options.at("socket"); };
  k.create = [](const PortSpec& s, const PortContext& c) -> Result<std::unique_ptr<Port>> {
    PvPortOptions o;
    o.name = s.name;
    o.socket_path = s.options.at("socket");
    NICMUX_TRY_ASSIGN(q, s.UInt("queues", 1, NMX_PV_MAX_QUEUE_PAIRS, 1));
    o.queues = static_cast<uint32_t>(q);
    NICMUX_TRY_ASSIGN(ring, s.UInt("ring", NMX_PV_MIN_RING, NMX_PV_MAX_RING, 1024));
    o.ring = static_cast<uint32_t>(ring);
    NICMUX_TRY_ASSIGN(bs, s.UInt("buf_size", pv::kMinBufSize, pv::kMaxBufSize, 2048));
    o.buf_size = static_cast<uint32_t>(bs);
    o.mtu = c.mtu ? c.mtu : 1500;
    if (auto it = s.options.find("mac"); it != s.options.end()) {
      if (!ParseMac(it->second, o.mac) || (o.mac[0] & 1)) {
        return Error("port " + s.name + ": mac=" + it->second + " is not a unicast xx:xx:xx:xx:xx:xx address");
      }
    } else {
      // A locally administered address from the port's name (stable across restarts).
      uint32_t h = 2166136261u;
      for (char ch : s.name) h = (h ^ static_cast<uint8_t>(ch)) * 16777619u;
      const uint8_t m[6] = {0x02, 0x6e, uint8_t(h >> 24), uint8_t(h >> 16), uint8_t(h >> 8), uint8_t(h)};
      std::memcpy(o.mac, m, 6);
    }
    if (auto it = s.options.find("uplink"); it != s.options.end()) o.uplink = it->second;
    if (auto it = s.options.find("transport"); it != s.options.end()) {
      if (it->second != "socket" && it->second != "ivshmem") {
        return Error("port " + s.name + ": transport=" + it->second + " is not socket or ivshmem");
      }
      o.ivshmem = it->second == "ivshmem";
    }
    NICMUX_TRY_ASSIGN(mm, s.Size("max_memory", kPvMinMaxMemory, kPvMaxMaxMemory, kPvDefaultMaxMemory));
    o.max_memory = mm;
    NICMUX_TRY_ASSIGN(mf, s.UInt("flows", 0, pv::kMaxMaxFlows, pv::kDefaultMaxFlows));
    o.max_flows = static_cast<uint32_t>(mf);
    return CreatePvPort(o, c.loop, c.workers, c.handover);
  };
  return k;
}

}  // namespace nicmux
