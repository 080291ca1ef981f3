// Cache prefetch hints for the data path. They never fault: a bad address only wastes the hint.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nicmux {

// The cache lines that [p, p + len) touches, at most max_lines of them, for reading.
inline void PrefetchRead(const void* p, size_t len, uint32_t max_lines = 3) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63};
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + len;
  for (uintptr_t a = first; a < end && max_lines > 0; a += 64, --max_lines) {
    __builtin_prefetch(reinterpret_cast<const void*>(a), 0, 3);
  }
}

// The same for writing: the line is fetched exclusive, so the store that follows does not
// have to ask the other core for ownership (x86 PREFETCHW; a NOP hint where unsupported).
inline void PrefetchWrite(void* p, size_t len, uint32_t max_lines = 3) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63};
  const uintptr_t end = reinterpret_cast<uintptr_t>(p) + len;
  for (uintptr_t a = first; a < end && max_lines > 0; a += 64, --max_lines) {
#if defined(__x86_64__)
    asm volatile("prefetchw %0" : : "m"(*reinterpret_cast<const char*>(a)));
#else
    __builtin_prefetch(reinterpret_cast<const void*>(a), 1, 3);
#endif
  }
}

}  // namespace nicmux
