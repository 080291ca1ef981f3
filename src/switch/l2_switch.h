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
// Backpressure: when a destination queue is full the source keeps the rest of its batch
// (Rewind) and retries, so a momentarily slow receiver loses nothing; a destination that has not
// taken whole batches for kMaxStallNs is congested: what does not fit is dropped (queue_full)
// until it takes a whole batch again, so a stuck or dribbling guest cannot hold its senders'
// traffic to everyone else for longer than that. The
// same holds for flood copies (a not-yet-learned receiver is as precious as a learned one).
//
// Threads: workers each poll their share of source queues (port id + queue) % workers; a packet
// from source queue q goes to destination queue q % (its queues), so a guest's flows spread over
// its receive queues as the sender spread them. With more than one worker a destination queue
// may be reached by several, and is sent to under its TxLock (uncontended: ~20 ns a batch).
// Ports are added and removed by the control thread with every
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
  VlanConfig vlan;
  uint32_t mtu = 0;  // largest payload (frame without Ethernet header) it takes; 0: any
};

struct SwitchOptions {
  uint32_t workers = 1;
  uint32_t mac_table_size = 8192;
  uint32_t mac_aging_s = 300;
};

class L2Switch;

// The decisions for one batch (pass 1) and the packets grouped per destination (pass 2's
// input), in packet order within each group.
struct ForwardPlan {
  static constexpr int16_t kFlood = -1;
  static constexpr int16_t kDrop = -2;
  static constexpr uint16_t kMaxPorts = 256;

  int16_t dst[kBurst];   // per packet: a port id, kFlood or kDrop
  uint16_t vid[kBurst];  // per packet: its VLAN (the head is untagged)
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

// One worker's view of the switch: a Forwarder over the source queues assigned to it.
class SwitchWorker final : public Forwarder {
 public:
  SwitchWorker(L2Switch* sw, uint32_t index);
  WorkDone Poll() override;
  bool ArmNotify(std::vector<NotifyFd>* fds) override;
  void DisarmNotify() override;
  bool CanSleep() const override;

 private:
  friend class L2Switch;
  // The last (VLAN << 48 | MAC) learned and looked up in this batch (~0: none).
  struct BatchMemo {
    uint64_t learned = ~0ull;
    uint64_t looked = ~0ull;
    int looked_port = -1;
  };
  struct PortCounters;
  void Forward(uint16_t src, uint32_t q, WorkDone* w);
  void FillGroups(uint16_t src, uint32_t n, uint16_t nids, PortCounters& cnt);
  bool Classify(uint16_t src, PacketRef& p, uint16_t* vid, int* dst, uint32_t now_s, BatchMemo& memo);
  const PacketRef* Tagged(uint32_t i, uint16_t vid);

  L2Switch* sw_;
  uint32_t index_;
  Batch batch_;
  ForwardPlan plan_;
  // Head copies with the VLAN tag put back, made on first use per batch.
  PacketRef tagged_[kBurst];
  uint32_t tagged_valid_ = 0;  // bit i: tagged_[i] is made
  // Since when each destination port (id) has taken nothing (0: it is taking).
  std::array<uint64_t, 256> full_since_ns_{};
  // Drops and floods by ingress port (this worker is their one writer).
  struct PortCounters {
    DropCounters drops;
    Counter flooded;
  };
  std::unique_ptr<std::array<PortCounters, 256>> counters_;
};

class L2Switch {
 public:
  static constexpr uint16_t kMaxPorts = 256;
  // How long a source is held for a destination that cannot take its whole group. Longer than
  // a scheduler time slice on a loaded host (5 ms lost frames on 2 shared cores), short enough
  // that a stuck guest delays its senders' other traffic only briefly.
  static constexpr uint64_t kMaxStallNs = 50'000'000;

  explicit L2Switch(const SwitchOptions& o);
  ~L2Switch();

  // Control thread, with every worker paused.
  Result<uint16_t> AddPort(Port* port, const SwitchPortConfig& config);
  void RemovePort(uint16_t id);
  void SetPortConfig(uint16_t id, const SwitchPortConfig& config);

  // The per-worker forwarders (index 0..workers-1), owned by the switch.
  SwitchWorker* worker(uint32_t i) { return workers_[i].get(); }
  uint32_t num_workers() const { return static_cast<uint32_t>(workers_.size()); }

  // Control thread, any time: ages the MAC table and advances the clock (call about once a
  // second).
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

 private:
  friend class SwitchWorker;
  struct Slot {
    Port* port = nullptr;
    SwitchPortConfig config;
  };
  std::array<Slot, kMaxPorts> ports_;
  std::array<std::atomic<Capture*>, kMaxPorts> capture_{};
  uint16_t num_ids_ = 0;  // ids in use are below this
  MacTable macs_;
  std::atomic<uint32_t> now_s_{1};
  uint64_t start_ns_;
  std::vector<std::unique_ptr<SwitchWorker>> workers_;
};

// Parses a port's VLAN options: vlan=N (access, 1..4094) or trunk=A/B/C-D (0..4094).
Result<VlanConfig> ParseVlan(const std::string& port, const std::string* vlan, const std::string* trunk);

}  // namespace nicmux
