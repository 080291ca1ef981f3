#include "port/vhost_user_port.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "base/log.h"
#include "base/numa.h"
#include "base/prefetch.h"
#include "base/unix_socket.h"
#include "packet/offload_ops.h"
#include "port/virtio_net_edge.h"
#include "virtio/features.h"
#include "virtio/net_hdr.h"

namespace nicmux {

using vhost::DeviceQueue;

namespace {

constexpr uint64_t kBackoffFirstMs = 100, kBackoffMaxMs = 2000;
// Interrupt moderation's bounds (rx_usecs, rx_frames, ...): 10 ms is longer than any guest
// wants to wait for a frame; 4096 frames is more than the largest ring.
constexpr uint64_t kMaxModerationUs = 10000, kMaxModerationFrames = 4096;
// After a frontend attacked the daemon, the port refuses new ones for this long, doubling with
// each attack up to the cap (a quiet hour resets it).
constexpr uint64_t kQuarantineFirstMs = 1000, kQuarantineMaxMs = 60000;
constexpr uint64_t kQuarantineForgetNs = 3600ull * 1000000000;
// A receive chain without room for the virtio-net header and this much takes no frame (TxRing).
constexpr uint32_t kEthHeaderBytes = 14;

// Spreads a packet over several receive chains (MRG_RXBUF), remembering how much went where.
class MergeWriter {
 public:
  MergeWriter(virtio::DescChain* chains, uint32_t n) : chains_(chains), n_(n), w_(chains[0]) {
    for (uint32_t i = 0; i < n; ++i) written_[i] = 0;
  }
  size_t Write(const void* src, size_t len) {
    const std::byte* p = static_cast<const std::byte*>(src);
    size_t done = 0;
    while (done < len) {
      size_t k = w_.Write(p + done, len - done);
      done += k;
      written_[cur_] += static_cast<uint32_t>(k);
      if (done < len) {
        if (cur_ + 1 >= n_) break;
        w_ = virtio::ChainWriter(chains_[++cur_]);
      }
    }
    return done;
  }
  uint32_t written(uint32_t i) const { return written_[i]; }
  // Overwrites n bytes already written, at offset `at` from the first byte written.
  void Patch(size_t at, const void* src, size_t n) {
    const std::byte* p = static_cast<const std::byte*>(src);
    for (uint32_t i = 0; i <= cur_ && n > 0; ++i) {
      if (at >= written_[i]) {
        at -= written_[i];
        continue;
      }
      const size_t k = virtio::PatchChain(chains_[i], at, p, std::min<size_t>(n, written_[i] - at));
      p += k;
      n -= k;
      at = 0;
    }
  }

 private:
  virtio::DescChain* chains_;
  uint32_t n_;
  uint32_t cur_ = 0;
  virtio::ChainWriter w_;
  uint32_t written_[64];
};

// A writer whose Patch offsets count from where the frame starts (after the virtio-net header).
template <typename W>
struct OffsetWriter {
  W* w;
  size_t base;
  size_t Write(const void* src, size_t n) { return w->Write(src, n); }
  void Patch(size_t at, const void* src, size_t n) { w->Patch(base + at, src, n); }
};

}  // namespace

Result<VhostUserPortOptions> VhostUserPortOptionsFromSpec(const PortSpec& s, uint32_t mtu) {
  VhostUserPortOptions o;
  o.name = s.name;
  if (!s.Has("socket") || s.options.at("socket").empty()) return Error("port " + s.name + ": socket=... is required");
  o.socket_path = s.options.at("socket");
  o.client = s.Has("client");
  NICMUX_TRY_ASSIGN(q, s.UInt("queues", 1, vhost::kMaxQueuePairs, 1));
  o.queue_pairs = static_cast<uint32_t>(q);
  o.mtu = static_cast<uint16_t>(mtu);  // 68..65535 or 0 (the switch's mtu= option)
  NICMUX_TRY_ASSIGN(m, s.Size("max_memory", vhost::kMinMaxMemoryBytes, vhost::kMaxMemoryBytes, vhost::kMaxMemoryBytes));
  o.max_memory = m;
  NICMUX_TRY_ASSIGN(offloads, s.OnOff("offloads", true));
  o.offloads = offloads;
  for (const char* dir : {"rx", "tx"}) {
    const std::string d = dir;
    NICMUX_TRY_ASSIGN(us, s.UInt(d + "_usecs", 0, kMaxModerationUs, 0));
    NICMUX_TRY_ASSIGN(fr, s.UInt(d + "_frames", 0, kMaxModerationFrames, 0));
    if (fr != 0 && us == 0) {
      return Error("port " + s.name + ": " + d + "_frames=" + std::to_string(fr) + " needs " + d +
                   "_usecs=N too (the time bound for a lone frame)");
    }
    auto& m = d == "rx" ? o.rx_moderation : o.tx_moderation;
    m.usecs = static_cast<uint32_t>(us);
    m.frames = static_cast<uint32_t>(fr);
  }
  const std::string group = s.Has("socket_group") ? s.options.at("socket_group") : "";
  const std::string mode = s.Has("socket_mode") ? s.options.at("socket_mode") : "";
  if (!group.empty() || !mode.empty()) {
    if (o.client) {
      return Error("port " + s.name + ": socket_group/socket_mode need nicmuxd to make the socket; with client, " +
                   "QEMU (server=on) makes it");
    }
    auto a = ParseSocketAccess(group, mode);
    if (!a) return Error("port " + s.name + ": " + a.error().message());
    o.access = *a;
  }
  return o;
}

PortKind VhostUserPortKind() {
  PortKind k;
  k.name = "vhost-user";
  k.summary =
      "a virtio-net device for a QEMU guest or a virtio-user container (docs/vhost-user.md). nicmuxd listens on "
      "PATH (one frontend at a time) or, with `client`, connects to PATH (QEMU's `server=on`) and reconnects "
      "after the frontend restarts.";
  k.max_queues = vhost::kMaxQueuePairs;
  k.options = {
      {"socket", OptionType::kString, "PATH", "", "the vhost-user UNIX socket", 0, 0, true},
      {"client", OptionType::kFlag, "", "", "connect to PATH instead of listening on it"},
      {"queues", OptionType::kUInt, "N", "1", "queue pairs, 1..8", 1, vhost::kMaxQueuePairs},
      {"max_memory", OptionType::kSize, "SIZE", "4T",
       "the most guest memory one frontend may map, bytes or with a K, M, G or T suffix (1024-based), 1M..4T; "
       "a frontend declaring more is refused. Guest pages nicmuxd reads first are charged to nicmuxd's memory "
       "cgroup: set it to the guest's memory (e.g. 16G) to bound what one guest can make nicmuxd's charge",
       vhost::kMinMaxMemoryBytes, vhost::kMaxMemoryBytes},
      {"socket_group", OptionType::kString, "GROUP", "",
       "the socket's group (a name or number), mode 0660 unless socket_mode says otherwise: QEMU under "
       "libvirt runs as libvirt-qemu (docs/libvirt.md). Default: nicmuxd's --socket-group"},
      {"socket_mode", OptionType::kString, "MODE", "", "the socket's mode, octal (0660). Default: nicmuxd's --socket-mode"},
      {"offloads", OptionType::kOnOff, "on|off", "on",
       "offer checksum offload and TSO (IPv4, IPv6, ECN) both ways: a guest's 64 KiB TCP frames cross the "
       "switch whole to peers that take them and are segmented by the switch for the others "
       "(docs/offloads.md). The port's mtu= is also offered to the guest (VIRTIO_NET_F_MTU)"},
      {"rx_usecs", OptionType::kUInt, "N", "0",
       "interrupt moderation of the guest's receive queues (ethtool -C's rx-usecs, docs/vhost-user.md): an "
       "interrupt the guest asked for waits up to N us (0..10000) for more frames to cover. 0: one per batch",
       0, kMaxModerationUs},
      {"rx_frames", OptionType::kUInt, "N", "0",
       "with rx_usecs: the interrupt goes at once when N frames (1..4096) wait for it. 0: time alone", 0,
       kMaxModerationFrames},
      {"tx_usecs", OptionType::kUInt, "N", "0",
       "as rx_usecs, for the completions of what the guest sends (its transmit queues)", 0, kMaxModerationUs},
      {"tx_frames", OptionType::kUInt, "N", "0", "as rx_frames, with tx_usecs", 0, kMaxModerationFrames},
  };
  k.claims = [](const PortSpec& s) { return "socket " + s.options.at("socket"); };
  k.hands_over = true;
  k.create = [](const PortSpec& s, const PortContext& c) -> Result<std::unique_ptr<Port>> {
    NICMUX_TRY_ASSIGN(o, VhostUserPortOptionsFromSpec(s, c.mtu));
    NICMUX_TRY_ASSIGN(p, VhostUserPort::Create(o, c.loop, c.workers, c.handover));
    return std::unique_ptr<Port>(std::move(p));
  };
  return k;
}

VhostUserPort::VhostUserPort(const VhostUserPortOptions& o, EventLoop* loop, Pausable* worker)
    : Port(o.name), opt_(o), loop_(loop),
      session_(vhost::BackendConfig{o.queue_pairs, o.mtu, o.max_memory, o.offloads}, worker) {
  auto e = EventFd::Create();
  NICMUX_CHECK(e.has_value());
  fault_ = std::move(*e);
  session_.SetFaultFd(fault_.fd());
  for (uint32_t q = 0; q < opt_.queue_pairs; ++q) holds_[q] = HoldTable::Create();
  session_.SetStopHook([this](uint32_t i) { StopQueue(i); });
  set_defers_signals(o.rx_moderation.usecs != 0 || o.tx_moderation.usecs != 0);
}

Result<std::unique_ptr<VhostUserPort>> VhostUserPort::Create(const VhostUserPortOptions& o,
                                                             EventLoop* loop, Pausable* worker,
                                                             HandoverRecord* handover) {
  if (o.queue_pairs < 1 || o.queue_pairs > vhost::kMaxQueuePairs) {
    return Error("port " + o.name + ": queues=" + std::to_string(o.queue_pairs) + " is outside 1.." +
                 std::to_string(vhost::kMaxQueuePairs));
  }
  if (o.max_memory < vhost::kMinMaxMemoryBytes || o.max_memory > vhost::kMaxMemoryBytes) {
    return Error("port " + o.name + ": max_memory=" + std::to_string(o.max_memory) + " is outside " +
                 std::to_string(vhost::kMinMaxMemoryBytes) + ".." + std::to_string(vhost::kMaxMemoryBytes) +
                 " bytes");
  }
  auto addr = UnixAddr(o.socket_path);
  if (!addr) return addr.error().Wrap("port " + o.name);
  std::unique_ptr<VhostUserPort> p(new VhostUserPort(o, loop, worker));
  {
    auto r = loop->Watch(p->fault_.fd(), EPOLLIN, [port = p.get()](uint32_t) { port->OnFault(); });
    if (!r) return r.error().Wrap("port " + o.name);
  }
  if (handover) {
    auto r = p->Adopt(*handover);
    if (!r) return r.error().Wrap("port " + o.name + ": handover");
  } else if (o.client) {
    p->TryConnect();
  } else {
    auto r = p->Listen();
    if (!r) return r.error().Wrap("port " + o.name);
  }
  return p;
}

Result<void> VhostUserPort::Export(HandoverRecord* out) {
  // A frontend in the middle of a message, or one that does not read its replies, cannot be
  // handed over as it is; rather than let it hold up everyone's upgrade, it is handed over
  // disconnected (it reconnects to the new process once this one exits; if the upgrade
  // fails, it keeps its connection here).
  std::string drop;
  if (channel_) {
    if (channel_->mid_message()) drop = "a vhost-user message was half received";
    if (drop.empty() && channel_->has_pending_output()) {
      auto r = channel_->Flush();
      if (!r || channel_->has_pending_output()) {
        drop = "the frontend had not read " + std::to_string(channel_->pending_bytes()) + " bytes of replies";
      }
    }
  }
  out->Set("v.connections", connections());
  out->Set("v.quarantine_until_ns", quarantine_until_ns_);
  out->Set("v.quarantine_ms", quarantine_ms_);
  out->Set("v.hostile_disconnects", hostile_disconnects());
  if (listen_fd_.valid()) NICMUX_TRY(out->SetFd("v.listen", listen_fd_.get()));
  if (channel_ && drop.empty()) {
    NICMUX_TRY(out->SetFd("v.conn", channel_->fd()));
    auto r = session_.Export(out);
    if (!r) return r.error().Wrap("port " + name());
  } else if (!drop.empty()) {
    out->SetText("v.dropped", drop);
  }
  return Ok();
}

void VhostUserPort::DropHandedOverConnection(const std::string& why) {
  NICMUX_LOG(kError, "port %s: the frontend's connection is not kept across the upgrade (%s): it must reconnect",
             name().c_str(), why.c_str());
  handover_warning_ = "port " + name() + ": frontend disconnected (" + why + ")";
  if (channel_) {
    loop_->Unwatch(channel_->fd());
    channel_.reset();
  }
  disconnecting_ = true;
  session_.Reset();
  disconnecting_ = false;
  connected_.store(false, std::memory_order_release);
  UpdateCaps();
}

void VhostUserPort::HandoverCommitted() {
  owns_socket_file_ = true;
  // A client port without a connection tries again from now on (not before the commit: a
  // failed upgrade must not have connected to the frontend behind the old process's back).
  if (opt_.client && !channel_ && !reconnect_timer_) {
    backoff_ms_ = 0;
    reconnect_timer_ = loop_->After(kBackoffFirstMs, [this] { TryConnect(); });
  }
}

Result<void> VhostUserPort::ExportPositions(HandoverRecord* out) {
  if (!channel_) return Ok();
  auto r = session_.ExportPositions(out);
  if (!r) return r.error().Wrap("port " + name());
  return Ok();
}

Result<void> VhostUserPort::ImportPositions(HandoverRecord& in) {
  if (!channel_) return Ok();
  // UNTRUSTED (the frontend's rings, the old process's record): what does not check out costs
  // this port its connection, not the upgrade of every port.
  if (auto r = session_.ImportPositions(in); !r) DropHandedOverConnection(r.error().message());
  UpdateCaps();
  return Ok();
}

Result<void> VhostUserPort::Adopt(HandoverRecord& h) {
  NICMUX_TRY_ASSIGN(connections, h.GetOr("v.connections", 0));
  NICMUX_TRY_ASSIGN(quarantine_until, h.GetOr("v.quarantine_until_ns", 0));
  NICMUX_TRY_ASSIGN(quarantine_ms, h.GetOr("v.quarantine_ms", 0, kQuarantineMaxMs));
  NICMUX_TRY_ASSIGN(hostile, h.GetOr("v.hostile_disconnects", 0));
  // The same monotonic clock in both processes: a quarantine goes on where it was.
  quarantine_until_ns_ = quarantine_until;
  quarantine_ms_ = quarantine_ms;
  hostile_disconnects_.store(hostile, std::memory_order_relaxed);
  owns_socket_file_ = false;  // the old process's until the commit
  if (h.Has("v.dropped")) {
    NICMUX_TRY_ASSIGN(why, h.GetText("v.dropped"));
    handover_warning_ = "port " + name() + ": frontend disconnected (" + why + ")";
  }
  if (h.Has("v.listen")) {
    if (opt_.client) return Error("the old port listened; this one is client");
    NICMUX_TRY_ASSIGN(fd, h.TakeFd("v.listen"));
    // UNTRUSTED (the old process): the socket must be a listening UNIX socket.
    int listening = 0;
    socklen_t len = sizeof listening;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening) {
      return Error("v.listen is not a listening socket");
    }
    listen_fd_ = std::move(fd);
    NICMUX_TRY(loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); }));
  } else if (!opt_.client) {
    return Error("the old port had no listening socket");
  }
  if (h.Has("v.conn")) {
    NICMUX_TRY_ASSIGN(fd, h.TakeFd("v.conn"));
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM) {
      return Error("v.conn is not a stream socket");
    }
    Attach(std::move(fd));
    if (!channel_) return Error("cannot watch the connection");
    // UNTRUSTED: the frontend's state as the old process had it (memory files the frontend
    // may have shrunk since, a build that offers less): what does not check out costs this
    // port its connection, not the upgrade of every port.
    if (auto r = session_.Import(h); !r) DropHandedOverConnection(r.error().message());
    UpdateCaps();
  }
  connections_.store(connections, std::memory_order_relaxed);
  return Ok();
}

VhostUserPort::~VhostUserPort() {
  loop_->Unwatch(fault_.fd());
  if (reconnect_timer_) loop_->Cancel(reconnect_timer_);
  if (channel_) loop_->Unwatch(channel_->fd());
  channel_.reset();
  session_.Reset();  // (held chains completed early, deferred signals given: StopQueue)
  session_.SetStopHook(nullptr);
  if (listen_fd_.valid()) {
    loop_->Unwatch(listen_fd_.get());
    listen_fd_.Reset();
    // Not a socket file handed over by a process that still serves it (a failed upgrade).
    if (owns_socket_file_) ::unlink(opt_.socket_path.c_str());
  }
  // Holds still outstanding keep their table, and the guest memory they point into, until the
  // device releases them (packet/hold.h): nothing is unmapped under a device reading it.
  for (HoldTable*& t : holds_) {
    if (t) std::exchange(t, nullptr)->Abandon();
  }
}

Result<void> VhostUserPort::Listen() {
  NICMUX_TRY_ASSIGN(fd, ListenUnix(opt_.socket_path, 4, opt_.access ? &*opt_.access : nullptr));
  listen_fd_ = std::move(fd);
  NICMUX_TRY(loop_->Watch(listen_fd_.get(), EPOLLIN, [this](uint32_t) { OnAccept(); }));
  const std::string note = SocketOwnerOnlyNote(opt_.socket_path);
  NICMUX_LOG(kInfo, "port %s: listening on %s%s%s", name().c_str(), opt_.socket_path.c_str(), note.empty() ? "" : "; ",
             note.c_str());
  return Ok();
}

void VhostUserPort::OnAccept() {
  UniqueFd s(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  if (!s.valid()) return;
  if (channel_) {
    NICMUX_LOG_RATELIMITED_BY(log_refused_, kWarning,
                              "port %s: a frontend is already connected; refusing another", name().c_str());
    return;  // s closes
  }
  if (InQuarantine()) return;  // s closes
  Attach(std::move(s));
}

void VhostUserPort::TryConnect() {
  reconnect_timer_ = 0;
  if (InQuarantine()) {
    const uint64_t now = MonotonicNowNs();
    reconnect_timer_ = loop_->After((quarantine_until_ns_ - now) / 1000000 + 1, [this] { TryConnect(); });
    return;
  }
  auto addr = UnixAddr(opt_.socket_path);
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (addr && s.valid() && ::connect(s.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) == 0) {
    backoff_ms_ = 0;
    Attach(std::move(s));
    return;
  }
  if (backoff_ms_ == 0) {
    NICMUX_LOG_RATELIMITED_BY(log_conn_, kInfo, "port %s: cannot connect to %s yet (%s); retrying",
                              name().c_str(), opt_.socket_path.c_str(), std::strerror(errno));
  }
  backoff_ms_ = backoff_ms_ == 0 ? kBackoffFirstMs : std::min(backoff_ms_ * 2, kBackoffMaxMs);
  reconnect_timer_ = loop_->After(backoff_ms_, [this] { TryConnect(); });
}

void VhostUserPort::Attach(UniqueFd sock) {
  int fd = sock.get();
  channel_ = std::make_unique<vhost::Channel>(std::move(sock));
  watching_out_ = false;
  auto r = loop_->Watch(fd, EPOLLIN | EPOLLRDHUP, [this](uint32_t ev) {
    if (ev & EPOLLOUT) OnWritable();
    if (ev & ~uint32_t{EPOLLOUT}) OnReadable();
  });
  if (!r) {
    NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: %s", name().c_str(), r.error().message().c_str());
    channel_.reset();
    return;
  }
  connections_.fetch_add(1, std::memory_order_relaxed);
  connected_.store(true, std::memory_order_release);
  NICMUX_LOG_RATELIMITED_BY(log_conn_, kInfo, "port %s: frontend connected on %s", name().c_str(),
                            opt_.socket_path.c_str());
}

void VhostUserPort::OnReadable() {
  // A budget per wakeup: a peer that never stops sending cannot keep the control thread (and
  // every other port on it) waiting; the level-triggered loop comes back for the rest.
  for (int budget = 64; channel_ && budget > 0; --budget) {
    auto m = channel_->Receive();
    if (!m) {
      if (!channel_->peer_closed()) {
        // UNTRUSTED: the channel refused what the frontend sent (a size past any payload, too
        // many fds, fds that are neither eventfds nor memory files): a protocol error like the
        // session's refusals, and logged as one (not as a disconnect, under the connection
        // lines' limiter).
        NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: %s; closing the connection", name().c_str(),
                                  m.error().message().c_str());
        Disconnect("protocol error");
        return;
      }
      Disconnect(m.error().message());
      return;
    }
    if (!m->has_value()) break;
    // Replies go out without waiting; what the socket does not take waits in the channel
    // (bounded: a frontend that does not read is an error here) until EPOLLOUT.
    auto r = session_.Handle(**m, *channel_);
    if (!r) {
      NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: vhost-user %s; closing the connection",
                                name().c_str(), r.error().message().c_str());
      Disconnect("protocol error");
      return;
    }
    UpdateCaps();
  }
  WatchOutput();
}

void VhostUserPort::OnWritable() {
  if (!channel_) return;
  auto r = channel_->Flush();
  if (!r) {
    Disconnect(r.error().message());
    return;
  }
  WatchOutput();
}

void VhostUserPort::WatchOutput() {
  if (!channel_ || channel_->has_pending_output() == watching_out_) return;
  const bool want = channel_->has_pending_output();
  auto r = loop_->Modify(channel_->fd(), EPOLLIN | EPOLLRDHUP | (want ? uint32_t{EPOLLOUT} : 0));
  if (!r) {
    Disconnect(r.error().message());
    return;
  }
  watching_out_ = want;
}

void VhostUserPort::Disconnect(const std::string& why) {
  if (!channel_) return;
  loop_->Unwatch(channel_->fd());
  channel_.reset();
  disconnecting_ = true;
  session_.Reset();
  disconnecting_ = false;
  UpdateCaps();
  PeerGone();  // the switch forgets the MACs learned behind this port (Port::link_generation)
  // The worker is done with the old queues and the old memory is unmapped: notices still
  // pending are the old connection's.
  peer_blocked_.store(false, std::memory_order_relaxed);
  fault_.Drain();
  NICMUX_LOG_RATELIMITED_BY(log_conn_, kInfo, "port %s: frontend disconnected (%s)", name().c_str(),
                            why.c_str());
  connected_.store(false, std::memory_order_release);
  if (opt_.client && !reconnect_timer_) {
    backoff_ms_ = 0;
    reconnect_timer_ = loop_->After(kBackoffFirstMs, [this] { TryConnect(); });
  }
}

void VhostUserPort::NotePeerBlocked() {
  if (!peer_blocked_.exchange(true, std::memory_order_relaxed)) fault_.Signal();
}

void VhostUserPort::Notify(DeviceQueue& dq) {
  // After one write the watchdog had to break off, none is tried again on this connection
  // (16 queues sharing one such fd would otherwise cost 40 ms each, every round).
  if (peer_blocked_.load(std::memory_order_relaxed)) return;
  if (!dq.Call()) NotePeerBlocked();
}

// Interrupt moderation. The driver's own suppression decides whether a signal is owed at all
// (Flush's answer: EVENT_IDX's used_event crossed, or NO_INTERRUPT clear); moderation decides
// only when an owed signal is written: at once without it; with it, when `frames` chains wait
// or `usecs` after it was first owed — whichever comes first — by the next Tx or RxDone of
// the ring, or by the worker that noted the debt (Flush*Signal, forwarder.h's SignalDebts),
// which also gives every deferred signal before it sleeps or pauses. An owed signal is never
// dropped: later Flushes that owe none (the driver's used_event behind) leave it pending.
void VhostUserPort::Signal(DeviceQueue& dq, uint32_t i, bool want, uint32_t frames, bool now) {
  const VhostUserPortOptions::Moderation& m = ModerationOf(i);
  Deferred& d = deferred_[i];
  if (!want && !d.pending) return;
  if (m.usecs == 0 || now) {
    Give(dq, i);
    return;
  }
  const uint64_t t = MonotonicNowNs();
  if (d.pending) {
    if (want) coalesced_[i].Add();
  } else {
    d.pending = true;
    d.since_ns = t;
    set_signal_due(i / 2, i % 2 == 0, t + uint64_t{m.usecs} * 1000);
  }
  d.frames += frames;
  if ((m.frames != 0 && d.frames >= m.frames) || t - d.since_ns >= uint64_t{m.usecs} * 1000) Give(dq, i);
}

void VhostUserPort::Settle(uint32_t i) {
  if (deferred_[i].pending) set_signal_due(i / 2, i % 2 == 0, 0);
  deferred_[i] = Deferred{};
}

void VhostUserPort::Give(DeviceQueue& dq, uint32_t i) {
  Settle(i);
  interrupts_[i].Add();
  Notify(dq);
}

uint64_t VhostUserPort::FlushDeferred(uint32_t i, uint64_t now_ns, bool force) {
  Deferred& d = deferred_[i];
  if (!d.pending) return 0;
  DeviceQueue& dq = session_.queue(i);
  if (!dq.running) {
    Settle(i);  // (StopQueue gave it)
    return 0;
  }
  const uint64_t due = d.since_ns + uint64_t{ModerationOf(i).usecs} * 1000;
  if (!force && now_ns < due) return due;
  Give(dq, i);
  return 0;
}

uint64_t VhostUserPort::FlushTxSignal(uint32_t q, uint64_t now_ns, bool force) {
  return q < opt_.queue_pairs ? FlushDeferred(2 * q, now_ns, force) : 0;
}

uint64_t VhostUserPort::FlushRxSignal(uint32_t q, uint64_t now_ns, bool force) {
  return q < opt_.queue_pairs ? FlushDeferred(2 * q + 1, now_ns, force) : 0;
}

void VhostUserPort::StopQueue(uint32_t i) {
  CompleteHeld(i);
  if (i >= vhost::kMaxQueues || !deferred_[i].pending) return;
  if (disconnecting_) {
    Settle(i);  // the frontend is gone: its call fd gets nothing (a write could only block)
    return;
  }
  // The guest goes on with this ring (a memory table change restarts it): what it was owed is
  // given now.
  Give(session_.queue(i), i);
}

std::string VhostUserPort::State() const {
  if (connected()) return "connected";
  const uint64_t now = MonotonicNowNs();
  if (now < quarantine_until_ns_) {
    return "quarantined (" + std::to_string((quarantine_until_ns_ - now) / 1000000) + " ms left, " +
           std::to_string(hostile_disconnects()) + " hostile disconnects)";
  }
  return "waiting";
}

bool VhostUserPort::InQuarantine() {
  const uint64_t now = MonotonicNowNs();
  if (now >= quarantine_until_ns_) return false;
  NICMUX_LOG_RATELIMITED_BY(log_refused_, kWarning,
                            "port %s: refusing frontends for %llu ms more after the last one attacked the daemon",
                            name().c_str(), static_cast<unsigned long long>((quarantine_until_ns_ - now) / 1000000));
  return true;
}

void VhostUserPort::OnFault() {
  // The two writers of fault_: NotePeerBlocked (which sets peer_blocked_ first) and the SIGBUS
  // handler of this session's memory. A notice counts even when the faulted region is gone
  // already (the frontend removed it right after shrinking it), so nobody dodges the penalty.
  const uint64_t notices = fault_.Drain();
  const char* why = nullptr;
  if (peer_blocked_.exchange(false, std::memory_order_relaxed)) {
    why = "it made a signalling eventfd block the worker (blocking mode, full counter)";
  } else if (notices > 0 || (session_.memory() && session_.memory()->Poisoned())) {
    why = "its memory file shrank under the mapping (the fault was recovered)";
  }
  if (why == nullptr || !channel_) return;
  hostile_disconnects_.fetch_add(1, std::memory_order_relaxed);
  const uint64_t now = MonotonicNowNs();
  if (now - quarantine_until_ns_ > kQuarantineForgetNs) quarantine_ms_ = 0;
  quarantine_ms_ = quarantine_ms_ == 0 ? kQuarantineFirstMs : std::min(quarantine_ms_ * 2, kQuarantineMaxMs);
  quarantine_until_ns_ = now + quarantine_ms_ * 1000000;
  NICMUX_LOG_RATELIMITED_BY(log_error_, kError, "port %s: closing the connection: %s; new frontends refused for %llu ms",
                            name().c_str(), why, static_cast<unsigned long long>(quarantine_ms_));
  Disconnect(why);
}

// --------------------------------------------------------------------------- data path

void VhostUserPort::CheckBroken(DeviceQueue& dq, uint32_t index) {
  if (dq.error_signalled) return;
  if (!(dq.packed ? dq.packed_ring.broken() : dq.split.broken())) return;
  dq.error_signalled = true;
  // UNTRUSTED: the frontend broke its ring (once per setup: error_signalled); one limiter per
  // port, so one guest breaking its rings in a loop cannot hide another port's line.
  const DropReason why = dq.packed ? dq.packed_ring.broken_reason() : dq.split.broken_reason();
  NICMUX_LOG_RATELIMITED_BY(log_broken_, kWarning, "port %s: queue %u (%s ring) broken until the frontend sets it up again: %s",
                            name().c_str(), index, dq.packed ? "packed" : "split", DropReasonName(why).data());
  if (!peer_blocked_.load(std::memory_order_relaxed) && !dq.SignalError()) NotePeerBlocked();
}

// The reconnect trap: QEMU 7.2 reconnecting while the guest's driver is up acks only
// PROTOCOL_FEATURES, so nicmuxd takes a 10-byte header while the guest writes 12, and every
// frame arrives 2 bytes late: the guest's num_buffers (0 on transmit) comes first. Evidence
// required, so that no real frame is taken for one: those two zero bytes, no usual EtherType
// where it belongs, and 2 bytes later IPv4 with version 4, IPv6 with version 6, or ARP over
// Ethernet. (The other way round, 12 taken for 10, leaves nothing as telling: not guessed.)
bool VhostUserPort::HeaderShifted(const PacketRef& p, uint32_t hdr) {
  // UNTRUSTED: the guest's frame; only its first 18 bytes (in head) are compared.
  if (hdr != 10 || p.head_len < 18 || p.head[0] != std::byte{0} || p.head[1] != std::byte{0}) return false;
  auto type_at = [&](uint32_t at) { return static_cast<uint16_t>((uint16_t(p.head[at]) << 8) | uint16_t(p.head[at + 1])); };
  const uint16_t here = type_at(12);
  if (here == 0x0800 || here == 0x86dd || here == 0x0806 || here == 0x8100 || here == 0x88a8) return false;
  const uint16_t later = type_at(14);
  const uint8_t next = static_cast<uint8_t>(p.head[16]);
  return (later == 0x0800 && (next >> 4) == 4) || (later == 0x86dd && (next >> 4) == 6) ||
         (later == 0x0806 && type_at(16) == 0x0001);
}

// Worker side (and the control thread's StopLocked, the worker paused): the transmitq's
// completions that holds released (packet/hold.h), queued as used entries; published by the
// next Flush. Out of order: never with IN_ORDER, where no hold is given.
void VhostUserPort::DrainHeld(uint32_t q, DeviceQueue& dq) {
  HoldTable& t = *holds_[q];
  if (t.outstanding() == 0) return;
  if (dq.packed) {
    t.Drain([&](uint16_t id) { dq.packed_ring.Push(id, 0); });
  } else {
    t.Drain([&](uint16_t id) { dq.split.Push(id, 0); });
  }
}

// A queue stops (GET_VRING_BASE, a memory table change, a disconnect, the port removed), the
// worker paused: its ring's state must be whole for the frontend (and for restarting on a new
// table), so the chains still held are completed now, early: the device may not have sent
// them yet, and a guest that reuses such a buffer at once changes its own frame on the wire.
// Their memory stays mapped (the hold keeps its snapshot) until the device releases them.
void VhostUserPort::CompleteHeld(uint32_t i) {
  if (i % 2 == 0 || i / 2 >= opt_.queue_pairs || holds_[i / 2] == nullptr) return;
  HoldTable& t = *holds_[i / 2];
  DeviceQueue& dq = session_.queue(i);
  bool early = false;
  if (t.outstanding() != 0) {
    const uint32_t n = dq.packed ? t.CompleteEarly([&](uint16_t id) { dq.packed_ring.Push(id, 0); })
                                 : t.CompleteEarly([&](uint16_t id) { dq.split.Push(id, 0); });
    early = n != 0;
    const bool want = dq.packed ? dq.packed_ring.Flush() : dq.split.Flush();
    if (!disconnecting_) Signal(dq, i, want, n, /*now=*/true);  // (a frontend that is gone gets none)
    if (early) {
      NICMUX_LOG_RATELIMITED(kInfo, "port %s: queue %u stopped with %u frame(s) held by a device: completed early",
                             name().c_str(), i, n);
    }
  }
  t.set_limit(0);
  t.set_keepalive(nullptr);  // no hold keeps the memory of a stopped queue but those taken
}

size_t VhostUserPort::Rx(uint32_t q, Batch& out, size_t max) {
  RxState& st = rx_[q];
  st.n = 0;
  DeviceQueue& dq = session_.queue(2 * q + 1);  // the guest's transmitq
  if (!dq.running) return 0;
  // A worker that polls wants no kicks (it asks for them again before it sleeps: ArmNotify).
  // Without this a ring that started running while its worker was awake kept the driver's
  // default, a kick per burst, until the worker first slept: a write() per burst in the
  // frontend (a fifth of a testpmd frontend's time at 64 B).
  if (dq.packed) {
    dq.packed_ring.QuietKicks();
  } else {
    dq.split.QuietKicks();
  }
  DrainHeld(q, dq);
  // Holds (zero copy towards a device, packet/hold.h): at most half the transmitq's chains
  // at once, so the guest always has buffers left to send with; none with IN_ORDER (chains
  // must come back in order) .
  HoldTable* holds = holds_[q];
  if (holds->keepalive() != session_.memory().get()) holds->set_keepalive(session_.memory());
  const bool may_hold = !virtio::Has(session_.features(), virtio::kFInOrder);
  holds->set_limit(may_hold ? (dq.packed ? dq.packed_ring.size() : dq.split.size()) / 2 : 0);
  max = std::min<size_t>({max, kBurst, kBurst - out.size()});
  st.n = dq.packed ? dq.packed_ring.PopBurst(st.chains, static_cast<uint32_t>(max))
                   : dq.split.PopBurst(st.chains, static_cast<uint32_t>(max));
  const uint32_t hdr = session_.net_hdr_len();
  const bool offloads_in = session_.peer_sends_offloads();
  // The frames' first bytes are read next (the header copy); ask for all of them at once.
  for (uint32_t i = 0; i < st.n; ++i) {
    const virtio::DescChain& ch = st.chains[i];
    // The frame (the virtio-net header before it is read too where offloads were negotiated).
    if (ch.num_readable > 0 && ch.segs[0].len > hdr) {
      PrefetchRead(ch.segs[0].data + hdr, std::min<uint64_t>(ch.segs[0].len - hdr, kHeadBytes), 2);
    }
  }
  size_t got = 0;
  for (uint32_t i = 0; i < st.n; ++i) {
    PacketRef* p = out.TryPush();
    NICMUX_DCHECK(p != nullptr);
    if (!PacketFromChain(st.chains[i], hdr, p, offloads_in)) {
      out.Pop();
      rxc_[q].dropped.Add();
      rxc_[q].drops.Add(DropReason::kBadFrame);
      continue;
    }
    if (HeaderShifted(*p, hdr)) [[unlikely]] {
      out.Pop();
      rxc_[q].dropped.Add();
      rxc_[q].drops.Add(DropReason::kHdrMismatch);
      NICMUX_LOG_RATELIMITED_BY(log_hdr_, kWarning,
                                "port %s: frames from the guest are shifted by 2 bytes: the frontend's virtio-net "
                                "header is %u bytes, not the %u negotiated (QEMU lost the guest's features across "
                                "a reconnect while nicmuxd was down; docs/vhost-user.md \"The reconnect trap\"). "
                                "Dropped and counted as hdr_mismatch; restart the guest's network (or the VM)",
                                name().c_str(), hdr == 10 ? 12u : 10u, hdr);
      continue;
    }
    if (may_hold) {
      p->holder = holds;
      p->hold_cookie = HoldTable::Cookie(st.chains[i].id, i);
    }
    st.chain_of[got++] = static_cast<uint8_t>(i);
  }
  return got;
}

void VhostUserPort::RxDone(uint32_t q, Batch& batch, size_t sent) {
  RxState& st = rx_[q];
  DeviceQueue& dq = session_.queue(2 * q + 1);
  if (st.n == 0) {
    // Bad chains the ring completed on its own still need publishing, and a signal they are
    // owed goes at once (they are rare, and not worth a deadline); an empty poll leaves what
    // is deferred alone.
    if (!dq.running) return;
    if (dq.packed ? dq.packed_ring.Flush() : dq.split.Flush()) Signal(dq, 2 * q + 1, true, 0, /*now=*/true);
    CheckBroken(dq, 2 * q + 1);
    return;
  }
  // Chains up to the first unsent packet are done (bad frames among them too); the rest go
  // back to the ring, to be received again when the destination has room.
  const uint32_t got = batch.size();
  const uint32_t done_chains = sent < got ? st.chain_of[sent] : st.n;
  uint64_t bytes = 0;
  for (size_t k = 0; k < sent; ++k) bytes += batch[static_cast<uint32_t>(k)].len;
  rxc_[q].packets.Add(sent);
  rxc_[q].bytes.Add(bytes);
  // Chains a destination holds are completed when it releases them (DrainHeld), not now.
  // Only sent packets are held.
  const uint32_t held = holds_[q]->TakeBatchHeld();
  NICMUX_DCHECK(done_chains >= 32 || (held >> done_chains) == 0);
  auto finish = [&](auto& ring) {
    // Transmit completions carry no length: with IN_ORDER one used descriptor can cover them
    // all (packed rings), and the driver reads one descriptor instead of 32.
    if (held != 0) {
      for (uint32_t i = 0; i < done_chains; ++i) {
        if (!(held >> i & 1)) ring.Push(st.chains[i].id, 0);
      }
    } else if (!ring.PushInOrderBatch({st.chains, done_chains})) {
      for (uint32_t i = 0; i < done_chains; ++i) ring.Push(st.chains[i].id, 0);
    }
    if (done_chains < st.n && !ring.Rewind({st.chains + done_chains, st.n - done_chains})) {
      // A bad chain was completed after these were popped; they cannot be given back.
      for (uint32_t i = done_chains; i < st.n; ++i) ring.Push(st.chains[i].id, 0);
      rxc_[q].drops.Add(DropReason::kQueueFull, st.n - done_chains);
      rxc_[q].dropped.Add(st.n - done_chains);  // the source side lost them
    }
    Signal(dq, 2 * q + 1, ring.Flush(), done_chains);
  };
  if (dq.packed) {
    finish(dq.packed_ring);
  } else {
    finish(dq.split);
  }
  CheckBroken(dq, 2 * q + 1);
  st.n = 0;
}

void VhostUserPort::PrefetchRx(uint32_t q) {
  const DeviceQueue& dq = session_.queue(2 * q + 1);
  if (!dq.running) return;
  if (dq.packed) {
    dq.packed_ring.Prefetch();
  } else {
    dq.split.Prefetch();
  }
}

size_t VhostUserPort::TxRoom(uint32_t q) {
  DeviceQueue& dq = session_.queue(2 * q);
  if (!dq.running) return kBurst;  // Tx drops and counts: a down port must not stall others
  const size_t room = dq.packed ? dq.packed_ring.Available(kBurst) : dq.split.Available(kBurst);
  // No buffers left: a signal moderation holds back goes now (as in TxRing), or the guest,
  // waiting for it to refill the ring, would stall everything sent to it until the deadline.
  if (room == 0 && deferred_[2 * q].pending) [[unlikely]] Give(dq, 2 * q);
  return room;
}

template <typename Ring>
size_t VhostUserPort::TxRing(uint32_t q, DeviceQueue& dq, Ring& ring,
                             std::span<const PacketRef* const> in) {
  // The receiveq's kicks (the guest added buffers) are never waited for: a worker polls a
  // destination that was full. Without this the driver kicks after every refill.
  ring.QuietKicks();
  virtio::DescChain* chains = tx_[q].chains;
  QueueCounters& c = txc_[q];
  const uint32_t hdr_len = session_.net_hdr_len();
  const bool mrg = session_.mrg_rxbuf();
  const uint32_t per_packet = mrg ? kMaxRxBuffers : 1;
  const PortCaps caps = Caps();
  size_t k = 0;
  uint64_t bytes = 0, sent = 0;
  bool ring_empty = false;
  // Chains completed empty (too small for any frame) in this call: bounded like the bad chains
  // a Pop completes (kMaxBadChainsPerPop), or a guest reposting them as fast as they are
  // completed would keep the worker here for ever. Past the bound the ring counts as empty.
  uint32_t too_small = 0;
  // UNTRUSTED: bad receive chains completed on the way, for the whole call: one budget for
  // every PopBurst below, so that bad chains between good ones cannot multiply the bound.
  uint32_t bad_budget = virtio::kMaxBadChainsPerPop;
  // Two passes per round: first take receive chains for as many packets as the chain array
  // holds, prefetching each buffer for writing; then copy. The guest's buffers are scattered
  // over its memory, and a copy that waits for each one's cache line (and TLB entry) in turn
  // spent more than half the worker's time stalled at 64 B (perf, issue 5).
  while (k < in.size() && !ring_empty) {
    struct Planned {
      uint32_t pkt, first, n;  // pkt kNoPacket: a chain completed empty, in its turn
    };
    constexpr uint32_t kNoPacket = ~0u;
    Planned plan[kBurst];
    uint32_t nplan = 0, used = 0;
    // chains[used, popped) are taken from the ring and not yet given to a packet. They are
    // taken a burst at a time, one per packet still to plan (PopBurst takes a packed table's
    // one-buffer chains four per cache line), so normally none is left over.
    uint32_t popped = 0;
    // Gives chains[used, popped) back; if that is impossible (a bad chain came between), they
    // are completed empty, which a driver treats as a dropped frame.
    auto give_back = [&] {
      if (popped > used && !ring.Rewind({chains + used, popped - used})) {
        for (uint32_t i = used; i < popped; ++i) ring.Push(chains[i].id, 0);
      }
      popped = used;
    };
    for (; k < in.size() && nplan < kBurst; ++k) {
      const PacketRef& p = *in[k];
      const uint64_t need = hdr_len + uint64_t{p.len};
      // Gather receive chains until the packet fits (one without MRG_RXBUF).
      uint32_t n = 0;
      uint64_t room = 0;
      bool out_of_slots = false, out_of_plans = false;
      while (room < need && n < per_packet) {
        if (used + n == kMaxRxBuffers) {
          out_of_slots = true;
          break;
        }
        if (used + n == popped) {
          const size_t want = std::min<size_t>({kMaxRxBuffers - popped, kBurst - nplan, in.size() - k});
          const uint32_t got = ring.PopBurst(&chains[popped], static_cast<uint32_t>(want), &bad_budget);
          if (got == 0) {
            ring_empty = true;
            break;
          }
          popped += got;
        }
        // UNTRUSTED: without MRG_RXBUF a receive chain takes one packet whole; one without room
        // for the virtio-net header and an Ethernet header can take none. Given back (below) it
        // would be shown to every packet for ever, each dropped as too big, the guest receiving
        // nothing behind it: it is completed empty instead, in its turn (a plan of no packet).
        if (!mrg && chains[used].writable_bytes < hdr_len + kEthHeaderBytes) {
          plan[nplan++] = {kNoPacket, used++, 1};
          c.drops.Add(DropReason::kRxChainTooSmall);
          if (++too_small == virtio::kMaxBadChainsPerPop) ring_empty = true;
          if (nplan == kBurst || ring_empty) {
            out_of_plans = true;
            break;
          }
          continue;
        }
        room += chains[used + n++].writable_bytes;
      }
      if (room < need) {
        if (ring_empty || out_of_slots || out_of_plans) {
          give_back();  // this packet's chains: it is tried again (or kept)
          break;
        }
        // Too big for what it may take: dropped. The chains it was shown stay taken, for the
        // packets after it (chains[used] is where the next one starts). Giving them back here
        // instead (Rewind) made every dropped packet take the rest of the burst again, and past
        // a bad chain the ring completed meanwhile it cannot: the whole burst was completed empty.
        c.drops.Add(DropReason::kTooBig);
        c.dropped.Add();
        continue;
      }
      for (uint32_t i = used; i < used + n; ++i) {
        const virtio::DescChain& ch = chains[i];
        if (ch.num_segments > ch.num_readable) {
          const virtio::ChainSegment& s = ch.segs[ch.num_readable];
          PrefetchWrite(s.data, std::min<uint64_t>(s.len, need));
        }
      }
      plan[nplan++] = {static_cast<uint32_t>(k), used, n};
      used += n;
    }
    // Chains left after the last packets were dropped as too big (otherwise none: each packet
    // takes at least one of the chains asked for it).
    give_back();
    for (uint32_t j = 0; j < nplan; ++j) {
      virtio::DescChain* pc = chains + plan[j].first;
      if (plan[j].pkt == kNoPacket) {
        ring.Push(pc[0].id, 0);
        continue;
      }
      const PacketRef& p = *in[plan[j].pkt];
      const uint32_t n = plan[j].n;
      // The record as the switch left it (only what this guest accepts, caps), but the
      // checksum-valid mark only where the guest negotiated GUEST_CSUM.
      // A partial checksum the guest cannot take is completed in the copy (kCsumOnCopy).
      const bool complete = p.offload.needs_csum() && !caps.has(PortCaps::kCsum);
      virtio::VirtioNetHdrV1 h{};
      if (!p.offload.none()) {
        Offload o = p.offload;
        if (complete) o.flags &= static_cast<uint8_t>(~Offload::kNeedsCsum);
        if (!caps.has(PortCaps::kCsumValid)) o.flags &= static_cast<uint8_t>(~Offload::kCsumValid);
        if (!o.none()) h = VirtioFromOffload(o);
      }
      h.num_buffers = Le16::Of(static_cast<uint16_t>(mrg ? n : 1));
      const virtio::DescChain& c0 = pc[0];
      if (n == 1 && c0.num_segments > c0.num_readable &&
          c0.segs[c0.num_readable].len >= hdr_len + uint64_t{p.len}) {
        // One buffer holds it all: plain copies, no writer state.
        std::byte* o = c0.segs[c0.num_readable].data;
        if (hdr_len == sizeof h) {
          std::memcpy(o, &h, sizeof h);
        } else {
          std::memcpy(o, &h, hdr_len);
        }
        const size_t put = complete ? CopyPacketCompletingTo(p, o + hdr_len) : CopyPacketTo(p, o + hdr_len);
        ring.Push(c0.id, static_cast<uint32_t>(hdr_len + put));
      } else if (n == 1) {
        virtio::ChainWriter w(pc[0]);
        w.Write(&h, hdr_len);
        if (complete) {
          OffsetWriter<std::remove_reference_t<decltype(w)>> ow{&w, hdr_len};
          CopyPacketCompleting(p, ow);
        } else {
          CopyPacket(p, w);
        }
        ring.Push(pc[0].id, static_cast<uint32_t>(w.written()));
      } else {
        MergeWriter w(pc, n);
        w.Write(&h, hdr_len);
        if (complete) {
          OffsetWriter<std::remove_reference_t<decltype(w)>> ow{&w, hdr_len};
          CopyPacketCompleting(p, ow);
        } else {
          CopyPacket(p, w);
        }
        for (uint32_t i = 0; i < n; ++i) ring.Push(pc[i].id, w.written(i));
      }
      bytes += p.len;
      ++sent;
    }
    if (nplan == 0 && !ring_empty && k < in.size()) break;  // cannot happen: a packet fits 64
  }
  c.packets.Add(sent);
  c.bytes.Add(bytes);
  // A ring that ran out of buffers gets its signal at once: the guest refills it only after
  // one, and meanwhile everything for it would be dropped.
  Signal(dq, 2 * q, ring.Flush(), static_cast<uint32_t>(sent), /*now=*/ring_empty);
  CheckBroken(dq, 2 * q);
  return k;
}

size_t VhostUserPort::Tx(uint32_t q, std::span<const PacketRef* const> in) {
  DeviceQueue& dq = session_.queue(2 * q);  // the guest's receiveq
  if (!dq.running) {
    txc_[q].drops.Add(DropReason::kPortDown, in.size());
    txc_[q].dropped.Add(in.size());
    return in.size();
  }
  if (q == 0) SendRarp(q);
  return dq.packed ? TxRing(q, dq, dq.packed_ring, in) : TxRing(q, dq, dq.split, in);
}

void VhostUserPort::SendRarp(uint32_t q) {
  if (!session_.has_rarp()) return;
  auto mac = session_.TakeRarp();
  if (!mac) return;
  // A RARP "reverse request" from the guest's MAC, as QEMU sends for a migrated guest that
  // cannot announce itself (RFC 903 layout, Ethernet/IPv4).
  static constexpr uint8_t kTemplate[42] = {
      0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x80, 0x35,  // dst, src, ethertype
      0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x03,                    // htype ptype hlen plen op
      0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};        // sha spa tha tpa
  PacketRef p;
  std::memcpy(p.head, kTemplate, sizeof kTemplate);
  std::memcpy(p.head + 6, mac->data(), 6);
  std::memcpy(p.head + 22, mac->data(), 6);
  std::memcpy(p.head + 32, mac->data(), 6);
  p.len = p.head_len = sizeof kTemplate;
  DeviceQueue& dq = session_.queue(2 * q);
  const PacketRef* one[1] = {&p};
  if (dq.packed) {
    TxRing(q, dq, dq.packed_ring, one);
  } else {
    TxRing(q, dq, dq.split, one);
  }
}

bool VhostUserPort::ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) {
  // Releases to complete are work (CanSleep is false while holds are outstanding anyway).
  bool pending = holds_[q]->release_pending();
  // The guest's transmitq is queue 2q+1: a chain there is work.
  DeviceQueue& dq = session_.queue(2 * q + 1);
  if (!dq.running) return pending;
  pending |= dq.packed ? dq.packed_ring.EnableKicks() : dq.split.EnableKicks();
  if (dq.kick_fd() >= 0) fds->push_back({dq.kick_fd(), true});
  return pending;
}

void VhostUserPort::DisarmNotify(uint32_t q) {
  DeviceQueue& dq = session_.queue(2 * q + 1);
  if (!dq.running) return;
  if (dq.packed) {
    dq.packed_ring.DisableKicks();
  } else {
    dq.split.DisableKicks();
  }
}

bool VhostUserPort::CanSleep(uint32_t q) const {
  // A device's release wakes no one: while frames are held the worker polls for them.
  if (holds_[q]->outstanding() != 0) return false;
  const DeviceQueue& dq = const_cast<vhost::BackendSession&>(session_).queue(2 * q + 1);
  return !dq.running || dq.kick_fd() >= 0;
}

uint64_t VhostUserPort::DropsFor(DropReason r) const {
  uint64_t n = 0;
  for (uint32_t q = 0; q < vhost::kMaxQueuePairs; ++q) n += rxc_[q].drops.Get(r) + txc_[q].drops.Get(r);
  auto& s = const_cast<vhost::BackendSession&>(session_);
  for (uint32_t i = 0; i < vhost::kMaxQueues; ++i) {
    n += s.queue(i).split.drops().Get(r) + s.queue(i).packed_ring.drops().Get(r);
  }
  return n;
}

// What Tx accepts follows what the guest negotiated for its receive side (GUEST_*): published
// when SET_FEATURES changes it, and cleared when the frontend goes.
void VhostUserPort::UpdateCaps() {
  const uint64_t f = session_.has_features() ? session_.features() : 0;
  if (f == caps_features_) return;
  caps_features_ = f;
  using virtio::Has;
  PortCaps c;
  if (Has(f, virtio::kNetFGuestCsum)) c.offloads |= PortCaps::kCsum | PortCaps::kCsumValid;
  // TSO needs the guest to take partial checksums too (§5.1.3.1: GUEST_TSO4 requires GUEST_CSUM).
  if (Has(f, virtio::kNetFGuestCsum) && Has(f, virtio::kNetFGuestTso4)) c.offloads |= PortCaps::kTso4;
  if (Has(f, virtio::kNetFGuestCsum) && Has(f, virtio::kNetFGuestTso6)) c.offloads |= PortCaps::kTso6;
  if ((c.offloads & (PortCaps::kTso4 | PortCaps::kTso6)) && Has(f, virtio::kNetFGuestEcn)) c.offloads |= PortCaps::kEcn;
  c.offloads |= PortCaps::kCsumOnCopy;  // TxRing's copy completes what the guest cannot take
  c.mtu = opt_.mtu;
  SetCaps(c);
  if (f) NICMUX_LOG(kInfo, "port %s: offloads towards the guest: %s", name().c_str(), c.ToString().c_str());
}

std::vector<Port::Detail> VhostUserPort::Details() const {
  uint64_t early = 0;
  for (uint32_t q = 0; q < opt_.queue_pairs; ++q) early += holds_[q]->early();
  return {{"connections", connections()}, {"max_memory", SizeToString(opt_.max_memory)},
          {"max_memory_bytes", opt_.max_memory}, {"held_completed_early", early},
          {"rx_interrupts", rx_interrupts()}, {"tx_interrupts", tx_interrupts()},
          {"interrupts_coalesced", interrupts_coalesced()}};
}

int VhostUserPort::numa_node() const {
  const std::shared_ptr<const GuestMemory>& mem = session_.memory();
  if (!mem) {
    probed_mem_.reset();
    node_ = -1;
    return -1;
  }
  const bool same = !probed_mem_.owner_before(mem) && !mem.owner_before(probed_mem_);
  if (same && node_ >= 0) return node_;
  // UNTRUSTED: the pages are the frontend's (mapped by GuestMemory within max_memory). No byte
  // is read: MajorityNode looks up at most 64 pages without faulting any in, so a guest can
  // make it answer a wrong node (then its own queues are polled from the wrong node) but
  // cannot make nicmuxd touch or allocate its memory. The lookup sees only pages mapped in
  // nicmuxd's own page tables, so first the running queues' descriptor tables (which the
  // worker reads all the time, and which the guest's driver allocated on its node); only
  // without them (no queue running yet) the regions, of which nicmuxd may have touched little.
  std::vector<MemoryRange> ranges;
  auto& s = const_cast<vhost::BackendSession&>(session_);
  for (uint32_t i = 0; i < 2 * opt_.queue_pairs; ++i) {
    const DeviceQueue& dq = s.queue(i);
    if (!dq.running) continue;
    const void* at = dq.packed ? dq.packed_ring.desc_area() : dq.split.desc_area();
    const size_t bytes = dq.packed ? dq.packed_ring.desc_bytes() : dq.split.desc_bytes();
    if (at != nullptr && bytes != 0) ranges.push_back({at, bytes});
  }
  node_ = ranges.empty() ? -1 : MajorityNode(ranges);
  if (node_ < 0) {
    ranges.clear();
    for (const GuestRegion& r : mem->regions()) ranges.push_back({r.host, r.size});
    node_ = MajorityNode(ranges);
  }
  probed_mem_ = mem;
  return node_;
}

std::string VhostUserPort::Features() const {
  // (Written by the control thread, which is also the control plane's only reader.)
  return session_.has_features() ? virtio::NetFeatureNames(session_.features()) : std::string();
}

PortStats VhostUserPort::Stats() const {
  PortStats s;
  for (uint32_t q = 0; q < vhost::kMaxQueuePairs; ++q) {
    s.rx_packets += rxc_[q].packets.Get();
    s.rx_bytes += rxc_[q].bytes.Get();
    s.rx_dropped += rxc_[q].dropped.Get();
    s.tx_packets += txc_[q].packets.Get();
    s.tx_bytes += txc_[q].bytes.Get();
    s.tx_dropped += txc_[q].dropped.Get();
  }
  s.connected = connected();
  return s;
}

}  // namespace nicmux
