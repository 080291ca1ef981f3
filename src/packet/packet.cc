#include "packet/packet.h"

#include <algorithm>
#include <cstring>

namespace nicmux {

bool PacketFromChain(const virtio::DescChain& c, uint32_t net_hdr_len, PacketRef* p,
                     bool read_vnet) {
  if (c.readable_bytes < net_hdr_len) return false;
  p->segs = c.segs;
  p->nsegs = c.num_readable;
  p->len = static_cast<uint32_t>(c.readable_bytes - net_hdr_len);
  p->head_len = std::min<uint32_t>(p->len, kHeadBytes);
  // Common case: header and head in the first segment.
  const virtio::ChainSegment& s0 = c.segs[0];
  if (net_hdr_len == sizeof(virtio::VirtioNetHdrV1) && s0.len >= net_hdr_len + p->head_len) {
    if (read_vnet) {
      std::memcpy(&p->vnet, s0.data, sizeof p->vnet);
    } else {
      p->vnet = {};
    }
    if (s0.len >= net_hdr_len + kHeadBytes) {
      // The segment holds a whole head (so the frame is at least kHeadBytes long): a
      // fixed-size copy, inlined moves instead of a call.
      std::memcpy(p->head, s0.data + net_hdr_len, kHeadBytes);
    } else {
      std::memcpy(p->head, s0.data + net_hdr_len, p->head_len);
    }
    const uint32_t used = net_hdr_len + p->head_len;
    p->seg = used == s0.len ? 1 : 0;
    p->seg_off = used == s0.len ? 0 : used;
    return true;
  }
  std::memset(&p->vnet, 0, sizeof p->vnet);
  // Walk the header and the head once, segment by segment; remember where the rest starts.
  uint32_t seg = 0, off = 0;
  auto take = [&](std::byte* dst, uint32_t n) {
    while (n > 0) {
      const virtio::ChainSegment& s = c.segs[seg];
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
  take(read_vnet ? hdr : nullptr, std::min<uint32_t>(net_hdr_len, sizeof hdr));
  if (net_hdr_len > sizeof hdr) take(nullptr, net_hdr_len - sizeof hdr);
  if (read_vnet) std::memcpy(&p->vnet, hdr, sizeof hdr);
  take(p->head, p->head_len);
  p->seg = static_cast<uint16_t>(seg);
  p->seg_off = off;
  return true;
}

}  // namespace nicmux
