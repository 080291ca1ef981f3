// L2Switch: the learning Ethernet switch between nicmux's ports (DESIGN.md "The data path").
//
// Per batch of up to 32 packets from one source queue, netmap VALE's two passes:
//   1. decide (ForwardPlan): for every packet, from its private header copy, the VLAN it
//      belongs to, learn its source MAC, look up its destination MAC: one port, flood
//      (broadcast, multicast, unknown unicast: every other port of the VLAN) or drop (a named
//      reason);
//   2. deliver: one Tx per destination port with that port's packets in order, each
//      destination copying straight from the source's buffers (a flood copies once per
//      destination, never into an intermediate buffer).
// Never back out of the port a packet came in on.
//
// VLANs (per port): no option = trunk of every VLAN, untagged frames in VLAN 0 (what a plain
// switch does; frames pass as they are); `vlan=N` = access port of VLAN N (untagged on the
// wire, tagged frames dropped); `trunk=A/B/...` = tagged frames of the listed VLANs (0 in
// the list admits untagged frames). Inside the switch a frame is untagged with its VLAN
// beside it; the tag is put back for a trunk destination (on a private copy of the head).
//
// Backpressure: when a destination queue cannot take its share of a batch, the source keeps
// the rest of its batch (Rewind) and retries, so a momentarily slow receiver loses nothing —
// but only the packets that go to slow destinations alone are ever held: everything in the
// batch for a destination with room is delivered at once, and the copies (flood or unicast)
// a slow destination has no room for in front of them are dropped (queue_full). A source
// whose whole batch is for slow destinations is held, its later frames waiting in its own
// ring, within each destination's hold credit (kMaxStallNs at a time, refilled at
// 1/kHoldRefillDiv of the time, and whole again each time the destination has taken
// kTakenToRestore packets): past it the destination is congested and what
// does not fit is dropped. A trickle refill earns little, so a dribbling guest cannot delay
// anyone for more than 50 ms at a time, and for 50 ms per 256 packets it takes.
//
// Threads: workers each poll the source queues the scheduler gives them (src/sched/); a packet
// from source queue q goes to destination queue q % (its queues), so a guest's flows spread over
// its receive queues as the sender spread them. With more than one worker a destination queue
// may be reached by several, and is sent to under its TxLock (uncontended: ~20 ns a batch).
// The MAC table is shared by all workers and takes no lock for known stations: lookups and the
// learning of a station on the port it is already on read it lock-free (MacTable's seqlock);
// only a new station, a move, an epoch change and the control thread's aging and flushes take
// its writer mutex. Ports are added and removed by the control thread with every
// worker paused (the hot loop takes no lock for the port table).
#pragma once

#include <array>
#include <atomic>
#include <bitset>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/counter.h"
#include "base/result.h"
#include "packet/offload_ops.h"
#include "port/port.h"
#include "switch/capture.h"
#include "switch/forwarder.h"
#include "switch/mac_table.h"

namespace nicmux {

struct VlanConfig {
  enum class Mode : uint8_t { kTrunkAll, kAccess, kTrunk };
  Mode mode = Mode::kTrunkAll;
  uint16_t access_vid = 0;
  std::bitset<4096> allowed;  // kTrunk

  bool Admits(uint16_t vid) const {
    switch (mode) {
      case Mode::kTrunkAll: return true;
      case Mode::kAccess: return vid == access_vid;
      case Mode::kTrunk: return allowed.test(vid);
    }
    return false;
  }
  // Whether a frame of `vid` leaves this port with a tag.
  bool Tags(uint16_t vid) const { return mode != Mode::kAccess && vid != 0; }
  std::string ToString() const;
};

struct SwitchPortConfig {
  static constexpr uint32_t kDefaultMacLimit = 1024;
  static constexpr uint32_t kMaxMacLimit = 1u << 20;  // the largest --mac-table-size
  static constexpr size_t kMaxAllowedMacs = 64;

  VlanConfig vlan;
  uint32_t mtu = 0;  // largest payload (frame without Ethernet header) it takes; 0: any
  // Source MACs learned on the port, at most (`mac_limit=N`); a new one beyond is not learned
  // (its frames are still forwarded; counted per port).
  uint32_t mac_limit = kDefaultMacLimit;
  // Port security (`allowed_macs=M1/M2/...`): empty = any source MAC; else a frame with
  // another source MAC is dropped at ingress (mac_not_allowed).
  std::vector<uint64_t> allowed_macs;
};

struct SwitchOptions {
  uint32_t workers = 1;
  uint32_t mac_table_size = 8192;
  uint32_t mac_aging_s = 300;
  // Monotonic nanoseconds (tests inject a clock); null: CLOCK_MONOTONIC_COARSE.
  uint64_t (*clock_ns)() = nullptr;
};

class L2Switch;

// The decisions for one batch (pass 1) and the packets grouped per destination (pass 2's
// input), in packet order within each group.
struct ForwardPlan {
  static constexpr int16_t kFlood = -1;
  static constexpr int16_t kDrop = -2;
  static constexpr uint16_t kMaxPorts = 256;

  static constexpr uint8_t kNoDrop = 0xff;

  int16_t dst[kBurst];   // per packet: a port id, kFlood or kDrop
  uint16_t vid[kBurst];  // per packet: its VLAN (the head is untagged)
  // Per packet: the DropReason when it is dropped (kDrop, or a flood with nowhere to go), else
  // kNoDrop. Counted once the batch's cut is known, so a packet held and received again is
  // counted once (as are floods and MACs not learned).
  uint8_t drop[kBurst];
  bool unlearned[kBurst];  // per packet: its source MAC was not learned (the port's mac_limit)
  L4Layout l4[kBurst];     // per packet with a GSO request: its headers (CheckOffload)
  bool counts = false;     // some packet has a drop, a flood or an unlearned source
  uint16_t ids[kMaxPorts];  // the destinations met, in first-met order
  uint32_t num_ids = 0;
  uint8_t count[kMaxPorts];         // per destination: packets in its group
  uint8_t group[kMaxPorts][kBurst];  // per destination: packet indexes

  void ClearGroups(uint16_t num_port_ids) {
    std::memset(count, 0, num_port_ids);
    num_ids = 0;
  }
  // Packets 0..n-1, all for port (nothing else grouped yet).
  void SetOneGroup(uint16_t port, uint32_t n) {
    ids[0] = port;
    num_ids = 1;
    count[port] = static_cast<uint8_t>(n);
    for (uint32_t i = 0; i < n; ++i) group[port][i] = static_cast<uint8_t>(i);
  }
  void AddTo(uint16_t port, uint32_t packet) {
    if (count[port] == 0) ids[num_ids++] = port;
    group[port][count[port]++] = static_cast<uint8_t>(packet);
  }
};

// One worker's forwarding context in the switch (its batch, plan, hold accounts and
// counters): a Forwarder for whatever source queues the scheduler gives that worker. Page
// aligned, like its counter table, so that PreferNode can keep both on the worker's NUMA node
// without moving anyone else's data.
class alignas(kNumaPageBytes) SwitchWorker final : public Forwarder {
 public:
  // shared: the switch has more than one worker.
  SwitchWorker(L2Switch* sw, bool shared);
  WorkDone Forward(uint16_t id, uint32_t q) override;
  // The object itself (batch, plan, head copies, hold accounts) and the counter table.
  void PreferNode(int node) override;
  // One burst from every source queue of every port, in order (tests, fuzz targets: one
  // thread that polls everything).
  WorkDone ForwardAll();

 private:
  friend class L2Switch;
  // The last (VLAN << 48 | MAC) learned and looked up in this batch (~0: none).
  struct BatchMemo {
    uint64_t learned = ~0ull;
    bool learned_over_limit = false;  // (for `learned`) not learned: the port's mac_limit
    uint64_t looked = ~0ull;
    int looked_port = -1;
    uint16_t epoch = 0;  // the source port's link generation (low bits) for MacTable::Learn
  };
  struct PortCounters;
  void FillGroups(uint16_t src, uint32_t n, uint16_t nids);
  // Inlined into Forward's loop (once per packet; its out-parameters stay in registers).
  [[gnu::always_inline]] bool Classify(uint16_t src, PacketRef& p, uint16_t* vid, int* dst, DropReason* why,
                                       bool* unlearned, uint32_t now_s, BatchMemo& memo, L4Layout* l4);
  uint32_t Cut(uint32_t q, uint32_t n);
  void CountDecided(PortCounters& cnt, uint32_t cut);
  const PacketRef* Tagged(uint32_t i, uint16_t vid);
  void CompleteChecksumOf(uint32_t i);
  size_t SendSegmented(uint32_t i, uint16_t vid, bool tag, Port* dp, uint32_t dq, uint32_t mtu, PortCounters& cnt,
                       Capture* capture);

  L2Switch* sw_;
  bool shared_;  // more than one worker: destination queues are sent to under their TxLock
  Batch batch_;
  ForwardPlan plan_;
  // Head copies with the VLAN tag put back, made on first use per batch.
  PacketRef tagged_[kBurst];
  uint32_t tagged_valid_ = 0;  // bit i: tagged_[i] is made
  Segmenter segmenter_;
  std::vector<PacketRef> seg_out_;  // kMaxGsoSegments, made at the first GSO frame
  // Per destination port (id): this worker's account of how long it has held sources for it.
  // Read only when a destination is short or stops being held, never while traffic fits.
  struct Hold {
    bool holding = false;    // a source of ours is held for it
    bool congested = false;  // its credit ran out: no hold until the credit is whole again
    uint64_t credit_ns = 50'000'000;  // hold time left as of at_ns (L2Switch::kMaxStallNs)
    uint64_t at_ns = 0;               // when credit_ns was settled (0: never)
    uint32_t taken = 0;  // packets taken since its credit was last restored
  };
  bool MayHold(Hold& h, uint64_t now_ns) const;
  void Settle(Hold& h, uint64_t now_ns) const;
  // Packets the destination took: kTakenToRestore of them make a spent credit whole again.
  void Earn(Hold& h, uint32_t taken) const;
  std::array<Hold, 256> hold_{};
  // Drops, floods and unlearned sources by ingress port (this worker is their one writer).
  struct PortCounters {
    DropCounters drops;
    Counter flooded;
    Counter unlearned;  // frames whose new source MAC was not learned: the port's mac_limit
  };
  struct alignas(kNumaPageBytes) CounterTable : std::array<PortCounters, 256> {};
  std::unique_ptr<CounterTable> counters_;
};

class L2Switch {
 public:
  static constexpr uint16_t kMaxPorts = 256;
  // How long a source is held at most, at a time, for a destination that cannot take its
  // whole group (its hold credit). Longer than a scheduler time slice on a loaded host (5 ms
  // lost frames on 2 shared cores), short enough that a stuck guest delays its senders'
  // later traffic only briefly.
  static constexpr uint64_t kMaxStallNs = 50'000'000;
  // The credit refills at 1/kHoldRefillDiv of the time not spent holding (50 ms per second):
  // in the long run a destination holds its senders for at most 1/kHoldRefillDiv of the time.
  static constexpr uint64_t kHoldRefillDiv = 20;
  // Packets a destination must take to have its whole hold credit back: holding is earned by
  // receiving. A receiver that was descheduled drains its senders' backlog when it runs and
  // earns it at once; one that refills a few buffers now and then (to hold its senders) earns
  // 50 ms per 256 packets it really takes. Without this, receivers starved of CPU on a busy
  // host ran out of credit and lost frames the switch used to hold (integration.switch_control
  // under stress-ng --cpu 2: 6048 of 20000 lost).
  static constexpr uint32_t kTakenToRestore = 256;

  explicit L2Switch(const SwitchOptions& o);
  ~L2Switch();

  // Control thread, with every worker paused.
  Result<uint16_t> AddPort(Port* port, const SwitchPortConfig& config);
  void RemovePort(uint16_t id);
  void SetPortConfig(uint16_t id, const SwitchPortConfig& config);

  // The per-worker forwarders (index 0..workers-1), owned by the switch.
  SwitchWorker* worker(uint32_t i) { return workers_[i].get(); }
  uint32_t num_workers() const { return static_cast<uint32_t>(workers_.size()); }

  // Control thread, any time: ages the MAC table, advances the clock and forgets the MACs
  // of ports whose peer went away (Port::link_generation moved) (call about once a second).
  void Tick();
  void set_mac_aging_s(uint32_t s);
  MacTable& macs() { return macs_; }
  uint32_t now_s() const { return now_s_.load(std::memory_order_relaxed); }

  // Starts (c) or stops (nullptr) copying port id's packets into c. The caller pauses the
  // workers before it frees a Capture it replaced.
  void SetCapture(uint16_t id, Capture* c) { capture_[id].store(c, std::memory_order_release); }

  // Switch-level drops and floods of packets that entered through port `id`.
  uint64_t DropsFor(uint16_t id, DropReason r) const;
  uint64_t Flooded(uint16_t id) const;
  // Frames from port `id` whose new source MAC was not learned (the port's mac_limit).
  uint64_t Unlearned(uint16_t id) const;
  // Entries the MAC table holds for port `id`.
  uint32_t MacsOf(uint16_t id);

 private:
  friend class SwitchWorker;
  struct Slot {
    Port* port = nullptr;
    SwitchPortConfig config;
  };
  uint64_t NowNs() const;
  std::array<Slot, kMaxPorts> ports_;
  // The link generation of each port when its MACs were last flushed (control thread only).
  std::array<uint64_t, kMaxPorts> link_generation_{};
  uint64_t (*clock_ns_)();
  std::array<std::atomic<Capture*>, kMaxPorts> capture_{};
  uint16_t num_ids_ = 0;  // ids in use are below this
  MacTable macs_;
  std::atomic<uint32_t> now_s_{1};
  uint64_t start_ns_;
  std::vector<std::unique_ptr<SwitchWorker>> workers_;
};

// Parses a port's VLAN options: vlan=N (access, 1..4094) or trunk=A/B/C-D (0..4094).
Result<VlanConfig> ParseVlan(const std::string& port, const std::string* vlan, const std::string* trunk);

// Parses a port's allowed_macs=M1/M2/... (xx:xx:xx:xx:xx:xx, hex digits, unicast and not zero,
// no repeats, 1..SwitchPortConfig::kMaxAllowedMacs of them).
Result<std::vector<uint64_t>> ParseAllowedMacs(const std::string& port, const std::string& text);
// "02:00:00:00:00:01".
std::string MacToString(uint64_t mac);

}  // namespace nicmux
