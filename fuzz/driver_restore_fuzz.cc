// Fuzz target: a driver ring's shadow from a live upgrade's record (DriverSplitVring /
// DriverPackedVring::Restore), as another nicmuxd build might send it. A real mid-stream state
// is saved, the input rewrites some of its values (which key, what number or list), and the
// restored ring — if Restore accepts it — is driven on: chains added until full, the device
// completing what it popped, the driver popping. Nothing may abort or read out of bounds:
// whatever Restore accepts must be a state the ring can go on from.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "tests/support/fake_guest.h"

namespace {

using namespace nicmux;
using namespace nicmux::virtio;
using nicmux::testing::FakeGuest;
using nicmux::testing::PackedLayout;
using nicmux::testing::RingPair;
using nicmux::testing::SplitLayout;

template <typename L>
void Run(const uint8_t* data, size_t size) {
  FakeGuest g(1u << 20);
  RingPair<L> rp(g, {.size = 16, .max_indirect = 0});
  const GuestAddr buf = g.Alloc(64 * 16, 64);
  uint32_t added = 0;
  auto add = [&](auto& d, uint32_t i) {
    DriverBuffer b[2] = {{GuestAddr{buf.value + (i % 16) * 64}, 32, false}, {GuestAddr{buf.value + (i % 16) * 64 + 32}, 32, true}};
    return d.Add({b, 1 + i % 2}).has_value();
  };
  while (added < 6 && add(rp.driver, added)) ++added;
  rp.driver.Publish();
  DescChain c;
  std::vector<uint16_t> popped;
  while (rp.device.Pop(&c) == PopStatus::kOk) popped.push_back(c.id);
  if (!popped.empty()) rp.device.Push(popped[0], 0);
  rp.device.Flush();
  HandoverRecord rec;
  if (!rp.driver.Save(&rec, "r.")) return;
  // The input: records of [key index][mode][value bytes...] separated by 0xff.
  std::vector<std::string> keys;
  for (const auto& [k, v] : rec.values()) keys.push_back(k);
  size_t at = 0;
  while (at + 2 <= size) {
    const std::string& key = keys[data[at] % keys.size()];
    const uint8_t mode = data[at + 1];
    at += 2;
    std::string value;
    while (at < size && data[at] != 0xff) {
      value += mode % 2 ? std::to_string(data[at]) + (mode % 4 == 3 ? "," : "") : std::string(1, static_cast<char>(data[at]));
      ++at;
    }
    ++at;
    rec.mutable_values()[key] = value;
  }
  DriverRingConfig dc;
  dc.size = 16;
  for (int i = 0; i < 3; ++i) dc.ring[i] = rp.ring[i];
  typename L::Driver next;
  if (!next.Init(g.mem(), dc, /*clear=*/false)) return;
  if (!next.Restore(rec, "r.", 64)) return;
  if (next.broken()) return;
  // Go on: fill the ring, let the device complete everything it sees, pop everything.
  for (int round = 0; round < 3; ++round) {
    for (uint32_t i = 0; i < 32 && add(next, i); ++i) {
    }
    next.Publish();
    popped.clear();
    while (rp.device.Pop(&c) == PopStatus::kOk) popped.push_back(c.id);
    for (uint16_t id : popped) rp.device.Push(id, 0);
    rp.device.Flush();
    UsedBuffer u;
    while (next.PopUsed(&u) == PopStatus::kOk) {
    }
    if (next.broken()) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if (data[0] & 1) {
    Run<PackedLayout>(data + 1, size - 1);
  } else {
    Run<SplitLayout>(data + 1, size - 1);
  }
  return 0;
}
