// Structure-aware fuzzing of the device-side chain walk, shared by split_chain_fuzz and
// packed_chain_fuzz. The input becomes:
//   [0]      queue size = 1 << (b % 7)            (1..64)
//   [1]      bit 0 INDIRECT_DESC, bit 1 EVENT_IDX, bits 2-3 chain policy, bit 4 ring addresses
//            given as frontend virtual addresses, bit 5 IN_ORDER
//   [2..3]   ring base (split last_avail_idx / packed position | wrap << 15)
//   [4..]    a guest memory image: region 0 (8 KiB at gpa 0, rings at fixed offsets) then
//            region 1 (4 KiB at gpa 0x8000), as many bytes as the input has
//   the rest operations, one byte each (with arguments after some): pop a burst and use every
//            chain fully, flush, enable/disable kicks, the guest rewriting a few bytes of its
//            memory between operations, reset; bytes >= 0xf0 hold chains across operations
//            (pop and keep, complete the kept ones as an IN_ORDER batch or one by one, give
//            them back with Rewind, ask Available), as a port does within one poll round.
// Guard pages around both regions turn any access outside the guest's memory into a crash;
// the invariants of every returned chain are checked against the regions independently.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "base/log.h"
#include "tests/support/fake_guest.h"

namespace nicmux::fuzz {

inline constexpr uint64_t kR0 = 0, kR0Size = 8192, kR1 = 0x8000, kR1Size = 4096;
inline constexpr uint64_t kDescAt = 0, kAvailAt = 0x400, kUsedAt = 0x500;  // split
inline constexpr uint64_t kDriverEventAt = 0x400, kDeviceEventAt = 0x440;  // packed

struct Input {
  const uint8_t* p;
  size_t n;
  bool Take(void* out, size_t len) {
    if (n < len) return false;
    std::memcpy(out, p, len);
    p += len;
    n -= len;
    return true;
  }
  int Byte() {
    uint8_t b;
    return Take(&b, 1) ? b : -1;
  }
};

inline void Fail(const char* what) {
  fprintf(stderr, "invariant violated: %s\n", what);
  abort();
}

// Each segment must lie inside one of the two regions (checked on host addresses, apart from
// GuestMemory's own arithmetic).
inline void CheckChain(const testing::FakeGuest& g, const virtio::DescChain& c, uint32_t size) {
  if (c.id >= size) Fail("chain id >= queue size");
  if (c.num_readable > c.num_segments || c.num_segments > virtio::kMaxChainSegments) Fail("segment counts");
  if (c.readable_bytes + c.writable_bytes > virtio::kMaxChainBytes) Fail("chain bytes");
  uint64_t r = 0, w = 0;
  const std::byte* r0 = g.Host(GuestAddr{kR0}, kR0Size);
  const std::byte* r1 = g.Host(GuestAddr{kR1}, kR1Size);
  for (uint32_t i = 0; i < c.num_segments; ++i) {
    const std::byte* s = c.segs[i].data;
    const uint64_t len = c.segs[i].len;
    bool in0 = s >= r0 && s + len <= r0 + kR0Size;
    bool in1 = s >= r1 && s + len <= r1 + kR1Size;
    if (!in0 && !in1) Fail("segment outside the guest's regions");
    (i < c.num_readable ? r : w) += len;
  }
  if (r != c.readable_bytes || w != c.writable_bytes) Fail("byte totals");
}

template <typename Layout>
int RunVringFuzz(const uint8_t* data, size_t size_bytes) {
  using namespace virtio;
  SetLogLevel(LogLevel::kError);  // hostile rings are the normal case here
  Input in{data, size_bytes};
  uint8_t hdr[4];
  if (!in.Take(hdr, 4)) return 0;
  const uint32_t qsize = 1u << (hdr[0] % 7);
  uint64_t features = 0;
  if (hdr[1] & 1) features |= Bit(kFRingIndirectDesc);
  if (hdr[1] & 2) features |= Bit(kFRingEventIdx);
  if (hdr[1] & 32) features |= Bit(kFInOrder);
  const ChainPolicy policy = static_cast<ChainPolicy>((hdr[1] >> 2) % 3);
  const bool by_uva = (hdr[1] & 16) != 0;
  const uint16_t base = static_cast<uint16_t>(hdr[2] | (hdr[3] << 8));

  static testing::FakeGuest* g = new testing::FakeGuest({{kR0, kR0Size}, {kR1, kR1Size}});
  std::byte* r0 = g->Host(GuestAddr{kR0}, kR0Size);
  std::byte* r1 = g->Host(GuestAddr{kR1}, kR1Size);
  std::memset(r0, 0, kR0Size);
  std::memset(r1, 0, kR1Size);
  size_t img0 = std::min<size_t>(in.n, kR0Size);
  in.Take(r0, img0);
  size_t img1 = std::min<size_t>(in.n, kR1Size);
  in.Take(r1, img1);
  // Bytes past the image are operations; a short input is all image and just pops.

  const VringConfig config{qsize, features, policy};
  typename Layout::Device dev;
  auto addr = [&](uint64_t gpa) { return by_uva ? g->Uva(GuestAddr{gpa}) : gpa; };
  const RingAddrSpace space = by_uva ? RingAddrSpace::kFrontendVirtual : RingAddrSpace::kGuestPhysical;
  auto init = [&]() -> bool {
    if constexpr (Layout::kPacked) {
      auto areas = MapPackedRing(g->mem(), space, addr(kDescAt), addr(kDriverEventAt),
                                 addr(kDeviceEventAt), qsize);
      if (!areas) Fail("packed ring areas");
      return dev.Init(config, *areas, &g->mem(), base).has_value();
    } else {
      auto areas = MapSplitRing(g->mem(), space, addr(kDescAt), addr(kAvailAt), addr(kUsedAt), qsize);
      if (!areas) Fail("split ring areas");
      return dev.Init(config, *areas, &g->mem(), base).has_value();
    }
  };
  static DescChain held[64];
  uint32_t nheld = 0;
  bool held_are_last = true;  // no other pop since: Rewind may give them back
  if (!init()) return 0;

  static DescChain chains[32];
  static std::byte scratch[1 << 16];
  auto pop_and_use = [&] {
    uint32_t n = dev.PopBurst(chains, 32);
    if (n > 0) held_are_last = false;
    for (uint32_t k = 0; k < n; ++k) {
      CheckChain(*g, chains[k], qsize);
      ChainReader r(chains[k]);
      uint64_t left = chains[k].readable_bytes;
      while (left > 0) {
        size_t got = r.Read(scratch, sizeof scratch);
        if (got == 0) Fail("reader stopped early");
        left -= got;
      }
      ChainWriter w(chains[k]);
      uint64_t wleft = std::min<uint64_t>(chains[k].writable_bytes, 1 << 20);
      while (wleft > 0) {
        size_t put = w.Write(scratch, std::min<uint64_t>(wleft, sizeof scratch));
        if (put == 0) Fail("writer stopped early");
        wleft -= put;
      }
      dev.Push(chains[k].id, static_cast<uint32_t>(w.written()));
    }
    if (dev.broken() && n == 0 && dev.drops().Get(DropReason::kQueueBroken) == 0) Fail("broken uncounted");
  };

  auto complete_held = [&] {
    if (!dev.PushInOrderBatch({held, nheld})) {
      for (uint32_t k = 0; k < nheld; ++k) dev.Push(held[k].id, 0);
    }
    nheld = 0;
  };
  // The used position must stay inside the ring whatever the driver did (issue 17: a packed
  // IN_ORDER batch once advanced it past the ring's end).
  auto check_positions = [&] {
    if constexpr (Layout::kPacked) {
      if ((dev.used_state() & 0x7fff) >= qsize) Fail("used position outside the ring");
      if ((dev.avail_state() & 0x7fff) >= qsize) Fail("avail position outside the ring");
    }
  };

  int ops = 0;
  for (int op = in.Byte(); op >= 0 && ops < 256; op = in.Byte(), ++ops) {
    check_positions();
    if (op >= 0xf0) {
      switch (op & 3) {
        case 0: {  // pop and keep
          uint32_t n = dev.PopBurst(held + nheld, std::min<uint32_t>(32, 64 - nheld));
          for (uint32_t k = 0; k < n; ++k) CheckChain(*g, held[nheld + k], qsize);
          if (nheld == 0) held_are_last = true;
          nheld += n;
          break;
        }
        case 1:
          complete_held();
          break;
        case 2:
          if (!held_are_last || !dev.Rewind({held, nheld})) complete_held();
          nheld = 0;
          break;
        case 3:
          if (dev.Available(32) > qsize) Fail("more available than the ring holds");
          break;
      }
      continue;
    }
    switch (op % 7) {
      case 0:
      case 1:
        pop_and_use();
        break;
      case 2:
        dev.Flush();
        break;
      case 3:
        dev.EnableKicks();
        break;
      case 4:
        dev.DisableKicks();
        break;
      case 5: {  // the guest writes up to 16 bytes anywhere in its memory
        uint8_t a[3];
        if (!in.Take(a, 3)) break;
        size_t off = (a[0] | (a[1] << 8)) % (kR0Size + kR1Size);
        size_t len = std::min<size_t>(a[2] % 17, in.n);
        for (size_t i = 0; i < len; ++i, ++off) {
          std::byte b = static_cast<std::byte>(in.Byte());
          if (off < kR0Size) {
            r0[off] = b;
          } else if (off - kR0Size < kR1Size) {
            r1[off - kR0Size] = b;
          }
        }
        break;
      }
      case 6:
        complete_held();
        dev.Flush();
        if (!init()) return 0;
        break;
    }
  }
  // Whatever the operations left, one more round must also be safe.
  complete_held();
  check_positions();
  pop_and_use();
  dev.Flush();
  check_positions();
  return 0;
}

}  // namespace nicmux::fuzz
