// The virtio-net edge: where a virtio-net header (vhost-user's and virtio-user's queues, a TAP
// fd's IFF_VNET_HDR) becomes the port-neutral Offload record and back (virtio 1.2 §5.1.6), and
// where a descriptor chain becomes a PacketRef. Nothing past the ports sees virtio types.
#pragma once

#include <cstdint>
#include <cstring>

#include "packet/offload.h"
#include "packet/packet.h"
#include "virtio/desc_chain.h"
#include "virtio/net_hdr.h"

namespace nicmux {

// UNTRUSTED: h is the peer's. Its fields are copied, not trusted: CheckOffload checks them
// against the frame. A gso_type we do not know becomes GsoType::kInvalid (refused there);
// flags we do not know (RSC_INFO) are ignored.
Offload OffloadFromVirtio(const virtio::VirtioNetHdrV1& h);
// The header to write in front of a frame with this record (num_buffers 0: the caller sets it
// where MRG_RXBUF needs it).
virtio::VirtioNetHdrV1 VirtioFromOffload(const Offload& o);

// Fills p from a device-readable chain that starts with a virtio-net header of net_hdr_len
// bytes. False when the chain is shorter than the header (a bad frame). read_hdr: translate the
// header's offload fields; false where no offload was negotiated (the header then means nothing,
// §5.1.6.2, and its bytes are not even read: they sit in a cache line of their own that the
// other core has just written).
// Inline: the common case (header and a whole head in the first segment) once per received
// packet; anything else goes to PacketFromChainWalk.
inline bool PacketFromChain(const virtio::DescChain& c, uint32_t net_hdr_len, PacketRef* p,
                            bool read_hdr = true);
bool PacketFromChainWalk(const virtio::DescChain& c, uint32_t net_hdr_len, PacketRef* p, bool read_hdr);

inline bool PacketFromChain(const virtio::DescChain& c, uint32_t net_hdr_len, PacketRef* p, bool read_hdr) {
  const Segment& s0 = c.segs[0];
  // UNTRUSTED: lengths are the ring's checked segments; the fixed-size copy reads kHeadBytes
  // inside the first segment only when the segment holds them past the header.
  if (net_hdr_len != sizeof(virtio::VirtioNetHdrV1) || c.num_readable == 0 ||
      s0.len < net_hdr_len + uint64_t{kHeadBytes} || c.readable_bytes < net_hdr_len) [[unlikely]] {
    return PacketFromChainWalk(c, net_hdr_len, p, read_hdr);
  }
  p->segs = c.segs;
  p->nsegs = c.num_readable;
  p->len = static_cast<uint32_t>(c.readable_bytes - net_hdr_len);
  p->head_len = kHeadBytes;  // len >= kHeadBytes: the first segment alone holds that much
  if (read_hdr) {
    virtio::VirtioNetHdrV1 h;
    std::memcpy(&h, s0.data, sizeof h);
    p->offload = OffloadFromVirtio(h);
  } else {
    p->offload = {};
  }
  std::memcpy(p->head, s0.data + net_hdr_len, kHeadBytes);  // fixed size: inlined moves
  const uint32_t used = net_hdr_len + kHeadBytes;
  p->seg = used == s0.len ? 1 : 0;
  p->seg_off = used == s0.len ? 0 : used;
  return true;
}

}  // namespace nicmux
