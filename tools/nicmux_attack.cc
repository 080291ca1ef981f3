// nicmux-attack: a malicious vhost-user frontend (issue 15, "Hostile peers"). It connects to a
// backend's socket and does, one class at a time, what a hostile guest or frontend process can
// do to the shared rings, the eventfds, the memory files and the message stream. It writes the
// wire layouts by hand (virtio/wire.h, vhost/protocol.h: little-endian, as this x86/arm64 host
// is), because the driver rings of src/virtio refuse to write anything wrong.
//
// Every attack reconnects as often as the backend closes its connection (a closed connection,
// or a refused one, is the expected outcome of many), and prints one line:
//   attack NAME rounds=R connects=C refused=F closed=K broken=B completed=U stuck=S
// rounds: attack rounds played; connects: sessions set up; refused: connections the backend
// closed before setup finished (quarantine); closed: sessions it closed mid-attack; broken: the
// queue's error eventfd fired (SET_VRING_ERR); completed: descriptors the backend completed
// (used ring entries, bad chains are completed empty); stuck: rounds where the backend did
// none of these within 200 ms (it must not keep a bad chain for ever).
// tests/integration/hostile_frontend.sh runs it against nicmuxd; docs/hostile.md.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "vhost/protocol.h"
#include "virtio/features.h"
#include "virtio/ring_access.h"
#include "virtio/wire.h"

namespace nicmux {
namespace {

// Orders this process's earlier stores to the shared ring before the next one, for the daemon
// reading it from another process: on x86 stores are not reordered with stores, so keeping
// the compiler from doing it is enough. (Not std::atomic_thread_fence: the ThreadSanitizer
// build rejects fences, and the reader is another process it does not see anyway.)
inline void ReleaseBarrier() {
#if defined(__x86_64__)
  asm volatile("" ::: "memory");
#else
  __atomic_thread_fence(__ATOMIC_RELEASE);
#endif
}

using namespace std::chrono_literals;
using vhost::Request;

constexpr const char* kUsage = R"(usage: nicmux-attack --socket PATH [--attack NAME|all] [--duration S] [--list]

A hostile vhost-user frontend: connects to a backend's socket (nicmuxd's vhost-user port) and
attacks it, one class at a time, reconnecting whenever the backend closes the connection. For
each attack it prints one line:
  attack NAME rounds=R connects=C refused=F closed=K broken=B completed=U stuck=S
(refused: closed before the setup finished, e.g. a quarantine; closed: closed during the
attack; broken: the queue's error eventfd fired; completed: used entries the backend wrote,
i.e. bad chains completed empty; stuck: rounds the backend answered in no way within 200 ms).
The backend must survive every attack, keep its other ports running, and refuse or contain
what it is given. It exits 0 unless the socket cannot be reached at all.

options:
  --socket PATH    the backend's vhost-user socket (required)
  --attack NAME    one of the attacks below, or all (default all)
  --duration S     seconds per attack (default 2; fractions allowed)
  --list           print the attack names and exit
  -h, --help       this text

attacks (queue 1, the guest's transmitq, is the one attacked: the backend reads it):
  desc-loop       split ring: chains whose next pointers loop (0->1->0, and a 3-cycle)
  indirect-loop   indirect tables whose entries loop, or that point at themselves as a nested
                  indirect table
  addr-outside    buffers past the end of guest memory, wrapping 2^64, straddling the border
                  between the two memory regions, and a descriptor table entry of len 0
                  pointing nowhere
  huge-len        len 0xffffffff, chains whose lengths sum past 2^32 (60 buffers of 80 MiB,
                  each inside memory), chains of 140 empty descriptors (past the walk bound)
  indirect-bad    indirect tables of len 0, 17 (not a multiple of 16), 1 MiB (more entries
                  than any ring), INDIRECT together with NEXT, nested INDIRECT, a table outside
                  memory
  avail-jump      the avail index moved 300 past the used index (ring size 256), 65535 back,
                  heads >= the ring size
  race            a thread rewrites random descriptors, avail entries and the avail index
                  continuously while the main thread kicks (the backend must copy each
                  descriptor once and judge the copy)
  packed-flags    packed ring: descriptors with AVAIL and USED both set or both clear, buffer
                  ids past the ring, a chain with NEXT on every descriptor round the whole
                  ring, flags flipped at random while kicking
  packed-indirect packed ring: a chain that is one indirect table, of len 0 or 17, outside
                  memory or straddling the regions, holding a nested INDIRECT or entries
                  outside memory, of 65536 entries, with NEXT; now and then a good one

attacks on queue 0 (the guest's receiveq): the backend reads a receive chain only to write a
frame for the port into it, so these need frames sent to the port while they run (in
hostile_frontend.sh a nicmux-pktgen sender in the port's VLAN); without them every round is
counted stuck:
  rx-bad          receive chains of device-readable buffers, buffers outside memory or
                  straddling the regions, loops, bad indirect tables, a buffer shorter than
                  the virtio-net header, 4.7 GiB of buffers; buffers over the guest's own
                  descriptor table and used ring; a good chain now and then
  rx-starve       no receive buffer for 300 ms while frames come, then 8 good ones (which
                  must be filled)
  rx-race         a thread rewrites the receive queue's descriptors, avail entries and avail
                  index at random while frames come

  mq              four queue pairs (the port needs queues=4): a descriptor loop on queue 7
                  while queues 1, 3, 5 send; queue 3's avail index jumped (it must break, the
                  others go on); SET_VRING_ENABLE 0/1 storms on queues 2-7; queue 5 disabled
                  and enabled with a chain posted

  kick-flood      kick eventfds written in a tight loop on both queues, the counter pushed to
                  its maximum now and then, with nothing in the rings
  fd-swap         while the queues run: SET_VRING_KICK/CALL/ERR with new eventfds (our copies
                  closed right away), the kick switched to polling and back, then a pipe and
                  a regular file given as a call fd (each pausing the backend's workers)
  pause-storm     SET_VRING_ENABLE 0/1 and SET_VRING_CALL back to back, nothing awaited: each
                  pauses the workers that poll the port (and other ports with it)
  shrink-memfd    the memory files truncated to 0 after SET_MEM_TABLE (the ring region, or the
                  buffer region under a posted chain); the backend must not die of SIGBUS
  bad-messages    one fresh connection per malformed message: unknown request, wrong payload
                  sizes, a size past the largest payload, truncated payloads, bad version, too
                  many fds, fds on a request that takes none, SET_MEM_TABLE with 0 or 9
                  regions, overlapping, zero-size, wrapping regions, mmap offsets past the
                  file, vring indexes past the queues, sizes 0/3/65536, ring addresses outside
                  memory, the log flag, features and protocol features never offered;
                  every case is played at least once whatever --duration says, and its
                  outcome printed ("  case NAME: closed", or "kept" when answered)
  unread-replies  GET_FEATURES sent back to back and the replies never read; then the same
                  with REPLY_ACK asked on every SET_VRING_ENABLE
  conn-flood      32 connections held open at once while more connect and close in a loop
)";

const std::vector<std::string> kAttacks = {
    "desc-loop", "indirect-loop", "addr-outside", "huge-len",   "indirect-bad", "avail-jump",    "race",
    "packed-flags", "packed-indirect", "rx-bad", "rx-starve", "rx-race", "mq", "kick-flood", "fd-swap", "pause-storm",
    "shrink-memfd", "bad-messages", "unread-replies", "conn-flood"};

std::string g_socket;
double g_duration = 2.0;

uint64_t NowNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
}

// Raw ring entries (little-endian host assumed, as in the header comment).
struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);
struct PDesc {  // packed
  uint64_t addr;
  uint32_t len;
  uint16_t id;
  uint16_t flags;
};
static_assert(sizeof(PDesc) == 16);

constexpr uint32_t kRing = 256;
constexpr uint64_t kRegionA = 4u << 20;  // gpa 0: rings and buffers
constexpr uint64_t kRegionB = 80u << 20;  // gpa kRegionA: a second file, sparse (huge-len)
constexpr uint64_t kMemEnd = kRegionA + kRegionB;
constexpr uint64_t kBufs = 1u << 20;     // buffers in region A start here
constexpr uint64_t kTables = 3u << 20;   // indirect tables in region A
// Queue q's areas in region A: desc at q*64K, avail/driver event at +8K, used/device event +12K.
constexpr uint64_t QBase(uint32_t q) { return uint64_t{q} * 0x10000; }
constexpr uint32_t kMaxQueues = 8;  // four queue pairs (mq), below kBufs

struct Counts {
  uint64_t rounds = 0, connects = 0, refused = 0, closed = 0, broken = 0, completed = 0, stuck = 0;
};

int NewEventFd() { return ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

// One frontend connection with its memory (two memfd regions, never sealed) and both queues of
// pair 0. Everything it sends is built by hand, so it can also send what no frontend should.
class Session {
 public:
  ~Session() {
    if (sock_ >= 0) ::close(sock_);
    for (int fd : {memfd_a_, memfd_b_}) {
      if (fd >= 0) ::close(fd);
    }
    if (a_) ::munmap(a_, kRegionA);
    if (b_) ::munmap(b_, kRegionB);
    for (uint32_t i = 0; i < kMaxQueues; ++i) {
      for (int fd : {kick_[i], call_[i], err_[i]}) {
        if (fd >= 0) ::close(fd);
      }
    }
  }

  bool Connect() {
    sock_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (g_socket.size() >= sizeof a.sun_path) return false;
    std::memcpy(a.sun_path, g_socket.c_str(), g_socket.size() + 1);
    if (::connect(sock_, reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) return false;
    timeval tv{1, 0};
    ::setsockopt(sock_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(sock_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return true;
  }

  // Raw bytes with fds; false when the socket failed (the backend closed it).
  bool SendRaw(const void* data, size_t len, const int* fds = nullptr, size_t nfds = 0) {
    iovec iov{const_cast<void*>(data), len};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    std::vector<char> ctl;
    if (nfds > 0) {
      ctl.resize(CMSG_SPACE(nfds * sizeof(int)));
      m.msg_control = ctl.data();
      m.msg_controllen = ctl.size();
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
      std::memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    return ::sendmsg(sock_, &m, MSG_NOSIGNAL) == static_cast<ssize_t>(len);
  }
  // A message whose header says `size` while `payload` bytes follow (normally the same).
  bool SendMsg(uint32_t req, const void* payload, uint32_t len, std::vector<int> fds = {}, uint32_t flags = vhost::kVersion,
               std::optional<uint32_t> size = std::nullopt) {
    std::vector<std::byte> b(sizeof(vhost::MsgHeader) + len);
    vhost::MsgHeader h{req, flags, size.value_or(len)};
    std::memcpy(b.data(), &h, sizeof h);
    if (len) std::memcpy(b.data() + sizeof h, payload, len);
    return SendRaw(b.data(), b.size(), fds.data(), fds.size());
  }
  template <typename T>
  bool Send(Request r, const T& v, std::vector<int> fds = {}) {
    return SendMsg(static_cast<uint32_t>(r), &v, sizeof v, std::move(fds));
  }
  bool SendEmpty(Request r) { return SendMsg(static_cast<uint32_t>(r), nullptr, 0); }
  // The u64 of a reply to `r`, nullopt if none came within the socket's timeout.
  std::optional<uint64_t> ReadU64() {
    vhost::MsgHeader h{};
    if (::recv(sock_, &h, sizeof h, MSG_WAITALL) != sizeof h || h.size != 8) return std::nullopt;
    uint64_t v = 0;
    if (::recv(sock_, &v, 8, MSG_WAITALL) != 8) return std::nullopt;
    return v;
  }
  std::optional<uint64_t> Get(Request r) {
    if (!SendEmpty(r)) return std::nullopt;
    return ReadU64();
  }
  // A round trip: the backend has handled everything sent before, and kept the connection.
  bool Sync() { return Get(Request::kGetFeatures).has_value(); }
  // The backend closed the connection (or it failed).
  bool Closed() {
    pollfd p{sock_, POLLIN | POLLRDHUP, 0};
    if (::poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) return true;
    char c;
    return ::recv(sock_, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  }

  bool MakeMemory() {
    memfd_a_ = ::memfd_create("attack-a", MFD_CLOEXEC);
    memfd_b_ = ::memfd_create("attack-b", MFD_CLOEXEC);
    if (memfd_a_ < 0 || memfd_b_ < 0 || ::ftruncate(memfd_a_, kRegionA) < 0 || ::ftruncate(memfd_b_, kRegionB) < 0) {
      return false;
    }
    void* a = ::mmap(nullptr, kRegionA, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_a_, 0);
    void* b = ::mmap(nullptr, kRegionB, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_b_, 0);
    if (a == MAP_FAILED || b == MAP_FAILED) return false;
    a_ = static_cast<std::byte*>(a);
    b_ = static_cast<std::byte*>(b);
    return true;
  }
  uint64_t Uva(uint64_t gpa) const {
    return gpa < kRegionA ? reinterpret_cast<uint64_t>(a_) + gpa : reinterpret_cast<uint64_t>(b_) + gpa - kRegionA;
  }
  bool SendMemTable() {
    struct {
      vhost::MemoryHeader h;
      vhost::MemoryRegion r[2];
    } t{{2, 0}, {{0, kRegionA, Uva(0), 0}, {kRegionA, kRegionB, Uva(kRegionA), 0}}};
    return Send(Request::kSetMemTable, t, {memfd_a_, memfd_b_});
  }

  // Negotiates and starts queues 0 .. nq-1 (split or packed; nq > 2 negotiates MQ), as a
  // well-behaved frontend would. False when the backend closed the connection or did not
  // answer.
  bool Setup(bool packed, bool reply_ack = false, uint32_t nq = 2) {
    if (!Connect() || !MakeMemory()) return false;
    auto offered = Get(Request::kGetFeatures);
    if (!offered) return false;
    using virtio::Bit;
    features_ = Bit(virtio::kFVersion1) | Bit(vhost::kFProtocolFeatures) | Bit(virtio::kFRingIndirectDesc);
    if (packed) features_ |= Bit(virtio::kFRingPacked);
    if (nq > 2) features_ |= Bit(virtio::kNetFMq);
    features_ &= *offered;
    auto pf = Get(Request::kGetProtocolFeatures);
    if (!pf) return false;
    uint64_t mine = reply_ack ? (*pf & Bit(vhost::kProtoReplyAck)) : 0;
    if (nq > 2) {
      mine |= *pf & Bit(vhost::kProtoMq);
      if (!(mine & Bit(vhost::kProtoMq)) || !(features_ & Bit(virtio::kNetFMq))) return false;
    }
    if (!Send(Request::kSetProtocolFeatures, mine) || !SendEmpty(Request::kSetOwner) ||
        !Send(Request::kSetFeatures, features_) || !SendMemTable()) {
      return false;
    }
    packed_ = packed;
    if (nq > 2) {
      auto n = Get(Request::kGetQueueNum);
      if (!n || *n * 2 < nq) return false;  // the port has fewer queue pairs
    }
    for (uint32_t q = 0; q < nq && q < kMaxQueues; ++q) {
      kick_[q] = NewEventFd();
      call_[q] = NewEventFd();
      err_[q] = NewEventFd();
      const uint64_t base = QBase(q);
      vhost::VringAddr addr{q, 0, Uva(base), Uva(base + 0x3000), Uva(base + 0x2000), 0};
      if (!Send(Request::kSetVringNum, vhost::VringState{q, kRing}) ||
          !Send(Request::kSetVringBase, vhost::VringState{q, packed ? 0x8000u : 0u}) ||
          !Send(Request::kSetVringAddr, addr) || !Send(Request::kSetVringCall, uint64_t{q}, {call_[q]}) ||
          !Send(Request::kSetVringKick, uint64_t{q}, {kick_[q]}) || !Send(Request::kSetVringErr, uint64_t{q}, {err_[q]}) ||
          !Send(Request::kSetVringEnable, vhost::VringState{q, 1})) {
        return false;
      }
    }
    return Sync();
  }

  // --- queue 1 (the guest's transmitq) as raw memory
  Desc* desc(uint32_t q = 1) { return reinterpret_cast<Desc*>(a_ + QBase(q)); }
  PDesc* pdesc(uint32_t q = 1) { return reinterpret_cast<PDesc*>(a_ + QBase(q)); }
  volatile uint16_t* avail(uint32_t q = 1) { return reinterpret_cast<volatile uint16_t*>(a_ + QBase(q) + 0x2000); }
  volatile uint16_t* used(uint32_t q = 1) { return reinterpret_cast<volatile uint16_t*>(a_ + QBase(q) + 0x3000); }
  uint16_t UsedIdx(uint32_t q = 1) { return used(q)[1]; }
  void SetAvailEntry(uint32_t i, uint16_t head, uint32_t q = 1) { avail(q)[2 + i % kRing] = head; }
  void PublishAvail(uint16_t idx, uint32_t q = 1) {
    ReleaseBarrier();
    avail(q)[1] = idx;
    nicmux::virtio::FullFence();
  }
  uint16_t AvailIdx(uint32_t q = 1) { return avail(q)[1]; }
  void Kick(uint32_t q = 1) {
    uint64_t one = 1;
    ssize_t n = ::write(kick_[q], &one, 8);
    (void)n;
  }
  bool ErrFired(uint32_t q = 1) {
    uint64_t v;
    return ::read(err_[q], &v, 8) == 8;
  }

  int sock() const { return sock_; }
  int memfd_a() const { return memfd_a_; }
  int memfd_b() const { return memfd_b_; }
  std::byte* region_a() { return a_; }
  int& kick_fd(uint32_t q) { return kick_[q]; }
  int& call_fd(uint32_t q) { return call_[q]; }
  int& err_fd(uint32_t q) { return err_[q]; }
  uint64_t features() const { return features_; }

 private:
  int sock_ = -1;
  int memfd_a_ = -1, memfd_b_ = -1;
  std::byte* a_ = nullptr;
  std::byte* b_ = nullptr;
  int kick_[kMaxQueues] = {-1, -1, -1, -1, -1, -1, -1, -1};
  int call_[kMaxQueues] = {-1, -1, -1, -1, -1, -1, -1, -1};
  int err_[kMaxQueues] = {-1, -1, -1, -1, -1, -1, -1, -1};
  uint64_t features_ = 0;
  bool packed_ = false;
};

bool TimeLeft(uint64_t deadline) { return NowNs() < deadline; }

// A fresh session; counts it, or counts a refusal and waits a little (a quarantine refuses
// everyone for a while: nothing is gained by hammering it).
std::unique_ptr<Session> Open(Counts& c, bool packed, bool reply_ack = false, uint32_t nq = 2) {
  auto s = std::make_unique<Session>();
  if (!s->Setup(packed, reply_ack, nq)) {
    ++c.refused;
    std::this_thread::sleep_for(50ms);
    return nullptr;
  }
  ++c.connects;
  return s;
}

// The frame of the ring attacks: the split ring's descriptor table is written by `fill` (it
// returns the heads to make available, at most the ring size), published and kicked; then the
// attack waits up to 200 ms for the backend to complete them (used index), break the queue
// (error eventfd) or close the connection. The backend must do one of these to every round.
// Queue q (default 1, the transmitq); the receive queue (0) is read by the backend only when
// a frame for the port comes, so its attacks need a sender (see rx-bad).
using SplitFill = std::function<std::vector<uint16_t>(Session&, uint64_t round)>;
Counts RunSplit(const SplitFill& fill, uint32_t q = 1) {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  std::unique_ptr<Session> s;
  while (TimeLeft(deadline)) {
    if (!s && !(s = Open(c, false))) continue;
    ++c.rounds;
    const uint16_t used0 = s->UsedIdx(q);
    const std::vector<uint16_t> heads = fill(*s, c.rounds);
    uint16_t idx = s->AvailIdx(q);
    for (uint16_t h : heads) s->SetAvailEntry(idx++, h, q);
    s->PublishAvail(idx, q);
    s->Kick(q);
    const uint64_t until = NowNs() + 200'000'000;
    bool answered = false;
    while (NowNs() < until) {
      if (s->ErrFired(q)) {
        ++c.broken;
        answered = true;
        s.reset();
        break;
      }
      if (s->Closed()) {
        ++c.closed;
        answered = true;
        s.reset();
        break;
      }
      if (s->UsedIdx(q) == idx) {
        answered = true;
        break;
      }
      std::this_thread::sleep_for(200us);
    }
    if (s) c.completed += static_cast<uint16_t>(s->UsedIdx(q) - used0);
    if (!answered) {
      ++c.stuck;
      s.reset();
    }
  }
  return c;
}

// A few valid buffers to point chains at (region A's buffer area).
uint64_t Buf(uint32_t i) { return kBufs + uint64_t{i % 256} * 2048; }

// desc-loop: next pointers that lead back into the chain. The backend must stop the walk
// (at most kMaxChainDescs descriptors) and complete the chain empty, or break the queue; never
// spin.
Counts DescLoop() {
  return RunSplit([](Session& s, uint64_t round) {
    Desc* d = s.desc();
    if (round % 2) {
      d[0] = {Buf(0), 64, virtio::kDescFNext, 1};
      d[1] = {Buf(1), 64, virtio::kDescFNext, 0};
      return std::vector<uint16_t>{0};
    }
    d[2] = {Buf(2), 64, virtio::kDescFNext, 3};
    d[3] = {Buf(3), 64, virtio::kDescFNext, 4};
    d[4] = {Buf(4), 64, virtio::kDescFNext, 2};
    d[5] = {Buf(5), 64, virtio::kDescFNext, 5};  // a self loop
    return std::vector<uint16_t>{2, 5};
  });
}

// indirect-loop: an indirect table whose entries loop, and one whose entry is the table itself
// as a nested indirect descriptor. The backend must bound the walk and refuse nesting
// (virtio 1.2 §2.7.5.3.1: no INDIRECT inside a table).
Counts IndirectLoop() {
  return RunSplit([](Session& s, uint64_t round) {
    Desc* d = s.desc();
    auto* t = reinterpret_cast<Desc*>(s.region_a() + kTables);
    t[0] = {Buf(0), 64, virtio::kDescFNext, 1};
    t[1] = {Buf(1), 64, virtio::kDescFNext, 0};
    t[2] = {kTables + 32, 16, virtio::kDescFIndirect, 0};  // points at itself
    d[0] = {kTables, 32, virtio::kDescFIndirect, 0};
    d[1] = {kTables + 32, 16, virtio::kDescFIndirect, 0};
    return round % 2 ? std::vector<uint16_t>{0} : std::vector<uint16_t>{1, 0};
  });
}

// addr-outside: buffers that translate to no memory, or to two regions at once. Each must be
// completed empty (translation fails); nothing outside the regions may be read.
Counts AddrOutside() {
  return RunSplit([](Session& s, uint64_t) {
    Desc* d = s.desc();
    d[0] = {kMemEnd + 4096, 64, 0, 0};                // past the end
    d[1] = {0xfffffffffffff000ull, 0x2000, 0, 0};      // wraps 2^64
    d[2] = {kRegionA - 32, 64, 0, 0};                  // straddles regions A and B
    d[3] = {kMemEnd - 10, 64, 0, 0};                   // runs off the end
    d[4] = {Buf(0), 64, virtio::kDescFNext, 5};        // a good first part,
    d[5] = {kMemEnd + (1ull << 40), 64, 0, 0};         // then nowhere
    d[6] = {0xdead0000000ull, 0, 0, 0};                // len 0, nowhere
    return std::vector<uint16_t>{0, 1, 2, 3, 4, 6};
  });
}

// huge-len: lengths that overflow whatever adds them. The backend must complete these empty
// (a chain holds at most 2^32 bytes, and a buffer must lie in one region).
Counts HugeLen() {
  return RunSplit([](Session& s, uint64_t) {
    Desc* d = s.desc();
    d[0] = {0, 0xffffffffu, 0, 0};
    d[1] = {0, 0x7fffffffu, virtio::kDescFNext, 2};
    d[2] = {0, 0x7fffffffu, virtio::kDescFNext, 3};
    d[3] = {0, 0x7fffffffu, 0, 0};
    // 140 empty descriptors in one chain: past the walk bound (128).
    for (uint16_t i = 10; i < 150; ++i) d[i] = {Buf(i), 0, virtio::kDescFNext, static_cast<uint16_t>(i + 1)};
    d[150] = {Buf(0), 64, 0, 0};
    d[151] = {kRegionA - 8, 0xfffffff8u, 0, 0};  // 4 GiB from inside region A
    // 60 descriptors of 80 MiB each, every one inside region B: 4.7 GiB in all (and fewer
    // segments than a chain may have).
    for (uint16_t i = 152; i < 152 + 60; ++i) {
      d[i] = {kRegionA, static_cast<uint32_t>(kRegionB), virtio::kDescFNext, static_cast<uint16_t>(i + 1)};
    }
    d[152 + 59].flags = 0;
    return std::vector<uint16_t>{0, 1, 10, 151, 152};
  });
}

// indirect-bad: indirect tables with lengths no table can have, flags the spec forbids with
// INDIRECT, and tables outside memory. Each must be completed empty or break the queue.
Counts IndirectBad() {
  return RunSplit([](Session& s, uint64_t) {
    Desc* d = s.desc();
    auto* t = reinterpret_cast<Desc*>(s.region_a() + kTables);
    for (int i = 0; i < 8; ++i) t[i] = {Buf(i), 64, 0, 0};
    t[8] = {kTables, 64, virtio::kDescFIndirect, 0};  // nested
    d[0] = {kTables, 0, virtio::kDescFIndirect, 0};
    d[1] = {kTables, 17, virtio::kDescFIndirect, 0};
    d[2] = {kTables, 1u << 20, virtio::kDescFIndirect, 0};
    d[3] = {kTables, 32, virtio::kDescFIndirect | virtio::kDescFNext, 4};
    d[4] = {Buf(4), 64, 0, 0};
    d[5] = {kTables + 8 * 16, 16, virtio::kDescFIndirect, 0};
    d[6] = {kMemEnd + 4096, 64, virtio::kDescFIndirect, 0};
    d[7] = {kRegionA - 16, 64, virtio::kDescFIndirect, 0};  // straddles A and B
    d[8] = {Buf(8), 64, virtio::kDescFNext, 9};
    d[9] = {kTables, 32, virtio::kDescFIndirect, 0};  // indirect as the second descriptor
    return std::vector<uint16_t>{0, 1, 2, 3, 5, 6, 7, 8};
  });
}

// avail-jump: the avail index moved further than the ring holds, or backwards, and heads past
// the ring. The backend must break the queue (structural corruption), not read past the ring.
Counts AvailJump() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  std::unique_ptr<Session> s;
  while (TimeLeft(deadline)) {
    if (!s && !(s = Open(c, false))) continue;
    ++c.rounds;
    Desc* d = s->desc();
    for (uint32_t i = 0; i < kRing; ++i) d[i] = {Buf(i), 64, 0, 0};
    switch (c.rounds % 3) {
      case 0:
        for (uint32_t i = 0; i < kRing; ++i) s->SetAvailEntry(i, static_cast<uint16_t>(i));
        s->PublishAvail(static_cast<uint16_t>(s->UsedIdx() + 300));
        break;
      case 1:
        s->PublishAvail(static_cast<uint16_t>(s->UsedIdx() - 1));  // 65535 ahead
        break;
      default:
        for (uint32_t i = 0; i < kRing; ++i) s->SetAvailEntry(i, static_cast<uint16_t>(kRing + i * 97));
        s->PublishAvail(static_cast<uint16_t>(s->AvailIdx() + 8));
        break;
    }
    s->Kick();
    const uint16_t used0 = s->UsedIdx();
    const uint64_t until = NowNs() + 200'000'000;
    bool answered = false;
    while (NowNs() < until && !answered) {
      if (s->ErrFired()) {
        ++c.broken;
        answered = true;
      } else if (s->Closed()) {
        ++c.closed;
        answered = true;
      } else {
        std::this_thread::sleep_for(200us);
      }
    }
    c.completed += static_cast<uint16_t>(s->UsedIdx() - used0);
    if (!answered) ++c.stuck;
    s.reset();
  }
  return c;
}

// race: one thread writes random descriptors, avail entries and avail index steps (small and
// large) without pause while the main thread kicks. Whatever the backend reads must be judged
// on one copy; the worker must not crash, spin, or read outside memory. On queue 0 (rx-race)
// the descriptors are mostly writable, the flag the receive path checks first.
Counts RaceOn(uint32_t q) {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  while (TimeLeft(deadline)) {
    auto s = Open(c, false);
    if (!s) continue;
    std::atomic<bool> stop{false};
    std::thread writer([&] {
      std::mt19937_64 rng(NowNs());
      Desc* d = s->desc(q);
      while (!stop.load(std::memory_order_relaxed)) {
        const uint64_t r = rng();
        const uint32_t i = r % kRing;
        const uint64_t addr = (r >> 8) % 8 == 0 ? rng() : Buf(static_cast<uint32_t>(r >> 16)) + (r >> 40) % 4096;
        const uint32_t len = (r >> 20) % 5 == 0 ? static_cast<uint32_t>(rng()) : static_cast<uint32_t>((r >> 24) % 4096);
        const auto flags = static_cast<uint16_t>(q == 0 && (r >> 36) % 4 != 0 ? virtio::kDescFWrite | ((r >> 38) & 1)
                                                                               : (r >> 36) & 7);
        const auto next = static_cast<uint16_t>((r >> 44) % 8 == 0 ? (r >> 48) : (r >> 48) % kRing);
        d[i] = {addr, len, flags, next};
        s->SetAvailEntry(static_cast<uint32_t>(r >> 52), static_cast<uint16_t>((r >> 3) % (kRing + 4)), q);
        if ((r & 0xff) < 8) s->PublishAvail(static_cast<uint16_t>(s->UsedIdx(q) + (r >> 56) % 64), q);
      }
    });
    const uint64_t session_end = std::min(deadline, NowNs() + 500'000'000);
    while (NowNs() < session_end) {
      ++c.rounds;
      s->Kick(q);
      if (s->ErrFired(q)) {
        ++c.broken;
        break;
      }
      if (s->Closed()) {
        ++c.closed;
        break;
      }
      std::this_thread::sleep_for(50us);
    }
    stop.store(true);
    writer.join();
    c.completed += s->UsedIdx(q);
  }
  return c;
}

// packed-flags: a packed ring whose flags lie. The backend must take nothing that is not
// available by the wrap counter, break the queue on ids past the ring or chains longer than
// the ring, and never let its used position leave the ring.
Counts PackedFlags() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  using virtio::kDescFAvail, virtio::kDescFUsed, virtio::kDescFNext;
  const uint16_t avail1 = kDescFAvail;  // available in the first lap (wrap counter 1)
  while (TimeLeft(deadline)) {
    auto s = Open(c, true);
    if (!s) continue;
    ++c.rounds;
    PDesc* d = s->pdesc();
    std::mt19937 rng(static_cast<uint32_t>(NowNs()));
    const uint64_t variant = c.rounds % 5;
    for (uint32_t i = 0; i < kRing; ++i) {
      PDesc x{Buf(i), 64, static_cast<uint16_t>(i), 0};
      switch (variant) {
        case 0: x.flags = kDescFAvail | kDescFUsed; break;                    // both: looks used
        case 1: x.flags = avail1; x.id = static_cast<uint16_t>(kRing + i); break;  // id past the ring
        case 2: x.flags = avail1 | kDescFNext; break;                          // a chain round the ring
        case 3: x.flags = i < 8 ? avail1 : 0; x.id = 3; break;               // one id, many times
        default: x.flags = static_cast<uint16_t>(rng()); x.id = static_cast<uint16_t>(rng()); break;
      }
      // The first descriptor's flags last, as a driver publishes.
      if (i == 0) continue;
      d[i] = x;
      if (i == kRing - 1) {
        PDesc y{Buf(0), 64, 0, 0};
        y.flags = variant == 0 ? kDescFAvail | kDescFUsed : variant == 4 ? static_cast<uint16_t>(rng()) : avail1 | (variant == 2 ? kDescFNext : 0);
        y.id = variant == 1 ? static_cast<uint16_t>(kRing * 2) : variant == 3 ? 3 : 0;
        ReleaseBarrier();
        d[0] = y;
      }
    }
    const uint64_t until = std::min(deadline, NowNs() + 200'000'000);
    bool answered = false;
    while (NowNs() < until && !answered) {
      s->Kick();
      if (variant == 4) {  // flip flags under the backend
        const uint32_t i = rng() % kRing;
        d[i].flags = static_cast<uint16_t>(rng());
      }
      if (s->ErrFired()) {
        ++c.broken;
        answered = true;
      } else if (s->Closed()) {
        ++c.closed;
        answered = true;
      } else if (variant != 0 && variant != 4 && (d[0].flags & (kDescFAvail | kDescFUsed)) == (kDescFAvail | kDescFUsed)) {
        ++c.completed;  // the device wrote a used descriptor over slot 0
        answered = true;
      } else {
        std::this_thread::sleep_for(500us);
      }
    }
    // Variant 0 makes nothing available: no answer is the right one.
    if (!answered && variant != 0 && variant != 4) ++c.stuck;
  }
  return c;
}

// --- the receive queue (0). The backend takes a chain from it only to write a frame for this
// port into it: these attacks need frames sent to the port while they run (hostile_frontend.sh
// puts the port in a VLAN of its own with a nicmux-pktgen sender). Without that traffic every
// round is left unanswered (stuck).

// rx-bad: receive chains no frame can go into: device-readable buffers, buffers outside
// memory or straddling the regions, loops, bad indirect tables, a buffer shorter than the
// virtio-net header, lengths summing past 2^32; and buffers the guest may legally give but
// that lie over its own rings (the frame is written over the descriptor table's unused half,
// or over the used ring the backend then writes). Each chain must be completed (empty when
// bad) or the queue broken; nothing is written outside the guest's memory.
Counts RxBad() {
  return RunSplit(
      [](Session& s, uint64_t round) {
        Desc* d = s.desc(0);
        auto* t = reinterpret_cast<Desc*>(s.region_a() + kTables);
        constexpr uint16_t W = virtio::kDescFWrite, N = virtio::kDescFNext, I = virtio::kDescFIndirect;
        switch (round % 9) {
          case 0:
            d[0] = {Buf(0), 2048, 0, 0};  // device-readable: the device may not write it
            d[1] = {Buf(1), 2048, W | N, 2};
            d[2] = {Buf(2), 64, 0, 0};  // readable after writable
            return std::vector<uint16_t>{0, 1};
          case 1:
            d[0] = {kMemEnd + 4096, 2048, W, 0};
            d[1] = {kRegionA - 64, 2048, W, 0};  // straddles A and B
            d[2] = {0xfffffffffffff000ull, 0x2000, W, 0};
            return std::vector<uint16_t>{0, 1, 2};
          case 2:
            d[0] = {Buf(0), 8, W | N, 1};
            d[1] = {Buf(1), 8, W | N, 0};  // a loop of tiny buffers
            return std::vector<uint16_t>{0};
          case 3:
            t[0] = {Buf(0), 2048, W, 0};
            t[1] = {kTables, 32, I, 0};  // nested
            d[0] = {kTables, 17, I, 0};
            d[1] = {kTables + 16, 16, I, 0};
            d[2] = {kTables, 32, I | N, 3};
            d[3] = {Buf(3), 2048, W, 0};
            d[4] = {kMemEnd, 64, I, 0};
            return std::vector<uint16_t>{0, 1, 2, 4};
          case 4:
            d[0] = {Buf(0), 4, W, 0};  // shorter than the virtio-net header
            return std::vector<uint16_t>{0};
          case 5:
            d[0] = {QBase(0) + 2048, 2048, W, 0};  // over descriptors 128..255 of this very table
            return std::vector<uint16_t>{0};
          case 6:
            d[0] = {QBase(0) + 0x3000 + 1024, 1024, W, 0};  // over the used ring's far entries
            return std::vector<uint16_t>{0};
          case 7:
            // 60 buffers of 80 MiB, every one inside region B: 4.7 GiB.
            for (uint16_t i = 10; i < 70; ++i) d[i] = {kRegionA, static_cast<uint32_t>(kRegionB), W | N, uint16_t(i + 1)};
            d[69].flags = W;
            return std::vector<uint16_t>{10};
          default:
            d[0] = {Buf(0), 2048, W, 0};  // a good one now and then: the queue still works
            return std::vector<uint16_t>{0};
        }
      },
      0);
}

// rx-starve: the receive queue enabled and never given a buffer while frames for the port keep
// coming, 300 ms at a time; then 8 good buffers, which must all be filled within 200 ms (the
// queue was only empty: a broken queue or a closed session counts as closed, fewer than 8
// filled as stuck). The backend must not let the frames it cannot deliver hold up the
// sender's port, nor anyone else's, for longer than its stall bound.
Counts RxStarve() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  std::unique_ptr<Session> s;
  while (TimeLeft(deadline)) {
    if (!s && !(s = Open(c, false))) continue;
    ++c.rounds;
    const uint64_t starve_end = NowNs() + 300'000'000;
    while (NowNs() < starve_end && s) {
      if (s->ErrFired(0) || s->Closed()) {
        ++c.closed;
        s.reset();
      }
      std::this_thread::sleep_for(5ms);
    }
    if (!s) continue;
    Desc* d = s->desc(0);
    const uint16_t used0 = s->UsedIdx(0);
    uint16_t idx = s->AvailIdx(0);
    for (uint16_t i = 0; i < 8; ++i) {
      d[i] = {Buf(i), 2048, virtio::kDescFWrite, 0};
      s->SetAvailEntry(idx++, i, 0);
    }
    s->PublishAvail(idx, 0);
    s->Kick(0);
    const uint64_t until = NowNs() + 200'000'000;
    bool broke = false;
    while (NowNs() < until && s->UsedIdx(0) != idx && !(broke = s->ErrFired(0))) std::this_thread::sleep_for(200us);
    const uint16_t filled = static_cast<uint16_t>(s->UsedIdx(0) - used0);
    c.completed += filled;
    if (broke || s->Closed()) {
      ++c.closed;
      s.reset();
    } else if (filled != 8) {
      ++c.stuck;
      s.reset();  // the next round starts from an empty ring
    }
  }
  return c;
}

// packed-indirect: a packed ring (transmitq) whose one chain is an indirect table: of len 0
// or 17, outside memory or straddling the regions, holding a nested INDIRECT, entries outside
// memory, 65536 entries (1 MiB), INDIRECT together with NEXT; and now and then a good one.
// Each round is a fresh session whose slot 0 the backend must mark used (the chain completed,
// empty when bad) or whose queue it must break.
Counts PackedIndirect() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  using virtio::kDescFAvail, virtio::kDescFUsed, virtio::kDescFNext, virtio::kDescFIndirect;
  while (TimeLeft(deadline)) {
    auto s = Open(c, true);
    if (!s) continue;
    if (!(s->features() & virtio::Bit(virtio::kFRingIndirectDesc))) {
      std::fprintf(stderr, "nicmux-attack: the backend does not offer INDIRECT_DESC with a packed ring\n");
      ++c.stuck;
      return c;
    }
    ++c.rounds;
    PDesc* d = s->pdesc();
    auto* t = reinterpret_cast<PDesc*>(s->region_a() + kTables);
    // The tables' entries: a virtio-net header and a frame of zeros (a zero source MAC: the
    // switch drops it as bad_source, so a good chain reaches no other port).
    std::memset(s->region_a() + Buf(0), 0, 12 + 64);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = {Buf(0), 12 + 64, 0, 0};
    auto entry = [](uint64_t addr, uint32_t len, uint16_t flags) {
      PDesc e{addr, len, 0, 0};
      e.flags = flags;
      return e;
    };
    uint32_t table_len = 16;
    uint64_t table = kTables;
    uint16_t extra = 0;
    switch (c.rounds % 8) {
      case 0: table_len = 0; break;
      case 1: table_len = 17; break;
      case 2: table = kMemEnd + 4096; break;
      case 3: table = kRegionA - 8; table_len = 32; break;
      case 4: t[1] = entry(kTables, 32, kDescFIndirect); table_len = 32; break;  // nested
      case 5: t[0] = {kMemEnd + 4096, 64, 0, 0}; t[1] = {0xfffffffffffff000ull, 0x2000, 0, 0}; table_len = 32; break;
      case 6: table_len = 1u << 20; break;  // 65536 entries
      default: extra = c.rounds % 16 == 7 ? kDescFNext : 0; break;  // with NEXT, or a good one
    }
    if (extra) d[1] = entry(Buf(0), 12 + 64, kDescFAvail);
    PDesc head{table, table_len, 0, 0};
    head.flags = kDescFAvail | kDescFIndirect | extra;
    ReleaseBarrier();
    d[0] = head;
    s->Kick();
    const uint64_t until = std::min(deadline, NowNs() + 200'000'000) + 50'000'000;
    bool answered = false;
    while (NowNs() < until && !answered) {
      if (s->ErrFired()) {
        ++c.broken;
        answered = true;
      } else if (s->Closed()) {
        ++c.closed;
        answered = true;
      } else if ((d[0].flags & (kDescFAvail | kDescFUsed)) == (kDescFAvail | kDescFUsed)) {
        ++c.completed;  // the device wrote a used descriptor over slot 0
        answered = true;
      } else {
        std::this_thread::sleep_for(200us);
      }
    }
    if (!answered) ++c.stuck;
  }
  return c;
}

// --- multiqueue: a frontend with four queue pairs (the port needs queues=4).

// A good transmit chain in slot `slot` of queue q: a virtio-net header and a frame of zeros
// (the switch drops it as bad_source: it reaches no other port). Returns the avail index.
uint16_t PostGood(Session& s, uint32_t q, uint16_t slot) {
  s.desc(q)[slot] = {Buf(slot), 12 + 60, 0, 0};
  uint16_t idx = s.AvailIdx(q);
  s.SetAvailEntry(idx++, slot, q);
  s.PublishAvail(idx, q);
  s.Kick(q);
  return idx;
}

// Whether queue q's used index reaches idx within 200 ms.
bool WaitUsed(Session& s, uint32_t q, uint16_t idx) {
  const uint64_t until = NowNs() + 200'000'000;
  while (NowNs() < until) {
    if (s.UsedIdx(q) == idx) return true;
    std::this_thread::sleep_for(200us);
  }
  return false;
}

// mq: one queue pair of four attacked while the others carry chains. Rounds: a descriptor
// loop on queue 7 while queues 1, 3 and 5 each send one good chain (all four answered); queue
// 3's avail index jumped (queue 3 must break, its error eventfd fire, and queues 1 and 5 still
// take chains); SET_VRING_ENABLE 0/1 on queues 2-7 ten times back to back, then queues 1 and 3
// must still take chains; queue 5 disabled with a chain posted and enabled again (the chain
// must be taken by the end).
Counts Mq() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  std::unique_ptr<Session> s;
  while (TimeLeft(deadline)) {
    if (!s && !(s = Open(c, false, false, kMaxQueues))) continue;
    ++c.rounds;
    bool ok = true;
    switch (c.rounds % 4) {
      case 0: {
        Desc* d = s->desc(7);
        d[0] = {Buf(0), 64, virtio::kDescFNext, 1};
        d[1] = {Buf(1), 64, virtio::kDescFNext, 0};
        uint16_t i7 = s->AvailIdx(7);
        s->SetAvailEntry(i7++, 0, 7);
        s->PublishAvail(i7, 7);
        s->Kick(7);
        const uint16_t i1 = PostGood(*s, 1, 2), i3 = PostGood(*s, 3, 2), i5 = PostGood(*s, 5, 2);
        ok = WaitUsed(*s, 7, i7) && WaitUsed(*s, 1, i1) && WaitUsed(*s, 3, i3) && WaitUsed(*s, 5, i5);
        if (ok) c.completed += 4;
        break;
      }
      case 1: {
        s->PublishAvail(static_cast<uint16_t>(s->UsedIdx(3) + 300), 3);
        s->Kick(3);
        const uint64_t until = NowNs() + 200'000'000;
        bool broke = false;
        while (NowNs() < until && !(broke = s->ErrFired(3))) std::this_thread::sleep_for(200us);
        if (broke) ++c.broken;
        const uint16_t i1 = PostGood(*s, 1, 3), i5 = PostGood(*s, 5, 3);
        ok = broke && WaitUsed(*s, 1, i1) && WaitUsed(*s, 5, i5);
        if (ok) c.completed += 2;
        s.reset();  // queue 3 stays broken until set up again: a fresh session
        break;
      }
      case 2: {
        for (int k = 0; k < 10 && ok; ++k) {
          for (uint32_t q = 2; q < kMaxQueues && ok; ++q) {
            ok = s->Send(Request::kSetVringEnable, vhost::VringState{q, 0}) &&
                 s->Send(Request::kSetVringEnable, vhost::VringState{q, 1});
          }
        }
        if (!ok) {
          ++c.closed;
          s.reset();
          ok = true;  // a backend may close a connection that storms it
          break;
        }
        const uint16_t i1 = PostGood(*s, 1, 4), i3 = PostGood(*s, 3, 4);
        ok = WaitUsed(*s, 1, i1) && WaitUsed(*s, 3, i3);
        if (ok) c.completed += 2;
        break;
      }
      default: {
        ok = s->Send(Request::kSetVringEnable, vhost::VringState{5, 0});
        const uint16_t i5 = PostGood(*s, 5, 5);
        std::this_thread::sleep_for(5ms);
        ok = ok && s->Send(Request::kSetVringEnable, vhost::VringState{5, 1});
        s->Kick(5);
        ok = ok && WaitUsed(*s, 5, i5);
        if (ok) ++c.completed;
        break;
      }
    }
    if (!ok) {
      ++c.stuck;
      s.reset();
    } else if (s && s->Closed()) {
      ++c.closed;
      s.reset();
    }
  }
  return c;
}

// kick-flood: the kick eventfds written as fast as this thread can, the counter pushed near
// its maximum now and then (a write that would overflow it fails here, never in the
// backend). The rings are empty: the backend must drain the kicks without spinning its
// worker or the control thread; other ports go on.
Counts KickFlood() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  std::unique_ptr<Session> s;
  while (TimeLeft(deadline)) {
    if (!s && !(s = Open(c, false))) continue;
    for (int i = 0; i < 10000; ++i) {
      s->Kick(0);
      s->Kick(1);
    }
    c.rounds += 20000;
    uint64_t big = 0xfffffffffffffffdull;
    ssize_t n = ::write(s->kick_fd(1), &big, 8);
    (void)n;
    if (s->Closed()) {
      ++c.closed;
      s.reset();
    }
  }
  return c;
}

// fd-swap: the queues' eventfds replaced while they run (each SET_VRING_KICK/CALL pauses the
// workers that poll the port: back to back, a pause storm), our copies closed at once (the
// backend's duplicates must stay valid), the kick switched to polling and back; then fds
// that are no eventfds (a pipe, a regular file) as call fds, which must be refused.
Counts FdSwap() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  std::unique_ptr<Session> s;
  while (TimeLeft(deadline)) {
    if (!s && !(s = Open(c, false))) continue;
    ++c.rounds;
    const uint32_t q = (c.rounds / 6) % 2;
    bool ok = true;
    switch (c.rounds % 6) {
      case 0: {
        int fd = NewEventFd();
        ok = s->Send(Request::kSetVringCall, uint64_t{q}, {fd});
        if (s->call_fd(q) >= 0) ::close(s->call_fd(q));
        s->call_fd(q) = fd;
        break;
      }
      case 1: {
        int fd = NewEventFd();
        ok = s->Send(Request::kSetVringKick, uint64_t{q}, {fd});
        ::close(s->kick_fd(q));
        s->kick_fd(q) = fd;
        break;
      }
      case 2:
        ok = s->Send(Request::kSetVringKick, uint64_t{q} | vhost::kVringNoFd);
        break;
      case 3: {
        int fd = NewEventFd();
        ok = s->Send(Request::kSetVringErr, uint64_t{q}, {fd});
        ::close(s->err_fd(q));
        s->err_fd(q) = fd;
        break;
      }
      case 4: {  // a call fd we close at once: only the backend's copy is left
        int fd = NewEventFd();
        ok = s->Send(Request::kSetVringCall, uint64_t{q}, {fd});
        ::close(fd);
        break;
      }
      default: {
        if (c.rounds % 60 == 5) {  // now and then: a pipe, then a regular file, as a call fd
          int p[2];
          if (::pipe2(p, O_CLOEXEC) == 0) {
            ok = s->Send(Request::kSetVringCall, uint64_t{q}, {p[0]});
            ::close(p[0]);
            ::close(p[1]);
          }
          if (ok && s->Sync()) {
            int f = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
            ok = s->Send(Request::kSetVringCall, uint64_t{q}, {f});
            ::close(f);
          }
        } else {
          int fd = NewEventFd();
          ok = s->Send(Request::kSetVringKick, uint64_t{q}, {fd});
          ::close(s->kick_fd(q));
          s->kick_fd(q) = fd;
        }
        break;
      }
    }
    s->Kick(q);
    if (!ok || !s->Sync()) {
      ++c.closed;
      s.reset();
    }
  }
  return c;
}

// pause-storm: requests that start and stop a queue (SET_VRING_ENABLE 0 then 1) and replace
// its call fd, sent back to back without waiting for anything. Each makes the backend pause
// the workers that poll the port, which poll other ports too: the backend must let them run
// between pauses, so the other ports keep their rate.
Counts PauseStorm() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  std::unique_ptr<Session> s;
  while (TimeLeft(deadline)) {
    if (!s && !(s = Open(c, false))) continue;
    for (int i = 0; i < 64; ++i) {
      ++c.rounds;
      const uint32_t q = i % 2;
      int fd = NewEventFd();
      const bool ok = s->Send(Request::kSetVringEnable, vhost::VringState{q, 0}) &&
                      s->Send(Request::kSetVringEnable, vhost::VringState{q, 1}) &&
                      s->Send(Request::kSetVringCall, uint64_t{q}, {fd});
      ::close(fd);
      if (!ok) break;
    }
    if (!s->Sync()) {
      ++c.closed;
      s.reset();
    }
  }
  return c;
}

// shrink-memfd: a memory file truncated to 0 after SET_MEM_TABLE. Round A shrinks the ring
// region (the backend's next look at the avail index faults), round B the buffer region under
// a posted chain (its copy faults). The backend must survive the SIGBUS (issue 17: the fault
// is recovered, the connection closed, the port quarantined) and refuse us for a while.
Counts ShrinkMemfd() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  while (TimeLeft(deadline)) {
    auto s = Open(c, false);
    if (!s) continue;
    ++c.rounds;
    Desc* d = s->desc();
    d[0] = {kRegionA + 4096, 512, 0, 0};  // a frame in region B
    std::memset(s->region_a() + Buf(0), 0xff, 64);
    if (c.rounds % 2) {
      if (::ftruncate(s->memfd_b(), 0) < 0) std::perror("ftruncate");
      s->SetAvailEntry(0, 0);
      s->PublishAvail(1);
    } else {
      s->SetAvailEntry(0, 0);
      // Nothing may touch region A's pages after this (they fault here too).
      if (::ftruncate(s->memfd_a(), 0) < 0) std::perror("ftruncate");
    }
    s->Kick();
    const uint64_t until = NowNs() + 2'000'000'000;
    bool answered = false;
    while (NowNs() < until && !answered) {
      if (s->Closed()) {
        ++c.closed;
        answered = true;
      } else {
        std::this_thread::sleep_for(1ms);
      }
    }
    if (!answered) ++c.stuck;
  }
  return c;
}

// bad-messages: one fresh connection per malformed message. Each must be refused (the
// backend closes the connection and logs the request and field) or, where the protocol allows
// it, answered; nothing may be mapped, kept or leaked.
struct BadCase {
  const char* name;
  bool setup;  // start from a set-up session (else right after connect)
  std::function<bool(Session&)> send;
};

std::vector<BadCase> BadCases() {
  using R = Request;
  auto u = [](R r) { return static_cast<uint32_t>(r); };
  std::vector<BadCase> v;
  v.push_back({"unknown-request", false, [](Session& s) { return s.SendMsg(99, nullptr, 0); }});
  v.push_back({"request-0", false, [](Session& s) { return s.SendMsg(0, nullptr, 0); }});
  v.push_back({"set-features-size-4", false, [u](Session& s) {
                 uint32_t x = 1;
                 return s.SendMsg(u(R::kSetFeatures), &x, 4);
               }});
  v.push_back({"size-past-max-payload", false, [u](Session& s) {
                 uint64_t x = 0;
                 return s.SendMsg(u(R::kSetFeatures), &x, 8, {}, vhost::kVersion, 0x7fffffff);
               }});
  v.push_back({"truncated-payload", false, [u](Session& s) {
                 uint32_t x = 0;
                 return s.SendMsg(u(R::kSetVringNum), &x, 4, {}, vhost::kVersion, 8);  // then silence
               }});
  v.push_back({"bad-version", false, [u](Session& s) { return s.SendMsg(u(R::kGetFeatures), nullptr, 0, {}, 0x2); }});
  v.push_back({"reply-flag-from-frontend", false,
               [u](Session& s) { return s.SendMsg(u(R::kGetFeatures), nullptr, 0, {}, vhost::kVersion | vhost::kFlagReply); }});
  v.push_back({"too-many-fds", true, [u](Session& s) {
                 std::vector<int> fds;
                 for (int i = 0; i < 20; ++i) fds.push_back(NewEventFd());
                 uint64_t q = 0;
                 bool ok = s.SendMsg(u(R::kSetVringCall), &q, 8, fds);
                 for (int fd : fds) ::close(fd);
                 return ok;
               }});
  v.push_back({"fds-on-get-features", false, [u](Session& s) {
                 std::vector<int> fds = {NewEventFd(), NewEventFd(), NewEventFd()};
                 bool ok = s.SendMsg(u(R::kGetFeatures), nullptr, 0, fds);
                 for (int fd : fds) ::close(fd);
                 return ok;
               }});
  v.push_back({"kick-without-fd", true, [](Session& s) { return s.Send(R::kSetVringKick, uint64_t{1}); }});
  v.push_back({"vring-index-300", true, [](Session& s) {
                 int fd = NewEventFd();
                 bool ok = s.Send(R::kSetVringCall, uint64_t{300}, {fd});
                 ::close(fd);
                 return ok;
               }});
  v.push_back({"vring-num-index-200", true, [](Session& s) { return s.Send(R::kSetVringNum, vhost::VringState{200, 256}); }});
  for (uint32_t n : {0u, 3u, 65536u}) {
    v.push_back({n == 0 ? "vring-num-0" : n == 3 ? "vring-num-3" : "vring-num-65536", true,
                 [n](Session& s) { return s.Send(R::kSetVringNum, vhost::VringState{1, n}); }});
  }
  v.push_back({"vring-addr-outside", true, [](Session& s) {
                 vhost::VringAddr a{1, 0, 0x10, 0x20, 0x30, 0};  // no region has these uvas
                 return s.Send(R::kSetVringAddr, a) && s.Send(R::kSetVringEnable, vhost::VringState{1, 1});
               }});
  v.push_back({"vring-addr-misaligned", true, [](Session& s) {
                 vhost::VringAddr a{1, 0, s.Uva(QBase(1) + 1), s.Uva(QBase(1) + 0x3001), s.Uva(QBase(1) + 0x2001), 0};
                 return s.Send(R::kSetVringAddr, a);
               }});
  v.push_back({"vring-addr-log-flag", true, [](Session& s) {
                 vhost::VringAddr a{1, 1, s.Uva(QBase(1)), s.Uva(QBase(1) + 0x3000), s.Uva(QBase(1) + 0x2000), 0};
                 return s.Send(R::kSetVringAddr, a);
               }});
  v.push_back({"features-not-offered", false, [](Session& s) { return s.Send(R::kSetFeatures, ~uint64_t{0}); }});
  v.push_back({"protocol-features-not-offered", false,
               [](Session& s) { return s.Send(R::kSetProtocolFeatures, ~uint64_t{0}); }});
  v.push_back({"get-vring-base-unset-queue", false, [](Session& s) { return s.Send(R::kGetVringBase, vhost::VringState{5, 0}); }});
  // SET_MEM_TABLE variants (a fresh session's memory files; the session's own table is valid).
  auto table = [u](Session& s, std::vector<vhost::MemoryRegion> regions, std::vector<int> fds, uint32_t nregions) {
    if (!s.MakeMemory()) return false;
    std::vector<std::byte> b(8 + 32 * regions.size());
    vhost::MemoryHeader h{nregions, 0};
    std::memcpy(b.data(), &h, 8);
    if (!regions.empty()) std::memcpy(b.data() + 8, regions.data(), 32 * regions.size());
    for (int& fd : fds) fd = fd == 0 ? s.memfd_a() : fd == 1 ? s.memfd_b() : fd;
    return s.SendMsg(u(R::kSetMemTable), b.data(), static_cast<uint32_t>(b.size()), fds);
  };
  v.push_back({"mem-table-0-regions", false, [table](Session& s) { return table(s, {}, {}, 0); }});
  v.push_back({"mem-table-9-regions", false, [table](Session& s) {
                 std::vector<vhost::MemoryRegion> r;
                 for (uint64_t i = 0; i < 9; ++i) r.push_back({i << 20, 1 << 20, 0x10000000 + (i << 20), 0});
                 return table(s, r, {0, 0, 0, 0, 0, 0, 0, 0}, 9);
               }});
  v.push_back({"mem-table-count-lies", false, [table](Session& s) {
                 return table(s, {{0, kRegionA, s.Uva(0), 0}}, {0}, 2);
               }});
  v.push_back({"mem-table-overlap", false, [table](Session& s) {
                 return table(s, {{0, kRegionA, s.Uva(0), 0}, {4096, kRegionB, s.Uva(kRegionA), 0}}, {0, 1}, 2);
               }});
  v.push_back({"mem-table-zero-size", false, [table](Session& s) {
                 return table(s, {{0, 0, s.Uva(0), 0}}, {0}, 1);
               }});
  v.push_back({"mem-table-wrap", false, [table](Session& s) {
                 return table(s, {{0xfffffffffff00000ull, kRegionA, s.Uva(0), 0}}, {0}, 1);
               }});
  v.push_back({"mem-table-offset-past-file", false, [table](Session& s) {
                 return table(s, {{0, kRegionB, s.Uva(0), kRegionA + 4096}}, {0}, 1);
               }});
  v.push_back({"mem-table-size-past-file", false, [table](Session& s) {
                 return table(s, {{0, kRegionA * 4, s.Uva(0), 0}}, {0}, 1);
               }});
  v.push_back({"mem-table-fd-missing", false, [table](Session& s) {
                 return table(s, {{0, kRegionA, s.Uva(0), 0}, {kRegionA, kRegionB, s.Uva(kRegionA), 0}}, {0}, 2);
               }});
  v.push_back({"mem-table-eventfd-as-memory", false, [table](Session& s) {
                 int fd = NewEventFd();
                 bool ok = table(s, {{0, kRegionA, s.Uva(0), 0}}, {fd}, 1);
                 ::close(fd);
                 return ok;
               }});
  v.push_back({"add-mem-reg-without-fd", true, [u](Session& s) {
                 vhost::SingleMemoryRegion r{0, {kMemEnd, 4096, 0x7f0000000000ull, 0}};
                 return s.SendMsg(u(R::kAddMemReg), &r, sizeof r);
               }});
  v.push_back({"rem-mem-reg-unknown", true, [u](Session& s) {
                 vhost::SingleMemoryRegion r{0, {kMemEnd + (1 << 30), 4096, 0x7f0000000000ull, 0}};
                 return s.SendMsg(u(R::kRemMemReg), &r, sizeof r);
               }});
  return v;
}

Counts BadMessages(bool verbose) {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  const std::vector<BadCase> cases = BadCases();
  // Every case once, then again while time is left.
  for (size_t i = 0; i < cases.size() || (TimeLeft(deadline) && i < cases.size() * 100); ++i) {
    const BadCase& bc = cases[i % cases.size()];
    Session s;
    if (bc.setup ? !s.Setup(false) : !s.Connect()) {
      ++c.refused;
      std::this_thread::sleep_for(50ms);
      continue;
    }
    ++c.connects;
    ++c.rounds;
    const bool sent = bc.send(s);
    // The outcome: closed, or still answering.
    bool closed = !sent;
    if (!closed) {
      timeval tv{0, 300000};
      ::setsockopt(s.sock(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      closed = !s.Sync() || s.Closed();
    }
    if (closed) ++c.closed;
    if (verbose && i < cases.size()) std::printf("  case %s: %s\n", bc.name, closed ? "closed" : "kept (answered)");
  }
  return c;
}

// unread-replies: requests that are answered (GET_FEATURES), back to back, never reading a
// reply; then REPLY_ACK asked on every SET_VRING_ENABLE. The backend must not block its control
// thread on our full socket: it queues a bounded amount, then closes the connection.
Counts UnreadReplies() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  while (TimeLeft(deadline)) {
    const bool ack = c.rounds % 2;
    auto s = Open(c, false, ack);
    if (!s) continue;
    ++c.rounds;
    int fl = ::fcntl(s->sock(), F_GETFL);
    ::fcntl(s->sock(), F_SETFL, fl | O_NONBLOCK);
    bool closed = false;
    while (TimeLeft(deadline) && !closed) {
      if (ack) {
        vhost::VringState st{1, 1};  // enable an enabled queue: harmless, but answered
        for (int i = 0; i < 256; ++i) {
          s->SendMsg(static_cast<uint32_t>(Request::kSetVringEnable), &st, sizeof st, {}, vhost::kVersion | vhost::kFlagNeedReply);
        }
      } else {
        for (int i = 0; i < 256; ++i) s->SendEmpty(Request::kGetFeatures);
      }
      closed = s->Closed();
      if (!closed) std::this_thread::sleep_for(1ms);
    }
    if (closed) ++c.closed;
  }
  return c;
}

// conn-flood: 32 connections at once (the port serves one frontend: the others must be
// refused without cost), then connect-and-close as fast as possible.
Counts ConnFlood() {
  Counts c;
  const uint64_t deadline = NowNs() + static_cast<uint64_t>(g_duration * 1e9);
  while (TimeLeft(deadline)) {
    std::vector<std::unique_ptr<Session>> held;
    for (int i = 0; i < 32; ++i) {
      auto s = std::make_unique<Session>();
      if (s->Connect()) {
        ++c.connects;
        held.push_back(std::move(s));
      } else {
        ++c.refused;
      }
    }
    std::this_thread::sleep_for(20ms);
    for (auto& s : held) {
      if (s->Closed()) ++c.closed;
    }
    held.clear();
    for (int i = 0; i < 50 && TimeLeft(deadline); ++i) {
      Session s;
      if (s.Connect()) ++c.connects; else ++c.refused;
      ++c.rounds;
    }
  }
  return c;
}

Counts Run(const std::string& name) {
  if (name == "desc-loop") return DescLoop();
  if (name == "indirect-loop") return IndirectLoop();
  if (name == "addr-outside") return AddrOutside();
  if (name == "huge-len") return HugeLen();
  if (name == "indirect-bad") return IndirectBad();
  if (name == "avail-jump") return AvailJump();
  if (name == "race") return RaceOn(1);
  if (name == "packed-flags") return PackedFlags();
  if (name == "packed-indirect") return PackedIndirect();
  if (name == "rx-bad") return RxBad();
  if (name == "rx-starve") return RxStarve();
  if (name == "rx-race") return RaceOn(0);  // frames must come meanwhile (rx-bad)
  if (name == "mq") return Mq();
  if (name == "kick-flood") return KickFlood();
  if (name == "fd-swap") return FdSwap();
  if (name == "pause-storm") return PauseStorm();
  if (name == "shrink-memfd") return ShrinkMemfd();
  if (name == "bad-messages") return BadMessages(true);
  if (name == "unread-replies") return UnreadReplies();
  return ConnFlood();
}

[[noreturn]] void Usage(int code) {
  std::fputs(kUsage, code == 0 ? stdout : stderr);
  std::exit(code);
}

}  // namespace
}  // namespace nicmux

int main(int argc, char** argv) {
  using namespace nicmux;
  std::string attack = "all";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(2);
      return argv[++i];
    };
    if (a == "-h" || a == "--help") Usage(0);
    if (a == "--list") {
      for (const auto& n : kAttacks) std::printf("%s\n", n.c_str());
      return 0;
    }
    if (a == "--socket") {
      g_socket = value();
    } else if (a == "--attack") {
      attack = value();
    } else if (a == "--duration") {
      g_duration = std::atof(value().c_str());
      if (!(g_duration > 0 && g_duration <= 3600)) Usage(2);
    } else {
      std::fprintf(stderr, "nicmux-attack: unknown option %s\n", a.c_str());
      Usage(2);
    }
  }
  if (g_socket.empty()) Usage(2);
  std::vector<std::string> run;
  if (attack == "all") {
    run = kAttacks;
  } else if (std::find(kAttacks.begin(), kAttacks.end(), attack) != kAttacks.end()) {
    run = {attack};
  } else {
    std::fprintf(stderr, "nicmux-attack: no attack '%s' (--list)\n", attack.c_str());
    return 2;
  }
  for (const auto& n : run) {
    const Counts c = Run(n);
    std::printf("attack %s rounds=%" PRIu64 " connects=%" PRIu64 " refused=%" PRIu64 " closed=%" PRIu64
                " broken=%" PRIu64 " completed=%" PRIu64 " stuck=%" PRIu64 "\n",
                n.c_str(), c.rounds, c.connects, c.refused, c.closed, c.broken, c.completed, c.stuck);
    std::fflush(stdout);
  }
  return 0;
}
