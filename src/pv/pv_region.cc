#include "pv/pv_region.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cstring>

namespace nicmux::pv {

Result<void> CheckLayout(const Layout& l) {
  if (l.queue_pairs < 1 || l.queue_pairs > NMX_PV_MAX_QUEUE_PAIRS) {
    return Error("queues=" + std::to_string(l.queue_pairs) + " is outside 1.." + std::to_string(NMX_PV_MAX_QUEUE_PAIRS));
  }
  if (l.ring_size < NMX_PV_MIN_RING || l.ring_size > NMX_PV_MAX_RING || (l.ring_size & (l.ring_size - 1))) {
    return Error("ring=" + std::to_string(l.ring_size) + " is not a power of two in " + std::to_string(NMX_PV_MIN_RING) +
                 ".." + std::to_string(NMX_PV_MAX_RING));
  }
  if (l.buf_size < kMinBufSize || l.buf_size > kMaxBufSize || l.buf_size % 64) {
    return Error("buf_size=" + std::to_string(l.buf_size) + " is not a multiple of 64 in " + std::to_string(kMinBufSize) +
                 ".." + std::to_string(kMaxBufSize));
  }
  return Ok();
}

Region::Geometry Region::GeometryOf(const Layout& l) {
  Geometry g;
  g.stride = NMX_PV_RING_BYTES(l.ring_size);
  g.bufs_offset = kRingsOffset + uint64_t{2} * l.queue_pairs * g.stride;
  g.bufs_size = l.BufsBytes();
  const uint64_t used = g.bufs_offset + g.bufs_size;
  g.size = l.pow2_size ? std::bit_ceil(used) : used;
  return g;
}

uint64_t Region::SizeOf(const Layout& l) { return GeometryOf(l).size; }

Result<std::unique_ptr<Region>> Region::Create(const Layout& l, uint32_t generation, int fault_fd) {
  NICMUX_TRY(CheckLayout(l));
  const Geometry g = GeometryOf(l);
  const uint64_t size = g.size;
  UniqueFd fd(::memfd_create("nicmux-pv", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd.valid()) return Error::FromErrno("memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) < 0) return Error::FromErrno("ftruncate pv region");
  // The driver gets this fd: sealed, it can neither shrink the file under our mapping (a
  // SIGBUS in a worker) nor grow it, nor remove the seals.
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
    return Error::FromErrno("sealing the pv region");
  }
  // UNTRUSTED: a peer mapping: a SIGBUS in it is recovered (the header's comment).
  NICMUX_TRY_ASSIGN(map, MappedRegion::MapPeerFd(fd.get(), 0, size, fault_fd));
  std::unique_ptr<Region> r(new Region(std::move(fd), std::move(map), l, g.stride, g.bufs_offset, g.bufs_size));
  nmx_pv_header* h = r->header();
  h->magic = NMX_PV_MAGIC;
  h->version = NMX_PV_VERSION;
  h->header_size = sizeof(nmx_pv_header);
  h->region_size = size;
  h->generation = generation;
  h->max_queue_pairs = l.queue_pairs;
  h->ring_size = l.ring_size;
  h->buf_size = l.buf_size;
  h->ctrl_offset = kCtrlOffset;
  h->rings_offset = kRingsOffset;
  h->ring_stride = g.stride;
  h->bufs_offset = g.bufs_offset;
  h->bufs_size = g.bufs_size;
  h->features = (l.max_mem_bytes ? NMX_PV_FEATURE_MEM_REGIONS : 0) | (l.flows ? NMX_PV_FEATURE_FLOWS : 0);
  h->max_mem_bytes = l.max_mem_bytes;
  h->status = NMX_PV_STATUS_OK;
  return r;
}

Result<std::unique_ptr<Region>> Region::Adopt(UniqueFd fd, const Layout& l, int fault_fd) {
  NICMUX_TRY(CheckLayout(l));
  const Geometry g = GeometryOf(l);
  // UNTRUSTED (the old process): a sealed file of exactly this size, or the offsets the driver
  // was given (and the bounds Buffer checks) would not be this file's. The seals Create put
  // are what keeps the driver from shrinking it under our mapping.
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != g.size) {
    return Error("the region is not a file of " + std::to_string(g.size) + " bytes (this port's layout)");
  }
  constexpr int kSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
  const int seals = ::fcntl(fd.get(), F_GET_SEALS);
  if (seals < 0 || (seals & kSeals) != kSeals) return Error("the region is not sealed against shrinking and growing");
  // UNTRUSTED: a peer mapping, as Create's.
  NICMUX_TRY_ASSIGN(map, MappedRegion::MapPeerFd(fd.get(), 0, g.size, fault_fd));
  return std::unique_ptr<Region>(new Region(std::move(fd), std::move(map), l, g.stride, g.bufs_offset, g.bufs_size));
}

void Region::SetMemory(uint32_t id, MappedRegion map, UniqueFd file, uint64_t fd_offset) {
  mem_[id] = {map.data(), map.size()};
  mem_files_[id] = std::move(file);
  mem_offsets_[id] = fd_offset;
  ++mem_count_;
  mem_bytes_ += map.size();
  mem_maps_[id] = std::move(map);
}

MappedRegion Region::TakeMemory(uint32_t id) {
  if (mem_[id].base == nullptr) return {};
  mem_[id] = {};
  mem_files_[id].Reset();
  mem_offsets_[id] = 0;
  --mem_count_;
  mem_bytes_ -= mem_maps_[id].size();
  return std::move(mem_maps_[id]);
}

uint32_t Region::PoisonedMemory() const {
  for (uint32_t id = 1; id <= NMX_PV_MAX_MEM_REGIONS; ++id) {
    if (mem_[id].base != nullptr && mem_maps_[id].poisoned()) return id;
  }
  return 0;
}

void Region::MarkStatus(uint32_t status, const std::string& reason) const {
  nmx_pv_header* h = header();
  const size_t n = std::min(reason.size(), sizeof h->broken_reason - 1);
  std::memcpy(h->broken_reason, reason.data(), n);
  h->broken_reason[n] = '\0';
  __atomic_store_n(&h->status, status, __ATOMIC_RELEASE);
}

}  // namespace nicmux::pv
