// PvRegion: the host's side of one pvdev shared region (src/pv/pv_abi.h, docs/pv-protocol.md):
// a sealed memfd (the driver can neither shrink nor grow it), mapped once, laid out and its
// header written at creation. The one place an untrusted descriptor's (region, offset, length)
// becomes host memory is Buffer().
//
// UNTRUSTED (the file): the seals do not stop the driver from punching holes in it, and a page
// punched out is allocated again at our next access, which gets SIGBUS where that allocation
// fails (shmem's -ENOSPC when the commit charge is refused, vm.overcommit_memory=2). So the
// mapping is a peer mapping (base/peer_mapping.h): a fault there is recovered (the mapping
// becomes zeros), poisoned() turns true and the fault_fd given to Create is signalled.
//
// Registered memory (MEM_ADD, docs/pv-protocol.md): files of the driver's own memory, mapped as
// peer mappings too and kept here with the region, so that they go when it goes. A descriptor
// naming region k (1..NMX_PV_MAX_MEM_REGIONS) is translated by the same Buffer().
//
// Invariants after Create(): the header, the control page, every ring and the buffer area lie
// inside the mapping and do not overlap; ring_size is a power of two in 64..4096; the header
// is never read back (the host keeps its own copy of every value it wrote there). Registered
// memory changes only while no worker can translate a descriptor of this device (the owner's
// rule: while the device is stopped).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/mmap.h"
#include "base/result.h"
#include "base/unique_fd.h"
#include "pv/pv_abi.h"

namespace nicmux::pv {

// Buffer sizes: a 64 KiB TSO frame with its headers fits the largest (65553 bytes).
inline constexpr uint32_t kMinBufSize = 256, kMaxBufSize = 66560;

struct Layout {
  uint32_t queue_pairs = 1;  // 1..NMX_PV_MAX_QUEUE_PAIRS
  uint32_t ring_size = 1024; // a power of two, NMX_PV_MIN_RING..NMX_PV_MAX_RING
  uint32_t buf_size = 2048;  // the buffer size suggested to the driver
  uint64_t max_mem_bytes = 0;  // registered memory allowed (header.max_mem_bytes); 0: not offered
  // The VM transport: the region (the memfd, and header.region_size) is padded to a power of
  // two, because QEMU's ivshmem maps the whole file as BAR2 and a PCI BAR's size is one. The
  // padding follows the buffer area and is never touched by the host.
  bool pow2_size = false;
  bool flows = false;          // flow rules offered (NMX_PV_FEATURE_FLOWS)
  // Buffer area: room for every ring full (rx and tx of each pair) at buf_size, the default.
  uint64_t BufsBytes() const { return uint64_t{2} * queue_pairs * ring_size * buf_size; }
};

class Region {
 public:
  // A new region (memfd "nicmux-pv"), sealed at its size; generation is written to the header;
  // fault_fd (an eventfd of the owner's, or -1) is signalled when an access of ours faults.
  static Result<std::unique_ptr<Region>> Create(const Layout& layout, uint32_t generation, int fault_fd = -1);
  // Live upgrade: the region another nicmuxd created with this layout, its memfd handed over.
  // UNTRUSTED (the old process): the fd must be a regular file of exactly the layout's size,
  // sealed as Create seals it. Maps it and writes nothing: the header, the rings and the
  // buffers stay as the driver and the old process left them.
  static Result<std::unique_ptr<Region>> Adopt(UniqueFd fd, const Layout& layout, int fault_fd = -1);
  // The region's size for a layout (Create's and Adopt's).
  static uint64_t SizeOf(const Layout& layout);

  int fd() const { return fd_.get(); }
  uint64_t size() const { return map_.size(); }
  const Layout& layout() const { return layout_; }
  uint32_t ring_mask() const { return layout_.ring_size - 1; }
  // An access of ours faulted: the mapping holds zeros now, not the driver's memory.
  bool poisoned() const { return map_.poisoned(); }

  nmx_pv_header* header() const { return reinterpret_cast<nmx_pv_header*>(map_.data()); }
  nmx_pv_ctrl* ctrl() const { return reinterpret_cast<nmx_pv_ctrl*>(map_.data() + kCtrlOffset); }
  // Pair q's rings: the one the host fills (rx) and the one it drains (tx).
  nmx_pv_ring* rx_ring(uint32_t q) const { return ring(2 * q); }
  nmx_pv_ring* tx_ring(uint32_t q) const { return ring(2 * q + 1); }

  // UNTRUSTED (a descriptor's fields): the len bytes at offset of region `region`, or nullptr
  // when [offset, offset + len) is not inside the buffer area (region 0) or inside registered
  // region `region` (1..NMX_PV_MAX_MEM_REGIONS, registered), or region is anything else (u64
  // arithmetic: no sum can wrap).
  std::byte* Buffer(uint16_t region, uint64_t offset, uint32_t len) const {
    if (region == 0) {
      if (offset < bufs_offset_ || offset - bufs_offset_ > bufs_size_ ||
          uint64_t{len} > bufs_size_ - (offset - bufs_offset_)) {
        return nullptr;
      }
      return map_.data() + offset;
    }
    if (region > NMX_PV_MAX_MEM_REGIONS) return nullptr;  // bounds the table's index
    const Mem& m = mem_[region];
    // A slot not registered has size 0 and no base: nothing fits it.
    if (m.base == nullptr || offset > m.size || uint64_t{len} > m.size - offset) return nullptr;
    return m.base + offset;
  }

  // Registered memory. Set and Take only while no worker translates this device's descriptors.
  // id: 1..NMX_PV_MAX_MEM_REGIONS (checked by the caller).
  bool HasMemory(uint32_t id) const { return mem_[id].base != nullptr; }
  uint64_t MemorySize(uint32_t id) const { return mem_[id].size; }
  // file: the driver's fd, kept for a live upgrade's handover (the mapping alone keeps the
  // memory); fd_offset: where in it the mapping starts.
  void SetMemory(uint32_t id, MappedRegion map, UniqueFd file, uint64_t fd_offset);
  MappedRegion TakeMemory(uint32_t id);
  int MemoryFd(uint32_t id) const { return mem_files_[id].get(); }
  uint64_t MemoryOffset(uint32_t id) const { return mem_offsets_[id]; }
  // The first registered region whose mapping faulted (a peer mapping, see the file's comment),
  // or 0.
  uint32_t PoisonedMemory() const;
  uint32_t MemoryCount() const { return mem_count_; }
  uint64_t MemoryBytes() const { return mem_bytes_; }

  // Marks the device broken in the header, for the driver to see (status, reason).
  void MarkBroken(const std::string& reason) const { MarkStatus(NMX_PV_STATUS_BROKEN, reason); }
  // The VM transport: nicmuxd no longer serves this region (QEMU keeps it mapped as BAR2).
  void MarkGone(const std::string& reason) const { MarkStatus(NMX_PV_STATUS_GONE, reason); }
  void MarkStatus(uint32_t status, const std::string& reason) const;

  static constexpr uint64_t kCtrlOffset = NMX_PV_PAGE;
  static constexpr uint64_t kRingsOffset = 2 * NMX_PV_PAGE;

 private:
  struct Geometry {
    uint64_t stride, bufs_offset, bufs_size, size;
  };
  static Geometry GeometryOf(const Layout& l);
  Region(UniqueFd fd, MappedRegion map, const Layout& l, uint64_t stride, uint64_t bufs_offset, uint64_t bufs_size)
      : fd_(std::move(fd)), map_(std::move(map)), layout_(l), stride_(stride), bufs_offset_(bufs_offset),
        bufs_size_(bufs_size) {}
  nmx_pv_ring* ring(uint32_t i) const {
    return reinterpret_cast<nmx_pv_ring*>(map_.data() + kRingsOffset + uint64_t{i} * stride_);
  }

  UniqueFd fd_;
  MappedRegion map_;
  Layout layout_;
  uint64_t stride_;
  uint64_t bufs_offset_, bufs_size_;
  // Registered memory: the translation table the data path reads (index 0 unused), and the
  // mappings behind it.
  struct Mem {
    std::byte* base = nullptr;
    uint64_t size = 0;
  };
  std::array<Mem, NMX_PV_MAX_MEM_REGIONS + 1> mem_{};
  std::array<MappedRegion, NMX_PV_MAX_MEM_REGIONS + 1> mem_maps_{};
  std::array<UniqueFd, NMX_PV_MAX_MEM_REGIONS + 1> mem_files_{};
  std::array<uint64_t, NMX_PV_MAX_MEM_REGIONS + 1> mem_offsets_{};
  uint32_t mem_count_ = 0;
  uint64_t mem_bytes_ = 0;
};

// Checks a layout's numbers (from a port's options): an error naming the one out of range.
Result<void> CheckLayout(const Layout& l);

}  // namespace nicmux::pv
