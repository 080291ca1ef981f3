// RawPvDriver: a pvdev driver written straight on the ABI (src/pv/pv_abi.h), for the host's
// unit tests and fuzz target: it connects, maps the region and can then follow the protocol
// (Call, Start, PostTx, PostRx) or break any rule by writing the shared memory directly. The
// host runs on `loop` in the same thread: every wait turns the loop.
#pragma once

#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/unique_fd.h"
#include "base/unix_socket.h"
#include "pv/pv_abi.h"

namespace nicmux::testing {

class RawPvDriver {
 public:
  explicit RawPvDriver(EventLoop* loop) : loop(loop) {}
  ~RawPvDriver() {
    if (base) ::munmap(base, size);
  }
  RawPvDriver(const RawPvDriver&) = delete;
  RawPvDriver& operator=(const RawPvDriver&) = delete;

  EventLoop* loop;
  UniqueFd sock, memfd;
  std::vector<UniqueFd> bells;  // kick, irq per doorbell
  std::byte* base = nullptr;
  size_t size = 0;
  uint32_t seq = 0;

  nmx_pv_header* h() const { return reinterpret_cast<nmx_pv_header*>(base); }
  nmx_pv_ctrl* c() const { return reinterpret_cast<nmx_pv_ctrl*>(base + h()->ctrl_offset); }
  nmx_pv_ring* ring(uint32_t i) const {
    return reinterpret_cast<nmx_pv_ring*>(base + h()->rings_offset + i * h()->ring_stride);
  }
  nmx_pv_ring* rx(uint32_t q) const { return ring(2 * q); }
  nmx_pv_ring* tx(uint32_t q) const { return ring(2 * q + 1); }
  uint64_t buf(uint32_t i) const { return h()->bufs_offset + uint64_t{i} * h()->buf_size; }

  // Connects and takes the hello; "" on success, else what went wrong.
  std::string Connect(const std::string& path) {
    auto addr = UnixAddr(path);
    if (!addr) return addr.error().message();
    sock = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) != 0) return "connect failed";
    nmx_pv_hello hello{};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 64)];
    for (int i = 0; i < 100 && !memfd.valid(); ++i) {
      loop->RunOnce(10);
      iovec iov{&hello, sizeof hello};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = control;
      mh.msg_controllen = sizeof control;
      const ssize_t n = ::recvmsg(sock.get(), &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0 && errno == EAGAIN) continue;
      if (n != static_cast<ssize_t>(sizeof hello)) return "short hello";
      cmsghdr* cm = CMSG_FIRSTHDR(&mh);
      if (!cm) return "no fds";
      const size_t nfds = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      std::vector<int> fds(nfds);
      std::memcpy(fds.data(), CMSG_DATA(cm), nfds * sizeof(int));
      if (nfds < 1) return "no fds";
      memfd = UniqueFd(fds[0]);
      for (size_t k = 1; k < nfds; ++k) bells.emplace_back(fds[k]);
      if (nfds != 1 + 2 * size_t{hello.num_doorbells}) return "fd count";
    }
    if (!memfd.valid()) return "no hello";
    if (hello.magic != NMX_PV_MAGIC) return "magic";
    size = hello.region_size;
    void* m = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd.get(), 0);
    if (m == MAP_FAILED) return "mmap";
    base = static_cast<std::byte*>(m);
    return "";
  }

  void Kick(uint32_t doorbell) {
    uint64_t one = 1;
    (void)!::write(bells[2 * doorbell].get(), &one, 8);
  }

  // A control request; the answer (resp.seq != the request's when none came).
  nmx_pv_msg Call(uint16_t type, const void* payload = nullptr, uint16_t len = 0) {
    nmx_pv_ctrl* ctl = c();
    ctl->req.type = type;
    ctl->req.len = len;
    ctl->req.seq = ++seq;
    if (len) std::memcpy(ctl->req.payload, payload, len);
    __atomic_store_n(&ctl->req_seq, seq, __ATOMIC_RELEASE);
    Kick(0);
    for (int i = 0; i < 200 && __atomic_load_n(&ctl->resp_seq, __ATOMIC_ACQUIRE) != seq; ++i) loop->RunOnce(i ? 5 : 0);
    return ctl->resp;
  }
  // A request whose len says anything (the payload area keeps what it holds).
  nmx_pv_msg CallWithLen(uint16_t type, uint16_t len) {
    nmx_pv_ctrl* ctl = c();
    ctl->req.type = type;
    ctl->req.len = len;
    ctl->req.seq = ++seq;
    __atomic_store_n(&ctl->req_seq, seq, __ATOMIC_RELEASE);
    Kick(0);
    for (int i = 0; i < 200 && __atomic_load_n(&ctl->resp_seq, __ATOMIC_ACQUIRE) != seq; ++i) loop->RunOnce(i ? 5 : 0);
    return ctl->resp;
  }
  template <typename T>
  nmx_pv_msg Call(uint16_t type, const T& payload) {
    return Call(type, &payload, sizeof payload);
  }

  // CONFIGURE, QUEUE_SETUP of every queue both ways, START; "" or the host's reason.
  std::string Start(uint32_t queues = 1, uint64_t tx_offloads = 0) {
    struct nmx_pv_configure cfg{};
    cfg.nb_rx_queues = cfg.nb_tx_queues = queues;
    cfg.tx_offloads = tx_offloads;
    nmx_pv_msg r = Call(NMX_PV_MSG_CONFIGURE, cfg);
    if (r.status != 0) return r.reason;
    for (uint32_t q = 0; q < queues; ++q) {
      for (uint32_t dir : {NMX_PV_QUEUE_RX, NMX_PV_QUEUE_TX}) {
        r = Call(NMX_PV_MSG_QUEUE_SETUP, nmx_pv_queue_req{q, dir});
        if (r.status != 0) return r.reason;
      }
    }
    r = Call(NMX_PV_MSG_START);
    return r.status == 0 ? "" : r.reason;
  }

  // ---- the socket's memory requests (MEM_ADD, MEM_DEL) --------------------------------------
  // Sends req with fds (any number) in one sendmsg, or its first `first` bytes with the fds and
  // the rest in a second send. false when the socket did not take it (full).
  bool SockSend(const nmx_pv_sock_req& req, const std::vector<int>& fds = {}, size_t first = sizeof(nmx_pv_sock_req)) {
    const auto* bytes = reinterpret_cast<const char*>(&req);
    iovec iov{const_cast<char*>(bytes), first};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * (fds.empty() ? 1 : fds.size())));
    if (!fds.empty()) {
      mh.msg_control = control.data();
      mh.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    if (::sendmsg(sock.get(), &mh, MSG_DONTWAIT | MSG_NOSIGNAL) != static_cast<ssize_t>(first)) return false;
    if (first < sizeof req) {
      loop->RunOnce(0);  // the host reads the first piece alone
      const size_t rest = sizeof req - first;
      if (::send(sock.get(), bytes + first, rest, MSG_DONTWAIT | MSG_NOSIGNAL) != static_cast<ssize_t>(rest)) {
        return false;
      }
    }
    return true;
  }
  // The next answer on the socket (turning the loop until it comes); status 1 when none came.
  nmx_pv_sock_resp SockAnswer() {
    nmx_pv_sock_resp r{};
    size_t got = 0;
    for (int i = 0; i < 200 && got < sizeof r; ++i) {
      loop->RunOnce(i ? 5 : 0);
      const ssize_t n = ::recv(sock.get(), reinterpret_cast<char*>(&r) + got, sizeof r - got, MSG_DONTWAIT);
      if (n > 0) got += static_cast<size_t>(n);
      if (n == 0) break;
    }
    if (got < sizeof r) r.status = 1;
    return r;
  }
  nmx_pv_sock_resp MemAdd(uint32_t id, int fd, uint64_t fd_offset, uint64_t size, uint64_t addr = 0) {
    nmx_pv_sock_req req{};
    req.type = NMX_PV_SOCK_MEM_ADD;
    req.seq = ++sock_seq;
    req.id = id;
    req.fd_offset = fd_offset;
    req.size = size;
    req.addr = addr;
    if (!SockSend(req, {fd})) return {};
    return SockAnswer();
  }
  nmx_pv_sock_resp MemDel(uint32_t id) {
    nmx_pv_sock_req req{};
    req.type = NMX_PV_SOCK_MEM_DEL;
    req.seq = ++sock_seq;
    req.id = id;
    if (!SockSend(req)) return {};
    return SockAnswer();
  }
  uint32_t sock_seq = 0;

  // Posts a frame on pair q's tx ring, in buffer slot `slot`.
  void PostTx(uint32_t q, uint32_t slot, const void* frame, uint32_t len, uint16_t flags = 0) {
    nmx_pv_ring* r = tx(q);
    const uint32_t at = r->posted & (h()->ring_size - 1);
    std::memcpy(base + buf(slot), frame, len);
    r->desc[at] = {};
    r->desc[at].offset = buf(slot);
    r->desc[at].len = len;
    r->desc[at].flags = flags;
    __atomic_store_n(&r->posted, r->posted + 1, __ATOMIC_RELEASE);
  }
  template <typename Bytes>
  void PostTx(uint32_t q, uint32_t slot, const Bytes& frame, uint16_t flags = 0) {
    PostTx(q, slot, frame.data(), static_cast<uint32_t>(frame.size()), flags);
  }
  // A descriptor naming any (region, offset, len) on pair q's tx ring (the frame is wherever the
  // caller put it).
  void PostTxAt(uint32_t q, uint16_t region, uint64_t offset, uint32_t len, uint16_t flags = 0) {
    nmx_pv_ring* r = tx(q);
    const uint32_t at = r->posted & (h()->ring_size - 1);
    r->desc[at] = {};
    r->desc[at].offset = offset;
    r->desc[at].len = len;
    r->desc[at].flags = flags;
    r->desc[at].region = region;
    __atomic_store_n(&r->posted, r->posted + 1, __ATOMIC_RELEASE);
  }
  // An empty buffer of cap bytes at (region, offset) on pair q's rx ring.
  void PostRxAt(uint32_t q, uint16_t region, uint64_t offset, uint32_t cap) {
    nmx_pv_ring* r = rx(q);
    const uint32_t at = r->posted & (h()->ring_size - 1);
    r->desc[at] = {};
    r->desc[at].offset = offset;
    r->desc[at].len = cap;
    r->desc[at].region = region;
    __atomic_store_n(&r->posted, r->posted + 1, __ATOMIC_RELEASE);
  }
  // Posts an empty buffer of cap bytes on pair q's rx ring.
  void PostRx(uint32_t q, uint32_t slot, uint32_t cap) {
    nmx_pv_ring* r = rx(q);
    const uint32_t at = r->posted & (h()->ring_size - 1);
    r->desc[at] = {};
    r->desc[at].offset = buf(slot);
    r->desc[at].len = cap;
    __atomic_store_n(&r->posted, r->posted + 1, __ATOMIC_RELEASE);
  }
};

}  // namespace nicmux::testing
