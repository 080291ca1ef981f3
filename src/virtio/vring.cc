#include "virtio/vring.h"

namespace nicmux::virtio {
namespace {

Result<std::byte*> MapArea(const GuestMemory& mem, RingAddrSpace space, const char* what,
                           uint64_t addr, uint64_t len, uint64_t align) {
  if (addr % align != 0) {
    return Error(std::string(what) + " address " + std::to_string(addr) + " is not " +
                 std::to_string(align) + "-byte aligned");
  }
  std::byte* p = space == RingAddrSpace::kGuestPhysical
                     ? mem.TranslateFast(GuestAddr{addr}, len, Access::kWrite)
                     : mem.TranslateUvaFast(addr, len, Access::kWrite);
  if (p == nullptr) {
    return Error(std::string(what) + " [" + std::to_string(addr) + ", +" + std::to_string(len) +
                 ") is not inside one memory region");
  }
  // Host mappings are page aligned, so guest alignment carries over; check anyway, since the
  // atomics below would be undefined on a misaligned pointer.
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    return Error(std::string(what) + " maps to a misaligned host address");
  }
  return p;
}

}  // namespace

Result<void> CheckQueueSize(uint32_t size, bool packed) {
  if (size == 0 || size > kMaxQueueSize) {
    return Error("queue size " + std::to_string(size) + " is outside 1.." +
                 std::to_string(kMaxQueueSize));
  }
  if (!packed && (size & (size - 1)) != 0) {
    return Error("queue size " + std::to_string(size) + " is not a power of two");
  }
  return Ok();
}

Result<SplitRingAreas> MapSplitRing(const GuestMemory& mem, RingAddrSpace space, uint64_t desc,
                                    uint64_t avail, uint64_t used, uint32_t size) {
  NICMUX_TRY(CheckQueueSize(size, false));
  auto d = MapArea(mem, space, "descriptor table", desc, SplitRingLayout::DescBytes(size),
                   SplitRingLayout::kDescAlign);
  if (!d) return d.error();
  auto a = MapArea(mem, space, "avail ring", avail, SplitRingLayout::AvailBytes(size),
                   SplitRingLayout::kAvailAlign);
  if (!a) return a.error();
  auto u = MapArea(mem, space, "used ring", used, SplitRingLayout::UsedBytes(size),
                   SplitRingLayout::kUsedAlign);
  if (!u) return u.error();
  return SplitRingAreas{reinterpret_cast<VirtqDesc*>(*d), reinterpret_cast<VirtqAvailHeader*>(*a),
                        reinterpret_cast<VirtqUsedHeader*>(*u)};
}

Result<PackedRingAreas> MapPackedRing(const GuestMemory& mem, RingAddrSpace space, uint64_t desc,
                                      uint64_t driver_event, uint64_t device_event,
                                      uint32_t size) {
  NICMUX_TRY(CheckQueueSize(size, true));
  auto d = MapArea(mem, space, "descriptor ring", desc, PackedRingLayout::DescBytes(size),
                   PackedRingLayout::kDescAlign);
  if (!d) return d.error();
  auto dr = MapArea(mem, space, "driver event area", driver_event, PackedRingLayout::kEventBytes,
                    PackedRingLayout::kEventAlign);
  if (!dr) return dr.error();
  auto dv = MapArea(mem, space, "device event area", device_event, PackedRingLayout::kEventBytes,
                    PackedRingLayout::kEventAlign);
  if (!dv) return dv.error();
  return PackedRingAreas{reinterpret_cast<VirtqPackedDesc*>(*d),
                         reinterpret_cast<VirtqPackedEvent*>(*dr),
                         reinterpret_cast<VirtqPackedEvent*>(*dv)};
}

}  // namespace nicmux::virtio
