#include "switch/mac_table.h"

#include <bit>

#include "base/check.h"

namespace nicmux {

MacTable::MacTable(uint32_t max_entries, uint32_t aging_s)
    : max_entries_(max_entries), aging_s_(aging_s) {
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

MacTable::LearnResult MacTable::Learn(MacAddr mac, uint16_t vid, uint16_t port, uint32_t now_s) {
  const uint64_t key = Key(mac, vid);
  size_t i = Home(key);
  for (;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == 0) break;
    if (s.key != key) continue;
    // Writes only when something changed: a refresh per second, not per packet.
    if (s.seen_s != now_s) s.seen_s = now_s;
    if (s.port == port) return LearnResult::kKnown;
    s.port = port;  // the station moved (a VM migrated, a cable re-plugged)
    moves_.Add();
    return LearnResult::kMoved;
  }
  if (size_ >= max_entries_) {
    full_.Add();
    return LearnResult::kFull;
  }
  slots_[i] = {key, port, now_s};
  ++size_;
  return LearnResult::kNew;
}

void MacTable::Erase(size_t i) {
  // Backward-shift deletion: pull later members of the probe run into the hole when the hole
  // lies between their home and their slot.
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

size_t MacTable::Flush() {
  const size_t n = size_;
  for (Slot& s : slots_) s = Slot{};
  size_ = 0;
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
