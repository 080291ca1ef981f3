#include "memory/guest_memory.h"

#include <sys/stat.h>

#include "base/fd_reaper.h"

#include <algorithm>
#include <string>

namespace nicmux {
namespace {

std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

std::string RangeText(uint64_t addr, uint64_t len) {
  return "[" + Hex(addr) + ", +" + Hex(len) + ")";
}

// [a, a+alen) and [b, b+blen) overlap; both ends known not to wrap.
bool Overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}

}  // namespace

GuestMemory::GuestMemory(std::vector<GuestRegion> regions) : regions_(std::move(regions)) {
  std::sort(regions_.begin(), regions_.end(),
            [](const GuestRegion& a, const GuestRegion& b) { return a.gpa < b.gpa; });
  by_uva_.resize(regions_.size());
  for (uint32_t i = 0; i < by_uva_.size(); ++i) by_uva_[i] = i;
  std::sort(by_uva_.begin(), by_uva_.end(),
            [this](uint32_t a, uint32_t b) { return regions_[a].uva < regions_[b].uva; });
}

Result<std::shared_ptr<const GuestMemory>> GuestMemory::Create(std::vector<GuestRegion> regions) {
  if (regions.size() > kMaxRegions) {
    return Error("memory table has " + std::to_string(regions.size()) + " regions, at most " +
                 std::to_string(kMaxRegions) + " are allowed");
  }
  uint64_t end;
  for (size_t i = 0; i < regions.size(); ++i) {
    const GuestRegion& r = regions[i];
    std::string name = "memory region " + std::to_string(i);
    if (r.size == 0) return Error(name + ": size is zero");
    if (__builtin_add_overflow(r.gpa, r.size, &end)) {
      return Error(name + ": guest_phys_addr " + Hex(r.gpa) + " + size " + Hex(r.size) +
                   " wraps");
    }
    if (__builtin_add_overflow(r.uva, r.size, &end)) {
      return Error(name + ": user_addr " + Hex(r.uva) + " + size " + Hex(r.size) + " wraps");
    }
    if (r.host == nullptr) return Error(name + ": not mapped");
    for (size_t j = 0; j < i; ++j) {
      const GuestRegion& o = regions[j];
      if (Overlaps(r.gpa, r.size, o.gpa, o.size)) {
        return Error(name + ": guest_phys_addr " + RangeText(r.gpa, r.size) +
                     " overlaps region " + std::to_string(j) + " " + RangeText(o.gpa, o.size));
      }
      if (Overlaps(r.uva, r.size, o.uva, o.size)) {
        return Error(name + ": user_addr " + RangeText(r.uva, r.size) + " overlaps region " +
                     std::to_string(j) + " " + RangeText(o.uva, o.size));
      }
    }
  }
  return std::shared_ptr<const GuestMemory>(new GuestMemory(std::move(regions)));
}

Result<GuestRegion> GuestMemory::MapRegion(const RegionSpec& spec, int fd, int fault_fd) {
  uint64_t map_len;
  if (spec.size == 0) return Error("memory region: size is zero");
  // Map from offset 0 so the mmap offset need not be page aligned (hugetlbfs needs huge-page
  // alignment); the region starts mmap_offset bytes in.
  if (__builtin_add_overflow(spec.mmap_offset, spec.size, &map_len)) {
    return Error("memory region: mmap_offset " + Hex(spec.mmap_offset) + " + size " +
                 Hex(spec.size) + " wraps");
  }
  // UNTRUSTED: the fd and the extent. A mapping past the end of the file would fault (SIGBUS)
  // on first touch, so the region must lie inside the file as it is now. A frontend that
  // shrinks its file afterwards makes the next access fault: the mapping is a peer mapping,
  // recovered (base/peer_mapping.h) and reported through fault_fd.
  // Only memory the kernel holds (shmem: memfd, tmpfs; hugetlbfs): a file on a disk or a FUSE
  // mount would make every access (and this fstat) wait on its filesystem, and its owner.
  if (!IsMemoryFile(fd)) {
    if (errno == EBADF) return Error::FromErrno("memory region: fd " + std::to_string(fd));
    return Error("memory region: fd " + std::to_string(fd) + " is not a memfd, tmpfs or hugetlbfs file");
  }
  struct stat st;
  if (::fstat(fd, &st) < 0) return Error::FromErrno("memory region: fstat of fd " + std::to_string(fd));
  if (!S_ISREG(st.st_mode)) {
    return Error("memory region: fd " + std::to_string(fd) + " is not a memfd or hugetlbfs file");
  }
  if (map_len > static_cast<uint64_t>(st.st_size)) {
    return Error("memory region at guest_phys_addr " + Hex(spec.guest_phys_addr) + ": mmap_offset + size " +
                 Hex(map_len) + " runs past the end of its file (" + Hex(static_cast<uint64_t>(st.st_size)) + ")");
  }
  // Map only the region, from its offset rounded down to the file's block size (the huge page
  // size on hugetlbfs, where mmap offsets must be huge-page aligned).
  uint64_t align = st.st_blksize >= 4096 ? static_cast<uint64_t>(st.st_blksize) : 4096;
  if ((align & (align - 1)) != 0) align = 4096;
  const uint64_t map_off = spec.mmap_offset & ~(align - 1);
  const uint64_t lead = spec.mmap_offset - map_off;
  // The mapping's length is rounded up to the block size too: munmap of a hugetlbfs mapping
  // fails unless its length is a multiple of the huge page size (an unaligned region stayed
  // mapped for ever, and a frontend could leak mappings until mmap failed for everyone). The
  // file's size is a multiple of it, so the rounded mapping still lies inside the file.
  uint64_t view_len = lead + spec.size;
  if (view_len > UINT64_MAX - (align - 1)) return Error("memory region: size " + Hex(spec.size) + " too large");
  view_len = (view_len + align - 1) & ~(align - 1);
  if (map_off + view_len > ((static_cast<uint64_t>(st.st_size) + align - 1) & ~(align - 1))) {
    view_len = lead + spec.size;  // a file not sized in blocks (never hugetlbfs): map exactly
  }
  auto m = MappedRegion::MapPeerFd(fd, map_off, view_len, fault_fd);
  if (!m) return m.error().Wrap("memory region at guest_phys_addr " + Hex(spec.guest_phys_addr));
  auto mapping = std::make_shared<const MappedRegion>(std::move(*m));
  GuestRegion r;
  r.gpa = spec.guest_phys_addr;
  r.size = spec.size;
  r.uva = spec.user_addr;
  r.mmap_offset = spec.mmap_offset;
  r.host = mapping->data() + lead;
  r.writable = true;
  r.mapping = std::move(mapping);
  return r;
}

bool GuestMemory::Poisoned() const {
  for (const GuestRegion& r : regions_) {
    if (r.mapping && r.mapping->poisoned()) return true;
  }
  return false;
}

Result<std::shared_ptr<const GuestMemory>> GuestMemory::WithRegion(GuestRegion region) const {
  std::vector<GuestRegion> v = regions_;
  v.push_back(std::move(region));
  return Create(std::move(v));
}

Result<std::shared_ptr<const GuestMemory>> GuestMemory::WithoutRegion(
    const RegionSpec& spec) const {
  std::vector<GuestRegion> v;
  bool found = false;
  for (const GuestRegion& r : regions_) {
    if (!found && r.gpa == spec.guest_phys_addr && r.size == spec.size && r.uva == spec.user_addr) {
      found = true;
      continue;
    }
    v.push_back(r);
  }
  if (!found) {
    return Error("no memory region at guest_phys_addr " + Hex(spec.guest_phys_addr) + " size " +
                 Hex(spec.size) + " user_addr " + Hex(spec.user_addr));
  }
  return Create(std::move(v));
}

std::byte* GuestMemory::Find(uint64_t addr, uint64_t len, Access access, bool by_uva) const {
  const size_t n = regions_.size();
  if (n == 0) return nullptr;
  uint32_t hint = last_hit_.load(std::memory_order_relaxed);
  if (hint < n) {
    if (std::byte* p = InRegion(regions_[hint], addr, len, access, by_uva)) return p;
  }
  // Binary search for the last region whose start is <= addr; regions do not overlap, so it
  // is the only candidate.
  size_t lo = 0, hi = n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    uint64_t start = by_uva ? regions_[by_uva_[mid]].uva : regions_[mid].gpa;
    if (start <= addr) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == 0) return nullptr;
  uint32_t idx = by_uva ? by_uva_[lo - 1] : static_cast<uint32_t>(lo - 1);
  std::byte* p = InRegion(regions_[idx], addr, len, access, by_uva);
  if (p != nullptr) last_hit_.store(idx, std::memory_order_relaxed);
  return p;
}

Result<std::span<std::byte>> GuestMemory::Translate(GuestAddr addr, uint64_t len,
                                                   Access access) const {
  std::byte* p = Find(addr.value, len, access, false);
  if (p == nullptr) {
    return Error("guest-physical range " + RangeText(addr.value, len) +
                 " is not inside one memory region");
  }
  return std::span<std::byte>(p, static_cast<size_t>(len));
}

Result<std::span<std::byte>> GuestMemory::TranslateUva(uint64_t uva, uint64_t len,
                                                      Access access) const {
  std::byte* p = Find(uva, len, access, true);
  if (p == nullptr) {
    return Error("frontend virtual range " + RangeText(uva, len) +
                 " is not inside one memory region");
  }
  return std::span<std::byte>(p, static_cast<size_t>(len));
}

}  // namespace nicmux
