#include "base/mmap.h"

#include <sys/mman.h>

#include <cstring>
#include <string>
#include <utility>

#include "base/log.h"
#include "base/peer_mapping.h"

namespace nicmux {

MappedRegion::MappedRegion(MappedRegion&& o) noexcept
    : addr_(std::exchange(o.addr_, nullptr)),
      len_(std::exchange(o.len_, 0)),
      peer_handle_(std::exchange(o.peer_handle_, -1)) {}

MappedRegion& MappedRegion::operator=(MappedRegion&& o) noexcept {
  if (this != &o) {
    Unmap();
    addr_ = std::exchange(o.addr_, nullptr);
    len_ = std::exchange(o.len_, 0);
    peer_handle_ = std::exchange(o.peer_handle_, -1);
  }
  return *this;
}

MappedRegion::~MappedRegion() { Unmap(); }

void MappedRegion::Unmap() {
  UnregisterPeerMapping(peer_handle_);  // before the address range can be reused
  peer_handle_ = -1;
  if (addr_ != nullptr && ::munmap(addr_, len_) != 0) {
    // Never expected (lengths are rounded to the mapping's page size); a mapping left behind
    // is a leak to count, not to hide.
    NICMUX_LOG_RATELIMITED(kError, "munmap of %llu bytes failed: %s", static_cast<unsigned long long>(len_),
                           std::strerror(errno));
  }
  addr_ = nullptr;
  len_ = 0;
}

Result<MappedRegion> MappedRegion::MapFd(int fd, uint64_t offset_bytes, uint64_t len_bytes,
                                         bool writable) {
  if (len_bytes == 0) return Error("mmap: zero length");
  if (len_bytes > SIZE_MAX) return Error("mmap: length does not fit the address space");
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* p = ::mmap(nullptr, len_bytes, prot, MAP_SHARED, fd, static_cast<off_t>(offset_bytes));
  if (p == MAP_FAILED) {
    return Error::FromErrno("mmap of fd " + std::to_string(fd) + " offset " +
                            std::to_string(offset_bytes) + " length " + std::to_string(len_bytes));
  }
  return MappedRegion(p, len_bytes);
}

Result<MappedRegion> MappedRegion::MapPeerFd(int fd, uint64_t offset_bytes, uint64_t len_bytes,
                                             int notify_fd) {
  auto m = MapFd(fd, offset_bytes, len_bytes);
  if (!m) return m.error();
  m->peer_handle_ = RegisterPeerMapping(m->addr_, m->len_, notify_fd);
  return m;
}

bool MappedRegion::poisoned() const { return PeerMappingPoisoned(peer_handle_); }

Result<MappedRegion> MappedRegion::Anonymous(uint64_t len_bytes) {
  if (len_bytes == 0) return Error("mmap: zero length");
  void* p = ::mmap(nullptr, len_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return Error::FromErrno("anonymous mmap of " + std::to_string(len_bytes));
  return MappedRegion(p, len_bytes);
}

}  // namespace nicmux
