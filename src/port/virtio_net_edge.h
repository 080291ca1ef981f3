// The virtio-net edge: where a virtio-net header (vhost-user's and virtio-user's queues, a TAP
// fd's IFF_VNET_HDR) becomes the port-neutral Offload record and back (virtio 1.2 §5.1.6), and
// where a descriptor chain becomes a PacketRef. Nothing past the ports sees virtio types.
#pragma once

#include <cstdint>

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
bool PacketFromChain(const virtio::DescChain& c, uint32_t net_hdr_len, PacketRef* p,
                     bool read_hdr = true);

}  // namespace nicmux
