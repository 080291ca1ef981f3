// libFuzzer target: GuestMemory::Create and Translate / TranslateUva against an independent
// model computed with 128-bit arithmetic. Input: [0] region count (1..8); per region gpa (8),
// size (2, 1..4096 after mapping 0 to 0 for the zero-size check), uva (8); then queries of
// addr (8), len (8), space (1). Every region is backed by its own page between guard pages,
// and every successful translation is touched at both ends.
#include <sys/mman.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "memory/guest_memory.h"

namespace {

using nicmux::Access;
using nicmux::GuestAddr;
using nicmux::GuestMemory;
using nicmux::GuestRegion;
using u128 = unsigned __int128;

constexpr size_t kPage = 4096, kMaxRegions = 8;

std::byte* Backing() {
  // kMaxRegions pages, each followed by a guard page.
  static std::byte* base = [] {
    void* p = mmap(nullptr, kPage * 2 * kMaxRegions + kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) abort();
    for (size_t i = 0; i < kMaxRegions; ++i) {
      mprotect(static_cast<std::byte*>(p) + kPage * (2 * i + 1), kPage, PROT_READ | PROT_WRITE);
    }
    return static_cast<std::byte*>(p);
  }();
  return base;
}

struct Reader {
  const uint8_t* p;
  size_t n;
  template <typename T>
  bool Take(T* v) {
    if (n < sizeof(T)) return false;
    std::memcpy(v, p, sizeof(T));
    p += sizeof(T);
    n -= sizeof(T);
    return true;
  }
};

void Fail(const char* what) {
  fprintf(stderr, "translate_fuzz: %s\n", what);
  abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in{data, size};
  uint8_t count;
  if (!in.Take(&count)) return 0;
  count = 1 + count % kMaxRegions;
  std::vector<GuestRegion> regions;
  for (uint8_t i = 0; i < count; ++i) {
    uint64_t gpa, uva;
    uint16_t sz;
    if (!in.Take(&gpa) || !in.Take(&sz) || !in.Take(&uva)) return 0;
    GuestRegion r;
    r.gpa = gpa;
    r.size = sz % (kPage + 1);  // 0..4096: zero must be refused
    r.uva = uva;
    // Right-aligned in its page, so the guard page follows the region's last byte.
    r.host = Backing() + kPage * (2 * i + 1) + (kPage - r.size);
    regions.push_back(r);
  }
  // The model of a valid table.
  bool valid = true;
  for (size_t i = 0; i < regions.size(); ++i) {
    const GuestRegion& a = regions[i];
    // The end must be representable: a region may not reach 2^64 itself.
    if (a.size == 0 || u128(a.gpa) + a.size >= (u128(1) << 64) || u128(a.uva) + a.size >= (u128(1) << 64)) valid = false;
    for (size_t j = 0; j < i; ++j) {
      const GuestRegion& b = regions[j];
      if (u128(a.gpa) < u128(b.gpa) + b.size && u128(b.gpa) < u128(a.gpa) + a.size) valid = false;
      if (u128(a.uva) < u128(b.uva) + b.size && u128(b.uva) < u128(a.uva) + a.size) valid = false;
    }
  }
  auto mem = GuestMemory::Create(regions);
  if (mem.has_value() != valid) Fail("Create accepted a bad table or refused a good one");
  if (!valid) return 0;

  for (int q = 0; q < 64; ++q) {
    uint64_t addr, len;
    uint8_t space;
    if (!in.Take(&addr) || !in.Take(&len) || !in.Take(&space)) break;
    const bool by_uva = space & 1;
    const Access access = (space & 2) ? Access::kWrite : Access::kRead;
    std::byte* expect = nullptr;
    for (const GuestRegion& r : regions) {
      u128 start = by_uva ? r.uva : r.gpa;
      if (u128(addr) >= start && u128(addr) < start + r.size && u128(addr) + len <= start + r.size) {
        expect = r.host + (addr - static_cast<uint64_t>(start));
      }
    }
    std::byte* got = by_uva ? (*mem)->TranslateUvaFast(addr, len, access)
                            : (*mem)->TranslateFast(GuestAddr{addr}, len, access);
    if (got != expect) Fail("translation differs from the model");
    auto res = by_uva ? (*mem)->TranslateUva(addr, len, access)
                      : (*mem)->Translate(GuestAddr{addr}, len, access);
    if (res.has_value() != (expect != nullptr)) Fail("Translate and TranslateFast disagree");
    if (got != nullptr && len > 0) {
      got[0] = std::byte{1};
      got[len - 1] = std::byte{2};
    }
  }
  return 0;
}
