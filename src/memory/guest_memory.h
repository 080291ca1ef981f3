// GuestMemory: the only code in nicmux that turns another party's addresses into host pointers
// (DESIGN.md "Key abstractions"). A GuestMemory is an immutable snapshot of one memory table
// (vhost-user SET_MEM_TABLE, or a table grown by ADD_MEM_REG / shrunk by REM_MEM_REG): a new
// table is a new snapshot, swapped in through GuestMemoryMap while readers finish with the old.
//
// Invariants of a snapshot:
//  - every region has size > 0, and gpa + size and uva + size stay below 2^64 (the end of a
//    region is representable);
//  - no two regions overlap, neither in guest-physical nor in frontend-virtual addresses;
//  - at most kMaxRegions regions (vhost-user GET_MAX_MEM_SLOTS answers this);
//  - Translate succeeds only for [addr, addr + len) inside ONE region; all arithmetic is 64-bit
//    and overflow-checked, so no input can yield a pointer outside a mapping.
//
// Two address spaces: guest-physical (GuestAddr, what descriptors carry) and the frontend's
// virtual addresses (what vhost-user SET_VRING_ADDR carries for the rings).
#pragma once

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <type_traits>
#include <vector>

#include "base/mmap.h"
#include "base/result.h"

namespace nicmux {

// A guest-physical address. Never a host pointer.
struct GuestAddr {
  uint64_t value = 0;
  friend constexpr bool operator==(GuestAddr, GuestAddr) = default;
  friend constexpr auto operator<=>(GuestAddr, GuestAddr) = default;
};

enum class Access : uint8_t { kRead, kWrite };

// Plain old data that may be copied out of (or into) guest memory in one fetch.
template <typename T>
concept GuestPod = std::is_trivially_copyable_v<T> && std::is_standard_layout_v<T>;

// One region as a peer describes it, before mapping (vhost-user VhostUserMemoryRegion).
struct RegionSpec {
  uint64_t guest_phys_addr = 0;
  uint64_t size = 0;
  uint64_t user_addr = 0;    // the frontend's virtual address of the region
  uint64_t mmap_offset = 0;  // where the region starts in the fd
};

struct GuestRegion {
  uint64_t gpa = 0;
  uint64_t size = 0;
  uint64_t uva = 0;
  uint64_t mmap_offset = 0;
  std::byte* host = nullptr;  // host view of gpa
  bool writable = true;
  std::shared_ptr<const MappedRegion> mapping;  // keeps host valid; null for borrowed memory
};

class GuestMemory {
 public:
  static constexpr size_t kMaxRegions = 509;  // QEMU's vhost-user maximum memory slots

  // Validates the invariants above; the error names the region and the field.
  static Result<std::shared_ptr<const GuestMemory>> Create(std::vector<GuestRegion> regions);
  // Maps spec from fd (shared, read-write). The fd may be closed afterwards. The mapping is a
  // peer mapping (base/peer_mapping.h): if the peer shrinks the file under it, an access past
  // the new end does not kill the process; the region turns to zeros, Poisoned() says so and
  // fault_fd (an eventfd of the owner's, or -1) is signalled.
  static Result<GuestRegion> MapRegion(const RegionSpec& spec, int fd, int fault_fd = -1);

  // A new snapshot with one more region (ADD_MEM_REG) / without the region matching spec
  // exactly (REM_MEM_REG). This snapshot is unchanged.
  Result<std::shared_ptr<const GuestMemory>> WithRegion(GuestRegion region) const;
  Result<std::shared_ptr<const GuestMemory>> WithoutRegion(const RegionSpec& spec) const;

  // Host view of [addr, addr + len) if it lies in one region, else an error naming the range.
  Result<std::span<std::byte>> Translate(GuestAddr addr, uint64_t len, Access access) const;
  Result<std::span<std::byte>> TranslateUva(uint64_t uva, uint64_t len, Access access) const;

  // The same for hot paths: nullptr instead of an Error. len == 0 needs addr inside a region.
  std::byte* TranslateFast(GuestAddr addr, uint64_t len, Access access) const {
    // Inline for the common case: the region that answered last time answers again.
    const uint32_t hint = last_hit_.load(std::memory_order_relaxed);
    if (hint < regions_.size()) {
      if (std::byte* p = InRegion(regions_[hint], addr.value, len, access, false)) return p;
    }
    return Find(addr.value, len, access, /*by_uva=*/false);
  }
  // TranslateFast for N ranges of one access at once, all in the region that answered last
  // (a burst's buffers mostly share one): out[i] for each, or false when any range is not in
  // it (out[] is then meaningless; the caller translates them one by one).
  template <size_t N>
  bool TranslateGroupFast(const uint64_t (&addr)[N], const uint32_t (&len)[N], Access access,
                          std::byte* (&out)[N]) const {
    const uint32_t hint = last_hit_.load(std::memory_order_relaxed);
    if (hint >= regions_.size()) return false;
    const GuestRegion& r = regions_[hint];
    if (access == Access::kWrite && !r.writable) return false;
    const uint64_t base = r.gpa, size = r.size;
    std::byte* const host = r.host;
    bool inside = true;
#pragma GCC unroll 8
    for (size_t i = 0; i < N; ++i) {
      // UNTRUSTED: addr and len are a guest's. An address below the region makes off wrap
      // past size; off < size and len <= size - off: the range inside, without addr + len.
      const uint64_t off = addr[i] - base;
      const bool in = off < size && len[i] <= size - off;
      inside &= in;
      out[i] = host + (in ? off : 0);  // never a pointer past the mapping, even unused
    }
    return inside;
  }
  std::byte* TranslateUvaFast(uint64_t uva, uint64_t len, Access access) const {
    return Find(uva, len, access, /*by_uva=*/true);
  }

  // Exactly one fetch of a T out of guest memory (no double reads a guest could race).
  template <GuestPod T>
  Result<T> Read(GuestAddr addr) const {
    auto s = Translate(addr, sizeof(T), Access::kRead);
    if (!s) return s.error();
    T v;
    std::memcpy(&v, s->data(), sizeof(T));
    return v;
  }
  template <GuestPod T>
  Result<void> Write(GuestAddr addr, const T& v) const {
    auto s = Translate(addr, sizeof(T), Access::kWrite);
    if (!s) return s.error();
    std::memcpy(s->data(), &v, sizeof(T));
    return Ok();
  }

  std::span<const GuestRegion> regions() const { return regions_; }
  // A region's file was shrunk under its mapping (see MapRegion).
  bool Poisoned() const;

 private:
  explicit GuestMemory(std::vector<GuestRegion> regions);
  std::byte* Find(uint64_t addr, uint64_t len, Access access, bool by_uva) const;
  static std::byte* InRegion(const GuestRegion& r, uint64_t addr, uint64_t len, Access access,
                             bool by_uva) {
    const uint64_t base = by_uva ? r.uva : r.gpa;
    if (addr < base) return nullptr;
    const uint64_t off = addr - base;
    // off < size and len <= size - off: [addr, addr+len) inside, without computing addr+len.
    if (off >= r.size || len > r.size - off) return nullptr;
    if (access == Access::kWrite && !r.writable) return nullptr;
    return r.host + off;
  }

  std::vector<GuestRegion> regions_;       // sorted by gpa
  std::vector<uint32_t> by_uva_;           // indexes of regions_, sorted by uva
  mutable std::atomic<uint32_t> last_hit_{0};  // a hint only: relaxed, any value is safe
};

// The current snapshot of a device's memory table, for the control plane. The control thread
// Store()s a new one; the queues a worker polls get the new snapshot through the pause/ack/resume
// handshake (DESIGN.md), so the hot loop takes no lock. Whoever holds a snapshot keeps its
// mappings alive: an unmap never happens under a reader.
class GuestMemoryMap {
 public:
  std::shared_ptr<const GuestMemory> Load() const {
    std::lock_guard lock(mu_);
    return current_;
  }
  void Store(std::shared_ptr<const GuestMemory> m) {
    std::shared_ptr<const GuestMemory> old;
    {
      std::lock_guard lock(mu_);
      old = std::exchange(current_, std::move(m));
    }
    // old is released here, outside the lock; its mappings go when the last reader drops it.
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const GuestMemory> current_;
};

}  // namespace nicmux
