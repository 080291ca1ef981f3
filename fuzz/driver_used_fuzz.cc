// Fuzz target: a hostile device (the vhost-user backend a virtio-user port or nicmux-pktgen
// drives) against the driver side of both ring layouts (DriverSplitVring /
// DriverPackedVring). The device shares the ring memory, so the input may write any bytes
// anywhere in it — used entries and indexes, packed descriptors and their flags, the event
// areas, the avail ring and descriptor table it should only read — interleaved with what a
// driver does: add chains (direct and indirect, readable and writable buffers), publish,
// kick, enable and disable calls, pop used buffers.
//
// What must hold whatever the device wrote, checked against a model of what the driver
// handed out: PopUsed returns only an id in flight (each once) with a length at most its
// writable bytes; a ring it calls broken stays broken; the free count and the in-flight count
// always add up to the ring (a hostile device can stop the queue, never leak or double-free a
// descriptor); nothing aborts or reads outside its memory.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>

#include "base/log.h"
#include "tests/support/fake_guest.h"

namespace {

using namespace nicmux;
using namespace nicmux::virtio;
using nicmux::testing::FakeGuest;
using nicmux::testing::PackedLayout;
using nicmux::testing::RingOptions;
using nicmux::testing::RingPair;
using nicmux::testing::SplitLayout;

constexpr uint32_t kSize = 16;
constexpr uint32_t kMaxIndirect = 4;

struct Input {
  const uint8_t* data;
  size_t size;
  size_t at = 0;
  bool done() const { return at >= size; }
  uint8_t Next() { return at < size ? data[at++] : 0; }
  uint16_t Next16() { return static_cast<uint16_t>(Next() | Next() << 8); }
};

struct InFlight {
  uint32_t slots = 0;     // descriptors (split) or ring slots (packed) the chain holds
  uint64_t writable = 0;  // its device-writable bytes
};

template <typename L>
void Run(Input in) {
  FakeGuest g(1u << 20);
  RingPair<L> rp(g, RingOptions{.size = kSize, .max_indirect = kMaxIndirect});
  auto& d = rp.driver;
  const GuestAddr bufs = g.Alloc(4096 * kSize, 64);
  // The device's own view of where its next used entry goes (the harness's "honest" writes).
  uint16_t dev_idx = 0;
  uint16_t dev_pos = 0;
  bool dev_wrap = true;

  // The ring memory the device may write: three areas.
  struct Area {
    std::byte* p;
    uint64_t len;
  } areas[3];
  if constexpr (L::kPacked) {
    areas[0] = {g.Host(rp.ring[0], kSize * sizeof(VirtqPackedDesc)), kSize * sizeof(VirtqPackedDesc)};
    areas[1] = {g.Host(rp.ring[1], sizeof(VirtqPackedEvent)), sizeof(VirtqPackedEvent)};
    areas[2] = {g.Host(rp.ring[2], sizeof(VirtqPackedEvent)), sizeof(VirtqPackedEvent)};
  } else {
    areas[0] = {g.Host(rp.ring[0], SplitRingLayout::DescBytes(kSize)), SplitRingLayout::DescBytes(kSize)};
    areas[1] = {g.Host(rp.ring[1], SplitRingLayout::AvailBytes(kSize)), SplitRingLayout::AvailBytes(kSize)};
    areas[2] = {g.Host(rp.ring[2], SplitRingLayout::UsedBytes(kSize)), SplitRingLayout::UsedBytes(kSize)};
  }

  std::map<uint16_t, InFlight> model;
  auto check_counts = [&] {
    if (d.broken()) return;
    uint32_t slots = 0;
    for (const auto& [id, f] : model) slots += f.slots;
    NICMUX_CHECK(d.num_free() + slots == kSize);
    NICMUX_CHECK(d.in_flight() == model.size());
  };

  while (!in.done() && !d.broken()) {
    switch (in.Next() % 8) {
      case 0:
      case 1: {  // the driver adds a chain
        const uint32_t n = 1 + in.Next() % 3;
        const uint8_t shape = in.Next();
        const bool indirect = (shape & 0x80) != 0;
        DriverBuffer b[3];
        uint64_t writable = 0;
        for (uint32_t i = 0; i < n; ++i) {
          const uint32_t len = 1 + (in.Next() % 64) * 16;
          // Readable buffers first, as Add requires: writable from the first set bit of shape on.
          const bool w = i >= (shape & 3);
          b[i] = {GuestAddr{bufs.value + (d.NextId() % kSize) * 4096 + i * 1024}, len, w};
          writable += w ? len : 0;
        }
        const auto id = d.Add({b, n}, indirect);
        if (!id) break;
        NICMUX_CHECK(*id < kSize && model.count(*id) == 0);
        model[*id] = {indirect ? 1 : n, writable};
        break;
      }
      case 2:
        d.Publish();
        break;
      case 3:
      case 4: {  // the device writes any bytes anywhere in the ring memory
        const Area& a = areas[in.Next() % 3];
        const uint64_t off = in.Next16() % a.len;
        const uint64_t n = std::min<uint64_t>(1 + in.Next() % 16, a.len - off);
        for (uint64_t i = 0; i < n; ++i) a.p[off + i] = static_cast<std::byte>(in.Next());
        break;
      }
      case 5: {  // the device completes an id (any id: maybe one not in flight) the way it should
        const uint16_t id = in.Next() % (kSize + 2);
        const uint32_t len = in.Next16();
        if constexpr (L::kPacked) {
          auto* desc = reinterpret_cast<VirtqPackedDesc*>(areas[0].p);
          VirtqPackedDesc u{};
          u.id.set(id);
          u.len.set(len);
          u.flags.set(dev_wrap ? static_cast<uint16_t>(kDescFAvail | kDescFUsed) : uint16_t{0});
          std::memcpy(&desc[dev_pos], &u, sizeof u);
          const auto it = model.find(id);
          uint32_t step = it != model.end() ? it->second.slots : 1;
          dev_pos = static_cast<uint16_t>(dev_pos + step);
          if (dev_pos >= kSize) {
            dev_pos = static_cast<uint16_t>(dev_pos - kSize);
            dev_wrap = !dev_wrap;
          }
        } else {
          auto* used = reinterpret_cast<VirtqUsedHeader*>(areas[2].p);
          VirtqUsedElem e{};
          e.id.set(id);
          e.len.set(len);
          std::memcpy(&UsedRing(used)[dev_idx % kSize], &e, sizeof e);
          ++dev_idx;
          used->idx.set(dev_idx);
        }
        break;
      }
      case 6: {  // the driver pops what the device returned
        const uint32_t n = 1 + in.Next() % 8;
        for (uint32_t i = 0; i < n; ++i) {
          UsedBuffer u;
          const PopStatus s = d.PopUsed(&u);
          if (s == PopStatus::kBroken) {
            NICMUX_CHECK(d.broken());
            break;
          }
          if (s != PopStatus::kOk) break;
          const auto it = model.find(u.id);
          NICMUX_CHECK(it != model.end());  // only an id in flight, each once
          NICMUX_CHECK(u.len <= it->second.writable);
          model.erase(it);
        }
        break;
      }
      case 7:
        switch (in.Next() % 3) {
          case 0:
            d.DisableCalls();
            break;
          case 1:
            d.EnableCalls();
            break;
          default:
            d.NeedKick();
            break;
        }
        break;
    }
    check_counts();
  }
  // A broken ring stays broken and returns nothing.
  if (d.broken()) {
    UsedBuffer u;
    NICMUX_CHECK(d.PopUsed(&u) == PopStatus::kBroken);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) {
    Run<PackedLayout>(Input{data + 1, size - 1});
  } else {
    Run<SplitLayout>(Input{data + 1, size - 1});
  }
  return 0;
}
