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
  // Private anonymous memory (tests, host buffers).
  static Result<MappedRegion> Anonymous(uint64_t len_bytes);

  std::byte* data() const { return static_cast<std::byte*>(addr_); }
  uint64_t size() const { return len_; }
  std::span<std::byte> span() const { return {data(), static_cast<size_t>(len_)}; }

 private:
  MappedRegion(void* addr, uint64_t len) : addr_(addr), len_(len) {}
  void Unmap();

  void* addr_ = nullptr;
  uint64_t len_ = 0;
};

}  // namespace nicmux
