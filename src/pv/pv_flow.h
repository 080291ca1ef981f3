// Flow rules of a pv device (docs/pv-protocol.md, "Flow rules"): the host's software
// implementation of what FLOW_VALIDATE/CREATE take (src/pv/pv_abi.h, struct nmx_pv_flow_rule).
// CheckFlowRule refuses, with a reason, every rule nicmuxd cannot apply exactly; a FlowTable
// holds the rules in priority order and Classify picks, for a frame on its way into the
// device's rx rings, the first rule that matches. Pure code: no I/O, no threads of its own.
// What GET_INFO announces (FillFlowInfo) comes from the same constants the checks use.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "packet/packet.h"
#include "pv/pv_abi.h"

namespace nicmux::pv {

inline constexpr uint32_t kFlowItems = NMX_PV_FLOW_ITEM_ETH | NMX_PV_FLOW_ITEM_VLAN | NMX_PV_FLOW_ITEM_IPV4 |
                                       NMX_PV_FLOW_ITEM_IPV6 | NMX_PV_FLOW_ITEM_TCP | NMX_PV_FLOW_ITEM_UDP;
inline constexpr uint32_t kFlowActions =
    NMX_PV_FLOW_ACTION_QUEUE | NMX_PV_FLOW_ACTION_DROP | NMX_PV_FLOW_ACTION_MARK | NMX_PV_FLOW_ACTION_RSS;
inline constexpr uint64_t kFlowRssTypes = NMX_PV_RSS_IPV4 | NMX_PV_RSS_IPV4_TCP | NMX_PV_RSS_IPV4_UDP |
                                          NMX_PV_RSS_IPV6 | NMX_PV_RSS_IPV6_TCP | NMX_PV_RSS_IPV6_UDP;
inline constexpr uint32_t kDefaultMaxFlows = 256, kMaxMaxFlows = 4096;

// GET_INFO's flow fields: items, actions, RSS types, the matchable bytes of the fields.
void FillFlowInfo(nmx_pv_info* info, uint32_t max_flows);

// "" when the rule is one nicmuxd applies as written for a device with nb_rx rx queues; else
// why not ("FLOW: item tcp needs an ipv4 or ipv6 item"). Every field is checked.
std::string CheckFlowRule(const nmx_pv_flow_rule& r, uint32_t nb_rx);

// "eth / ipv4 / udp dst is 4789 -> queue 1": the rule for people (nicmuxctl, logs).
std::string DescribeFlowRule(const nmx_pv_flow_rule& r);

// A frame's fields as the rules see them: nmx_pv_flow_fields as 8 words, and the protocols
// found (NMX_PV_FLOW_ITEM_*).
struct FlowKey {
  alignas(8) std::array<uint64_t, 8> w{};
  uint32_t items = 0;
};
void ParseFlowKey(const PacketRef& p, FlowKey* k);

// Toeplitz over data with a 40-byte key (Microsoft's RSS hash).
uint32_t Toeplitz(const uint8_t* key, const uint8_t* data, size_t n);
extern const uint8_t kDefaultRssKey[NMX_PV_FLOW_RSS_KEY];

struct FlowRule {
  uint32_t id = 0;
  uint64_t seq = 0;  // creation order (ties of priority)
  nmx_pv_flow_rule wire{};  // as checked, spec & mask applied
  std::array<uint64_t, 8> spec{}, mask{};
  // Workers (any of them) count; the control thread reads.
  std::atomic<uint64_t> hits{0};
};

// What a matching rule decides for one frame.
struct FlowVerdict {
  const FlowRule* rule = nullptr;  // nullptr: no rule matched (the switch's queue, nothing else)
  bool drop = false;
  int32_t queue = -1;  // -1: the switch's queue
  bool mark = false;
  uint32_t mark_value = 0;
  bool rss = false;
  uint32_t hash = 0;
};

// The rules of one device, in the order they are tried. Changed by the control thread with the
// workers paused; Classify runs on the workers.
class FlowTable {
 public:
  bool empty() const { return rules_.empty(); }
  size_t size() const { return rules_.size(); }
  // The rule (checked by CheckFlowRule first); its id.
  uint32_t Add(const nmx_pv_flow_rule& r);
  // Live upgrade: a rule of the old process's table under its id, added in that table's order
  // (ties of priority keep it); next_id() and set_next_id() carry where the ids go on.
  void Restore(const nmx_pv_flow_rule& r, uint32_t id);
  uint32_t next_id() const { return next_id_; }
  void set_next_id(uint32_t id) { next_id_ = id; }
  bool Remove(uint32_t id);
  void Clear() { rules_.clear(); }
  FlowVerdict Classify(const PacketRef& p) const;
  const std::vector<std::unique_ptr<FlowRule>>& rules() const { return rules_; }

 private:
  void Insert(const nmx_pv_flow_rule& r, uint32_t id);
  std::vector<std::unique_ptr<FlowRule>> rules_;  // priority, then seq
  uint32_t next_id_ = 0;
  uint64_t next_seq_ = 0;
};

}  // namespace nicmux::pv
