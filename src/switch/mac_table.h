// MacTable: the learning switch's forwarding database, (VLAN, MAC) -> port, with aging and a
// size limit. Open addressing with linear probing over a power-of-two array at most half full;
// deletion shifts entries back (no tombstones), so a lookup stops at the first empty slot.
//
// Concurrency: any thread may call any method at any time; callers hold no lock.
//  - Readers never lock: Lookup; Learn of a known station on the port (and in the epoch) it is
//    already on, which at most refreshes its last-seen second with one CAS on the slot's packed
//    meta word (port|epoch|seen_s|version), once a second per station; Learn of a new station
//    on a port at its limit (kPortFull).
//  - Writers take a mutex: a new station, a move, an epoch change, Age, the flushes,
//    set_port_limit, and Dump (a consistent snapshot). They are rare once stations are
//    learned. Keys change only inside a writer's window on a seqlock (seq_ odd): one insertion,
//    or one erasure with its backward shift, or a whole Flush — never a whole Age sweep. A
//    reader that saw seq_ odd, or moved over its probe, retries (a bounded number of times).
//  - A reader racing a writer may at worst miss an entry for that one lookup (a writer kept
//    the table busy through every retry: -1, and the frame floods), or get the port a moving
//    station was on a moment ago; it never gets a port the MAC was not on. A lock-free refresh
//    that a writer overlapped (seq_ moved, or the slot's meta changed under its CAS) is redone
//    under the mutex.
//  - Slot fields are std::atomic (acquire/release; seq_cst where a refresh must not slip past
//    an erasure), so there is no data race (ThreadSanitizer: switch_test *TwoWorkers*).

// Time is whole seconds from the caller (the switch's coarse clock): an entry not seen for more
// than aging seconds is treated as absent by Lookup and removed by Age().
//
// Per-port limit: each port (0..kMaxPorts-1) holds at most port_limit(port) entries (default:
// the table's size). A new station beyond it is not learned (kPortFull); a known station that
// moves to a port at its limit is forgotten (kPortFull too: its frames flood until it is
// learned again), never left pointing at the port it left.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "base/counter.h"

namespace nicmux {

using MacAddr = uint64_t;  // the 48-bit MAC in the low bits, first octet most significant

inline MacAddr MacFromBytes(const std::byte* p) {
  uint64_t m = 0;
  for (int i = 0; i < 6; ++i) m = (m << 8) | static_cast<uint8_t>(p[i]);
  return m;
}
// The same from a buffer with at least 8 readable bytes at p (one load instead of six).
inline MacAddr LoadMac(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v) >> 16;
}
inline bool MacIsMulticast(MacAddr m) { return (m >> 40) & 1; }

class MacTable {
 public:
  enum class LearnResult { kKnown, kNew, kMoved, kFull, kPortFull };
  static constexpr uint16_t kMaxPorts = 256;
  struct Entry {
    MacAddr mac;
    uint16_t vid;
    uint16_t port;
    uint32_t age_s;
  };

  MacTable(uint32_t max_entries, uint32_t aging_s);

  // Lock-free (see above): the port, or -1 (unknown, aged, or a writer kept the table busy).
  int Lookup(MacAddr mac, uint16_t vid, uint32_t now_s) const;
  // `epoch`: the low bits of the port's link generation (Port::link_generation) when the
  // packet was received; FlushPortBefore forgets only what was learned in older epochs.
  // Lock-free for a known station on `port` in `epoch` (and for a new one on a port at its
  // limit); otherwise under the writer mutex.
  LearnResult Learn(MacAddr mac, uint16_t vid, uint16_t port, uint32_t now_s, uint16_t epoch = 0);
  // The rest of the writers, each under the writer mutex.
  size_t FlushPort(uint16_t port);
  // Forgets what `port` learned in an epoch other than `epoch`: the stations behind a peer that
  // went away, but not those its new peer announced before the switch noticed the change.
  size_t FlushPortBefore(uint16_t port, uint16_t epoch);
  size_t Flush();
  size_t Age(uint32_t now_s);
  // A consistent snapshot (under the writer mutex) of the entries not aged out.
  std::vector<Entry> Dump(uint32_t now_s) const;
  void set_aging_s(uint32_t s) { aging_s_.store(s, std::memory_order_relaxed); }
  // The most entries `port` may hold (1..; entries it has beyond a lowered limit stay until
  // they age, move or are flushed).
  void set_port_limit(uint16_t port, uint32_t n);
  // Reads of single values, no lock (each may be a moment old).
  uint32_t port_limit(uint16_t port) const {
    return port_limit_[port].load(std::memory_order_relaxed);
  }
  uint32_t port_size(uint16_t port) const {
    return port_size_[port].load(std::memory_order_relaxed);
  }
  uint32_t aging_s() const { return aging_s_.load(std::memory_order_relaxed); }
  uint32_t size() const { return size_.load(std::memory_order_relaxed); }
  uint32_t max_entries() const { return max_entries_; }
  uint64_t moves() const { return moves_.Get(); }
  uint64_t full_drops() const { return full_.Get(); }

 private:
  // A slot is two words. key: kValid | vid << 48 | mac; 0 = empty. meta: seen_s (bits 0..31),
  // epoch (32..47, see Learn), port (48..55), and a version (56..63) the writer bumps whenever
  // the slot's key changes, so a lock-free refresh's CAS never lands on another station that
  // was shifted into the slot with an equal port, epoch and second.
  struct Slot {
    std::atomic<uint64_t> key{0};
    std::atomic<uint64_t> meta{0};
  };
  static constexpr uint64_t kValid = 1ull << 63;
  static constexpr uint64_t kVerShift = 56, kVerOne = 1ull << kVerShift;
  static constexpr uint64_t kVerMask = 0xffull << kVerShift;
  static uint64_t Key(MacAddr mac, uint16_t vid) { return kValid | uint64_t{vid} << 48 | mac; }
  static uint64_t Meta(uint16_t port, uint16_t epoch, uint32_t seen_s) {
    return uint64_t{port} << 48 | uint64_t{epoch} << 32 | seen_s;
  }
  static uint16_t PortOf(uint64_t m) { return static_cast<uint16_t>((m >> 48) & 0xff); }
  static uint16_t EpochOf(uint64_t m) { return static_cast<uint16_t>(m >> 32); }
  static uint32_t SeenOf(uint64_t m) { return static_cast<uint32_t>(m); }
  // meta's fields with the slot's version (of `old`, the slot's meta before) bumped.
  static uint64_t NextVersion(uint64_t old, uint64_t fields) {
    return (fields & ~kVerMask) | ((old + kVerOne) & kVerMask);
  }
  size_t Home(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }
  bool Expired(uint64_t meta, uint32_t now_s) const { return now_s - SeenOf(meta) > aging_s(); }

  // The lock-free probe: where `key` is (its slot index and meta, true) or that it is absent
  // (false), as of sequence *seq (even, and unchanged over the probe). Busy: a writer kept
  // moving seq_ for every try.
  enum class Probe { kFound, kAbsent, kBusy };
  Probe Find(uint64_t key, size_t* index, uint64_t* meta, uint64_t* seq) const;

  // Under mu_.
  LearnResult LearnLocked(uint64_t key, uint16_t port, uint32_t now_s, uint16_t epoch);
  void BeginWrite();     // seq_ odd: keys may change
  void EndWrite();       // seq_ even again
  void Erase(size_t i);  // inside a write window
  template <typename Pred>
  size_t EraseIf(Pred pred);
  static void Dec(std::atomic<uint32_t>& v) {
    v.store(v.load(std::memory_order_relaxed) - 1, std::memory_order_relaxed);
  }
  static void Inc(std::atomic<uint32_t>& v) {
    v.store(v.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  // Read by every lookup, written by each writer's window: a line of its own.
  alignas(64) std::atomic<uint64_t> seq_{0};
  // Read by lookups, (almost) never written.
  alignas(64) std::unique_ptr<Slot[]> slots_;
  size_t cap_;
  size_t mask_;
  int shift_;
  uint32_t max_entries_;
  std::atomic<uint32_t> aging_s_;
  std::array<std::atomic<uint32_t>, kMaxPorts> port_limit_{};  // per port: the most allowed
  // Written by the writers (under mu_), away from what lookups read.
  alignas(64) std::atomic<uint32_t> size_{0};
  std::array<std::atomic<uint32_t>, kMaxPorts> port_size_{};  // per port: entries held
  mutable std::mutex mu_;                                     // the writers'
  Counter moves_, full_;
};

}  // namespace nicmux
