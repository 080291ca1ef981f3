// What the device-side and driver-side rings of both layouts share: queue configuration, the
// status of a pop, and mapping a ring's areas out of guest memory with full-length, aligned,
// one-region checks (a ring outside memory is refused before the queue starts).
#pragma once

#include <cstdint>
#include <string>

#include "base/result.h"
#include "memory/guest_memory.h"
#include "virtio/desc_chain.h"
#include "virtio/features.h"
#include "virtio/wire.h"

namespace nicmux::virtio {

// The most bad chains one Pop() completes before it returns kEmpty (the next call goes on):
// a bound on one call's work, whatever the driver keeps posting. A caller that pops many times
// for one piece of work (PopBurst, a port's Tx) passes one budget to every call, so that bad
// chains between good ones cannot multiply the bound by the number of calls.
inline constexpr uint32_t kMaxBadChainsPerPop = 32;

enum class PopStatus : uint8_t {
  kOk,      // *chain (or *used) is filled in
  kEmpty,   // nothing available now (or kMaxBadChainsPerPop bad chains completed: call again)
  kBroken,  // the queue is broken until the peer resets it; see drops()
};

struct VringConfig {
  uint32_t size = 0;      // entries; a power of two for split rings, <= kMaxQueueSize
  uint64_t features = 0;  // negotiated: RING_EVENT_IDX, RING_INDIRECT_DESC, RING_PACKED matter
  ChainPolicy policy = ChainPolicy::kAny;

  bool event_idx() const { return Has(features, kFRingEventIdx); }
  bool indirect() const { return Has(features, kFRingIndirectDesc); }
  bool in_order() const { return Has(features, kFInOrder); }
};

// A queue size the layout allows (virtio 1.2 §2.6: "Queue Size ... a power of 2" for split
// rings; §2.8 allows any size up to 32768 for packed rings). The error names the value.
Result<void> CheckQueueSize(uint32_t size, bool packed);

// Which address space the ring addresses are in: guest-physical (virtio PCI, our own driver)
// or the frontend's virtual addresses (vhost-user SET_VRING_ADDR).
enum class RingAddrSpace : uint8_t { kGuestPhysical, kFrontendVirtual };

struct SplitRingAreas {
  VirtqDesc* desc = nullptr;
  VirtqAvailHeader* avail = nullptr;
  VirtqUsedHeader* used = nullptr;
};
struct PackedRingAreas {
  VirtqPackedDesc* desc = nullptr;
  VirtqPackedEvent* driver_event = nullptr;  // written by the driver, read by the device
  VirtqPackedEvent* device_event = nullptr;  // written by the device, read by the driver
};

// UNTRUSTED: the three addresses come from the peer; each area is translated with its full
// length into one region and checked for the alignment the spec requires (the atomic accesses
// on index and flags words need it).
Result<SplitRingAreas> MapSplitRing(const GuestMemory& mem, RingAddrSpace space, uint64_t desc,
                                    uint64_t avail, uint64_t used, uint32_t size);
Result<PackedRingAreas> MapPackedRing(const GuestMemory& mem, RingAddrSpace space, uint64_t desc,
                                      uint64_t driver_event, uint64_t device_event, uint32_t size);

// The avail ring's entries and used_event field, the used ring's entries and avail_event field.
inline Le16* AvailRing(VirtqAvailHeader* a) { return reinterpret_cast<Le16*>(a + 1); }
inline Le16& UsedEvent(VirtqAvailHeader* a, uint32_t size) { return AvailRing(a)[size]; }
inline VirtqUsedElem* UsedRing(VirtqUsedHeader* u) { return reinterpret_cast<VirtqUsedElem*>(u + 1); }
inline Le16& AvailEvent(VirtqUsedHeader* u, uint32_t size) {
  return *reinterpret_cast<Le16*>(UsedRing(u) + size);
}

}  // namespace nicmux::virtio
