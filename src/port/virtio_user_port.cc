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

Result<std::unique_ptr<VirtioUserPort>> VirtioUserPort::Create(const VirtioUserPortOptions& o, HandoverRecord* handover) {
  vhost::FrontendConfig c;
  c.socket_path = o.socket_path;
  c.listen = o.server;
  c.queue_pairs = o.queue_pairs;
  c.packed = o.packed;
  c.queue_size = kQueueSize;
  c.mrg_rxbuf = false;
  c.buf_bytes = kBufBytes;
  auto fe = handover ? vhost::Frontend::Adopt(c, *handover) : vhost::Frontend::Create(c);
  if (!fe) return fe.error().Wrap("port " + o.name + (handover ? ": handover" : ""));
  return std::unique_ptr<VirtioUserPort>(new VirtioUserPort(o, std::move(*fe)));
}

VirtioUserPort::VirtioUserPort(const VirtioUserPortOptions& o, std::unique_ptr<vhost::Frontend> fe)
    : Port(o.name), fe_(std::move(fe)) {
  // The frontend filled each receive ring with buffer i under id i.
  for (uint32_t q = 0; q < fe_->queue_pairs(); ++q) {
    rx_[q].buf_of_id.resize(kQueueSize);
    for (uint32_t i = 0; i < kQueueSize; ++i) rx_[q].buf_of_id[i] = static_cast<uint16_t>(i);
  }
}

void VirtioUserPort::Emit(uint32_t q, uint16_t buf, uint32_t len, Batch& out) {
  RxState& st = rx_[q];
  const uint32_t k = st.n++;
  st.bufs[k] = buf;
  st.lens[k] = len;
  std::byte* b = fe_->Buffer(fe_->rxq(q), buf);
  const uint32_t hdr = fe_->net_hdr_len();
  PacketRef* p = out.TryPush();
  PacketFromFlat(p, &st.segs[k], b + hdr, len - hdr);
  // UNTRUSTED: the backend's virtio-net header, translated (and checked by the switch).
  virtio::VirtioNetHdrV1 h;
  std::memcpy(&h, b, sizeof h);
  p->offload = OffloadFromVirtio(h);
}

size_t VirtioUserPort::Rx(uint32_t q, Batch& out, size_t max) {
  RxState& st = rx_[q];
  st.n = 0;
  st.nbad = 0;
  vhost::FrontendQueue& rq = fe_->rxq(q);
  const uint32_t hdr = fe_->net_hdr_len();
  max = std::min<size_t>({max, kBurst, kBurst - out.size()});
  // What the switch did not take last time first, in order.
  uint32_t h = 0;
  for (; h < st.nheld && st.n < max; ++h) Emit(q, st.held_bufs[h], st.held_lens[h], out);
  if (h < st.nheld) {  // (max smaller than what is held: keep the rest, in order)
    std::memmove(st.held_bufs, st.held_bufs + h, (st.nheld - h) * sizeof st.held_bufs[0]);
    std::memmove(st.held_lens, st.held_lens + h, (st.nheld - h) * sizeof st.held_lens[0]);
    st.nheld -= h;
    st.nheld_seen.store(st.nheld, std::memory_order_relaxed);
    return out.size();
  }
  st.nheld = 0;
  st.nheld_seen.store(0, std::memory_order_relaxed);
  virtio::UsedBuffer u;
  while (st.n + st.nbad < max && rq.PopUsed(&u) == virtio::PopStatus::kOk) {
    // UNTRUSTED: u.id is one the driver ring handed out (it checked), u.len clamped to the
    // buffer by it.
    const uint16_t buf = st.buf_of_id[u.id];
    if (u.len < hdr) {
      rxc_[q].dropped.Add();
      rxc_[q].drops.Add(DropReason::kBadFrame);
      st.bad[st.nbad++] = buf;  // given back in RxDone
      continue;
    }
    Emit(q, buf, u.len, out);
  }
  return out.size();
}

void VirtioUserPort::RxDone(uint32_t q, Batch& batch, size_t sent) {
  RxState& st = rx_[q];
  if (st.n == 0 && st.nbad == 0) return;
  uint64_t bytes = 0;
  for (size_t k = 0; k < sent; ++k) bytes += batch[static_cast<uint32_t>(k)].len;
  rxc_[q].packets.Add(sent);
  rxc_[q].bytes.Add(bytes);
  // The frames not sent keep their buffers (before any still held from an Rx that returned
  // only part of what was held).
  const uint32_t keep = st.n - static_cast<uint32_t>(sent);
  if (keep > 0) {
    std::memmove(st.held_bufs + keep, st.held_bufs, st.nheld * sizeof st.held_bufs[0]);
    std::memmove(st.held_lens + keep, st.held_lens, st.nheld * sizeof st.held_lens[0]);
    for (uint32_t i = 0; i < keep; ++i) {
      st.held_bufs[i] = st.bufs[sent + i];
      st.held_lens[i] = st.lens[sent + i];
    }
    st.nheld += keep;
    st.nheld_seen.store(st.nheld, std::memory_order_relaxed);
  }
  vhost::FrontendQueue& rq = fe_->rxq(q);
  // UNTRUSTED: a backend that wrote a bad used entry broke the ring (the driver ring found
  // it): nothing is added to a broken ring again (Add would refuse it by aborting).
  if (rq.broken()) {
    st.n = st.nbad = 0;
    return;
  }
  // The buffers sent and the bad ones go back, each under the id the ring gives it now.
  auto give = [&](uint16_t buf) {
    const uint16_t id = rq.NextId();
    virtio::DriverBuffer b{fe_->BufferAddr(rq, buf), kBufBytes, true};
    const std::optional<uint16_t> got = rq.Add({&b, 1});
    NICMUX_CHECK(got && *got == id);  // room: every buffer given back freed an id
    st.buf_of_id[id] = buf;
  };
  for (uint32_t i = 0; i < sent; ++i) give(st.bufs[i]);
  for (uint32_t i = 0; i < st.nbad; ++i) give(st.bad[i]);
  rq.Kick();
  st.n = st.nbad = 0;
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

Result<void> VirtioUserPort::Export(HandoverRecord* out) {
  auto r = fe_->Export(out);
  if (!r) return r.error().Wrap("port " + name());
  return Ok();
}

Result<void> VirtioUserPort::ExportPositions(HandoverRecord* out) {
  for (uint32_t q = 0; q < fe_->queue_pairs(); ++q) {
    // (Between rounds every Rx was followed by its RxDone, which gave the buffers back.)
    if (rx_[q].n != 0) return Error("port " + name() + ": queue " + std::to_string(q) + ": a receive batch in flight");
  }
  auto r = fe_->ExportPositions(out);
  if (!r) return r.error().Wrap("port " + name());
  for (uint32_t q = 0; q < fe_->queue_pairs(); ++q) {
    const RxState& st = rx_[q];
    const std::string k = "vu.q." + std::to_string(q) + ".";
    out->SetList(k + "buf_of_id", st.buf_of_id);
    out->Set(k + "held", st.nheld);
    for (uint32_t h = 0; h < st.nheld; ++h) {
      out->Set(k + "held." + std::to_string(h) + ".buf", st.held_bufs[h]);
      out->Set(k + "held." + std::to_string(h) + ".len", st.held_lens[h]);
    }
  }
  return Ok();
}

Result<void> VirtioUserPort::ImportPositions(HandoverRecord& in) {
  auto r = fe_->ImportPositions(in);
  if (!r) return r.error().Wrap("port " + name() + ": handover");
  const uint32_t hdr = fe_->net_hdr_len();
  for (uint32_t q = 0; q < fe_->queue_pairs(); ++q) {
    RxState& st = rx_[q];
    vhost::FrontendQueue& rq = fe_->rxq(q);
    const std::string k = "vu.q." + std::to_string(q) + ".";
    const std::string what = "port " + name() + ": handover: receive queue " + std::to_string(q);
    // UNTRUSTED (the old process): every buffer in exactly one place — under one id in
    // flight, or held (with a length a frame of it can have) — as the ring's shadow says.
    NICMUX_TRY_ASSIGN(buf_of_id, in.GetList(k + "buf_of_id", kQueueSize, kQueueSize - 1));
    NICMUX_TRY_ASSIGN(held, in.Get(k + "held", kBurst));
    std::vector<uint8_t> owner(kQueueSize, 0);
    uint32_t placed = 0;
    for (uint32_t id = 0; id < kQueueSize; ++id) {
      if (rq.broken() || !rq.id_in_flight(static_cast<uint16_t>(id))) continue;
      if (owner[buf_of_id[id]]++) return Error(what + ": buffer " + std::to_string(buf_of_id[id]) + " under two ids");
      ++placed;
    }
    for (uint32_t h = 0; h < held; ++h) {
      NICMUX_TRY_ASSIGN(buf, in.Get(k + "held." + std::to_string(h) + ".buf", kQueueSize - 1));
      NICMUX_TRY_ASSIGN(len, in.Get(k + "held." + std::to_string(h) + ".len", kBufBytes));
      if (owner[buf]++) return Error(what + ": held buffer " + std::to_string(buf) + " is also in the ring or held twice");
      if (len < hdr) return Error(what + ": held frame of " + std::to_string(len) + " bytes");
      st.held_bufs[h] = static_cast<uint16_t>(buf);
      st.held_lens[h] = static_cast<uint32_t>(len);
      ++placed;
    }
    if (!rq.broken() && placed != kQueueSize) {
      return Error(what + ": " + std::to_string(kQueueSize - placed) + " buffer(s) neither in the ring nor held");
    }
    // One descriptor (slot) per buffer in the ring: what RxDone gives back always finds room.
    if (!rq.broken() && rq.num_free() != held) {
      return Error(what + ": " + std::to_string(rq.num_free()) + " free descriptor(s) for " + std::to_string(held) +
                   " held buffer(s)");
    }
    for (uint32_t id = 0; id < kQueueSize; ++id) st.buf_of_id[id] = static_cast<uint16_t>(buf_of_id[id]);
    st.nheld = static_cast<uint32_t>(held);
    st.nheld_seen.store(st.nheld, std::memory_order_relaxed);
  }
  return Ok();
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
  return pending || rx_[q].nheld_seen.load(std::memory_order_relaxed) > 0;
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
  k.hands_over = true;
  k.create = [](const PortSpec& s, const PortContext& c) -> Result<std::unique_ptr<Port>> {
    VirtioUserPortOptions o;
    o.name = s.name;
    o.socket_path = s.options.at("socket");
    o.server = s.Has("server");
    o.packed = s.Has("packed");
    NICMUX_TRY_ASSIGN(q, s.UInt("queues", 1, vhost::kMaxFrontendQueuePairs, 1));
    o.queue_pairs = static_cast<uint32_t>(q);
    NICMUX_TRY_ASSIGN(p, VirtioUserPort::Create(o, c.handover));
    NICMUX_LOG(kInfo, "port %s: attached to the backend at %s%s", s.name.c_str(), o.socket_path.c_str(),
               c.handover ? " (handed over)" : "");
    return std::unique_ptr<Port>(std::move(p));
  };
  return k;
}

}  // namespace nicmux
