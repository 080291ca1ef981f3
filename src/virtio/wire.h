// Virtqueue wire layouts, exactly as the virtio 1.2 specification lays them out in shared
// memory, with static_asserts on size and offsets. Only plain data here: the rules for reading
// and writing these live in split_vring / packed_vring (device side) and driver_*_vring.
//
//  split ring:  virtio 1.2 §2.7 (descriptor table §2.7.5, available ring §2.7.6, used ring §2.7.8)
//  packed ring: virtio 1.2 §2.8 (descriptor §2.8.13, event suppression §2.8.14)
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/le.h"

namespace nicmux::virtio {

// Largest queue size either layout allows (§2.7 "Queue Size ... maximum 32768", §2.8).
inline constexpr uint32_t kMaxQueueSize = 32768;

// Split descriptor flags (§2.7.5).
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
// Packed descriptor flags (§2.8.1): the avail and used bits.
inline constexpr uint16_t kDescFAvail = 1u << 7;
inline constexpr uint16_t kDescFUsed = 1u << 15;

// Split ring notification suppression (§2.7.7, §2.7.10).
inline constexpr uint16_t kAvailFNoInterrupt = 1;
inline constexpr uint16_t kUsedFNoNotify = 1;

// Packed event suppression flags (§2.8.10).
inline constexpr uint16_t kRingEventFlagsEnable = 0;
inline constexpr uint16_t kRingEventFlagsDisable = 1;
inline constexpr uint16_t kRingEventFlagsDesc = 2;

struct VirtqDesc {
  Le64 addr;
  Le32 len;
  Le16 flags;
  Le16 next;
};
static_assert(sizeof(VirtqDesc) == 16);
static_assert(offsetof(VirtqDesc, len) == 8 && offsetof(VirtqDesc, flags) == 12 &&
              offsetof(VirtqDesc, next) == 14);

// struct virtq_avail { le16 flags; le16 idx; le16 ring[size]; le16 used_event; }
struct VirtqAvailHeader {
  Le16 flags;
  Le16 idx;
};
static_assert(sizeof(VirtqAvailHeader) == 4);

struct VirtqUsedElem {
  Le32 id;
  Le32 len;
};
static_assert(sizeof(VirtqUsedElem) == 8);

// struct virtq_used { le16 flags; le16 idx; struct virtq_used_elem ring[size]; le16 avail_event; }
struct VirtqUsedHeader {
  Le16 flags;
  Le16 idx;
};
static_assert(sizeof(VirtqUsedHeader) == 4);

struct VirtqPackedDesc {
  Le64 addr;
  Le32 len;
  Le16 id;
  Le16 flags;
};
static_assert(sizeof(VirtqPackedDesc) == 16);
static_assert(offsetof(VirtqPackedDesc, id) == 12 && offsetof(VirtqPackedDesc, flags) == 14);

// struct pvirtq_event_suppress { le16 off_wrap (desc_event_off:15, desc_event_wrap:1); le16 flags; }
struct VirtqPackedEvent {
  Le16 off_wrap;
  Le16 flags;
};
static_assert(sizeof(VirtqPackedEvent) == 4);

// Sizes of each area for a queue of `size` entries, and the alignment each needs (§2.7 table
// "Virtqueue Part / Alignment / Size"; §2.8.10 for the packed event structures).
struct SplitRingLayout {
  static constexpr uint64_t DescBytes(uint32_t size) { return 16ull * size; }
  static constexpr uint64_t AvailBytes(uint32_t size) { return 6ull + 2ull * size; }
  static constexpr uint64_t UsedBytes(uint32_t size) { return 6ull + 8ull * size; }
  static constexpr uint64_t kDescAlign = 16, kAvailAlign = 2, kUsedAlign = 4;
};
struct PackedRingLayout {
  static constexpr uint64_t DescBytes(uint32_t size) { return 16ull * size; }
  static constexpr uint64_t kEventBytes = 4;
  static constexpr uint64_t kDescAlign = 16, kEventAlign = 4;
};

}  // namespace nicmux::virtio
