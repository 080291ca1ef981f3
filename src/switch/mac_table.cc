#include "switch/mac_table.h"

#include <algorithm>
#include <bit>

#include "base/check.h"

namespace nicmux {

namespace {
// Tries of a lock-free probe before it gives up (a writer moving seq_ on every try, or one
// preempted inside its window): about a microsecond of pauses.
constexpr int kProbeTries = 64;
}  // namespace

MacTable::MacTable(uint32_t max_entries, uint32_t aging_s)
    : max_entries_(max_entries), aging_s_(aging_s) {
  NICMUX_CHECK(max_entries >= 1 && max_entries <= (1u << 24));
  cap_ = std::bit_ceil(size_t{max_entries} * 2);
  slots_ = std::make_unique<Slot[]>(cap_);
  mask_ = cap_ - 1;
  shift_ = 64 - std::countr_zero(cap_);
  for (auto& l : port_limit_) l.store(max_entries, std::memory_order_relaxed);
}

// The seqlock's read side. A writer stores seq_ odd (seq_cst), then the slots (release), then
// seq_ even (release). Key and meta are loaded with acquire: a probe that read anything of a
// writer's window synchronizes with that store, so the writer's odd seq_ is visible to the
// re-read of seq_ after it, and the probe is retried.
MacTable::Probe MacTable::Find(uint64_t key, size_t* index, uint64_t* meta, uint64_t* seq) const {
  for (int t = 0; t < kProbeTries; ++t) {
    const uint64_t s0 = seq_.load(std::memory_order_acquire);
    if (s0 & 1) {
      __builtin_ia32_pause();
      continue;
    }
    Probe r = Probe::kBusy;
    size_t i = Home(key);
    // Bounded: a probe racing writers could in principle see a run with no empty slot.
    for (size_t n = 0; n <= mask_; ++n, i = (i + 1) & mask_) {
      const uint64_t k = slots_[i].key.load(std::memory_order_acquire);
      if (k == 0) {
        r = Probe::kAbsent;
        break;
      }
      if (k == key) {
        *meta = slots_[i].meta.load(std::memory_order_acquire);
        *index = i;
        r = Probe::kFound;
        break;
      }
    }
    if (r != Probe::kBusy && seq_.load(std::memory_order_acquire) == s0) {
      *seq = s0;
      return r;
    }
  }
  return Probe::kBusy;
}

int MacTable::Lookup(MacAddr mac, uint16_t vid, uint32_t now_s) const {
  size_t i;
  uint64_t m = 0, s;
  if (Find(Key(mac, vid), &i, &m, &s) != Probe::kFound) return -1;
  return Expired(m, now_s) ? -1 : PortOf(m);
}

MacTable::LearnResult MacTable::Learn(MacAddr mac, uint16_t vid, uint16_t port, uint32_t now_s,
                                      uint16_t epoch) {
  NICMUX_CHECK(port < kMaxPorts);
  const uint64_t key = Key(mac, vid);
  size_t i = 0;
  uint64_t m = 0, s = 0;
  switch (Find(key, &i, &m, &s)) {
    case Probe::kFound:
      if (PortOf(m) != port || EpochOf(m) != epoch) break;  // a move or a new epoch: locked
      // Writes only when the second changed: a refresh per second, not per packet.
      if (SeenOf(m) == now_s) return LearnResult::kKnown;
      // The version in meta makes the CAS fail if the slot got another key since the probe.
      // seq_cst (the CAS and the re-read of seq_, as the writer's odd seq_ store and its
      // re-read of meta in EraseIf and Erase): either the writer sees this refresh, or this
      // sees the writer's window and redoes the learn under the mutex (else Age could forget
      // the station just refreshed, or a shift carry the old second along).
      if (slots_[i].meta.compare_exchange_strong(m, (m & ~uint64_t{0xffffffff}) | now_s,
                                                 std::memory_order_seq_cst) &&
          seq_.load(std::memory_order_seq_cst) == s) {
        return LearnResult::kKnown;
      }
      break;
    case Probe::kAbsent:
      // A new station on a port at its limit is not learned: no need to lock to say so.
      if (port_size(port) >= port_limit(port)) return LearnResult::kPortFull;
      break;
    case Probe::kBusy:
      break;
  }
  std::lock_guard lock(mu_);
  return LearnLocked(key, port, now_s, epoch);
}

void MacTable::BeginWrite() {
  const uint64_t s = seq_.load(std::memory_order_relaxed);
  seq_.store(s + 1, std::memory_order_seq_cst);
}

void MacTable::EndWrite() {
  const uint64_t s = seq_.load(std::memory_order_relaxed);
  seq_.store(s + 1, std::memory_order_release);
}

MacTable::LearnResult MacTable::LearnLocked(uint64_t key, uint16_t port, uint32_t now_s,
                                            uint16_t epoch) {
  size_t i = Home(key);
  for (;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    const uint64_t k = s.key.load(std::memory_order_relaxed);
    if (k == 0) break;
    if (k != key) continue;
    // Only lock-free refreshes change meta beside us (its second): a store here may undo one,
    // which then happened just before this learn, whose second is as new.
    const uint64_t m = s.meta.load(std::memory_order_relaxed);
    if (PortOf(m) == port) {
      if (SeenOf(m) != now_s || EpochOf(m) != epoch) {
        s.meta.store((m & kVerMask) | Meta(port, epoch, now_s), std::memory_order_release);
      }
      return LearnResult::kKnown;
    }
    // The station moved (a VM migrated, a cable re-plugged), to a port that may be full: then
    // it is forgotten rather than left behind (lookups flood until it is learned again).
    if (port_size(port) >= port_limit(port)) {
      BeginWrite();
      Erase(i);
      EndWrite();
      return LearnResult::kPortFull;
    }
    // One store: a lookup sees the old port or the new one, both the station's.
    Dec(port_size_[PortOf(m)]);
    Inc(port_size_[port]);
    s.meta.store((m & kVerMask) | Meta(port, epoch, now_s), std::memory_order_release);
    moves_.Add();
    return LearnResult::kMoved;
  }
  if (port_size(port) >= port_limit(port)) return LearnResult::kPortFull;
  if (size() >= max_entries_) {
    full_.Add();
    return LearnResult::kFull;
  }
  // Into an empty slot: meta before key, so a probe that sees the key sees its meta.
  BeginWrite();
  Slot& s = slots_[i];
  s.meta.store(NextVersion(s.meta.load(std::memory_order_relaxed), Meta(port, epoch, now_s)),
               std::memory_order_release);
  s.key.store(key, std::memory_order_release);
  EndWrite();
  Inc(size_);
  Inc(port_size_[port]);
  return LearnResult::kNew;
}

void MacTable::set_port_limit(uint16_t port, uint32_t n) {
  NICMUX_CHECK(port < kMaxPorts && n >= 1);
  std::lock_guard lock(mu_);
  port_limit_[port].store(n, std::memory_order_relaxed);
}

void MacTable::Erase(size_t i) {
  // Backward-shift deletion: pull later members of the probe run into the hole when the hole
  // lies between their home and their slot. Each slot written gets a new version (its key
  // changes). Meta is read seq_cst: a lock-free refresh that this misses sees seq_ odd.
  Dec(port_size_[PortOf(slots_[i].meta.load(std::memory_order_relaxed))]);
  size_t hole = i;
  for (size_t j = (i + 1) & mask_;; j = (j + 1) & mask_) {
    const uint64_t k = slots_[j].key.load(std::memory_order_relaxed);
    if (k == 0) break;
    const size_t home = Home(k);
    const bool movable = ((j - home) & mask_) >= ((j - hole) & mask_);
    if (movable) {
      Slot& h = slots_[hole];
      const uint64_t m = slots_[j].meta.load(std::memory_order_seq_cst);
      h.meta.store(NextVersion(h.meta.load(std::memory_order_relaxed), m),
                   std::memory_order_release);
      h.key.store(k, std::memory_order_release);
      hole = j;
    }
  }
  Slot& h = slots_[hole];
  h.key.store(0, std::memory_order_release);
  h.meta.store(NextVersion(h.meta.load(std::memory_order_relaxed), 0), std::memory_order_release);
  Dec(size_);
}

template <typename Pred>
size_t MacTable::EraseIf(Pred pred) {
  std::lock_guard lock(mu_);
  size_t n = 0;
  // One write window per erasure, not per sweep: lookups go on between them. The predicate is
  // checked again inside the window (seq_cst): a station refreshed lock-free just before is
  // seen refreshed, one refreshed after sees the window and relearns under the mutex.
  // Re-check a slot after erasing it: the shift may have moved a later entry into it. An entry
  // shifted across the array's end lands in a slot already checked, and was checked itself.
  for (size_t i = 0; i < cap_;) {
    Slot& s = slots_[i];
    if (s.key.load(std::memory_order_relaxed) != 0 &&
        pred(s.meta.load(std::memory_order_relaxed))) {
      BeginWrite();
      const bool still = pred(s.meta.load(std::memory_order_seq_cst));
      if (still) Erase(i);
      EndWrite();
      if (still) {
        ++n;
        continue;
      }
    }
    ++i;
  }
  return n;
}

size_t MacTable::FlushPort(uint16_t port) {
  return EraseIf([port](uint64_t m) { return PortOf(m) == port; });
}

size_t MacTable::FlushPortBefore(uint16_t port, uint16_t epoch) {
  return EraseIf([port, epoch](uint64_t m) { return PortOf(m) == port && EpochOf(m) != epoch; });
}

size_t MacTable::Flush() {
  std::lock_guard lock(mu_);
  const size_t n = size();
  BeginWrite();
  for (size_t i = 0; i < cap_; ++i) {
    Slot& s = slots_[i];
    if (s.key.load(std::memory_order_relaxed) == 0) continue;
    s.key.store(0, std::memory_order_release);
    s.meta.store(NextVersion(s.meta.load(std::memory_order_relaxed), 0), std::memory_order_release);
  }
  EndWrite();
  size_.store(0, std::memory_order_relaxed);
  for (auto& p : port_size_) p.store(0, std::memory_order_relaxed);
  return n;
}

size_t MacTable::Age(uint32_t now_s) {
  return EraseIf([this, now_s](uint64_t m) { return Expired(m, now_s); });
}

std::vector<MacTable::Entry> MacTable::Dump(uint32_t now_s) const {
  std::lock_guard lock(mu_);
  std::vector<Entry> out;
  out.reserve(size());
  for (size_t i = 0; i < cap_; ++i) {
    const uint64_t k = slots_[i].key.load(std::memory_order_relaxed);
    if (k == 0) continue;
    const uint64_t m = slots_[i].meta.load(std::memory_order_relaxed);
    if (Expired(m, now_s)) continue;
    out.push_back({k & ((1ull << 48) - 1), static_cast<uint16_t>((k >> 48) & 0xfff), PortOf(m),
                   now_s - SeenOf(m)});
  }
  return out;
}

}  // namespace nicmux
