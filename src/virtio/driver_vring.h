// The driver side of both virtqueue layouts: what a guest's virtio driver does. nicmux's own
// frontend (virtio-user ports, nicmux-pktgen) uses these against backends it does not trust,
// and the tests use them as the fake guest.
//
// A driver keeps its own shadow of every chain it added (descriptor count, buffer sizes, the
// split free list) and never reads them back from shared memory; what the device returns (ids,
// lengths, indexes) is checked against that shadow. A device that returns an id we did not
// hand out, or moves the used index by more than what is in flight, breaks the queue
// (PopUsed returns kBroken); a length larger than the buffer is clamped and counted.
//
//  split:  virtio 1.2 §2.7.13 (supplying buffers), §2.7.14 (receiving used buffers)
//  packed: virtio 1.2 §2.8.21 and §2.8.22
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "base/counter.h"
#include "base/handover.h"
#include "virtio/vring.h"

namespace nicmux::virtio {

struct DriverBuffer {
  GuestAddr addr;
  uint32_t len = 0;
  bool writable = false;  // device-writable
};

struct UsedBuffer {
  uint16_t id = 0;
  uint32_t len = 0;  // bytes the device wrote, already clamped to the buffer
};

struct DriverRingConfig {
  uint32_t size = 0;
  uint64_t features = 0;
  // Split: desc, avail, used. Packed: desc, driver event area, device event area.
  GuestAddr ring[3];
  // Optional: room for one indirect table per id (size * max_indirect * 16 bytes).
  GuestAddr indirect_area{0};
  uint32_t max_indirect = 0;
};

class DriverSplitVring {
 public:
  // clear: zero the rings and start empty. Without (a live upgrade's new process, the ring
  // still in use by the old one): only the layout is taken; Restore brings the shadow.
  Result<void> Init(const GuestMemory& mem, const DriverRingConfig& config, bool clear = true);
  // Live upgrade (docs/upgrade.md): the driver's shadow, at rest (every chain added is
  // published), under keys `prefix`*; Restore takes it back in another process over the same
  // shared memory, checking that it is one consistent state (every descriptor free or in
  // exactly one chain, the counts and indexes agreeing, no chain's device-writable bytes above
  // max_writable).
  Result<void> Save(HandoverRecord* out, const std::string& prefix) const;
  Result<void> Restore(const HandoverRecord& in, const std::string& prefix, uint64_t max_writable);

  // Adds one chain (device-readable buffers first). nullopt when there is no room.
  std::optional<uint16_t> Add(std::span<const DriverBuffer> bufs, bool indirect = false);
  // Makes the chains added so far visible to the device (§2.7.13.3).
  void Publish();
  // After Publish: whether the device asked to be kicked (§2.7.13.4).
  bool NeedKick();
  PopStatus PopUsed(UsedBuffer* out);

  void DisableCalls();
  // Re-enables device notifications; true if used buffers arrived meanwhile (§2.7.14).
  bool EnableCalls();

  uint32_t num_free() const { return num_free_; }
  // The id the next Add() returns (while num_free() > 0): lets a caller tie a buffer to it.
  uint16_t NextId() const { return free_head_; }
  uint32_t size() const { return size_; }
  uint32_t in_flight() const { return heads_in_flight_; }
  bool id_in_flight(uint16_t id) const { return !broken_ && id < size_ && chain_len_[id] != 0; }
  const DropCounters& drops() const { return drops_; }
  bool broken() const { return broken_; }

 private:
  void MarkBroken(DropReason why) {
    broken_ = true;
    drops_.Add(why);
  }

  VirtqDesc* desc_ = nullptr;
  VirtqAvailHeader* avail_ = nullptr;
  VirtqUsedHeader* used_ = nullptr;
  const GuestMemory* mem_ = nullptr;
  uint32_t size_ = 0;
  uint16_t mask_ = 0;
  bool event_idx_ = false;
  GuestAddr indirect_area_{0};
  uint32_t max_indirect_ = 0;

  uint16_t avail_idx_ = 0;     // next avail ring entry to fill
  uint16_t kicked_idx_ = 0;    // avail idx at the last NeedKick
  uint16_t last_used_ = 0;
  uint16_t used_shadow_ = 0;
  uint32_t num_free_ = 0;
  uint32_t heads_in_flight_ = 0;
  uint16_t free_head_ = 0;

  std::vector<uint16_t> next_;        // shadow of each descriptor's next (free list and chains)
  std::vector<uint16_t> chain_len_;   // descriptors each in-flight head holds (0 = free)
  std::vector<uint64_t> writable_;    // device-writable bytes of each in-flight head

  DropCounters drops_;
  bool broken_ = true;
};

class DriverPackedVring {
 public:
  Result<void> Init(const GuestMemory& mem, const DriverRingConfig& config, bool clear = true);
  // As DriverSplitVring's (every id free or in flight, the slots agreeing with the positions).
  Result<void> Save(HandoverRecord* out, const std::string& prefix) const;
  Result<void> Restore(const HandoverRecord& in, const std::string& prefix, uint64_t max_writable);

  std::optional<uint16_t> Add(std::span<const DriverBuffer> bufs, bool indirect = false);
  void Publish();
  bool NeedKick();
  PopStatus PopUsed(UsedBuffer* out);
  void DisableCalls();
  bool EnableCalls();

  uint32_t num_free() const { return num_free_; }
  uint16_t NextId() const { return free_ids_.empty() ? 0 : free_ids_.back(); }
  uint32_t size() const { return size_; }
  uint32_t in_flight() const { return ids_in_flight_; }
  bool id_in_flight(uint16_t id) const { return !broken_ && id < size_ && slots_of_id_[id] != 0; }
  const DropCounters& drops() const { return drops_; }
  bool broken() const { return broken_; }

 private:
  void MarkBroken(DropReason why) {
    broken_ = true;
    drops_.Add(why);
  }
  void Advance(uint16_t* pos, bool* wrap, uint32_t n) const {
    uint32_t p = *pos + n;
    if (p >= size_) {
      p -= size_;
      *wrap = !*wrap;
    }
    *pos = static_cast<uint16_t>(p);
  }
  uint16_t AvailFlags(bool wrap) const { return wrap ? kDescFAvail : kDescFUsed; }

  VirtqPackedDesc* desc_ = nullptr;
  VirtqPackedEvent* driver_event_ = nullptr;
  VirtqPackedEvent* device_event_ = nullptr;
  const GuestMemory* mem_ = nullptr;
  uint32_t size_ = 0;
  bool event_idx_ = false;
  GuestAddr indirect_area_{0};
  uint32_t max_indirect_ = 0;

  uint16_t avail_pos_ = 0;
  bool avail_wrap_ = true;
  uint16_t kicked_pos_ = 0;
  uint32_t added_since_kick_ = 0;
  uint16_t used_pos_ = 0;
  bool used_wrap_ = true;
  uint32_t num_free_ = 0;  // free ring slots
  uint32_t ids_in_flight_ = 0;

  // The first descriptor of the chains added since Publish: its flags are stored last.
  bool holding_ = false;
  uint16_t held_slot_ = 0;
  uint16_t held_flags_ = 0;

  std::vector<uint16_t> free_ids_;
  std::vector<uint16_t> slots_of_id_;  // 0 = not in flight
  std::vector<uint64_t> writable_;

  DropCounters drops_;
  bool broken_ = true;
};

}  // namespace nicmux::virtio
