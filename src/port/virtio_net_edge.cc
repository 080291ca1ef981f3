#include "port/virtio_net_edge.h"

#include <algorithm>
#include <cstring>

namespace nicmux {

Offload OffloadFromVirtio(const virtio::VirtioNetHdrV1& h) {
  Offload o;
  if (h.flags & virtio::kNetHdrFNeedsCsum) {
    o.flags |= Offload::kNeedsCsum;
    o.csum_start = h.csum_start.get();
    o.csum_offset = h.csum_offset.get();
  }
  if (h.flags & virtio::kNetHdrFDataValid) o.flags |= Offload::kCsumValid;
  switch (h.gso_type & ~virtio::kNetHdrGsoEcn) {
    case virtio::kNetHdrGsoNone: break;
    case virtio::kNetHdrGsoTcpv4: o.gso_type = GsoType::kTcp4; break;
    case virtio::kNetHdrGsoTcpv6: o.gso_type = GsoType::kTcp6; break;
    case virtio::kNetHdrGsoUdp: o.gso_type = GsoType::kUdp; break;
    case virtio::kNetHdrGsoUdpL4: o.gso_type = GsoType::kUdpL4; break;
    default: o.gso_type = GsoType::kInvalid; break;
  }
  if (o.gso()) {
    o.hdr_len = h.hdr_len.get();
    o.gso_size = h.gso_size.get();
    if (h.gso_type & virtio::kNetHdrGsoEcn) o.flags |= Offload::kEcn;
  } else if (h.gso_type & virtio::kNetHdrGsoEcn) {
    o.gso_type = GsoType::kInvalid;  // ECN without a GSO type means nothing: refused
  }
  return o;
}

virtio::VirtioNetHdrV1 VirtioFromOffload(const Offload& o) {
  virtio::VirtioNetHdrV1 h{};
  if (o.needs_csum()) {
    h.flags |= virtio::kNetHdrFNeedsCsum;
    h.csum_start = Le16::Of(o.csum_start);
    h.csum_offset = Le16::Of(o.csum_offset);
  }
  if (o.csum_valid()) h.flags |= virtio::kNetHdrFDataValid;
  switch (o.gso_type) {
    case GsoType::kNone: case GsoType::kInvalid: break;
    case GsoType::kTcp4: h.gso_type = virtio::kNetHdrGsoTcpv4; break;
    case GsoType::kTcp6: h.gso_type = virtio::kNetHdrGsoTcpv6; break;
    case GsoType::kUdp: h.gso_type = virtio::kNetHdrGsoUdp; break;
    case GsoType::kUdpL4: h.gso_type = virtio::kNetHdrGsoUdpL4; break;
  }
  if (h.gso_type != virtio::kNetHdrGsoNone) {
    if (o.ecn()) h.gso_type |= virtio::kNetHdrGsoEcn;
    h.hdr_len = Le16::Of(o.hdr_len);
    h.gso_size = Le16::Of(o.gso_size);
  }
  return h;
}

bool PacketFromChainWalk(const virtio::DescChain& c, uint32_t net_hdr_len, PacketRef* p, bool read_hdr) {
  if (c.readable_bytes < net_hdr_len) return false;
  p->segs = c.segs;
  p->nsegs = c.num_readable;
  p->len = static_cast<uint32_t>(c.readable_bytes - net_hdr_len);
  p->head_len = std::min<uint32_t>(p->len, kHeadBytes);
  // The common case (header and a whole head in the first segment) is PacketFromChain's,
  // inline. Here: walk the header and the head once, segment by segment; remember where the
  // rest starts.
  p->offload = {};
  uint32_t seg = 0, off = 0;
  auto take = [&](std::byte* dst, uint32_t n) {
    while (n > 0) {
      const Segment& s = c.segs[seg];
      uint32_t k = std::min(n, s.len - off);
      if (dst) {
        std::memcpy(dst, s.data + off, k);
        dst += k;
      }
      n -= k;
      off += k;
      if (off == s.len) {
        ++seg;
        off = 0;
      }
    }
  };
  std::byte hdr[sizeof(virtio::VirtioNetHdrV1)] = {};
  take(read_hdr ? hdr : nullptr, std::min<uint32_t>(net_hdr_len, sizeof hdr));
  if (net_hdr_len > sizeof hdr) take(nullptr, net_hdr_len - sizeof hdr);
  if (read_hdr) {
    virtio::VirtioNetHdrV1 h;
    std::memcpy(&h, hdr, sizeof h);
    p->offload = OffloadFromVirtio(h);
  }
  take(p->head, p->head_len);
  p->seg = static_cast<uint16_t>(seg);
  p->seg_off = off;
  return true;
}

}  // namespace nicmux
