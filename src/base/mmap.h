// MappedRegion: RAII over mmap(2). The mapping is released exactly once, when the last owner
// goes (GuestMemory snapshots share mappings through shared_ptr<const MappedRegion>).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/result.h"

namespace nicmux {

class MappedRegion {
 public:
  MappedRegion() = default;
  MappedRegion(MappedRegion&& o) noexcept;
  MappedRegion& operator=(MappedRegion&& o) noexcept;
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  ~MappedRegion();

  // Maps len_bytes of fd from offset_bytes, shared, read-write unless writable is false.
  static Result<MappedRegion> MapFd(int fd, uint64_t offset_bytes, uint64_t len_bytes,
                                    bool writable = true);
  // The same for memory a peer owns and may shrink under us: registered with the SIGBUS
  // recovery of base/peer_mapping.h (a fault replaces it with anonymous memory, marks it
  // poisoned and signals notify_fd, an eventfd of ours or -1).
  static Result<MappedRegion> MapPeerFd(int fd, uint64_t offset_bytes, uint64_t len_bytes,
                                        int notify_fd);
  // Private anonymous memory (tests, host buffers).
  static Result<MappedRegion> Anonymous(uint64_t len_bytes);

  std::byte* data() const { return static_cast<std::byte*>(addr_); }
  uint64_t size() const { return len_; }
  std::span<std::byte> span() const { return {data(), static_cast<size_t>(len_)}; }
  // A peer mapping whose file was shrunk under it (now anonymous memory).
  bool poisoned() const;

 private:
  MappedRegion(void* addr, uint64_t len) : addr_(addr), len_(len) {}
  void Unmap();

  void* addr_ = nullptr;
  uint64_t len_ = 0;
  int peer_handle_ = -1;  // base/peer_mapping.h, for MapPeerFd mappings
};

}  // namespace nicmux
