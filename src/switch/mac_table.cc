#include "switch/mac_table.h"

#include <algorithm>
#include <bit>

#include "base/check.h"

namespace nicmux {

MacTable::MacTable(uint32_t max_entries, uint32_t aging_s)
    : max_entries_(max_entries), aging_s_(aging_s), port_size_(kMaxPorts, 0), port_limit_(kMaxPorts, max_entries) {
  NICMUX_CHECK(max_entries >= 1 && max_entries <= (1u << 24));
  const size_t cap = std::bit_ceil(size_t{max_entries} * 2);
  slots_.resize(cap);
  mask_ = cap - 1;
  shift_ = 64 - std::countr_zero(cap);
}

int MacTable::Lookup(MacAddr mac, uint16_t vid, uint32_t now_s) const {
  const uint64_t key = Key(mac, vid);
  for (size_t i = Home(key);; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.key == 0) return -1;
    if (s.key == key) return Expired(s, now_s) ? -1 : s.port;
  }
}

MacTable::LearnResult MacTable::Learn(MacAddr mac, uint16_t vid, uint16_t port, uint32_t now_s,
                                      uint16_t epoch) {
  NICMUX_CHECK(port < kMaxPorts);
  const uint64_t key = Key(mac, vid);
  size_t i = Home(key);
  for (;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == 0) break;
    if (s.key != key) continue;
    if (s.port == port) {
      // Writes only when something changed: a refresh per second, not per packet.
      if (s.seen_s != now_s) s.seen_s = now_s;
      if (s.epoch != epoch) s.epoch = epoch;
      return LearnResult::kKnown;
    }
    // The station moved (a VM migrated, a cable re-plugged), to a port that may be full: then
    // it is forgotten rather than left behind (lookups flood until it is learned again).
    if (port_size_[port] >= port_limit_[port]) {
      Erase(i);
      return LearnResult::kPortFull;
    }
    --port_size_[s.port];
    ++port_size_[port];
    s.port = port;
    s.epoch = epoch;
    s.seen_s = now_s;
    moves_.Add();
    return LearnResult::kMoved;
  }
  if (port_size_[port] >= port_limit_[port]) return LearnResult::kPortFull;
  if (size_ >= max_entries_) {
    full_.Add();
    return LearnResult::kFull;
  }
  slots_[i] = {key, port, epoch, now_s};
  ++size_;
  ++port_size_[port];
  return LearnResult::kNew;
}

void MacTable::set_port_limit(uint16_t port, uint32_t n) {
  NICMUX_CHECK(port < kMaxPorts && n >= 1);
  port_limit_[port] = n;
}

void MacTable::Erase(size_t i) {
  // Backward-shift deletion: pull later members of the probe run into the hole when the hole
  // lies between their home and their slot.
  --port_size_[slots_[i].port];
  size_t hole = i;
  for (size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
    if (slots_[j].key == 0) break;
    const size_t home = Home(slots_[j].key);
    const bool movable = ((j - home) & mask_) >= ((j - hole) & mask_);
    if (movable) {
      slots_[hole] = slots_[j];
      hole = j;
    }
  }
  slots_[hole] = Slot{};
  --size_;
}

template <typename Pred>
size_t MacTable::EraseIf(Pred pred) {
  size_t n = 0;
  // Re-check a slot after erasing it: the shift may have moved a later entry into it. An entry
  // shifted across the array's end lands in a slot already checked, and was checked itself.
  for (size_t i = 0; i < slots_.size();) {
    if (slots_[i].key != 0 && pred(slots_[i])) {
      Erase(i);
      ++n;
      continue;
    }
    ++i;
  }
  return n;
}

size_t MacTable::FlushPort(uint16_t port) {
  return EraseIf([port](const Slot& s) { return s.port == port; });
}

size_t MacTable::FlushPortBefore(uint16_t port, uint16_t epoch) {
  return EraseIf([port, epoch](const Slot& s) { return s.port == port && s.epoch != epoch; });
}

size_t MacTable::Flush() {
  const size_t n = size_;
  for (Slot& s : slots_) s = Slot{};
  size_ = 0;
  std::fill(port_size_.begin(), port_size_.end(), 0);
  return n;
}

size_t MacTable::Age(uint32_t now_s) {
  return EraseIf([&](const Slot& s) { return Expired(s, now_s); });
}

std::vector<MacTable::Entry> MacTable::Dump(uint32_t now_s) const {
  std::vector<Entry> out;
  out.reserve(size_);
  for (const Slot& s : slots_) {
    if (s.key == 0 || Expired(s, now_s)) continue;
    out.push_back({s.key & ((1ull << 48) - 1), static_cast<uint16_t>((s.key >> 48) & 0xfff), s.port,
                   now_s - s.seen_s});
  }
  return out;
}

}  // namespace nicmux
