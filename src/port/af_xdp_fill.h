// The af_xdp port's fill-ring refill, on its own so that a test can drive it over a ring in
// plain memory: the kernel publishes an AF_XDP socket's RX producer just before its fill
// consumer (net/xdp/xsk.c, xsk_flush), so a receive frame can come back before the slot it
// left in the fill ring shows free. Such a frame is owed, not lost and not an abort.
#pragma once

#include <xdp/xsk.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace nicmux {

// Puts on `fill` the frames in *owed first, then addrs[0..n) (each masked with frame_mask to
// its frame's start), as many as the ring has room for now; what does not fit stays in (or is
// appended to) *owed, in order. Returns how many went on the ring (submitted).
inline uint32_t FillOrOwe(xsk_ring_prod* fill, std::vector<uint64_t>* owed, const uint64_t* addrs, uint32_t n,
                          uint64_t frame_mask) {
  const uint32_t want = static_cast<uint32_t>(owed->size()) + n;
  if (want == 0) return 0;
  uint32_t idx = 0;
  // (xsk_ring_prod__reserve is all or nothing: ask for what there is room for.)
  const uint32_t room = std::min(want, xsk_prod_nb_free(fill, want));
  if (room > 0 && xsk_ring_prod__reserve(fill, room, &idx) != room) return 0;  // (cannot be: room was counted)
  const uint32_t from_owed = std::min(room, static_cast<uint32_t>(owed->size()));
  for (uint32_t i = 0; i < from_owed; ++i) *xsk_ring_prod__fill_addr(fill, idx + i) = (*owed)[i];
  for (uint32_t i = from_owed; i < room; ++i) *xsk_ring_prod__fill_addr(fill, idx + i) = addrs[i - from_owed] & frame_mask;
  if (room > 0) xsk_ring_prod__submit(fill, room);
  owed->erase(owed->begin(), owed->begin() + from_owed);
  for (uint32_t i = room - from_owed; i < n; ++i) owed->push_back(addrs[i] & frame_mask);
  return room;
}

}  // namespace nicmux
