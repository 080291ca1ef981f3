// struct virtio_net_hdr (virtio 1.2 §5.1.6): the header in front of every packet on a
// virtio-net queue once VERSION_1 is negotiated (num_buffers always present, §5.1.6.1).
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/le.h"

namespace nicmux::virtio {

struct VirtioNetHdrV1 {
  uint8_t flags;
  uint8_t gso_type;
  Le16 hdr_len;
  Le16 gso_size;
  Le16 csum_start;
  Le16 csum_offset;
  Le16 num_buffers;  // with MRG_RXBUF: how many rx buffers this packet spans; else 1 or ignored
};
static_assert(sizeof(VirtioNetHdrV1) == 12);
static_assert(offsetof(VirtioNetHdrV1, hdr_len) == 2 && offsetof(VirtioNetHdrV1, csum_start) == 6 &&
              offsetof(VirtioNetHdrV1, num_buffers) == 10);

inline constexpr uint8_t kNetHdrFNeedsCsum = 1;
inline constexpr uint8_t kNetHdrFDataValid = 2;
inline constexpr uint8_t kNetHdrFRscInfo = 4;

inline constexpr uint8_t kNetHdrGsoNone = 0;
inline constexpr uint8_t kNetHdrGsoTcpv4 = 1;
inline constexpr uint8_t kNetHdrGsoUdp = 3;
inline constexpr uint8_t kNetHdrGsoTcpv6 = 4;
inline constexpr uint8_t kNetHdrGsoUdpL4 = 5;
inline constexpr uint8_t kNetHdrGsoEcn = 0x80;

}  // namespace nicmux::virtio
