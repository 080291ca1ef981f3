// Le16/Le32/Le64: little-endian fields of wire layouts (virtio 1.2 §1.4: "le16" etc.). On a
// little-endian host these compile to plain loads and stores. They are trivially copyable and
// standard layout so wire structs made of them can be static_asserted and memcpy'd.
#pragma once

#include <bit>
#include <cstdint>

namespace nicmux {

template <typename T>
constexpr T ToLittle(T v) {
  if constexpr (std::endian::native == std::endian::little) {
    return v;
  } else if constexpr (sizeof(T) == 2) {
    return static_cast<T>(__builtin_bswap16(v));
  } else if constexpr (sizeof(T) == 4) {
    return static_cast<T>(__builtin_bswap32(v));
  } else {
    return static_cast<T>(__builtin_bswap64(v));
  }
}

template <typename T>
struct LittleEndian {
  T raw;  // as stored on the wire

  constexpr T get() const { return ToLittle(raw); }
  constexpr void set(T v) { raw = ToLittle(v); }
  static constexpr LittleEndian Of(T v) { return LittleEndian{ToLittle(v)}; }
};

using Le16 = LittleEndian<uint16_t>;
using Le32 = LittleEndian<uint32_t>;
using Le64 = LittleEndian<uint64_t>;

static_assert(sizeof(Le16) == 2 && sizeof(Le32) == 4 && sizeof(Le64) == 8);

}  // namespace nicmux
