// Tests of the pvdev driver library (nicmux_pv.h) against a fake host written here: a sealed
// memfd region laid out as pv_abi.h says (the real host's layout: header, control page, rings,
// buffers), doorbell eventfds, a socketpair carrying the hello, and a thread answering the
// mailbox. The host's side of the data path runs in the test's thread (or a helper thread for
// the wait tests). Everything a real host could get wrong is spoiled somewhere below: the hello,
// the header, the answers, the ring indexes and the descriptors.
#include "pv/guest/nicmux_pv.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace {

using Clock = std::chrono::steady_clock;

struct Layout {
  uint32_t qp = 1, ring = 64, buf = 256;
  bool seal = true;
  bool mem = true;  // offers registered memory (NMX_PV_FEATURE_MEM_REGIONS)
};

int CountFds() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  if (d == nullptr) return -1;
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n - 3;  // ".", ".." and the DIR's own fd
}

uint64_t DrainEventFd(int fd) {
  uint64_t v = 0;
  if (::read(fd, &v, sizeof v) != static_cast<ssize_t>(sizeof v)) return 0;
  return v;
}

void SignalEventFd(int fd) {
  const uint64_t one = 1;
  ASSERT_EQ(::write(fd, &one, sizeof one), static_cast<ssize_t>(sizeof one));
}

// The host's store-load barrier (as virtio::FullFence: ThreadSanitizer rejects fences).
inline void FullFence() {
#if defined(__x86_64__)
  asm volatile("lock addl $0, -4(%%rsp)" ::: "memory", "cc");
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

template <typename T>
T Load(const T* p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T>
void Store(T* p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

struct Frame {
  std::vector<uint8_t> bytes;
  nmx_pv_desc desc;
};

std::vector<uint8_t> Pattern(uint32_t len, uint32_t seed) {
  std::vector<uint8_t> v(len);
  for (uint32_t i = 0; i < len; ++i) v[i] = static_cast<uint8_t>(seed * 31 + i * 7);
  return v;
}

// How the fake answers a request.
enum class Answer { kAnswer, kAnswerNoIrq, kSilent };

class FakeHost {
 public:
  explicit FakeHost(Layout l = {}) : l_(l) {
    stride_ = NMX_PV_RING_BYTES(l.ring);
    bufs_offset_ = 2 * NMX_PV_PAGE + 2ull * l.qp * stride_;
    bufs_size_ = 2ull * l.qp * l.ring * l.buf;
    size_ = bufs_offset_ + bufs_size_;
    memfd_ = ::memfd_create("pv-test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    EXPECT_GE(memfd_, 0);
    EXPECT_EQ(::ftruncate(memfd_, static_cast<off_t>(size_)), 0);
    if (l.seal) {
      EXPECT_EQ(::fcntl(memfd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
    }
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_, 0);
    EXPECT_NE(p, MAP_FAILED);
    base_ = static_cast<uint8_t*>(p);
    nmx_pv_header* h = hdr();
    h->magic = NMX_PV_MAGIC;
    h->version = NMX_PV_VERSION;
    h->header_size = sizeof(nmx_pv_header);
    h->region_size = size_;
    h->generation = 7;
    h->max_queue_pairs = l.qp;
    h->ring_size = l.ring;
    h->buf_size = l.buf;
    h->ctrl_offset = NMX_PV_PAGE;
    h->rings_offset = 2 * NMX_PV_PAGE;
    h->ring_stride = stride_;
    h->bufs_offset = bufs_offset_;
    h->bufs_size = bufs_size_;
    h->features = l.mem ? NMX_PV_FEATURE_MEM_REGIONS : 0;
    h->max_mem_bytes = l.mem ? 1ull << 30 : 0;
    h->status = NMX_PV_STATUS_OK;
    for (uint32_t d = 0; d < 1 + l.qp; ++d) {
      kick_.push_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
      irq_.push_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    }
    hello = {};
    hello.magic = NMX_PV_MAGIC;
    hello.version = NMX_PV_VERSION;
    hello.num_doorbells = 1 + l.qp;
    hello.region_size = size_;
    send_fds.push_back(memfd_);
    for (uint32_t d = 0; d < 1 + l.qp; ++d) {
      send_fds.push_back(kick_[d]);
      send_fds.push_back(irq_[d]);
    }
    for (uint32_t q = 0; q < NMX_PV_MAX_QUEUE_PAIRS; ++q) tx_done_[q] = rx_filled_[q] = 0;
    stop_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  }

  ~FakeHost() {
    StopServing();
    for (auto& [id, m] : mems_) ::munmap(m.base, m.size);
    if (peer_ >= 0) ::close(peer_);
    for (int fd : kick_) ::close(fd);
    for (int fd : irq_) ::close(fd);
    ::close(stop_);
    ::munmap(base_, size_);
    ::close(memfd_);
  }

  const Layout& layout() const { return l_; }
  uint64_t size() const { return size_; }
  nmx_pv_header* hdr() { return reinterpret_cast<nmx_pv_header*>(base_); }
  nmx_pv_ctrl* ctrl() { return reinterpret_cast<nmx_pv_ctrl*>(base_ + NMX_PV_PAGE); }
  nmx_pv_ring* ring(uint32_t i) { return reinterpret_cast<nmx_pv_ring*>(base_ + 2 * NMX_PV_PAGE + i * stride_); }
  nmx_pv_ring* rx(uint32_t q) { return ring(2 * q); }
  nmx_pv_ring* tx(uint32_t q) { return ring(2 * q + 1); }
  uint8_t* at(uint64_t off) { return base_ + off; }
  int kick(uint32_t d) const { return kick_[d]; }
  int irq(uint32_t d) const { return irq_[d]; }
  uint32_t mask() const { return l_.ring - 1; }
  // The part of the buffer area the library gives ring index i (2q rx, 2q + 1 tx).
  uint64_t area(uint32_t i) const { return bufs_offset_ + uint64_t{i} * l_.ring * l_.buf; }
  uint64_t area_bytes() const { return uint64_t{l_.ring} * l_.buf; }

  // The hello and the fds that go with it: a test may spoil them before Offer().
  nmx_pv_hello hello;
  std::vector<int> send_fds;
  size_t hello_bytes = sizeof(nmx_pv_hello);  // sent; fewer: a truncated hello
  bool hello_in_pieces = false;               // 8 bytes with the fds, then the rest

  void SendHello(int fd) {
    const auto* bytes = reinterpret_cast<const char*>(&hello);
    size_t first = hello_in_pieces ? 8 : hello_bytes;
    iovec iov{const_cast<char*>(bytes), first};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> cbuf(CMSG_SPACE(sizeof(int) * send_fds.size()));
    if (!send_fds.empty()) {
      mh.msg_control = cbuf.data();
      mh.msg_controllen = cbuf.size();
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * send_fds.size());
      std::memcpy(CMSG_DATA(c), send_fds.data(), sizeof(int) * send_fds.size());
    }
    ASSERT_EQ(::sendmsg(fd, &mh, MSG_NOSIGNAL), static_cast<ssize_t>(first));
    if (hello_in_pieces) {
      ASSERT_EQ(::send(fd, bytes + first, hello_bytes - first, MSG_NOSIGNAL),
                static_cast<ssize_t>(hello_bytes - first));
    }
  }

  // A connected socketpair with the hello already in it; returns the driver's end (the host
  // keeps the other until it is destroyed or Hangup()).
  int Offer(bool send = true) {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    peer_ = sv[0];
    if (send) SendHello(peer_);
    return sv[1];
  }
  void Hangup() {
    if (peer_ >= 0) ::close(peer_);
    peer_ = -1;
  }
  int peer() const { return peer_; }

  // ---- the mailbox --------------------------------------------------------------------------
  // A test may replace how a request is answered: fill resp (seq, status, len, payload are
  // preset for success) and say whether to answer.
  std::function<Answer(const nmx_pv_msg& req, nmx_pv_msg* resp)> handler;
  uint32_t setup_start = 0;       // the done index QUEUE_SETUP leaves in the ring
  uint32_t setup_host_flags = 0;  // and host_flags

  void Serve() {
    thread_ = std::thread([this] { Loop(); });
  }
  void StopServing() {
    if (!thread_.joinable()) return;
    SignalEventFd(stop_);
    thread_.join();
    DrainEventFd(stop_);
  }

  // ---- memory requests on the socket (served by the same thread) ----------------------------
  // A test may replace how one is answered: fill resp (type, seq, id preset; status 0) and say
  // whether to answer; nfds is how many fds came with it. Without, a well-behaved host maps
  // MEM_ADD's file and unmaps at MEM_DEL.
  std::function<bool(const nmx_pv_sock_req& req, size_t nfds, nmx_pv_sock_resp* resp)> mem_handler;

  // What the mailbox saw (guarded: written by the serving thread).
  struct Seen {
    std::vector<nmx_pv_sock_req> mem_requests;
    std::vector<nmx_pv_msg> requests;
    struct nmx_pv_configure conf{};
    uint8_t mac[6]{};
    uint32_t promisc = 99, mtu = 0;
    bool started = false;
  };
  Seen seen() {
    std::lock_guard<std::mutex> g(mu_);
    return seen_;
  }

  // ---- the host's data path (one thread at a time per ring) ---------------------------------
  bool InBufs(uint64_t off, uint32_t len) const {
    return off >= bufs_offset_ && off - bufs_offset_ <= bufs_size_ && len <= bufs_size_ - (off - bufs_offset_);
  }
  // The host's address of a descriptor's bytes: the buffer area (region 0) or the host's mapping
  // of a registered region; nullptr when outside.
  uint8_t* Resolve(uint16_t region, uint64_t off, uint32_t len) {
    if (region == 0) return InBufs(off, len) ? at(off) : nullptr;
    std::lock_guard<std::mutex> g(mu_);
    auto it = mems_.find(region);
    if (it == mems_.end() || off > it->second.size || len > it->second.size - off) return nullptr;
    return it->second.base + off;
  }

  // Takes up to max posted tx frames of pair q and publishes done.
  std::vector<Frame> DrainTx(uint32_t q, uint32_t max = UINT32_MAX) {
    nmx_pv_ring* r = tx(q);
    const uint32_t posted = Load(&r->posted);
    uint32_t done = tx_done_[q];
    EXPECT_LE(posted - done, l_.ring) << "the driver posted more than a ring";
    std::vector<Frame> out;
    while (done != posted && out.size() < max) {
      Frame f;
      std::memcpy(&f.desc, &r->desc[done & mask()], sizeof f.desc);
      const uint8_t* b = Resolve(f.desc.region, f.desc.offset, f.desc.len);
      EXPECT_NE(b, nullptr) << f.desc.region << " " << f.desc.offset;
      if (b) f.bytes.assign(b, b + f.desc.len);
      out.push_back(f);
      ++done;
    }
    tx_done_[q] = done;
    Store(&r->done, done);
    MaybeIrq(q, r);
    return out;
  }

  // Fills posted rx buffers of pair q with frames (as many as there are); publishes done.
  uint32_t FillRx(uint32_t q, const std::vector<std::vector<uint8_t>>& frames, uint16_t flags = 0,
                  uint32_t rss = 0, uint32_t mark = 0) {
    nmx_pv_ring* r = rx(q);
    const uint32_t posted = Load(&r->posted);
    uint32_t filled = rx_filled_[q];
    EXPECT_LE(posted - filled, l_.ring) << "the driver posted more than a ring";
    uint32_t n = 0;
    for (const auto& f : frames) {
      if (filled == posted) break;
      nmx_pv_desc* d = &r->desc[filled & mask()];
      uint8_t* b = Resolve(d->region, d->offset, d->len);
      EXPECT_NE(b, nullptr) << d->region << " " << d->offset;
      EXPECT_GE(d->len, f.size());
      if (b && d->len >= f.size()) std::memcpy(b, f.data(), f.size());
      d->len = static_cast<uint32_t>(f.size());
      d->flags = flags;
      d->rss_hash = rss;
      d->mark = mark;
      ++filled;
      ++n;
    }
    rx_filled_[q] = filled;
    Store(&r->done, filled);
    MaybeIrq(q, r);
    return n;
  }

  void MaybeIrq(uint32_t q, nmx_pv_ring* r) {
    FullFence();
    if (Load(&r->driver_flags) & NMX_PV_DRIVER_WANTS_IRQ) SignalEventFd(irq_[1 + q]);
  }

  std::atomic<uint32_t> tx_done_[NMX_PV_MAX_QUEUE_PAIRS];
  std::atomic<uint32_t> rx_filled_[NMX_PV_MAX_QUEUE_PAIRS];

 private:
  void Loop() {
    uint32_t answered = 0;
    bool sock_open = peer_ >= 0;
    for (;;) {
      pollfd p[3] = {{kick_[0], POLLIN, 0}, {stop_, POLLIN, 0}, {sock_open ? peer_ : -1, POLLIN, 0}};
      if (::poll(p, 3, 1000) < 0 && errno != EINTR) return;
      if (p[1].revents & POLLIN) return;
      if (p[2].revents & (POLLIN | POLLHUP)) sock_open = ServeSocket();
      if (!(p[0].revents & POLLIN)) continue;
      DrainEventFd(kick_[0]);
      nmx_pv_ctrl* c = ctrl();
      const uint32_t seq = Load(&c->req_seq);
      if (seq == answered) continue;
      answered = seq;
      nmx_pv_msg req;
      std::memcpy(&req, &c->req, sizeof req);
      nmx_pv_msg resp{};
      resp.seq = seq;
      resp.type = req.type;
      Answer a = Answer::kAnswer;
      if (handler) {
        a = handler(req, &resp);
      } else {
        Handle(req, &resp);
      }
      {
        std::lock_guard<std::mutex> g(mu_);
        seen_.requests.push_back(req);
      }
      if (a == Answer::kSilent) continue;
      std::memcpy(&c->resp, &resp, sizeof resp);
      Store(&c->resp_seq, seq);
      if (a == Answer::kAnswer) SignalEventFd(irq_[0]);
    }
  }

  // One memory request (whole: the library sends each in one sendmsg); false at end of file.
  bool ServeSocket() {
    nmx_pv_sock_req req{};
    iovec iov{&req, sizeof req};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(peer_, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n <= 0) return n < 0 && errno == EAGAIN;
    EXPECT_EQ(n, static_cast<ssize_t>(sizeof req));
    std::vector<int> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      const size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < k; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.push_back(fd);
      }
    }
    nmx_pv_sock_resp resp{};
    resp.type = req.type;
    resp.seq = req.seq;
    resp.id = req.id;
    bool answer = true;
    if (mem_handler) {
      answer = mem_handler(req, fds.size(), &resp);
    } else if (req.type == NMX_PV_SOCK_MEM_ADD && fds.size() == 1) {
      void* m = ::mmap(nullptr, req.size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], static_cast<off_t>(req.fd_offset));
      if (m == MAP_FAILED) {
        resp.status = -errno;
      } else {
        std::lock_guard<std::mutex> g(mu_);
        mems_[req.id] = {static_cast<uint8_t*>(m), req.size};
      }
    } else if (req.type == NMX_PV_SOCK_MEM_DEL) {
      std::lock_guard<std::mutex> g(mu_);
      auto it = mems_.find(req.id);
      if (it == mems_.end()) {
        resp.status = -ENOENT;
      } else {
        ::munmap(it->second.base, it->second.size);
        mems_.erase(it);
      }
    } else {
      resp.status = -EINVAL;
    }
    for (int fd : fds) ::close(fd);
    {
      std::lock_guard<std::mutex> g(mu_);
      seen_.mem_requests.push_back(req);
    }
    if (answer) {
      EXPECT_EQ(::send(peer_, &resp, sizeof resp, MSG_NOSIGNAL), static_cast<ssize_t>(sizeof resp));
    }
    return true;
  }

  // The default answers: a well-behaved host.
  void Handle(const nmx_pv_msg& req, nmx_pv_msg* resp) {
    std::lock_guard<std::mutex> g(mu_);
    auto refuse = [&](int32_t status, const char* why) {
      resp->status = status;
      std::snprintf(resp->reason, sizeof resp->reason, "%s", why);
    };
    switch (req.type) {
      case NMX_PV_MSG_GET_INFO: {
        nmx_pv_info i{};
        i.max_rx_queues = i.max_tx_queues = l_.qp;
        i.ring_size = l_.ring;
        i.buf_size = l_.buf;
        i.min_mtu = 68;
        i.max_mtu = l_.buf - 18;
        i.mtu = 1500;
        i.max_frame = l_.buf;
        const uint8_t mac[6] = {0x02, 0x6e, 1, 2, 3, 4};
        std::memcpy(i.mac, mac, 6);
        i.link_up = 1;
        i.promisc = 1;
        i.link_speed_mbps = 10000;
        i.tx_offloads = NMX_PV_TX_TCP_CKSUM | NMX_PV_TX_TCP_TSO;
        i.rx_offloads = NMX_PV_RX_TCP_CKSUM;
        i.generation = 7;
        std::snprintf(i.uplink, sizeof i.uplink, "fake up0");
        std::memcpy(resp->payload, &i, sizeof i);
        resp->len = sizeof i;
        return;
      }
      case NMX_PV_MSG_CONFIGURE:
        if (req.len != sizeof(struct nmx_pv_configure)) return refuse(-EINVAL, "CONFIGURE: payload size");
        std::memcpy(&seen_.conf, req.payload, sizeof seen_.conf);
        return;
      case NMX_PV_MSG_QUEUE_SETUP: {
        nmx_pv_queue_req q;
        std::memcpy(&q, req.payload, sizeof q);
        if (q.queue >= l_.qp || q.dir > 1) return refuse(-EINVAL, "QUEUE_SETUP: no such queue");
        nmx_pv_ring* r = ring(2 * q.queue + q.dir);
        // As the real host: the driver has written posted = 0 before asking.
        if (Load(&r->posted) != 0) return refuse(-EINVAL, "QUEUE_SETUP: posted is not 0");
        Store(&r->done, setup_start);
        Store(&r->host_flags, setup_host_flags);
        (q.dir == NMX_PV_QUEUE_RX ? rx_filled_ : tx_done_)[q.queue] = setup_start;
        return;
      }
      case NMX_PV_MSG_QUEUE_RELEASE:
        return;
      case NMX_PV_MSG_START:
        seen_.started = true;
        return;
      case NMX_PV_MSG_STOP:
        seen_.started = false;
        return;
      case NMX_PV_MSG_STATS_GET: {
        nmx_pv_stats s{};
        s.nb_rx_queues = s.nb_tx_queues = l_.qp;
        s.rx[0] = {11, 1100, 1};
        s.tx[0] = {22, 2200, 2};
        s.rx_no_buffers = 3;
        std::memcpy(resp->payload, &s, sizeof s);
        resp->len = sizeof s;
        return;
      }
      case NMX_PV_MSG_STATS_RESET:
        return;
      case NMX_PV_MSG_LINK_GET: {
        nmx_pv_link k{1, 25000};
        std::memcpy(resp->payload, &k, sizeof k);
        resp->len = sizeof k;
        return;
      }
      case NMX_PV_MSG_MTU_SET: {
        nmx_pv_u32 v;
        std::memcpy(&v, req.payload, sizeof v);
        if (v.value < 68) return refuse(-EINVAL, "MTU_SET: 60 is below 68");
        seen_.mtu = v.value;
        return;
      }
      case NMX_PV_MSG_MAC_SET:
        std::memcpy(seen_.mac, req.payload, 6);
        return;
      case NMX_PV_MSG_PROMISC_SET: {
        nmx_pv_u32 v;
        std::memcpy(&v, req.payload, sizeof v);
        seen_.promisc = v.value;
        return;
      }
    }
    refuse(-EINVAL, "unknown request");
  }

  Layout l_;
  uint64_t stride_, bufs_offset_, bufs_size_, size_;
  int memfd_ = -1, stop_ = -1, peer_ = -1;
  uint8_t* base_ = nullptr;
  std::vector<int> kick_, irq_;
  std::thread thread_;
  std::mutex mu_;
  Seen seen_;
  struct HostMem {
    uint8_t* base;
    uint64_t size;
  };
  std::map<uint32_t, HostMem> mems_;  // the host's mappings of registered regions (guarded)
};

struct DevCloser {
  void operator()(nmx_pv_dev* d) const { nmx_pv_close(d); }
};
using Dev = std::unique_ptr<nmx_pv_dev, DevCloser>;

Dev OpenOk(FakeHost& h) {
  char err[256] = "unset";
  nmx_pv_dev* d = nmx_pv_open_fd(h.Offer(), err, sizeof err);
  EXPECT_NE(d, nullptr) << err;
  return Dev(d);
}

// An opened, configured device with its queues set up (the mailbox served).
Dev Ready(FakeHost& h, bool start = true) {
  Dev d = OpenOk(h);
  if (!d) return d;
  h.Serve();
  struct nmx_pv_configure c{};
  c.nb_rx_queues = c.nb_tx_queues = h.layout().qp;
  EXPECT_EQ(nmx_pv_configure(d.get(), &c), 0) << nmx_pv_strerror(d.get());
  for (uint32_t q = 0; q < h.layout().qp; ++q) {
    EXPECT_EQ(nmx_pv_queue_setup(d.get(), q, NMX_PV_QUEUE_RX), 0) << nmx_pv_strerror(d.get());
    EXPECT_EQ(nmx_pv_queue_setup(d.get(), q, NMX_PV_QUEUE_TX), 0) << nmx_pv_strerror(d.get());
  }
  if (start) {
    EXPECT_EQ(nmx_pv_start(d.get()), 0) << nmx_pv_strerror(d.get());
  }
  return d;
}

nmx_pv_pkt TxPkt(std::vector<uint8_t>& f) {
  nmx_pv_pkt p{};
  p.data = f.data();
  p.len = static_cast<uint32_t>(f.size());
  return p;
}

// ---- open -------------------------------------------------------------------------------------

TEST(PvGuestOpen, OpensAWellFormedRegion) {
  FakeHost h({.qp = 2, .ring = 128, .buf = 512});
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  EXPECT_EQ(nmx_pv_max_queue_pairs(d.get()), 2u);
  EXPECT_EQ(nmx_pv_ring_size(d.get()), 128u);
  EXPECT_EQ(nmx_pv_buf_size(d.get()), 512u);
  EXPECT_EQ(nmx_pv_generation(d.get()), 7u);
  char why[64] = "x";
  EXPECT_EQ(nmx_pv_status(d.get(), why, sizeof why), NMX_PV_STATUS_OK);
  EXPECT_STREQ(why, "");
  EXPECT_STREQ(nmx_pv_strerror(d.get()), "");
}

TEST(PvGuestOpen, HelloInPieces) {
  FakeHost h;
  h.hello_in_pieces = true;
  Dev d = OpenOk(h);
  EXPECT_TRUE(d);
}

TEST(PvGuestOpen, ThroughASocketPath) {
  FakeHost h;
  char dir[] = "/tmp/nmxpv.XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string path = std::string(dir) + "/pv.sock";
  const int ls = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
  ASSERT_EQ(::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(ls, 1), 0);
  int conn = -1;
  std::thread t([&] {
    conn = ::accept(ls, nullptr, nullptr);
    h.SendHello(conn);
  });
  char err[256];
  nmx_pv_dev* d = nmx_pv_open(path.c_str(), err, sizeof err);
  t.join();
  EXPECT_NE(d, nullptr) << err;
  nmx_pv_close(d);
  ::close(conn);
  ::close(ls);
  ::unlink(path.c_str());
  ::rmdir(dir);

  // Nobody there; a path too long for sun_path.
  d = nmx_pv_open(path.c_str(), err, sizeof err);
  EXPECT_EQ(d, nullptr);
  EXPECT_NE(std::string(err).find("connect " + path), std::string::npos) << err;
  const std::string longp(200, 'x');
  EXPECT_EQ(nmx_pv_open(longp.c_str(), err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("expected 1..107"), std::string::npos) << err;
}

struct BadCase {
  const char* name;
  std::function<void(FakeHost&)> spoil;
  const char* expect;  // a part of the message
  Layout layout = {};
  bool hangup = false;  // the host closes its end after the hello
};

TEST(PvGuestOpen, RefusesABadHelloOrHeaderNamingTheField) {
  const std::vector<BadCase> cases = {
      {"hello magic", [](FakeHost& h) { h.hello.magic ^= 1; }, "hello.magic"},
      {"hello version", [](FakeHost& h) { h.hello.version = 2; }, "hello.version 2"},
      {"hello no queue doorbell", [](FakeHost& h) { h.hello.num_doorbells = 1; }, "hello.num_doorbells 1"},
      {"hello too many doorbells", [](FakeHost& h) { h.hello.num_doorbells = 10; }, "hello.num_doorbells 10"},
      {"hello an fd short", [](FakeHost& h) { h.send_fds.pop_back(); }, "4 fds, expected 5"},
      {"hello no fds", [](FakeHost& h) { h.send_fds.clear(); }, "0 fds, expected 5"},
      {"hello far too many fds", [](FakeHost& h) { h.send_fds.resize(70, h.send_fds[1]); }, "more fds than fit"},
      {"hello region size", [](FakeHost& h) { h.hello.region_size += NMX_PV_PAGE; }, "differs from the memfd's size"},
      {"hello region size tiny", [](FakeHost& h) { h.hello.region_size = 100; }, "hello.region_size 100"},
      {"hello truncated", [](FakeHost& h) { h.hello_bytes = 10; },
       "hello: the host closed the connection after 10 of 24 bytes", {}, true},
      {"kick not an eventfd",
       [](FakeHost& h) {
         int p[2];
         ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
         h.send_fds[3] = p[0];  // doorbell 1's kick; the host end keeps no copy: leak two fds
       },
       "doorbell 1's kick fd is not an eventfd (pipe:"},
      {"memfd not sealed", [](FakeHost&) {}, "F_SEAL_SHRINK", {.seal = false}},
      {"memfd not a file", [](FakeHost& h) { h.send_fds[0] = h.send_fds[1]; }, "the region fd is not a memfd"},
      {"header magic", [](FakeHost& h) { h.hdr()->magic = 0; }, "header.magic 0x0000000000000000"},
      {"header version", [](FakeHost& h) { h.hdr()->version = 3; }, "header.version 3"},
      {"header size", [](FakeHost& h) { h.hdr()->header_size = 8; }, "header.header_size 8"},
      {"header region size", [](FakeHost& h) { h.hdr()->region_size -= 1; }, "header.region_size"},
      {"header no queue pairs", [](FakeHost& h) { h.hdr()->max_queue_pairs = 0; }, "header.max_queue_pairs 0"},
      {"header 9 queue pairs", [](FakeHost& h) { h.hdr()->max_queue_pairs = 9; }, "header.max_queue_pairs 9"},
      {"doorbells vs queue pairs", [](FakeHost& h) { h.hdr()->max_queue_pairs = 2; },
       "hello.num_doorbells 2 does not match header.max_queue_pairs 2"},
      {"ring not a power of two", [](FakeHost& h) { h.hdr()->ring_size = 100; }, "header.ring_size 100"},
      {"ring too small", [](FakeHost& h) { h.hdr()->ring_size = 32; }, "header.ring_size 32"},
      {"ring too large", [](FakeHost& h) { h.hdr()->ring_size = 8192; }, "header.ring_size 8192"},
      {"buf size 0", [](FakeHost& h) { h.hdr()->buf_size = 0; }, "header.buf_size 0"},
      {"ctrl outside", [](FakeHost& h) { h.hdr()->ctrl_offset = h.size() - 64; }, "header.ctrl_offset"},
      {"ctrl wraps", [](FakeHost& h) { h.hdr()->ctrl_offset = ~uint64_t{63}; }, "header.ctrl_offset"},
      {"ctrl misaligned", [](FakeHost& h) { h.hdr()->ctrl_offset += 4; }, "header.ctrl_offset"},
      {"ctrl over the header", [](FakeHost& h) { h.hdr()->ctrl_offset = 0; }, "overlaps the header"},
      {"stride short", [](FakeHost& h) { h.hdr()->ring_stride = 128; }, "header.ring_stride 128"},
      {"stride huge", [](FakeHost& h) { h.hdr()->ring_stride = uint64_t{1} << 62; }, "header.ring_stride"},
      {"rings outside", [](FakeHost& h) { h.hdr()->rings_offset = h.size() - NMX_PV_PAGE; }, "header.rings_offset"},
      {"rings wrap", [](FakeHost& h) { h.hdr()->rings_offset = ~uint64_t{4095}; }, "header.rings_offset"},
      {"bufs outside", [](FakeHost& h) { h.hdr()->bufs_size += 1; }, "header.bufs_offset"},
      {"bufs wrap", [](FakeHost& h) { h.hdr()->bufs_offset = ~uint64_t{0} - 10; }, "header.bufs_offset"},
      {"bufs too small", [](FakeHost& h) { h.hdr()->bufs_size -= 256; }, "header.bufs_size 32512 is too small"},
      {"bufs too small for buf_size", [](FakeHost& h) { h.hdr()->buf_size = 512; }, "header.bufs_size"},
      {"bufs over the rings", [](FakeHost& h) { h.hdr()->bufs_offset = h.hdr()->rings_offset; },
       "buffers (header.bufs_offset)"},
      {"rings over ctrl", [](FakeHost& h) { h.hdr()->rings_offset = NMX_PV_PAGE; }, "rings (header.rings_offset)"},
      {"broken from the start",
       [](FakeHost& h) {
         h.hdr()->status = NMX_PV_STATUS_BROKEN;
         std::snprintf(h.hdr()->broken_reason, sizeof h.hdr()->broken_reason, "bad\x1b[2Jday");
       },
       "header.status 1: the host offers a broken device (bad?[2Jday)"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    FakeHost h(c.layout);
    c.spoil(h);
    const int fd = h.Offer();
    if (c.hangup) h.Hangup();
    const int before = CountFds();
    char err[256] = "";
    nmx_pv_dev* d = nmx_pv_open_fd(fd, err, sizeof err);
    EXPECT_EQ(d, nullptr);
    nmx_pv_close(d);
    EXPECT_NE(std::string(err).find(c.expect), std::string::npos) << "message: " << err;
    // Every fd received is closed again, and the socket: nothing leaks.
    EXPECT_EQ(CountFds(), before - 1);
  }
}

TEST(PvGuestOpen, HostGoneBeforeTheHello) {
  FakeHost h;
  const int fd = h.Offer(/*send=*/false);
  h.Hangup();
  char err[256];
  EXPECT_EQ(nmx_pv_open_fd(fd, err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("the host closed the connection"), std::string::npos) << err;
  EXPECT_EQ(nmx_pv_open_fd(-1, err, sizeof err), nullptr);
  EXPECT_NE(std::string(err).find("bad socket fd"), std::string::npos) << err;
}

// ---- control ------------------------------------------------------------------------------------

TEST(PvGuestControl, RoundTrips) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.Serve();
  nmx_pv_info info;
  ASSERT_EQ(nmx_pv_get_info(d.get(), &info), 0) << nmx_pv_strerror(d.get());
  EXPECT_EQ(info.max_rx_queues, 1u);
  EXPECT_EQ(info.mtu, 1500u);
  EXPECT_EQ(info.link_speed_mbps, 10000u);
  EXPECT_EQ(info.tx_offloads, NMX_PV_TX_TCP_CKSUM | NMX_PV_TX_TCP_TSO);
  EXPECT_STREQ(info.uplink, "fake up0");
  EXPECT_EQ(info.mac[5], 4);

  struct nmx_pv_configure c{};
  c.nb_rx_queues = c.nb_tx_queues = 1;
  c.tx_offloads = NMX_PV_TX_TCP_CKSUM;
  c.mtu = 1400;
  ASSERT_EQ(nmx_pv_configure(d.get(), &c), 0);
  EXPECT_EQ(h.seen().conf.tx_offloads, NMX_PV_TX_TCP_CKSUM);
  EXPECT_EQ(h.seen().conf.mtu, 1400u);
  ASSERT_EQ(nmx_pv_queue_setup(d.get(), 0, NMX_PV_QUEUE_RX), 0);
  ASSERT_EQ(nmx_pv_queue_setup(d.get(), 0, NMX_PV_QUEUE_TX), 0);
  ASSERT_EQ(nmx_pv_start(d.get()), 0);
  EXPECT_TRUE(h.seen().started);
  nmx_pv_stats s;
  ASSERT_EQ(nmx_pv_stats_get(d.get(), &s), 0);
  EXPECT_EQ(s.rx[0].packets, 11u);
  EXPECT_EQ(s.tx[0].bytes, 2200u);
  EXPECT_EQ(s.rx_no_buffers, 3u);
  EXPECT_EQ(nmx_pv_stats_reset(d.get()), 0);
  nmx_pv_link l;
  ASSERT_EQ(nmx_pv_link_get(d.get(), &l), 0);
  EXPECT_EQ(l.up, 1u);
  EXPECT_EQ(l.speed_mbps, 25000u);
  EXPECT_EQ(nmx_pv_mtu_set(d.get(), 9000), 0);
  EXPECT_EQ(h.seen().mtu, 9000u);
  const uint8_t mac[6] = {0x02, 0, 0, 0, 0, 9};
  EXPECT_EQ(nmx_pv_mac_set(d.get(), mac), 0);
  EXPECT_EQ(h.seen().mac[5], 9);
  EXPECT_EQ(nmx_pv_promisc_set(d.get(), 0), 0);
  EXPECT_EQ(h.seen().promisc, 0u);
  EXPECT_EQ(nmx_pv_stop(d.get()), 0);
  EXPECT_FALSE(h.seen().started);
  EXPECT_EQ(nmx_pv_queue_release(d.get(), 0, NMX_PV_QUEUE_TX), 0);

  // Each request numbered one up, typed, with exactly its payload.
  const auto reqs = h.seen().requests;
  ASSERT_EQ(reqs.size(), 13u);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(reqs[i].seq, i + 1);
  EXPECT_EQ(reqs[0].type, NMX_PV_MSG_GET_INFO);
  EXPECT_EQ(reqs[0].len, 0u);
  EXPECT_EQ(reqs[1].type, NMX_PV_MSG_CONFIGURE);
  EXPECT_EQ(reqs[1].len, sizeof(struct nmx_pv_configure));
  EXPECT_EQ(reqs[2].type, NMX_PV_MSG_QUEUE_SETUP);
  EXPECT_EQ(reqs[2].len, sizeof(nmx_pv_queue_req));
  EXPECT_EQ(reqs[9].type, NMX_PV_MSG_MAC_SET);
  EXPECT_EQ(reqs[9].len, sizeof(nmx_pv_mac));
  EXPECT_EQ(reqs[12].type, NMX_PV_MSG_QUEUE_RELEASE);
  EXPECT_EQ(reqs[12].len, sizeof(nmx_pv_queue_req));
}

TEST(PvGuestControl, RefusalCarriesTheHostsReason) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.Serve();
  EXPECT_EQ(nmx_pv_mtu_set(d.get(), 60), -EINVAL);
  EXPECT_STREQ(nmx_pv_strerror(d.get()), "MTU_SET refused by the host: MTU_SET: 60 is below 68 (Invalid argument)");
  // The next success clears it.
  EXPECT_EQ(nmx_pv_mtu_set(d.get(), 1500), 0);
  EXPECT_STREQ(nmx_pv_strerror(d.get()), "");
  // A reason with terminal escapes and no NUL is printed safely.
  h.StopServing();
  h.handler = [](const nmx_pv_msg&, nmx_pv_msg* r) {
    r->status = -EPERM;
    std::memset(r->reason, 'A', sizeof r->reason);
    r->reason[0] = '\x1b';
    return Answer::kAnswer;
  };
  h.Serve();
  EXPECT_EQ(nmx_pv_start(d.get()), -EPERM);
  const std::string e = nmx_pv_strerror(d.get());
  EXPECT_EQ(e.find('\x1b'), std::string::npos);
  EXPECT_NE(e.find("START refused by the host: ?AAAA"), std::string::npos) << e;
}

TEST(PvGuestControl, LocalArgumentChecks) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.Serve();
  EXPECT_EQ(nmx_pv_queue_setup(d.get(), 1, NMX_PV_QUEUE_RX), -EINVAL);
  EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find("queue 1, the device has 1 queue pairs"), std::string::npos);
  EXPECT_EQ(nmx_pv_queue_setup(d.get(), 0, 7), -EINVAL);
  EXPECT_EQ(h.seen().requests.size(), 0u);
  ASSERT_EQ(nmx_pv_queue_setup(d.get(), 0, NMX_PV_QUEUE_TX), 0);
  EXPECT_EQ(nmx_pv_queue_setup(d.get(), 0, NMX_PV_QUEUE_TX), -EBUSY);
  EXPECT_EQ(nmx_pv_queue_release(d.get(), 0, NMX_PV_QUEUE_TX), 0);
  EXPECT_EQ(nmx_pv_queue_setup(d.get(), 0, NMX_PV_QUEUE_TX), 0);
  // CONFIGURE forgets the queues (as the host does).
  struct nmx_pv_configure c{};
  c.nb_rx_queues = c.nb_tx_queues = 1;
  ASSERT_EQ(nmx_pv_configure(d.get(), &c), 0);
  EXPECT_EQ(nmx_pv_queue_setup(d.get(), 0, NMX_PV_QUEUE_TX), 0);
}

TEST(PvGuestControl, LyingAnswers) {
  struct Lie {
    const char* name;
    std::function<void(nmx_pv_msg*)> spoil;
    int rc;
    const char* expect;
  };
  const std::vector<Lie> lies = {
      {"wrong seq", [](nmx_pv_msg* r) { r->seq += 5; }, -EPROTO, "resp.seq is"},
      {"positive status", [](nmx_pv_msg* r) { r->status = 3; }, -EPROTO, "status 3"},
      {"status beyond errno", [](nmx_pv_msg* r) { r->status = -100000; }, -EPROTO, "status -100000"},
      {"short info", [](nmx_pv_msg* r) { r->len = 8; }, -EPROTO, "8 payload bytes, expected 136..512"},
      {"long payload", [](nmx_pv_msg* r) { r->len = 600; }, -EPROTO, "600 payload bytes"},
      {"more queues than the region", [](nmx_pv_msg* r) { std::memset(r->payload, 0, 4); r->payload[0] = 9; },
       -EPROTO, "info.max_rx_queues"},
      {"another ring size", [](nmx_pv_msg* r) { r->payload[8] = 1; }, -EPROTO, "info.ring_size"},
  };
  for (const Lie& lie : lies) {
    SCOPED_TRACE(lie.name);
    FakeHost h;
    Dev d = OpenOk(h);
    ASSERT_TRUE(d);
    h.handler = [&](const nmx_pv_msg& req, nmx_pv_msg* r) {
      nmx_pv_info i{};
      i.max_rx_queues = i.max_tx_queues = 1;
      i.ring_size = 64;
      i.buf_size = 256;
      std::memset(i.uplink, 'u', sizeof i.uplink);  // no NUL: cut by the library
      std::memcpy(r->payload, &i, sizeof i);
      r->len = sizeof i;
      lie.spoil(r);
      return Answer::kAnswer;
    };
    h.Serve();
    nmx_pv_info info;
    EXPECT_EQ(nmx_pv_get_info(d.get(), &info), lie.rc);
    EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find(lie.expect), std::string::npos)
        << nmx_pv_strerror(d.get());
  }
  // The same host, honest: the unterminated uplink comes back terminated.
  FakeHost h;
  Dev d = OpenOk(h);
  h.handler = [](const nmx_pv_msg&, nmx_pv_msg* r) {
    nmx_pv_info i{};
    i.max_rx_queues = i.max_tx_queues = 1;
    i.ring_size = 64;
    i.buf_size = 256;
    std::memset(i.uplink, 'u', sizeof i.uplink);
    std::memcpy(r->payload, &i, sizeof i);
    r->len = sizeof i;
    return Answer::kAnswer;
  };
  h.Serve();
  nmx_pv_info info;
  ASSERT_EQ(nmx_pv_get_info(d.get(), &info), 0) << nmx_pv_strerror(d.get());
  EXPECT_EQ(std::strlen(info.uplink), sizeof info.uplink - 1);
}

TEST(PvGuestControl, NoAnswerTimesOut) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.handler = [](const nmx_pv_msg&, nmx_pv_msg*) { return Answer::kSilent; };
  h.Serve();
  nmx_pv_set_timeout(d.get(), 150);
  const auto t0 = Clock::now();
  EXPECT_EQ(nmx_pv_start(d.get()), -ETIMEDOUT);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
  EXPECT_GE(ms, 140);
  EXPECT_LT(ms, 2000);
  EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find("START (seq 1): no answer from the host within 150 ms"),
            std::string::npos)
      << nmx_pv_strerror(d.get());
  // A broken host says so in the same message.
  h.hdr()->status = NMX_PV_STATUS_BROKEN;
  std::snprintf(h.hdr()->broken_reason, sizeof h.hdr()->broken_reason, "tx ring 0: posted 999");
  EXPECT_EQ(nmx_pv_stop(d.get()), -ETIMEDOUT);
  EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find("the host marked the device broken: tx ring 0: posted 999"),
            std::string::npos)
      << nmx_pv_strerror(d.get());
}

TEST(PvGuestControl, AnswerWithoutIrqIsStillSeen) {
  // A lost irq costs a slice of the wait, not the call.
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.handler = [](const nmx_pv_msg&, nmx_pv_msg*) { return Answer::kAnswerNoIrq; };
  h.Serve();
  const auto t0 = Clock::now();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(nmx_pv_start(d.get()), 0);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
}

TEST(PvGuestControl, HostHangsUp) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  EXPECT_EQ(nmx_pv_connected(d.get()), 1);
  h.Hangup();  // nobody answers either
  EXPECT_EQ(nmx_pv_connected(d.get()), 0);
  const auto t0 = Clock::now();
  EXPECT_EQ(nmx_pv_start(d.get()), -ENOTCONN);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find("the host closed the connection"), std::string::npos);
}

TEST(PvGuestControl, EventsAndStatus) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  const int e0 = nmx_pv_events(d.get());
  Store(&h.ctrl()->event_seq, 41u);
  EXPECT_NE(nmx_pv_events(d.get()), e0);
  EXPECT_EQ(nmx_pv_events(d.get()), 41);
  char why[512];
  EXPECT_EQ(nmx_pv_status(d.get(), why, sizeof why), NMX_PV_STATUS_OK);
  std::memset(h.hdr()->broken_reason, 'z', sizeof h.hdr()->broken_reason);  // unterminated
  Store(&h.hdr()->status, NMX_PV_STATUS_BROKEN);
  EXPECT_EQ(nmx_pv_status(d.get(), why, sizeof why), NMX_PV_STATUS_BROKEN);
  EXPECT_EQ(std::string(why), "the host marked the device broken: " +
                                  std::string(sizeof h.hdr()->broken_reason - 1, 'z'));
  // A short buffer gets a terminated prefix.
  char small[8];
  EXPECT_EQ(nmx_pv_status(d.get(), small, sizeof small), NMX_PV_STATUS_BROKEN);
  EXPECT_STREQ(small, "the hos");
  Store(&h.hdr()->status, 77u);
  EXPECT_EQ(nmx_pv_status(d.get(), why, sizeof why), NMX_PV_STATUS_BROKEN);
  EXPECT_NE(std::string(why).find("header.status is 77"), std::string::npos) << why;
}

// ---- tx ------------------------------------------------------------------------------------------

TEST(PvGuestTx, PostsCopiesAndPublishes) {
  FakeHost h({.qp = 2, .ring = 64, .buf = 256});
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  std::vector<std::vector<uint8_t>> frames = {Pattern(60, 1), Pattern(256, 2), Pattern(14, 3)};
  nmx_pv_pkt pkts[3];
  for (int i = 0; i < 3; ++i) pkts[i] = TxPkt(frames[i]);
  pkts[1].flags = NMX_PV_DESC_IPV4 | NMX_PV_DESC_TCP_CKSUM | NMX_PV_DESC_TSO | NMX_PV_DESC_RSS;  // RSS: not a request
  pkts[1].l2_len = 14;
  pkts[1].l3_len = 20;
  pkts[1].l4_len = 32;
  pkts[1].tso_segsz = 1448;
  pkts[1].rss_hash = 0xdead;
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 1, pkts, 3), 3);
  EXPECT_EQ(Load(&h.tx(1)->posted), 3u);
  EXPECT_EQ(Load(&h.tx(0)->posted), 0u);
  auto got = h.DrainTx(1);
  ASSERT_EQ(got.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(got[i].bytes, frames[i]);
    // Inside pair 1's tx part of the buffer area.
    EXPECT_GE(got[i].desc.offset, h.area(3));
    EXPECT_LE(got[i].desc.offset + got[i].desc.len, h.area(3) + h.area_bytes());
    EXPECT_EQ(got[i].desc.region, 0u);
  }
  EXPECT_EQ(got[1].desc.flags, NMX_PV_DESC_IPV4 | NMX_PV_DESC_TCP_CKSUM | NMX_PV_DESC_TSO);
  EXPECT_EQ(got[1].desc.l2_len, 14);
  EXPECT_EQ(got[1].desc.l3_len, 20);
  EXPECT_EQ(got[1].desc.l4_len, 32);
  EXPECT_EQ(got[1].desc.tso_segsz, 1448);
  EXPECT_EQ(got[1].desc.rss_hash, 0u);
  EXPECT_EQ(got[0].desc.flags, 0);
  // The host did not ask for kicks: none written.
  EXPECT_EQ(DrainEventFd(h.kick(2)), 0u);
}

TEST(PvGuestTx, FullRingThenReclaim) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  auto f = Pattern(100, 9);
  std::vector<nmx_pv_pkt> pkts(100, TxPkt(f));
  EXPECT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 100), 64);
  EXPECT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 100), 0);
  EXPECT_EQ(h.DrainTx(0, 10).size(), 10u);
  EXPECT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 100), 10);
  EXPECT_EQ(Load(&h.tx(0)->posted), 74u);
  // Outstanding buffers are never reused: every offset in flight is distinct.
  auto got = h.DrainTx(0);
  ASSERT_EQ(got.size(), 64u);
  std::vector<uint64_t> offs;
  for (auto& g : got) offs.push_back(g.desc.offset);
  std::sort(offs.begin(), offs.end());
  EXPECT_EQ(std::unique(offs.begin(), offs.end()), offs.end());
}

TEST(PvGuestTx, FreeSlotsFollowTheHost) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 0), 64u);
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 1), 0u);  // no such queue
  auto f = Pattern(100, 9);
  std::vector<nmx_pv_pkt> pkts(40, TxPkt(f));
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 40), 40);
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 0), 24u);
  h.DrainTx(0, 30);
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 0), 54u);
  Store(&h.tx(0)->done, Load(&h.tx(0)->done) + 11);  // one beyond posted
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 0), 0u);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_BROKEN);
}

TEST(PvGuestTx, TooLongOrEmptyFramesAreDroppedAndCounted) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  auto big = Pattern(257, 1), ok = Pattern(256, 2);
  nmx_pv_pkt pkts[4] = {TxPkt(big), TxPkt(ok), {}, TxPkt(ok)};
  EXPECT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts, 4), 4);
  auto got = h.DrainTx(0);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].bytes, ok);
  nmx_pv_queue_counters c;
  ASSERT_EQ(nmx_pv_queue_counters_get(d.get(), 0, &c), 0);
  EXPECT_EQ(c.tx_dropped, 2u);
}

TEST(PvGuestTx, KicksOnlyASleepingHost) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  auto f = Pattern(64, 1);
  nmx_pv_pkt p = TxPkt(f);
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, &p, 1), 1);
  EXPECT_EQ(DrainEventFd(h.kick(1)), 0u);
  Store(&h.tx(0)->host_flags, NMX_PV_HOST_NEEDS_KICK);
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, &p, 1), 1);
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, &p, 1), 1);
  EXPECT_EQ(DrainEventFd(h.kick(1)), 2u);
  // Nothing posted: no kick even when asked.
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, &p, 0), 0);
  EXPECT_EQ(DrainEventFd(h.kick(1)), 0u);
  nmx_pv_queue_counters c;
  nmx_pv_queue_counters_get(d.get(), 0, &c);
  EXPECT_EQ(c.tx_kicks, 2u);
}

TEST(PvGuestTx, IndexesWrapPast2To32) {
  FakeHost h;
  h.setup_start = 0xffffffe0u;  // 32 before the wrap
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  EXPECT_EQ(Load(&h.tx(0)->posted), 0xffffffe0u);
  uint32_t seq = 0;
  for (int round = 0; round < 10; ++round) {
    std::vector<std::vector<uint8_t>> frames;
    std::vector<nmx_pv_pkt> pkts;
    for (int i = 0; i < 50; ++i) frames.push_back(Pattern(60 + i, seq + i));
    for (auto& f : frames) pkts.push_back(TxPkt(f));
    ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 50), 50);
    auto got = h.DrainTx(0);
    ASSERT_EQ(got.size(), 50u);
    for (int i = 0; i < 50; ++i) EXPECT_EQ(got[i].bytes, frames[i]);
    seq += 50;
  }
  EXPECT_EQ(Load(&h.tx(0)->posted), 0xffffffe0u + 500u);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_OK);
}

TEST(PvGuestTx, DoneBeyondPostedBreaksTheDevice) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  auto f = Pattern(64, 1);
  std::vector<nmx_pv_pkt> pkts(5, TxPkt(f));
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 5), 5);
  Store(&h.tx(0)->done, 6u);  // one more than posted: a lie
  EXPECT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 5), 0);
  char why[160];
  EXPECT_EQ(nmx_pv_status(d.get(), why, sizeof why), NMX_PV_STATUS_BROKEN);
  EXPECT_STREQ(why, "tx queue 0: the host's done 6 is beyond posted 5 (last done 0)");
  // Broken stays broken: the rest of the data path stops too, nothing posted after the lie.
  Store(&h.tx(0)->done, 5u);
  EXPECT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 5), 0);
  nmx_pv_pkt rx[4];
  EXPECT_EQ(nmx_pv_rx_burst(d.get(), 0, rx, 4), 0);
  EXPECT_EQ(Load(&h.tx(0)->posted), 5u);
  EXPECT_LT(nmx_pv_wait(d.get(), 0, 10), 0);
}

TEST(PvGuestTx, DoneBackwardsBreaksTheDevice) {
  FakeHost h;
  h.setup_start = 1000;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  auto f = Pattern(64, 1);
  std::vector<nmx_pv_pkt> pkts(5, TxPkt(f));
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 5), 5);
  Store(&h.tx(0)->done, 999u);
  EXPECT_EQ(nmx_pv_tx_burst(d.get(), 0, pkts.data(), 5), 0);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_BROKEN);
}

// ---- rx ------------------------------------------------------------------------------------------

TEST(PvGuestRx, SetupPostsEveryBuffer) {
  FakeHost h({.qp = 2, .ring = 64, .buf = 256});
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  for (uint32_t q = 0; q < 2; ++q) {
    nmx_pv_ring* r = h.rx(q);
    EXPECT_EQ(Load(&r->posted), 64u);
    std::vector<uint64_t> offs;
    for (uint32_t i = 0; i < 64; ++i) {
      EXPECT_EQ(r->desc[i].len, 256u);
      EXPECT_EQ(r->desc[i].region, 0u);
      EXPECT_GE(r->desc[i].offset, h.area(2 * q));
      EXPECT_LE(r->desc[i].offset + 256, h.area(2 * q) + h.area_bytes());
      offs.push_back(r->desc[i].offset);
    }
    std::sort(offs.begin(), offs.end());
    EXPECT_EQ(std::unique(offs.begin(), offs.end()), offs.end());
  }
}

TEST(PvGuestRx, ReceivesThenGivesBack) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  std::vector<std::vector<uint8_t>> frames;
  for (uint32_t i = 0; i < 5; ++i) frames.push_back(Pattern(60 + i, i));
  ASSERT_EQ(h.FillRx(0, frames, NMX_PV_DESC_L4_GOOD | NMX_PV_DESC_RSS | NMX_PV_DESC_TSO, 0x1234, 5), 5u);
  nmx_pv_pkt pkts[8];
  ASSERT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts, 3), 3);
  ASSERT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts + 3, 8), 2);
  ASSERT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts + 5, 3), 0);
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(pkts[i].len, frames[i].size());
    EXPECT_EQ(std::memcmp(pkts[i].data, frames[i].data(), pkts[i].len), 0);
    EXPECT_EQ(pkts[i].flags, NMX_PV_DESC_L4_GOOD | NMX_PV_DESC_RSS);  // TSO is no rx result
    EXPECT_EQ(pkts[i].rss_hash, 0x1234u);
    EXPECT_EQ(pkts[i].mark, 5u);
  }
  // Held buffers are not reposted: posted stays at a ring's worth.
  EXPECT_EQ(Load(&h.rx(0)->posted), 64u);
  nmx_pv_rx_done(d.get(), 0, 2);
  EXPECT_EQ(Load(&h.rx(0)->posted), 66u);
  // The reposted descriptors are whole empty buffers again: the first two frames' buffers
  // (which still hold those frames).
  for (uint32_t i = 64; i < 66; ++i) {
    const nmx_pv_desc& desc = h.rx(0)->desc[i & h.mask()];
    EXPECT_EQ(desc.len, 256u);
    ASSERT_TRUE(h.InBufs(desc.offset, desc.len));
    EXPECT_EQ(std::memcmp(h.at(desc.offset), frames[i - 64].data(), frames[i - 64].size()), 0);
  }
  nmx_pv_rx_done(d.get(), 0, 100);  // clamped to the three held
  EXPECT_EQ(Load(&h.rx(0)->posted), 69u);
  nmx_pv_rx_done(d.get(), 0, 1);
  EXPECT_EQ(Load(&h.rx(0)->posted), 69u);
}

TEST(PvGuestRx, HoldingEveryBufferStopsTheHost) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  std::vector<std::vector<uint8_t>> frames(100, Pattern(64, 1));
  EXPECT_EQ(h.FillRx(0, frames), 64u);
  std::vector<nmx_pv_pkt> pkts(100);
  EXPECT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts.data(), 100), 64);
  EXPECT_EQ(h.FillRx(0, frames), 0u);
  nmx_pv_rx_done(d.get(), 0, 64);
  EXPECT_EQ(h.FillRx(0, frames), 64u);
}

TEST(PvGuestRx, LengthBeyondTheBufferIsClampedAndOffsetIgnored) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  ASSERT_EQ(h.FillRx(0, {Pattern(100, 1), Pattern(100, 2)}), 2u);
  nmx_pv_desc* d0 = &h.rx(0)->desc[0];
  d0->len = 0xfffffff0u;
  d0->offset = 0;  // the header: a host pointing the driver at anything
  h.rx(0)->desc[1].offset = ~uint64_t{0};
  nmx_pv_pkt pkts[2];
  ASSERT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts, 2), 2);
  EXPECT_EQ(pkts[0].len, 256u);
  EXPECT_EQ(std::memcmp(pkts[0].data, Pattern(100, 1).data(), 100), 0);  // its own buffer
  EXPECT_EQ(pkts[1].len, 100u);
  EXPECT_EQ(std::memcmp(pkts[1].data, Pattern(100, 2).data(), 100), 0);
  nmx_pv_queue_counters c;
  nmx_pv_queue_counters_get(d.get(), 0, &c);
  EXPECT_EQ(c.rx_len_clamped, 1u);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_OK);
}

TEST(PvGuestRx, DoneBeyondPostedBreaksTheDevice) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  Store(&h.rx(0)->done, 65u);
  nmx_pv_pkt pkts[4];
  EXPECT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts, 4), 0);
  char why[160];
  EXPECT_EQ(nmx_pv_status(d.get(), why, sizeof why), NMX_PV_STATUS_BROKEN);
  EXPECT_STREQ(why, "rx queue 0: the host's done 65 is beyond posted 64 (last done 0)");
}

TEST(PvGuestRx, IndexesWrapPast2To32) {
  FakeHost h;
  h.setup_start = 0xffffffc0u;  // one ring before the wrap
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  EXPECT_EQ(Load(&h.rx(0)->posted), 0u);  // 0xffffffc0 + 64
  uint32_t seq = 0;
  std::vector<nmx_pv_pkt> pkts(64);
  for (int round = 0; round < 12; ++round) {
    std::vector<std::vector<uint8_t>> frames;
    for (int i = 0; i < 40; ++i) frames.push_back(Pattern(60 + (seq + i) % 190, seq + i));
    ASSERT_EQ(h.FillRx(0, frames), 40u);
    ASSERT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts.data(), 64), 40);
    for (int i = 0; i < 40; ++i) {
      ASSERT_EQ(pkts[i].len, frames[i].size());
      EXPECT_EQ(std::memcmp(pkts[i].data, frames[i].data(), pkts[i].len), 0);
    }
    nmx_pv_rx_done(d.get(), 0, 40);
    seq += 40;
  }
  EXPECT_EQ(Load(&h.rx(0)->posted), 480u);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_OK);
  // And the lie check across the wrap: done 1 beyond posted.
  Store(&h.rx(0)->done, 481u);
  EXPECT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts.data(), 64), 0);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_BROKEN);
}

TEST(PvGuestRx, RepostKicksASleepingHost) {
  FakeHost h;
  h.setup_host_flags = NMX_PV_HOST_NEEDS_KICK;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  EXPECT_EQ(DrainEventFd(h.kick(1)), 1u);  // posting the rx ring at setup; tx posted nothing
  ASSERT_EQ(h.FillRx(0, {Pattern(64, 1)}), 1u);
  nmx_pv_pkt p;
  ASSERT_EQ(nmx_pv_rx_burst(d.get(), 0, &p, 1), 1);
  nmx_pv_rx_done(d.get(), 0, 1);
  EXPECT_EQ(DrainEventFd(h.kick(1)), 1u);
}

// ---- waiting ---------------------------------------------------------------------------------------

TEST(PvGuestWait, TimesOutAndClearsItsRequest) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  const auto t0 = Clock::now();
  EXPECT_EQ(nmx_pv_wait(d.get(), 0, 30), 0);
  EXPECT_GE(Clock::now() - t0, std::chrono::milliseconds(25));
  EXPECT_EQ(Load(&h.rx(0)->driver_flags), 0u);
  EXPECT_EQ(Load(&h.tx(0)->driver_flags), 0u);
}

TEST(PvGuestWait, WokenByTheHost) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  std::thread host([&] {
    // Fill only once the driver asked for an irq: the wake-up must come from the irq.
    while (!(Load(&h.rx(0)->driver_flags) & NMX_PV_DRIVER_WANTS_IRQ)) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    h.FillRx(0, {Pattern(64, 1)});
  });
  const auto t0 = Clock::now();
  EXPECT_GT(nmx_pv_wait(d.get(), 0, 5000), 0);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
  host.join();
  nmx_pv_pkt p;
  EXPECT_EQ(nmx_pv_rx_burst(d.get(), 0, &p, 1), 1);
  EXPECT_EQ(DrainEventFd(h.irq(1)), 0u);  // drained by wait
}

TEST(PvGuestWait, WorkAlreadyThereReturnsAtOnce) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  // Filled without an irq (no flag set): the re-check after arming sees it.
  h.FillRx(0, {Pattern(64, 1)});
  const auto t0 = Clock::now();
  EXPECT_GT(nmx_pv_wait(d.get(), 0, 5000), 0);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
  // Received but held: still work until rx_burst takes it.
  EXPECT_GT(nmx_pv_wait(d.get(), 0, 5000), 0);
  nmx_pv_pkt p;
  EXPECT_EQ(nmx_pv_rx_burst(d.get(), 0, &p, 1), 1);
  EXPECT_EQ(nmx_pv_wait(d.get(), 0, 1), 0);
  // Tx: finished buffers while some are outstanding.
  auto f = Pattern(64, 2);
  nmx_pv_pkt t = TxPkt(f);
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, &t, 1), 1);
  EXPECT_EQ(nmx_pv_wait(d.get(), 0, 1), 0);
  h.DrainTx(0);
  EXPECT_GT(nmx_pv_wait(d.get(), 0, 5000), 0);
}

TEST(PvGuestWait, ArmReportsWorkAndTheFd) {
  FakeHost h({.qp = 2});
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  EXPECT_EQ(nmx_pv_irq_arm(d.get(), 1), 0);
  EXPECT_EQ(Load(&h.rx(1)->driver_flags), NMX_PV_DRIVER_WANTS_IRQ);
  EXPECT_EQ(Load(&h.tx(1)->driver_flags), NMX_PV_DRIVER_WANTS_IRQ);
  EXPECT_EQ(Load(&h.rx(0)->driver_flags), 0u);
  h.FillRx(1, {Pattern(64, 1)});
  pollfd p{nmx_pv_irq_fd(d.get(), 1), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 1000), 1);
  nmx_pv_irq_disarm(d.get(), 1);
  EXPECT_EQ(Load(&h.rx(1)->driver_flags), 0u);
  EXPECT_EQ(::poll(&p, 1, 0), 0);  // drained
  EXPECT_EQ(nmx_pv_irq_arm(d.get(), 1), 1);
  nmx_pv_irq_disarm(d.get(), 1);
  EXPECT_EQ(nmx_pv_irq_fd(d.get(), 2), -1);
  EXPECT_EQ(nmx_pv_irq_arm(d.get(), 2), -EINVAL);
}

TEST(PvGuestWait, HostHangupEndsAWait) {
  FakeHost h;
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  h.StopServing();
  h.Hangup();
  EXPECT_EQ(nmx_pv_wait(d.get(), 0, 5000), -ENOTCONN);
}

// The data path with the host on another thread, as in real use: every frame once, in order.
TEST(PvGuestDataPath, TwoThreadsMoveFramesBothWays) {
  FakeHost h({.qp = 1, .ring = 64, .buf = 256});
  Dev d = Ready(h);
  ASSERT_TRUE(d);
  constexpr uint32_t kFrames = 20000;
  std::atomic<bool> host_done{false};
  std::thread host([&] {
    uint32_t got = 0, sent = 0;
    while (got < kFrames || sent < kFrames) {
      for (auto& f : h.DrainTx(0, 32)) {
        uint32_t seq;
        std::memcpy(&seq, f.bytes.data(), 4);
        EXPECT_EQ(seq, got);
        ++got;
      }
      std::vector<std::vector<uint8_t>> out;
      for (uint32_t i = 0; i < 32 && sent + i < kFrames; ++i) {
        auto fr = Pattern(60 + (sent + i) % 190, sent + i);
        const uint32_t seq = sent + i;
        std::memcpy(fr.data(), &seq, 4);
        out.push_back(fr);
      }
      sent += h.FillRx(0, out);
      std::this_thread::yield();
    }
    host_done = true;
  });
  uint32_t sent = 0, got = 0;
  std::vector<uint8_t> buf[32];
  std::vector<nmx_pv_pkt> pkts(32);
  while (got < kFrames || sent < kFrames) {
    uint16_t n = 0;
    for (; n < 32 && sent + n < kFrames; ++n) {
      buf[n] = Pattern(64, sent + n);
      const uint32_t seq = sent + n;
      std::memcpy(buf[n].data(), &seq, 4);
      pkts[n] = TxPkt(buf[n]);
    }
    sent += nmx_pv_tx_burst(d.get(), 0, pkts.data(), n);
    const uint16_t k = nmx_pv_rx_burst(d.get(), 0, pkts.data(), 32);
    for (uint16_t i = 0; i < k; ++i) {
      uint32_t seq;
      std::memcpy(&seq, pkts[i].data, 4);
      ASSERT_EQ(seq, got);
      ASSERT_EQ(pkts[i].len, 60 + got % 190);
      ++got;
    }
    nmx_pv_rx_done(d.get(), 0, k);
    if (k == 0) std::this_thread::yield();
  }
  host.join();
  EXPECT_TRUE(host_done);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_OK);
}

// ---- registered memory ------------------------------------------------------------------------

// The caller's memory: a memfd it maps and registers.
struct CallerMemory {
  explicit CallerMemory(uint64_t bytes) : size(bytes) {
    fd = ::memfd_create("pv-caller", MFD_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(bytes)), 0);
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    EXPECT_NE(p, MAP_FAILED);
    base = static_cast<uint8_t*>(p);
  }
  ~CallerMemory() {
    ::munmap(base, size);
    ::close(fd);
  }
  int fd = -1;
  uint64_t size;
  uint8_t* base;
};

TEST(PvGuestMem, AddFindDelete) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.Serve();
  EXPECT_EQ(nmx_pv_features(d.get()), NMX_PV_FEATURE_MEM_REGIONS);
  EXPECT_EQ(nmx_pv_max_mem_bytes(d.get()), 1ull << 30);
  CallerMemory a(1 << 20), b(65536);
  ASSERT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, a.size, a.base), 1) << nmx_pv_strerror(d.get());
  ASSERT_EQ(nmx_pv_mem_add(d.get(), b.fd, 4096, 8192, b.base + 4096), 2) << nmx_pv_strerror(d.get());
  auto seen = h.seen().mem_requests;
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].type, uint32_t{NMX_PV_SOCK_MEM_ADD});
  EXPECT_EQ(seen[1].id, 2u);
  EXPECT_EQ(seen[1].fd_offset, 4096u);
  EXPECT_EQ(seen[1].size, 8192u);
  EXPECT_EQ(seen[1].addr, reinterpret_cast<uint64_t>(b.base + 4096));
  EXPECT_NE(seen[0].seq, seen[1].seq);
  uint16_t region = 0;
  uint64_t off = 0;
  ASSERT_EQ(nmx_pv_mem_find(d.get(), a.base + 100, 50, &region, &off), 0);
  EXPECT_EQ(region, 1);
  EXPECT_EQ(off, 100u);
  ASSERT_EQ(nmx_pv_mem_find(d.get(), b.base + 4096 + 8192 - 10, 10, &region, &off), 0);  // the last bytes
  EXPECT_EQ(region, 2);
  EXPECT_EQ(off, 8182u);
  EXPECT_EQ(nmx_pv_mem_find(d.get(), b.base + 4096 + 8192 - 10, 11, &region, &off), -ENOENT);
  EXPECT_EQ(nmx_pv_mem_find(d.get(), b.base, 10, &region, &off), -ENOENT);  // before region 2
  EXPECT_EQ(nmx_pv_mem_find(d.get(), a.base + 100, ~uint64_t{0}, &region, &off), -ENOENT);
  ASSERT_EQ(nmx_pv_mem_del(d.get(), 1), 0) << nmx_pv_strerror(d.get());
  EXPECT_EQ(nmx_pv_mem_find(d.get(), a.base + 100, 50, &region, &off), -ENOENT);
  EXPECT_EQ(nmx_pv_mem_del(d.get(), 1), -ENOENT);
  EXPECT_EQ(nmx_pv_mem_del(d.get(), 0), -ENOENT);
  EXPECT_EQ(nmx_pv_mem_del(d.get(), 65), -ENOENT);
  // The lowest free id is taken again.
  EXPECT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, a.size, a.base), 1);
  EXPECT_EQ(nmx_pv_mem_add(d.get(), -1, 0, 10, nullptr), -EINVAL);
  EXPECT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, 0, nullptr), -EINVAL);
  EXPECT_EQ(h.seen().mem_requests.size(), 4u);  // the local refusals sent nothing
}

TEST(PvGuestMem, AllIdsTaken) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.Serve();
  CallerMemory a(4096);
  for (int id = 1; id <= static_cast<int>(NMX_PV_MAX_MEM_REGIONS); ++id) {
    ASSERT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, 4096, nullptr), id);
  }
  EXPECT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, 4096, nullptr), -ENOSPC);
  EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find("all 64 region ids are registered"), std::string::npos);
}

TEST(PvGuestMem, NotOffered) {
  FakeHost h({.mem = false});
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  CallerMemory a(4096);
  EXPECT_EQ(nmx_pv_max_mem_bytes(d.get()), 0u);
  EXPECT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, 4096, a.base), -ENOTSUP);
  EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find("does not offer registered memory"), std::string::npos);
}

TEST(PvGuestMem, RefusalCarriesTheHostsReason) {
  FakeHost h;
  h.mem_handler = [](const nmx_pv_sock_req&, size_t nfds, nmx_pv_sock_resp* r) {
    EXPECT_EQ(nfds, 1u);
    r->status = -ENOSPC;
    std::snprintf(r->reason, sizeof r->reason, "MEM_ADD: over max_memory=1M\x01");
    return true;
  };
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.Serve();
  CallerMemory a(1 << 21);
  EXPECT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, a.size, a.base), -ENOSPC);
  EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find("MEM_ADD refused by the host: MEM_ADD: over max_memory=1M?"),
            std::string::npos)
      << nmx_pv_strerror(d.get());
  uint16_t region;
  uint64_t off;
  EXPECT_EQ(nmx_pv_mem_find(d.get(), a.base, 1, &region, &off), -ENOENT);  // not recorded
}

// Whatever the host answers on the socket, the library neither hangs nor believes it.
TEST(PvGuestMem, LyingAnswers) {
  struct Case {
    const char* name;
    std::function<bool(const nmx_pv_sock_req&, nmx_pv_sock_resp*)> lie;
    int rc;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"another id", [](const nmx_pv_sock_req&, nmx_pv_sock_resp* r) { r->id = 9; return true; }, -EPROTO,
       "the host answered type 1 for region 9"},
      {"another type", [](const nmx_pv_sock_req&, nmx_pv_sock_resp* r) { r->type = 2; return true; }, -EPROTO,
       "the host answered type 2"},
      {"a positive status", [](const nmx_pv_sock_req&, nmx_pv_sock_resp* r) { r->status = 5; return true; }, -EPROTO,
       "status 5"},
      {"a huge errno", [](const nmx_pv_sock_req&, nmx_pv_sock_resp* r) { r->status = -100000; return true; }, -EPROTO,
       "status -100000"},
      {"no answer", [](const nmx_pv_sock_req&, nmx_pv_sock_resp*) { return false; }, -ETIMEDOUT,
       "MEM_ADD (seq 1): no answer from the host within 200 ms"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FakeHost h;
    h.mem_handler = [&](const nmx_pv_sock_req& req, size_t, nmx_pv_sock_resp* r) { return c.lie(req, r); };
    Dev d = OpenOk(h);
    ASSERT_TRUE(d);
    nmx_pv_set_timeout(d.get(), 200);
    h.Serve();
    CallerMemory a(4096);
    EXPECT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, 4096, a.base), c.rc);
    EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find(c.says), std::string::npos) << nmx_pv_strerror(d.get());
    uint16_t region;
    uint64_t off;
    EXPECT_EQ(nmx_pv_mem_find(d.get(), a.base, 1, &region, &off), -ENOENT);
  }
}

// An answer to a request that timed out comes late: the next call skips it. Answers may come in
// pieces, and with fds, which the library never takes.
TEST(PvGuestMem, LateAnswersPiecesAndFds) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  nmx_pv_set_timeout(d.get(), 100);
  CallerMemory a(4096);
  // Nobody serves: the first request times out.
  EXPECT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, 4096, a.base), -ETIMEDOUT);
  // Its answer comes now, then the second's in two pieces with an fd.
  std::thread host([&] {
    nmx_pv_sock_req req[2];
    for (auto& r : req) {
      pollfd p{h.peer(), POLLIN, 0};
      ASSERT_EQ(::poll(&p, 1, 5000), 1);
      char control[CMSG_SPACE(sizeof(int))];
      iovec iov{&r, sizeof r};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      ASSERT_EQ(::recvmsg(h.peer(), &mh, MSG_CMSG_CLOEXEC), static_cast<ssize_t>(sizeof r));
      if (cmsghdr* c = CMSG_FIRSTHDR(&mh)) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
        ::close(fd);
      }
    }
    EXPECT_EQ(req[1].seq, req[0].seq + 1);
    nmx_pv_sock_resp late{};
    late.type = NMX_PV_SOCK_MEM_ADD;
    late.seq = req[0].seq;
    late.id = req[0].id;
    late.status = -EIO;  // would fail the call if taken as its answer
    ASSERT_EQ(::send(h.peer(), &late, sizeof late, 0), static_cast<ssize_t>(sizeof late));
    nmx_pv_sock_resp ok{};
    ok.type = NMX_PV_SOCK_MEM_ADD;
    ok.seq = req[1].seq;
    ok.id = req[1].id;
    const int efd = ::eventfd(0, EFD_CLOEXEC);
    char control[CMSG_SPACE(sizeof(int))] = {};
    iovec iov{&ok, 10};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = control;
    mh.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &efd, sizeof efd);
    ASSERT_EQ(::sendmsg(h.peer(), &mh, 0), 10);
    ::close(efd);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ASSERT_EQ(::send(h.peer(), reinterpret_cast<char*>(&ok) + 10, sizeof ok - 10, 0),
              static_cast<ssize_t>(sizeof ok - 10));
  });
  nmx_pv_set_timeout(d.get(), 5000);
  const int fds_before = CountFds();
  EXPECT_EQ(nmx_pv_mem_add(d.get(), a.fd, 0, 4096, a.base), 1) << nmx_pv_strerror(d.get());
  host.join();
  EXPECT_EQ(CountFds(), fds_before);  // the host's eventfd was not taken
}

TEST(PvGuestMem, HostHangsUp) {
  FakeHost h;
  Dev d = OpenOk(h);
  ASSERT_TRUE(d);
  h.Hangup();
  CallerMemory a(4096);
  const auto t0 = Clock::now();
  const int rc = nmx_pv_mem_add(d.get(), a.fd, 0, 4096, a.base);
  EXPECT_TRUE(rc == -ENOTCONN || rc == -EPIPE) << rc;
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(1));
}

// ---- zero copy ----------------------------------------------------------------------------------

// An opened device with region 1 registered (mem), queue pair 0 set up with flags both ways,
// started.
Dev ReadyZc(FakeHost& h, CallerMemory& mem, uint32_t rx_flags = NMX_PV_QUEUE_ZEROCOPY,
            uint32_t tx_flags = NMX_PV_QUEUE_ZEROCOPY) {
  Dev d = OpenOk(h);
  if (!d) return d;
  h.Serve();
  EXPECT_EQ(nmx_pv_mem_add(d.get(), mem.fd, 0, mem.size, mem.base), 1) << nmx_pv_strerror(d.get());
  struct nmx_pv_configure c{};
  c.nb_rx_queues = c.nb_tx_queues = 1;
  EXPECT_EQ(nmx_pv_configure(d.get(), &c), 0);
  EXPECT_EQ(nmx_pv_queue_setup_ex(d.get(), 0, NMX_PV_QUEUE_RX, rx_flags), 0) << nmx_pv_strerror(d.get());
  EXPECT_EQ(nmx_pv_queue_setup_ex(d.get(), 0, NMX_PV_QUEUE_TX, tx_flags), 0) << nmx_pv_strerror(d.get());
  EXPECT_EQ(nmx_pv_start(d.get()), 0);
  return d;
}

nmx_pv_buf Buf(uint64_t offset, uint32_t len, uintptr_t cookie, uint16_t region = 1) {
  nmx_pv_buf b{};
  b.offset = offset;
  b.len = len;
  b.region = region;
  b.cookie = reinterpret_cast<void*>(cookie);
  return b;
}

void* Cookie(uintptr_t c) { return reinterpret_cast<void*>(c); }

TEST(PvGuestZc, TxPostsTheCallersBuffersAndHandsBackCookies) {
  FakeHost h;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  std::vector<std::vector<uint8_t>> frames = {Pattern(60, 1), Pattern(1500, 2), Pattern(64, 3)};
  nmx_pv_buf bufs[3] = {Buf(0, 60, 101), Buf(8192, 1500, 102), Buf(mem.size - 64, 64, 103)};
  for (int i = 0; i < 3; ++i) std::memcpy(mem.base + bufs[i].offset, frames[i].data(), frames[i].size());
  bufs[1].flags = NMX_PV_DESC_IPV4 | NMX_PV_DESC_TCP_CKSUM | NMX_PV_DESC_RSS;  // RSS: not a request
  bufs[1].l2_len = 14;
  bufs[1].l3_len = 20;
  ASSERT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, bufs, 2), 2);
  // A copied frame between them: no cookie of its own.
  auto copied = Pattern(100, 4);
  nmx_pv_pkt p = TxPkt(copied);
  ASSERT_EQ(nmx_pv_tx_burst(d.get(), 0, &p, 1), 1);
  ASSERT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, bufs + 2, 1), 1);
  void* cookies[8];
  EXPECT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, cookies, 8), 0);  // the host is not done
  auto got = h.DrainTx(0);
  ASSERT_EQ(got.size(), 4u);
  EXPECT_EQ(got[0].desc.region, 1u);
  EXPECT_EQ(got[0].desc.offset, 0u);
  EXPECT_EQ(got[0].bytes, frames[0]);
  EXPECT_EQ(got[1].bytes, frames[1]);
  EXPECT_EQ(got[1].desc.flags, NMX_PV_DESC_IPV4 | NMX_PV_DESC_TCP_CKSUM);
  EXPECT_EQ(got[1].desc.l2_len, 14);
  EXPECT_EQ(got[2].desc.region, 0u);
  EXPECT_EQ(got[2].bytes, copied);
  EXPECT_EQ(got[3].desc.offset, mem.size - 64);
  EXPECT_EQ(got[3].bytes, frames[2]);
  EXPECT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, cookies, 2), 2);
  EXPECT_EQ(cookies[0], Cookie(101));
  EXPECT_EQ(cookies[1], Cookie(102));
  EXPECT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, cookies, 8), 1);
  EXPECT_EQ(cookies[0], Cookie(103));
  EXPECT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, cookies, 8), 0);
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 0), 64u);
}

TEST(PvGuestZc, SlotsAreFreeOnlyOnceTheirCookiesAreBack) {
  FakeHost h;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  std::vector<nmx_pv_buf> bufs;
  for (uintptr_t i = 0; i < 100; ++i) bufs.push_back(Buf(i * 2048, 60, 1000 + i));
  EXPECT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, bufs.data(), 100), 64);
  EXPECT_EQ(h.DrainTx(0).size(), 64u);
  // Done, but the caller has not taken the cookies: the slots are still its buffers'.
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 0), 0u);
  EXPECT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, bufs.data() + 64, 36), 0);
  auto copied = Pattern(60, 1);
  nmx_pv_pkt p = TxPkt(copied);
  EXPECT_EQ(nmx_pv_tx_burst(d.get(), 0, &p, 1), 0);
  void* cookies[64];
  ASSERT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, cookies, 10), 10);
  for (uintptr_t i = 0; i < 10; ++i) EXPECT_EQ(cookies[i], Cookie(1000 + i));
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 0), 10u);
  EXPECT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, bufs.data() + 64, 36), 10);
  ASSERT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, cookies, 64), 54);
  EXPECT_EQ(cookies[53], Cookie(1063));
}

TEST(PvGuestZc, TxTakesOnlyBuffersInsideRegisteredMemory) {
  FakeHost h;
  CallerMemory mem(65536);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  const nmx_pv_buf bad[] = {
      Buf(0, 60, 1, 2),                  // region 2: not registered
      Buf(0, 60, 1, 0),                  // region 0: the device's area is not the caller's to name
      Buf(0, 60, 1, 65),                 // past the table
      Buf(65536 - 59, 60, 1),            // past the end by one
      Buf(~uint64_t{0} - 10, 60, 1),     // wraps
      Buf(100, 0, 1),                    // empty
  };
  for (const nmx_pv_buf& b : bad) {
    const nmx_pv_buf two[2] = {Buf(0, 60, 7), b};
    EXPECT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, two, 2), 1) << b.region << " " << b.offset << " " << b.len;
  }
  EXPECT_EQ(h.DrainTx(0).size(), 6u);
  void* cookies[8];
  EXPECT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, cookies, 8), 6);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_OK);
}

TEST(PvGuestZc, RxPostsTheCallersBuffersAndReturnsThemFilled) {
  FakeHost h;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  // Nothing posted at setup: the caller's buffers only.
  EXPECT_EQ(Load(&h.rx(0)->posted), 0u);
  EXPECT_EQ(nmx_pv_zc_rx_room(d.get(), 0), 64u);
  nmx_pv_pkt pkts[8];
  EXPECT_EQ(nmx_pv_rx_burst(d.get(), 0, pkts, 8), 0);  // not the copy calls
  const nmx_pv_buf bufs[3] = {Buf(0, 2048, 201), Buf(4096, 2048, 202), Buf(8192, 100, 203)};
  ASSERT_EQ(nmx_pv_zc_rx_post(d.get(), 0, bufs, 3), 3);
  EXPECT_EQ(Load(&h.rx(0)->posted), 3u);
  EXPECT_EQ(nmx_pv_zc_rx_room(d.get(), 0), 61u);
  EXPECT_EQ(h.rx(0)->desc[1].region, 1u);
  EXPECT_EQ(h.rx(0)->desc[1].offset, 4096u);
  EXPECT_EQ(h.rx(0)->desc[1].len, 2048u);
  std::vector<std::vector<uint8_t>> frames = {Pattern(1500, 1), Pattern(60, 2), Pattern(100, 3)};
  ASSERT_EQ(h.FillRx(0, frames, NMX_PV_DESC_L4_GOOD | NMX_PV_DESC_TSO, 0x55, 6), 3u);
  // The host lies: a length beyond the buffer, an offset elsewhere.
  h.rx(0)->desc[2].len = 5000;
  h.rx(0)->desc[1].offset = 0;
  ASSERT_EQ(nmx_pv_zc_rx_burst(d.get(), 0, pkts, 2), 2);
  ASSERT_EQ(nmx_pv_zc_rx_burst(d.get(), 0, pkts + 2, 8), 1);
  EXPECT_EQ(nmx_pv_zc_rx_burst(d.get(), 0, pkts + 3, 8), 0);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(pkts[i].cookie, Cookie(201 + i));
    EXPECT_EQ(pkts[i].data, mem.base + bufs[i].offset);  // from the library's record
    EXPECT_EQ(pkts[i].flags, NMX_PV_DESC_L4_GOOD);
    EXPECT_EQ(pkts[i].rss_hash, 0x55u);
    EXPECT_EQ(pkts[i].mark, 6u);
  }
  EXPECT_EQ(pkts[0].len, 1500u);
  EXPECT_EQ(std::memcmp(pkts[0].data, frames[0].data(), 1500), 0);
  EXPECT_EQ(pkts[1].len, 60u);
  EXPECT_EQ(pkts[2].len, 100u);  // clamped to the buffer posted
  nmx_pv_queue_counters c;
  nmx_pv_queue_counters_get(d.get(), 0, &c);
  EXPECT_EQ(c.rx_len_clamped, 1u);
  EXPECT_EQ(nmx_pv_zc_rx_room(d.get(), 0), 64u);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_OK);
}

TEST(PvGuestZc, RxRefusesBuffersOutsideRegisteredMemoryAndAFullRing) {
  FakeHost h;
  h.setup_host_flags = NMX_PV_HOST_NEEDS_KICK;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  DrainEventFd(h.kick(1));
  const nmx_pv_buf some[3] = {Buf(0, 2048, 1), Buf((1 << 20) - 2047, 2048, 2), Buf(0, 2048, 3)};
  EXPECT_EQ(nmx_pv_zc_rx_post(d.get(), 0, some, 3), 1);
  EXPECT_EQ(DrainEventFd(h.kick(1)), 1u);  // the host sleeps: kicked
  std::vector<nmx_pv_buf> many;
  for (uintptr_t i = 0; i < 70; ++i) many.push_back(Buf(i * 2048, 2048, 10 + i));
  EXPECT_EQ(nmx_pv_zc_rx_post(d.get(), 0, many.data(), 70), 63);
  EXPECT_EQ(nmx_pv_zc_rx_room(d.get(), 0), 0u);
  EXPECT_EQ(nmx_pv_zc_rx_post(d.get(), 0, many.data(), 1), 0);
  // done beyond posted breaks the device.
  Store(&h.rx(0)->done, 65u);
  nmx_pv_pkt pkts[4];
  EXPECT_EQ(nmx_pv_zc_rx_burst(d.get(), 0, pkts, 4), 0);
  char why[160];
  EXPECT_EQ(nmx_pv_status(d.get(), why, sizeof why), NMX_PV_STATUS_BROKEN);
  EXPECT_STREQ(why, "rx queue 0: the host's done 65 is beyond posted 64 (last done 0)");
}

// The caller's buffers come back when a queue is released or the device reconfigured, each
// once, before the queue can be set up again.
TEST(PvGuestZc, TakeBackAfterReleaseOrConfigure) {
  FakeHost h;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  std::vector<nmx_pv_buf> rx, tx;
  for (uintptr_t i = 0; i < 10; ++i) rx.push_back(Buf(i * 2048, 2048, 300 + i));
  for (uintptr_t i = 0; i < 5; ++i) tx.push_back(Buf(65536 + i * 2048, 60, 400 + i));
  ASSERT_EQ(nmx_pv_zc_rx_post(d.get(), 0, rx.data(), 10), 10);
  ASSERT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, tx.data(), 5), 5);
  ASSERT_EQ(h.FillRx(0, {Pattern(60, 1), Pattern(60, 2)}), 2u);  // two filled, not received
  h.DrainTx(0, 2);
  nmx_pv_pkt p;
  ASSERT_EQ(nmx_pv_zc_rx_burst(d.get(), 0, &p, 1), 1);  // one received: the caller's already
  void* cookies[16];
  EXPECT_EQ(nmx_pv_queue_take_back(d.get(), 0, NMX_PV_QUEUE_RX, cookies, 16), -EBUSY);
  ASSERT_EQ(nmx_pv_stop(d.get()), 0);
  ASSERT_EQ(nmx_pv_queue_release(d.get(), 0, NMX_PV_QUEUE_RX), 0);
  EXPECT_EQ(nmx_pv_queue_setup_ex(d.get(), 0, NMX_PV_QUEUE_RX, NMX_PV_QUEUE_ZEROCOPY), -EBUSY);
  EXPECT_NE(std::string(nmx_pv_strerror(d.get())).find("still holds 9 buffers"), std::string::npos);
  ASSERT_EQ(nmx_pv_queue_take_back(d.get(), 0, NMX_PV_QUEUE_RX, cookies, 4), 4);
  ASSERT_EQ(nmx_pv_queue_take_back(d.get(), 0, NMX_PV_QUEUE_RX, cookies + 4, 16), 5);
  EXPECT_EQ(nmx_pv_queue_take_back(d.get(), 0, NMX_PV_QUEUE_RX, cookies, 16), 0);
  for (uintptr_t i = 0; i < 9; ++i) EXPECT_EQ(cookies[i], Cookie(301 + i));
  ASSERT_EQ(nmx_pv_queue_setup_ex(d.get(), 0, NMX_PV_QUEUE_RX, NMX_PV_QUEUE_ZEROCOPY), 0);
  EXPECT_EQ(nmx_pv_zc_rx_room(d.get(), 0), 64u);
  // CONFIGURE forgets the tx queue: its five (two done, three not) come back.
  struct nmx_pv_configure c{};
  c.nb_rx_queues = c.nb_tx_queues = 1;
  ASSERT_EQ(nmx_pv_configure(d.get(), &c), 0);
  EXPECT_EQ(nmx_pv_queue_setup(d.get(), 0, NMX_PV_QUEUE_TX), -EBUSY);  // copy mode too: take back first
  ASSERT_EQ(nmx_pv_queue_take_back(d.get(), 0, NMX_PV_QUEUE_TX, cookies, 16), 5);
  for (uintptr_t i = 0; i < 5; ++i) EXPECT_EQ(cookies[i], Cookie(400 + i));
  ASSERT_EQ(nmx_pv_queue_setup(d.get(), 0, NMX_PV_QUEUE_TX), 0);
  EXPECT_EQ(nmx_pv_queue_take_back(d.get(), 0, NMX_PV_QUEUE_TX, cookies, 16), -EBUSY);
  EXPECT_EQ(nmx_pv_queue_take_back(d.get(), 1, NMX_PV_QUEUE_TX, cookies, 16), -EINVAL);
}

// A broken device's queues give their buffers back without a release (nothing will use them).
TEST(PvGuestZc, TakeBackFromABrokenDevice) {
  FakeHost h;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  const nmx_pv_buf b[2] = {Buf(0, 2048, 1), Buf(2048, 2048, 2)};
  ASSERT_EQ(nmx_pv_zc_rx_post(d.get(), 0, b, 2), 2);
  Store(&h.hdr()->status, NMX_PV_STATUS_BROKEN);
  void* cookies[4];
  ASSERT_EQ(nmx_pv_queue_take_back(d.get(), 0, NMX_PV_QUEUE_RX, cookies, 4), 2);
  EXPECT_EQ(cookies[1], Cookie(2));
  nmx_pv_pkt p;
  EXPECT_EQ(nmx_pv_zc_rx_burst(d.get(), 0, &p, 1), 0);  // the queue is off
}

// Zero-copy calls on copy queues do nothing; copy queues work on beside zero-copy ones.
TEST(PvGuestZc, ModesDoNotMix) {
  FakeHost h;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem, 0, 0);
  ASSERT_TRUE(d);
  const nmx_pv_buf b = Buf(0, 60, 1);
  EXPECT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, &b, 1), 0);
  EXPECT_EQ(nmx_pv_zc_rx_post(d.get(), 0, &b, 1), 0);
  EXPECT_EQ(nmx_pv_zc_rx_room(d.get(), 0), 0u);
  void* c;
  EXPECT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, &c, 1), 0);
  nmx_pv_pkt p;
  EXPECT_EQ(nmx_pv_zc_rx_burst(d.get(), 0, &p, 1), 0);
  EXPECT_EQ(Load(&h.rx(0)->posted), 64u);  // the copy rx queue posted its own buffers
  EXPECT_EQ(nmx_pv_queue_setup_ex(d.get(), 0, NMX_PV_QUEUE_RX, 2), -EINVAL);
}

TEST(PvGuestZc, IndexesWrapPast2To32) {
  FakeHost h;
  h.setup_start = 0xffffffe0u;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  uintptr_t next_rx = 1, next_tx = 1, want_rx = 1, want_tx = 1;
  std::vector<nmx_pv_pkt> pkts(64);
  std::vector<void*> cookies(64);
  for (int round = 0; round < 10; ++round) {
    std::vector<nmx_pv_buf> rx, tx;
    for (uint32_t room = nmx_pv_zc_rx_room(d.get(), 0); rx.size() < room; ++next_rx) {
      rx.push_back(Buf((next_rx % 256) * 2048, 2048, next_rx));
    }
    ASSERT_EQ(nmx_pv_zc_rx_post(d.get(), 0, rx.data(), static_cast<uint16_t>(rx.size())), rx.size());
    for (int i = 0; i < 40; ++i, ++next_tx) tx.push_back(Buf(524288 + (next_tx % 200) * 1024, 60, next_tx));
    ASSERT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, tx.data(), 40), 40);
    ASSERT_EQ(h.DrainTx(0).size(), 40u);
    ASSERT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, cookies.data(), 64), 40);
    for (int i = 0; i < 40; ++i) ASSERT_EQ(cookies[i], Cookie(want_tx++));
    std::vector<std::vector<uint8_t>> frames(40, Pattern(60, 1));
    ASSERT_EQ(h.FillRx(0, frames), 40u);
    ASSERT_EQ(nmx_pv_zc_rx_burst(d.get(), 0, pkts.data(), 64), 40);
    for (int i = 0; i < 40; ++i) ASSERT_EQ(pkts[i].cookie, Cookie(want_rx++));
  }
  EXPECT_EQ(Load(&h.tx(0)->posted), 0xffffffe0u + 400u);
  EXPECT_EQ(nmx_pv_status(d.get(), nullptr, 0), NMX_PV_STATUS_OK);
}

// The pair's wait sees cookies to hand back as work.
TEST(PvGuestZc, WaitSeesFinishedBuffers) {
  FakeHost h;
  CallerMemory mem(1 << 20);
  Dev d = ReadyZc(h, mem);
  ASSERT_TRUE(d);
  const nmx_pv_buf b = Buf(0, 60, 1);
  ASSERT_EQ(nmx_pv_zc_tx_burst(d.get(), 0, &b, 1), 1);
  EXPECT_EQ(nmx_pv_wait(d.get(), 0, 0), 0);
  h.DrainTx(0);
  EXPECT_EQ(nmx_pv_wait(d.get(), 0, 0), 1);
  EXPECT_EQ(nmx_pv_tx_free(d.get(), 0), 63u);  // checked done, cookie not taken
  EXPECT_EQ(nmx_pv_wait(d.get(), 0, 0), 1);
  void* c;
  ASSERT_EQ(nmx_pv_zc_tx_reclaim(d.get(), 0, &c, 1), 1);
  EXPECT_EQ(nmx_pv_wait(d.get(), 0, 0), 0);
}

}  // namespace
