#include "port/virtio_user_port.h"

#include <algorithm>
#include <cstring>

#include "base/log.h"
#include "port/virtio_net_edge.h"
#include "virtio/net_hdr.h"

namespace nicmux {

namespace {
constexpr uint32_t kBufBytes = 10240;
// Ring depth, receive and transmit. The receive ring is what a backend that drops rather than
// waits (DPDK's vhost PMD, OVS, VALE) writes into while our worker is not running: every
// buffer is given back right after its batch (RxDone), so the ring is full whenever the worker
// runs, and its depth is all the slack there is when the worker is descheduled. 1024 buffers
// are 51 ms at 20 kpps (256: 13 ms, less than a CFS wait on a loaded 2-CPU host); memory:
// 2 x 1024 x 10 KiB per queue pair, touched only as far as frames reach.
constexpr uint32_t kQueueSize = 1024;
}  // namespace

Result<std::unique_ptr<VirtioUserPort>> VirtioUserPort::Create(const VirtioUserPortOptions& o) {
  vhost::FrontendConfig c;
  c.socket_path = o.socket_path;
  c.listen = o.server;
  c.queue_pairs = o.queue_pairs;
  c.packed = o.packed;
  c.queue_size = kQueueSize;
  c.mrg_rxbuf = false;
  c.buf_bytes = kBufBytes;
  auto fe = vhost::Frontend::Create(c);
  if (!fe) return fe.error().Wrap("port " + o.name);
  return std::unique_ptr<VirtioUserPort>(new VirtioUserPort(o, std::move(*fe)));
}

size_t VirtioUserPort::Rx(uint32_t q, Batch& out, size_t max) {
  RxState& st = rx_[q];
  st.n = 0;
  vhost::FrontendQueue& rq = fe_->rxq(q);
  const uint32_t hdr = fe_->net_hdr_len();
  max = std::min<size_t>({max, kBurst, kBurst - out.size()});
  virtio::UsedBuffer u;
  while (st.n < max && rq.PopUsed(&u) == virtio::PopStatus::kOk) {
    const uint32_t k = st.n++;
    st.ids[k] = u.id;
    // UNTRUSTED: u.len is clamped to the buffer by the driver ring.
    if (u.len < hdr) {
      rxc_[q].dropped.Add();
      rxc_[q].drops.Add(DropReason::kBadFrame);
      continue;  // given back in RxDone
    }
    std::byte* b = fe_->Buffer(rq, u.id);
    PacketRef* p = out.TryPush();
    PacketFromFlat(p, &st.segs[k], b + hdr, u.len - hdr);
    // UNTRUSTED: the backend's virtio-net header, translated (and checked by the switch).
    virtio::VirtioNetHdrV1 h;
    std::memcpy(&h, b, sizeof h);
    p->offload = OffloadFromVirtio(h);
  }
  return out.size();
}

void VirtioUserPort::RxDone(uint32_t q, Batch& batch, size_t sent) {
  RxState& st = rx_[q];
  if (st.n == 0) return;
  uint64_t bytes = 0;
  for (size_t k = 0; k < sent; ++k) bytes += batch[static_cast<uint32_t>(k)].len;
  rxc_[q].packets.Add(sent);
  rxc_[q].bytes.Add(bytes);
  // A used buffer cannot go back to the backend unread: what was not sent is dropped.
  if (batch.size() > sent) {
    rxc_[q].dropped.Add(batch.size() - sent);
    rxc_[q].drops.Add(DropReason::kQueueFull, batch.size() - sent);
  }
  vhost::FrontendQueue& rq = fe_->rxq(q);
  // UNTRUSTED: a backend that wrote a bad used entry broke the ring (the driver ring found
  // it): nothing is added to a broken ring again (Add would refuse it by aborting).
  if (rq.broken()) {
    st.n = 0;
    return;
  }
  // Buffer index == ring id: every id handed back is free again, so each re-added buffer is
  // the one its new id names.
  for (uint32_t i = 0; i < st.n; ++i) {
    virtio::DriverBuffer b{fe_->BufferAddr(rq, rq.NextId()), kBufBytes, true};
    rq.Add({&b, 1});
  }
  rq.Kick();
  st.n = 0;
}

std::string VirtioUserPort::State() const {
  for (uint32_t k = 0; k < 2 * fe_->queue_pairs(); ++k) {
    vhost::FrontendQueue& q = k % 2 == 0 ? fe_->rxq(k / 2) : fe_->txq(k / 2);
    if (q.broken()) return "broken: the backend wrote a bad used entry (the port drops what it is sent)";
    if (q.kick_blocked.load(std::memory_order_relaxed)) {
      return "connected, not kicking: the backend made its kick eventfd block";
    }
  }
  return "connected";
}

void VirtioUserPort::Reclaim(vhost::FrontendQueue& tq) {
  virtio::UsedBuffer u;
  while (tq.PopUsed(&u) == virtio::PopStatus::kOk) {
  }
}

size_t VirtioUserPort::TxRoom(uint32_t q) {
  vhost::FrontendQueue& tq = fe_->txq(q);
  if (tq.broken()) return kBurst;  // Tx drops: a broken port must not hold others
  Reclaim(tq);
  return std::min<size_t>(tq.num_free(), kBurst);
}

size_t VirtioUserPort::Tx(uint32_t q, std::span<const PacketRef* const> in) {
  vhost::FrontendQueue& tq = fe_->txq(q);
  const uint32_t hdr = fe_->net_hdr_len();
  if (tq.broken()) {  // UNTRUSTED: the backend broke the ring; see RxDone
    txc_[q].dropped.Add(in.size());
    txc_[q].drops.Add(DropReason::kPortDown, in.size());
    return in.size();
  }
  size_t k = 0;
  uint64_t bytes = 0, sent = 0;
  for (; k < in.size(); ++k) {
    if (tq.num_free() == 0) Reclaim(tq);
    if (tq.broken()) {
      txc_[q].dropped.Add(in.size() - k);
      txc_[q].drops.Add(DropReason::kPortDown, in.size() - k);
      k = in.size();
      break;
    }
    if (tq.num_free() == 0) break;  // the source keeps the rest
    const PacketRef& p = *in[k];
    if (hdr + uint64_t{p.len} > kBufBytes) {
      txc_[q].dropped.Add();
      txc_[q].drops.Add(DropReason::kTooBig);
      continue;
    }
    const uint16_t id = tq.NextId();
    std::byte* b = fe_->Buffer(tq, id);
    std::memset(b, 0, hdr);
    // Copy into our buffer: a one-segment writable chain over it.
    virtio::DescChain c;
    c.num_readable = 0;
    c.num_segments = 1;
    c.readable_bytes = 0;
    c.writable_bytes = p.len;
    c.segs[0] = {b + hdr, p.len};
    virtio::ChainWriter w(c);
    CopyPacket(p, w);
    virtio::DriverBuffer d{fe_->BufferAddr(tq, id), hdr + p.len, false};
    tq.Add({&d, 1});
    bytes += p.len;
    ++sent;
  }
  if (sent) tq.Kick();
  txc_[q].packets.Add(sent);
  txc_[q].bytes.Add(bytes);
  return k;
}

bool VirtioUserPort::ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) {
  vhost::FrontendQueue& rq = fe_->rxq(q);
  const bool pending = rq.packed ? rq.packed_ring.EnableCalls() : rq.split.EnableCalls();
  fds->push_back({rq.call.fd(), true});
  return pending;
}

void VirtioUserPort::DisarmNotify(uint32_t q) {
  vhost::FrontendQueue& rq = fe_->rxq(q);
  rq.packed ? rq.packed_ring.DisableCalls() : rq.split.DisableCalls();
}

PortStats VirtioUserPort::Stats() const {
  PortStats s;
  for (uint32_t q = 0; q < rxc_.size(); ++q) {
    s.rx_packets += rxc_[q].packets.Get();
    s.rx_bytes += rxc_[q].bytes.Get();
    s.rx_dropped += rxc_[q].dropped.Get();
    s.tx_packets += txc_[q].packets.Get();
    s.tx_bytes += txc_[q].bytes.Get();
    s.tx_dropped += txc_[q].dropped.Get();
  }
  s.connected = fe_ != nullptr;
  return s;
}

uint64_t VirtioUserPort::DropsFor(DropReason r) const {
  uint64_t n = 0;
  for (uint32_t q = 0; q < rxc_.size(); ++q) n += rxc_[q].drops.Get(r) + txc_[q].drops.Get(r);
  return n;
}

PortKind VirtioUserPortKind() {
  PortKind k;
  k.name = "virtio-user";
  k.summary =
      "nicmuxd as the frontend of another vhost-user backend (DPDK vhost, OVS, another nicmuxd): connects to "
      "PATH (or, with `server`, listens and waits for the backend) at start.";
  k.max_queues = vhost::kMaxFrontendQueuePairs;
  k.options = {
      {"socket", OptionType::kString, "PATH", "", "the backend's vhost-user UNIX socket", 0, 0, true},
      {"server", OptionType::kFlag, "", "", "listen on PATH and wait for the backend to connect"},
      {"queues", OptionType::kUInt, "N", "1", "queue pairs, 1..8", 1, vhost::kMaxFrontendQueuePairs},
      {"packed", OptionType::kFlag, "", "", "packed virtqueues"},
  };
  k.claims = [](const PortSpec& s) { return "socket " + s.options.at("socket"); };
  k.create = [](const PortSpec& s, const PortContext&) -> Result<std::unique_ptr<Port>> {
    VirtioUserPortOptions o;
    o.name = s.name;
    o.socket_path = s.options.at("socket");
    o.server = s.Has("server");
    o.packed = s.Has("packed");
    NICMUX_TRY_ASSIGN(q, s.UInt("queues", 1, vhost::kMaxFrontendQueuePairs, 1));
    o.queue_pairs = static_cast<uint32_t>(q);
    NICMUX_TRY_ASSIGN(p, VirtioUserPort::Create(o));
    NICMUX_LOG(kInfo, "port %s: attached to the backend at %s", s.name.c_str(), o.socket_path.c_str());
    return std::unique_ptr<Port>(std::move(p));
  };
  return k;
}

}  // namespace nicmux
