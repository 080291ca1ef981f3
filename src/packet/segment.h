// Segment: a run of bytes in someone's memory (a guest buffer, a TAP slot, a UMEM frame) that a
// packet is made of. The rings resolve descriptors into these (virtio::ChainSegment is this).
#pragma once

#include <cstddef>
#include <cstdint>

namespace nicmux {

struct Segment {
  std::byte* data;
  uint32_t len;
};

}  // namespace nicmux
