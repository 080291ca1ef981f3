// MacTable: the learning switch's forwarding database, (VLAN, MAC) -> port, with aging and a
// size limit. Open addressing with linear probing over a power-of-two array at most half full;
// deletion shifts entries back (no tombstones), so a lookup stops at the first empty slot.
//
// Concurrency: every call happens under lock(), which a worker takes once per batch (learn and
// look up all its packets, then release) and the control thread takes to age, flush or dump.
// Uncontended (one worker) it costs one atomic exchange per batch.
//
// Time is whole seconds from the caller (the switch's coarse clock): an entry not seen for more
// than aging seconds is treated as absent by Lookup and removed by Age().
//
// Per-port limit: each port (0..kMaxPorts-1) holds at most port_limit(port) entries (default:
// the table's size). A new station beyond it is not learned (kPortFull); a known station that
// moves to a port at its limit is forgotten (kPortFull too: its frames flood until it is
// learned again), never left pointing at the port it left.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "port/port.h"

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

  TxLock& lock() { return lock_; }

  // All under lock().
  int Lookup(MacAddr mac, uint16_t vid, uint32_t now_s) const;  // port, or -1
  // `epoch`: the low bits of the port's link generation (Port::link_generation) when the
  // packet was received; FlushPortBefore forgets only what was learned in older epochs.
  LearnResult Learn(MacAddr mac, uint16_t vid, uint16_t port, uint32_t now_s, uint16_t epoch = 0);
  size_t FlushPort(uint16_t port);
  // Forgets what `port` learned in an epoch other than `epoch`: the stations behind a peer that
  // went away, but not those its new peer announced before the switch noticed the change.
  size_t FlushPortBefore(uint16_t port, uint16_t epoch);
  size_t Flush();
  size_t Age(uint32_t now_s);
  std::vector<Entry> Dump(uint32_t now_s) const;
  void set_aging_s(uint32_t s) { aging_s_ = s; }
  // The most entries `port` may hold (1..; entries it has beyond a lowered limit stay until
  // they age, move or are flushed).
  void set_port_limit(uint16_t port, uint32_t n);
  uint32_t port_limit(uint16_t port) const { return port_limit_[port]; }
  uint32_t port_size(uint16_t port) const { return port_size_[port]; }

  uint32_t aging_s() const { return aging_s_; }
  uint32_t size() const { return size_; }
  uint32_t max_entries() const { return max_entries_; }
  uint64_t moves() const { return moves_.Get(); }
  uint64_t full_drops() const { return full_.Get(); }

 private:
  struct Slot {
    uint64_t key = 0;  // kValid | vid << 48 | mac; 0 = empty
    uint16_t port = 0;
    uint16_t epoch = 0;  // see Learn
    uint32_t seen_s = 0;
  };
  static constexpr uint64_t kValid = 1ull << 63;
  static uint64_t Key(MacAddr mac, uint16_t vid) { return kValid | uint64_t{vid} << 48 | mac; }
  size_t Home(uint64_t key) const { return (key * 0x9E3779B97F4A7C15ull) >> shift_; }
  bool Expired(const Slot& s, uint32_t now_s) const { return now_s - s.seen_s > aging_s_; }
  void Erase(size_t i);
  template <typename Pred>
  size_t EraseIf(Pred pred);

  std::vector<Slot> slots_;
  size_t mask_;
  int shift_;
  uint32_t max_entries_;
  uint32_t aging_s_;
  uint32_t size_ = 0;
  std::vector<uint32_t> port_size_, port_limit_;  // per port: entries held, the most allowed
  TxLock lock_;
  Counter moves_, full_;
};

}  // namespace nicmux
