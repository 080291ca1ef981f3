// Loads and stores of the ring fields that the other side reads or writes concurrently, with
// the ordering virtio 1.2 requires. Everything the two sides hand over is published by a
// release store of an index or flags word and taken by an acquire load of it; each call site
// names the spec rule. A seq_cst fence is needed only where a store must be ordered before a
// later load (publishing an index, then reading the other side's event index: §2.7.10 and
// §2.7.7's "mb()" in the driver and device notification algorithms).
//
// The fields live in memory another process maps; they are accessed through the __atomic
// builtins on their raw little-endian storage so the compiler neither tears nor re-reads them.
#pragma once

#include <cstdint>

#include "base/le.h"

namespace nicmux::virtio {

inline uint16_t LoadAcquire(const Le16& f) {
  return ToLittle(__atomic_load_n(&f.raw, __ATOMIC_ACQUIRE));
}
inline uint16_t LoadRelaxed(const Le16& f) {
  return ToLittle(__atomic_load_n(&f.raw, __ATOMIC_RELAXED));
}
inline void StoreRelease(Le16& f, uint16_t v) {
  __atomic_store_n(&f.raw, ToLittle(v), __ATOMIC_RELEASE);
}
inline void StoreRelaxed(Le16& f, uint16_t v) {
  __atomic_store_n(&f.raw, ToLittle(v), __ATOMIC_RELAXED);
}
inline uint32_t LoadRelaxed(const Le32& f) {
  return ToLittle(__atomic_load_n(&f.raw, __ATOMIC_RELAXED));
}
// Orders earlier stores before later loads (the spec's "mb()"). On x86 a locked add to the
// stack does that and is cheaper than mfence (Linux's smp_mb() is the same instruction); it
// is also invisible to ThreadSanitizer, which rejects fences but needs none here: a store-load
// fence creates no happens-before edge, only the acquire/release pairs do.
inline void FullFence() {
#if defined(__x86_64__)
  asm volatile("lock addl $0, -4(%%rsp)" ::: "memory", "cc");
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

// vring_need_event (virtio 1.2 §2.7.10): true if event_idx lies in [old_idx, new_idx) in 16-bit
// modular arithmetic, i.e. this batch moved the index past the point the other side asked for.
constexpr bool VringNeedEvent(uint16_t event_idx, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event_idx - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

// Packed-ring event check (§2.8.10, flags == RING_EVENT_FLAGS_DESC). old_pos/new_pos are ring
// positions in [0, size) before and after a batch that moved at least one and at most `size`
// entries; new_wrap is the wrap counter at new_pos; off_wrap is the other side's event field.
// The event is taken to be at most one lap behind new_pos.
constexpr bool PackedNeedEvent(uint16_t off_wrap, uint16_t old_pos, uint16_t new_pos,
                               bool new_wrap, uint16_t size) {
  uint16_t event = off_wrap & 0x7fff;
  bool event_wrap = (off_wrap >> 15) != 0;
  // Bring all three onto one line of positions that ends at new_pos's lap.
  if (new_pos <= old_pos) old_pos = static_cast<uint16_t>(old_pos - size);
  if (event_wrap != new_wrap) event = static_cast<uint16_t>(event - size);
  return VringNeedEvent(event, new_pos, old_pos);
}

}  // namespace nicmux::virtio
