#include "vhost/frontend.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <thread>

#include "base/fd_reaper.h"
#include "base/log.h"
#include "virtio/features.h"
#include "virtio/vring.h"

namespace nicmux::vhost {

using virtio::Bit;
using virtio::Has;

namespace {

Result<sockaddr_un> Addr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) return Error("socket path '" + path + "' is empty or too long");
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

}  // namespace

Result<std::unique_ptr<Frontend>> Frontend::Create(const FrontendConfig& c) {
  if (c.queue_pairs < 1 || c.queue_pairs > kMaxFrontendQueuePairs) {
    return Error("queue pairs must be 1.." + std::to_string(kMaxFrontendQueuePairs));
  }
  NICMUX_TRY(virtio::CheckQueueSize(c.queue_size, c.packed));
  if (c.buf_bytes < 64 || c.buf_bytes > 65536) return Error("buffer size must be 64..65536");
  std::unique_ptr<Frontend> f(new Frontend(c));
  NICMUX_TRY(f->Connect());
  auto r = f->Setup();
  if (!r) return r.error();
  return f;
}

Frontend::~Frontend() = default;

Result<void> Frontend::Connect() {
  auto a = Addr(config_.socket_path);
  if (!a) return a.error();
  const uint64_t deadline = MonotonicNowNs() + uint64_t(config_.connect_timeout_ms) * 1'000'000;
  if (config_.listen) {
    ::unlink(config_.socket_path.c_str());
    UniqueFd l(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::bind(l.get(), reinterpret_cast<sockaddr*>(&*a), sizeof *a) < 0) return Error::FromErrno("bind " + config_.socket_path);
    if (::listen(l.get(), 1) < 0) return Error::FromErrno("listen " + config_.socket_path);
    pollfd p{l.get(), POLLIN, 0};
    if (::poll(&p, 1, config_.connect_timeout_ms) <= 0) {
      ::unlink(config_.socket_path.c_str());
      return Error("no backend connected to " + config_.socket_path + " in time");
    }
    UniqueFd s(::accept4(l.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
    ::unlink(config_.socket_path.c_str());
    if (!s.valid()) return Error::FromErrno("accept on " + config_.socket_path);
    ch_ = std::make_unique<Channel>(std::move(s));
    return Ok();
  }
  for (;;) {
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&*a), sizeof *a) == 0) {
      int fl = ::fcntl(s.get(), F_GETFL);
      ::fcntl(s.get(), F_SETFL, fl | O_NONBLOCK);
      ch_ = std::make_unique<Channel>(std::move(s));
      return Ok();
    }
    if (MonotonicNowNs() > deadline) return Error::FromErrno("connect to " + config_.socket_path);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

Result<Message> Frontend::WaitReply(Request r) {
  const uint64_t deadline = MonotonicNowNs() + 5'000'000'000ull;
  for (;;) {
    auto m = ch_->Receive();
    if (!m) return m.error().Wrap(std::string(RequestName(static_cast<uint32_t>(r))));
    if (m->has_value()) {
      Message& msg = **m;
      if (msg.hdr.request != static_cast<uint32_t>(r) || !(msg.hdr.flags & kFlagReply)) {
        return Error("backend replied " + std::string(RequestName(msg.hdr.request)) + " to " +
                     std::string(RequestName(static_cast<uint32_t>(r))));
      }
      return std::move(msg);
    }
    pollfd p{ch_->fd(), POLLIN, 0};
    int left = static_cast<int>((deadline - std::min(deadline, MonotonicNowNs())) / 1'000'000);
    if (left <= 0 || ::poll(&p, 1, left) <= 0) {
      return Error("backend did not answer " + std::string(RequestName(static_cast<uint32_t>(r))));
    }
  }
}

Result<void> Frontend::FlushOutput(Request r) {
  const uint64_t deadline = MonotonicNowNs() + 5'000'000'000ull;
  for (;;) {
    NICMUX_TRY(ch_->Flush());
    if (!ch_->has_pending_output()) return Ok();
    pollfd p{ch_->fd(), POLLOUT, 0};
    int left = static_cast<int>((deadline - std::min(deadline, MonotonicNowNs())) / 1'000'000);
    if (left <= 0 || ::poll(&p, 1, left) <= 0) {
      return Error("backend did not read " + std::string(RequestName(static_cast<uint32_t>(r))));
    }
  }
}

Result<uint64_t> Frontend::GetU64(Request r) {
  NICMUX_TRY(ch_->Send(static_cast<uint32_t>(r), kVersion, {}));
  NICMUX_TRY(FlushOutput(r));
  auto m = WaitReply(r);
  if (!m) return m.error();
  if (m->hdr.size != 8) return Error(std::string(RequestName(static_cast<uint32_t>(r))) + ": reply size " + std::to_string(m->hdr.size));
  return m->As<uint64_t>();
}

Result<void> Frontend::Send(Request r, std::span<const std::byte> payload, std::span<const int> fds) {
  const bool ack = Has(protocol_features_, kProtoReplyAck);
  NICMUX_TRY(ch_->Send(static_cast<uint32_t>(r), kVersion | (ack ? kFlagNeedReply : 0), payload, fds));
  NICMUX_TRY(FlushOutput(r));
  if (!ack) return Ok();
  auto m = WaitReply(r);
  if (!m) return m.error();
  if (m->hdr.size != 8 || m->As<uint64_t>() != 0) {
    return Error("backend refused " + std::string(RequestName(static_cast<uint32_t>(r))));
  }
  return Ok();
}

GuestAddr Frontend::Alloc(uint64_t bytes, uint64_t align) {
  next_free_ = (next_free_ + align - 1) / align * align;
  GuestAddr a{next_free_};
  next_free_ += bytes;
  NICMUX_CHECK(next_free_ <= map_.size());
  return a;
}

Result<void> Frontend::SendMemTableAgain() {
  struct {
    MemoryHeader h;
    MemoryRegion r;
  } table{{1, 0}, {0, map_.size(), reinterpret_cast<uint64_t>(map_.data()), 0}};
  int fd = memfd_.get();
  return Send(Request::kSetMemTable, std::as_bytes(std::span(&table, 1)), {&fd, 1});
}

uint64_t Frontend::MemoryBytes() const {
  // Per queue: descriptors (16 B each), avail (2 B each) and used (8 B each) rings with their
  // headers, each area 64-byte aligned, then the buffers; plus a page of slack.
  const uint64_t qs = config_.queue_size;
  const uint64_t per_queue = 26ull * qs + 3 * 64 + 64 + qs * config_.buf_bytes + 4096;
  return (per_queue * 2 * pairs_ + (2u << 20) - 1) / (2u << 20) * (2u << 20);
}

void Frontend::Layout(virtio::DriverRingConfig* dc, GuestAddr* buffers) {
  const uint32_t qs = config_.queue_size;
  dc->size = qs;
  dc->features = features_;
  if (config_.packed) {
    dc->ring[0] = Alloc(virtio::PackedRingLayout::DescBytes(qs), 64);
    dc->ring[1] = Alloc(4, 64);
    dc->ring[2] = Alloc(4, 64);
  } else {
    dc->ring[0] = Alloc(virtio::SplitRingLayout::DescBytes(qs), 64);
    dc->ring[1] = Alloc(virtio::SplitRingLayout::AvailBytes(qs), 64);
    dc->ring[2] = Alloc(virtio::SplitRingLayout::UsedBytes(qs), 64);
  }
  *buffers = Alloc(uint64_t{qs} * config_.buf_bytes, 64);
}

Result<void> Frontend::Setup() {
  auto offered = GetU64(Request::kGetFeatures);
  if (!offered) return offered.error();
  if (!Has(*offered, virtio::kFVersion1)) return Error("backend does not offer VIRTIO_F_VERSION_1");
  uint64_t want = Bit(virtio::kFVersion1);
  if (config_.mrg_rxbuf) want |= Bit(virtio::kNetFMrgRxbuf);
  if (config_.event_idx) want |= Bit(virtio::kFRingEventIdx);
  if (config_.indirect) want |= Bit(virtio::kFRingIndirectDesc);
  if (config_.packed) {
    if (!Has(*offered, virtio::kFRingPacked)) return Error("backend does not offer VIRTIO_F_RING_PACKED");
    want |= Bit(virtio::kFRingPacked);
  }
  if (config_.queue_pairs > 1) want |= Bit(virtio::kNetFMq);
  want |= Bit(kFProtocolFeatures);
  want |= config_.offloads;
  features_ = want & *offered;

  pairs_ = 1;
  if (Has(features_, kFProtocolFeatures)) {
    auto pf = GetU64(Request::kGetProtocolFeatures);
    if (!pf) return pf.error();
    uint64_t mine = *pf & (Bit(kProtoMq) | Bit(kProtoReplyAck));
    NICMUX_TRY(SendValue(Request::kSetProtocolFeatures, mine));
    protocol_features_ = mine;
    if (config_.queue_pairs > 1 && Has(mine, kProtoMq)) {
      auto qn = GetU64(Request::kGetQueueNum);
      if (!qn) return qn.error();
      pairs_ = static_cast<uint32_t>(std::min<uint64_t>(*qn, config_.queue_pairs));
    }
  }
  if (config_.queue_pairs > 1 && pairs_ < config_.queue_pairs) {
    return Error("backend offers " + std::to_string(pairs_) + " queue pairs, " +
                 std::to_string(config_.queue_pairs) + " asked for");
  }
  NICMUX_TRY(Send(Request::kSetOwner, {}));
  NICMUX_TRY(SendValue(Request::kSetFeatures, features_));

  // Memory: rings and buffers of every queue in one memfd region at guest-physical 0.
  const uint32_t qs = config_.queue_size, nq = 2 * pairs_;
  const uint64_t total = MemoryBytes();
  memfd_.Reset(::memfd_create("nicmux-frontend",
                              MFD_CLOEXEC | MFD_ALLOW_SEALING | (config_.hugepages ? MFD_HUGETLB : 0)));
  if (!memfd_.valid()) return Error::FromErrno(config_.hugepages ? "memfd_create (huge pages)" : "memfd_create");
  if (::ftruncate(memfd_.get(), static_cast<off_t>(total)) < 0) return Error::FromErrno("ftruncate memfd");
  // Sealed against resizing, as QEMU's memory-backend-memfd does: a backend that maps it can
  // never be made to fault by a shrink.
  if (config_.seal_memory &&
      ::fcntl(memfd_.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
    return Error::FromErrno("sealing the memfd");
  }
  auto map = MappedRegion::MapFd(memfd_.get(), 0, total);
  if (!map) return map.error();
  map_ = std::move(*map);
  GuestRegion region;
  region.gpa = 0;
  region.size = total;
  region.uva = reinterpret_cast<uint64_t>(map_.data());
  region.host = map_.data();
  auto mem = GuestMemory::Create({region});
  if (!mem) return mem.error();
  mem_ = *mem;
  struct {
    MemoryHeader h;
    MemoryRegion r;
  } table{{1, 0}, {0, total, region.uva, 0}};
  int fd = memfd_.get();
  NICMUX_TRY(Send(Request::kSetMemTable, std::as_bytes(std::span(&table, 1)), {&fd, 1}));

  for (uint32_t i = 0; i < nq; ++i) {
    auto q = std::make_unique<FrontendQueue>();
    q->packed = config_.packed;
    virtio::DriverRingConfig dc;
    Layout(&dc, &q->buffers);
    if (q->packed) {
      NICMUX_TRY(q->packed_ring.Init(*mem_, dc));
    } else {
      NICMUX_TRY(q->split.Init(*mem_, dc));
    }
    q->host = map_.data() + q->buffers.value;
    auto k = EventFd::Create();
    auto c = EventFd::Create();
    auto e = EventFd::Create();
    if (!k || !c || !e) return Error("eventfd");
    q->kick = std::move(*k);
    q->call = std::move(*c);
    q->err = std::move(*e);
    NICMUX_TRY(SendValue(Request::kSetVringNum, VringState{i, qs}));
    NICMUX_TRY(SendValue(Request::kSetVringBase, VringState{i, q->packed ? 0x8000u : 0u}));
    auto uva = [&](GuestAddr g) { return reinterpret_cast<uint64_t>(map_.data()) + g.value; };
    // For packed rings "avail" names the driver event area and "used" the device event area.
    VringAddr addr{i, 0, uva(dc.ring[0]), uva(dc.ring[2]), uva(dc.ring[1]), 0};
    NICMUX_TRY(SendValue(Request::kSetVringAddr, addr));
    int callfd = q->call.fd(), kickfd = q->kick.fd();
    NICMUX_TRY(SendValue(Request::kSetVringCall, uint64_t{i}, {&callfd, 1}));
    NICMUX_TRY(SendValue(Request::kSetVringKick, uint64_t{i}, {&kickfd, 1}));
    // As QEMU does: the backend signals it when it finds the ring broken.
    int errfd = q->err.fd();
    NICMUX_TRY(SendValue(Request::kSetVringErr, uint64_t{i}, {&errfd, 1}));
    queues_.push_back(std::move(q));
  }
  if (Has(features_, kFProtocolFeatures)) {
    for (uint32_t i = 0; i < nq; ++i) NICMUX_TRY(SendValue(Request::kSetVringEnable, VringState{i, 1}));
  }
  // Fill every receive queue with buffers; a buffer's index is the id its chain gets.
  for (uint32_t k = 0; k < pairs_; ++k) {
    FrontendQueue& q = rxq(k);
    while (q.num_free() > 0) {
      const uint16_t id = q.NextId();
      virtio::DriverBuffer b{BufferAddr(q, id), config_.buf_bytes, true};
      auto got = q.Add({&b, 1});
      NICMUX_CHECK(got && *got == id);
    }
    q.Kick();
  }
  return Ok();
}

// --------------------------------------------------------------------------- live upgrade

Result<void> Frontend::Export(HandoverRecord* out) const {
  if (ch_->mid_message() || ch_->has_pending_output()) {
    return Error("a vhost-user message is half exchanged with the backend");
  }
  out->Set("f.features", features_);
  out->Set("f.protocol_features", protocol_features_);
  out->Set("f.pairs", pairs_);
  out->Set("f.mem_bytes", map_.size());
  NICMUX_TRY(out->SetFd("f.sock", ch_->fd()));
  NICMUX_TRY(out->SetFd("f.mem", memfd_.get()));
  for (uint32_t i = 0; i < queues_.size(); ++i) {
    const FrontendQueue& q = *queues_[i];
    const std::string k = "f.q." + std::to_string(i) + ".";
    out->Set(k + "buffers", q.buffers.value);
    NICMUX_TRY(out->SetFd(k + "kick", q.kick.fd()));
    NICMUX_TRY(out->SetFd(k + "call", q.call.fd()));
    NICMUX_TRY(out->SetFd(k + "err", q.err.fd()));
  }
  return Ok();
}

Result<std::unique_ptr<Frontend>> Frontend::Adopt(const FrontendConfig& c, HandoverRecord& in) {
  if (c.queue_pairs < 1 || c.queue_pairs > kMaxFrontendQueuePairs) {
    return Error("queue pairs must be 1.." + std::to_string(kMaxFrontendQueuePairs));
  }
  NICMUX_TRY(virtio::CheckQueueSize(c.queue_size, c.packed));
  std::unique_ptr<Frontend> f(new Frontend(c));
  // UNTRUSTED (the old process, maybe another build): what this spec would have negotiated,
  // and files that are what they claim to be.
  NICMUX_TRY_ASSIGN(features, in.Get("f.features"));
  NICMUX_TRY_ASSIGN(proto, in.Get("f.protocol_features"));
  NICMUX_TRY_ASSIGN(pairs, in.Get("f.pairs", kMaxFrontendQueuePairs));
  // The bits Setup could have asked for with this config (the backend may have offered fewer).
  uint64_t could = Bit(virtio::kFVersion1) | Bit(kFProtocolFeatures) | c.offloads;
  if (c.mrg_rxbuf) could |= Bit(virtio::kNetFMrgRxbuf);
  if (c.event_idx) could |= Bit(virtio::kFRingEventIdx);
  if (c.indirect) could |= Bit(virtio::kFRingIndirectDesc);
  if (c.packed) could |= Bit(virtio::kFRingPacked);
  if (c.queue_pairs > 1) could |= Bit(virtio::kNetFMq);
  if (!Has(features, virtio::kFVersion1) || Has(features, virtio::kFRingPacked) != c.packed ||
      Has(features, virtio::kFRingIndirectDesc) || Has(features, virtio::kNetFMrgRxbuf) != c.mrg_rxbuf ||
      (features & ~could) != 0) {
    return Error("the old frontend negotiated features 0x" + [&] {
      char b[20];
      std::snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(features));
      return std::string(b);
    }() + ", not what this spec asks for");
  }
  if (pairs != c.queue_pairs) {
    return Error("the old frontend had " + std::to_string(pairs) + " queue pair(s), this spec " + std::to_string(c.queue_pairs));
  }
  f->features_ = features;
  f->protocol_features_ = proto;
  f->pairs_ = static_cast<uint32_t>(pairs);
  NICMUX_TRY_ASSIGN(mem_bytes, in.Get("f.mem_bytes"));
  NICMUX_TRY_ASSIGN(memfd, in.TakeFd("f.mem"));
  struct stat st = {};
  if (mem_bytes != f->MemoryBytes() || ::fstat(memfd.get(), &st) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<uint64_t>(st.st_size) != mem_bytes) {
    return Error("f.mem is not a memory file of the " + std::to_string(f->MemoryBytes()) + " bytes this spec lays out");
  }
  // Sealed as Setup seals it: a backend that also holds the file must not be able to shrink it.
  if (c.seal_memory && (::fcntl(memfd.get(), F_GET_SEALS) & F_SEAL_SHRINK) == 0) {
    return Error("f.mem is not sealed against shrinking");
  }
  NICMUX_TRY_ASSIGN(map, MappedRegion::MapFd(memfd.get(), 0, mem_bytes));
  f->memfd_ = std::move(memfd);
  f->map_ = std::move(map);
  GuestRegion region;
  region.gpa = 0;
  region.size = mem_bytes;
  region.uva = reinterpret_cast<uint64_t>(f->map_.data());
  region.host = f->map_.data();
  NICMUX_TRY_ASSIGN(mem, GuestMemory::Create({region}));
  f->mem_ = mem;
  NICMUX_TRY_ASSIGN(sock, in.TakeFd("f.sock"));
  int domain = 0, type = 0;
  socklen_t len = sizeof domain;
  if (::getsockopt(sock.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX ||
      (len = sizeof type, ::getsockopt(sock.get(), SOL_SOCKET, SO_TYPE, &type, &len)) != 0 || type != SOCK_STREAM) {
    return Error("f.sock is not a UNIX stream socket");
  }
  f->ch_ = std::make_unique<Channel>(std::move(sock));
  for (uint32_t i = 0; i < 2 * f->pairs_; ++i) {
    const std::string k = "f.q." + std::to_string(i) + ".";
    auto q = std::make_unique<FrontendQueue>();
    q->packed = c.packed;
    virtio::DriverRingConfig dc;
    f->Layout(&dc, &q->buffers);
    NICMUX_TRY_ASSIGN(buffers, in.Get(k + "buffers"));
    if (buffers != q->buffers.value) return Error(k + "buffers: another layout than this build's");
    if (q->packed) {
      NICMUX_TRY(q->packed_ring.Init(*f->mem_, dc, /*clear=*/false));
    } else {
      NICMUX_TRY(q->split.Init(*f->mem_, dc, /*clear=*/false));
    }
    q->host = f->map_.data() + q->buffers.value;
    for (const char* e : {"kick", "call", "err"}) {
      NICMUX_TRY_ASSIGN(fd, in.TakeFd(k + e));
      if (!IsEventFd(fd.get())) return Error(k + e + " is not an eventfd");
      EventFd ev(std::move(fd));
      (e[0] == 'k' ? q->kick : e[0] == 'c' ? q->call : q->err) = std::move(ev);
    }
    f->queues_.push_back(std::move(q));
  }
  return f;
}

Result<void> Frontend::ExportPositions(HandoverRecord* out) const {
  for (uint32_t i = 0; i < queues_.size(); ++i) {
    const FrontendQueue& q = *queues_[i];
    const std::string k = "f.q." + std::to_string(i) + ".ring.";
    NICMUX_TRY(q.packed ? q.packed_ring.Save(out, k) : q.split.Save(out, k));
    // (A worker may have found the kick eventfd blocking since step 1.)
    out->Set("f.q." + std::to_string(i) + ".kick_blocked", q.kick_blocked.load(std::memory_order_relaxed) ? 1 : 0);
  }
  return Ok();
}

Result<void> Frontend::ImportPositions(const HandoverRecord& in) {
  for (uint32_t i = 0; i < queues_.size(); ++i) {
    FrontendQueue& q = *queues_[i];
    const std::string k = "f.q." + std::to_string(i) + ".ring.";
    // UNTRUSTED (the old process): a chain writes at most one buffer.
    NICMUX_TRY(q.packed ? q.packed_ring.Restore(in, k, config_.buf_bytes) : q.split.Restore(in, k, config_.buf_bytes));
    NICMUX_TRY_ASSIGN(blocked, in.Get("f.q." + std::to_string(i) + ".kick_blocked", 1));
    q.kick_blocked.store(blocked != 0, std::memory_order_relaxed);
  }
  return Ok();
}

bool Frontend::Alive() {
  pollfd p{ch_->fd(), POLLIN | POLLRDHUP, 0};
  if (::poll(&p, 1, 0) <= 0) return true;
  if (p.revents & (POLLHUP | POLLRDHUP | POLLERR)) return false;
  auto m = ch_->Receive();
  return m.has_value();
}

}  // namespace nicmux::vhost
