#include "pv/pv_flow.h"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdio>
#include <cstring>

namespace nicmux::pv {
namespace {

using F = nmx_pv_flow_fields;

// The bytes of nmx_pv_flow_fields each item carries.
struct Span {
  size_t off, len;
};
constexpr Span kEthBytes{offsetof(F, eth_dst), offsetof(F, vlan_tci) - offsetof(F, eth_dst)};
constexpr Span kVlanBytes{offsetof(F, vlan_tci), 4};
constexpr Span kIpMeta{offsetof(F, ip_proto), 2};
constexpr Span kL4Bytes{offsetof(F, l4_src), 4};
constexpr Span kIpSrc{offsetof(F, ip_src), 16}, kIpDst{offsetof(F, ip_dst), 16};
static_assert(offsetof(F, ip_proto) + 2 == offsetof(F, l4_src));
static_assert(offsetof(F, l4_src) + 4 == offsetof(F, ip_src));
static_assert(offsetof(F, reserved) == 56);

bool AnySet(const F& f, Span s, size_t from = 0) {
  const auto* b = reinterpret_cast<const uint8_t*>(&f);
  for (size_t i = s.off + from; i < s.off + s.len; ++i) {
    if (b[i]) return true;
  }
  return false;
}

uint16_t Be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

std::string Hex(uint64_t v) {
  char s[24];
  std::snprintf(s, sizeof s, "0x%llx", static_cast<unsigned long long>(v));
  return s;
}

// Frame bytes [0, n) of p: the private head first, then the source's segments.
uint32_t Gather(const PacketRef& p, uint8_t* out, uint32_t n) {
  n = std::min(n, p.len);
  uint32_t got = std::min(n, p.head_len);
  std::memcpy(out, p.head, got);
  uint32_t seg = p.seg, off = p.seg_off;
  while (got < n && seg < p.nsegs) {
    const Segment& s = p.segs[seg];
    if (off >= s.len) {
      ++seg;
      off = 0;
      continue;
    }
    const uint32_t k = std::min(n - got, s.len - off);
    std::memcpy(out + got, s.data + off, k);
    got += k;
    off += k;
  }
  return got;
}

}  // namespace

const uint8_t kDefaultRssKey[NMX_PV_FLOW_RSS_KEY] = {
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
    0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
    0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa};

void FillFlowInfo(nmx_pv_info* info, uint32_t max_flows) {
  info->flow_items = kFlowItems;
  info->flow_actions = kFlowActions;
  info->max_flows = max_flows;
  info->flow_rss_queues = NMX_PV_FLOW_RSS_MAX_QUEUES;
  info->flow_rss_types = kFlowRssTypes;
  // Every field but the reserved word.
  std::memset(info->flow_fields.bytes, 0xff, offsetof(F, reserved));
  std::memset(info->flow_fields.bytes + offsetof(F, reserved), 0, sizeof(F) - offsetof(F, reserved));
}

std::string CheckFlowRule(const nmx_pv_flow_rule& r, uint32_t nb_rx) {
  // UNTRUSTED: every field of r is the driver's; each is bounded here before a FlowTable
  // takes the rule (queues < nb_rx, the RSS list <= NMX_PV_FLOW_RSS_MAX_QUEUES, known bits).
  if (r.reserved || r.spec.reserved || r.mask.reserved) return "FLOW: reserved fields must be 0";
  if (const uint32_t x = r.items & ~kFlowItems) return "FLOW: item bits " + Hex(x) + " are not offered";
  const bool v4 = r.items & NMX_PV_FLOW_ITEM_IPV4, v6 = r.items & NMX_PV_FLOW_ITEM_IPV6;
  const bool tcp = r.items & NMX_PV_FLOW_ITEM_TCP, udp = r.items & NMX_PV_FLOW_ITEM_UDP;
  if (v4 && v6) return "FLOW: ipv4 and ipv6 items in one pattern";
  if (tcp && udp) return "FLOW: tcp and udp items in one pattern";
  if ((tcp || udp) && !v4 && !v6) return std::string("FLOW: item ") + (tcp ? "tcp" : "udp") + " needs an ipv4 or ipv6 item";
  const F& m = r.mask;
  if (AnySet(m, kEthBytes) && !(r.items & NMX_PV_FLOW_ITEM_ETH)) return "FLOW: a mask on eth fields without an eth item";
  if (AnySet(m, kVlanBytes) && !(r.items & NMX_PV_FLOW_ITEM_VLAN)) return "FLOW: a mask on vlan fields without a vlan item";
  if ((AnySet(m, kIpMeta) || AnySet(m, kIpSrc) || AnySet(m, kIpDst)) && !v4 && !v6) {
    return "FLOW: a mask on ip fields without an ipv4 or ipv6 item";
  }
  if (v4 && (AnySet(m, kIpSrc, 4) || AnySet(m, kIpDst, 4))) return "FLOW: an ipv4 address has 4 bytes: mask bytes 4..15 must be 0";
  if (AnySet(m, kL4Bytes) && !tcp && !udp) return "FLOW: a mask on l4 ports without a tcp or udp item";
  if (const uint32_t x = r.actions & ~kFlowActions) return "FLOW: action bits " + Hex(x) + " are not offered";
  if (r.actions == 0) return "FLOW: no action";
  const uint32_t fates = r.actions & (NMX_PV_FLOW_ACTION_QUEUE | NMX_PV_FLOW_ACTION_DROP | NMX_PV_FLOW_ACTION_RSS);
  if (std::popcount(fates) > 1) return "FLOW: more than one of the actions queue, drop, rss";
  if (r.actions & NMX_PV_FLOW_ACTION_QUEUE) {
    if (r.queue >= nb_rx) {
      return "FLOW: action queue " + std::to_string(r.queue) + ": the device has " + std::to_string(nb_rx) +
             " rx queues configured";
    }
  } else if (r.queue) {
    return "FLOW: queue set without a queue action";
  }
  if (!(r.actions & NMX_PV_FLOW_ACTION_MARK) && r.mark) return "FLOW: mark set without a mark action";
  const bool rss = r.actions & NMX_PV_FLOW_ACTION_RSS;
  if (rss) {
    if (r.rss_queue_num < 1 || r.rss_queue_num > NMX_PV_FLOW_RSS_MAX_QUEUES) {
      return "FLOW: action rss with " + std::to_string(r.rss_queue_num) + " queues (1.." +
             std::to_string(NMX_PV_FLOW_RSS_MAX_QUEUES) + ")";
    }
    for (uint32_t i = 0; i < r.rss_queue_num; ++i) {
      if (r.rss_queues[i] >= nb_rx) {
        return "FLOW: action rss queue " + std::to_string(r.rss_queues[i]) + ": the device has " +
               std::to_string(nb_rx) + " rx queues configured";
      }
    }
    for (uint32_t i = r.rss_queue_num; i < NMX_PV_FLOW_RSS_MAX_QUEUES; ++i) {
      if (r.rss_queues[i]) return "FLOW: rss_queues beyond rss_queue_num must be 0";
    }
    if (const uint64_t x = r.rss_types & ~kFlowRssTypes) return "FLOW: action rss types " + Hex(x) + " are not offered";
    if (r.rss_key_len != 0 && r.rss_key_len != NMX_PV_FLOW_RSS_KEY) {
      return "FLOW: action rss key of " + std::to_string(r.rss_key_len) + " bytes (0: the default, or " +
             std::to_string(NMX_PV_FLOW_RSS_KEY) + ")";
    }
  }
  if (!rss || r.rss_key_len == 0) {
    uint8_t any = 0;
    for (uint8_t b : r.rss_key) any |= b;
    if (any) return "FLOW: rss_key set without a 40-byte rss key";
  }
  if (!rss) {
    uint32_t any = r.rss_queue_num | static_cast<uint32_t>(r.rss_types != 0);
    for (uint16_t q : r.rss_queues) any |= q;
    if (any || r.rss_key_len) return "FLOW: rss fields set without an rss action";
  }
  return "";
}

std::string DescribeFlowRule(const nmx_pv_flow_rule& r) {
  const F& s = r.spec;
  const F& m = r.mask;
  auto field = [](std::string* out, const char* name, const uint8_t* sp, const uint8_t* mp, size_t n, bool ip4,
                  bool ip6, bool mac) {
    bool any = false, full = true;
    for (size_t i = 0; i < n; ++i) any |= mp[i] != 0, full &= mp[i] == 0xff;
    if (!any) return;
    auto text = [&](const uint8_t* b) {
      char t[64];
      if (ip4) {
        std::snprintf(t, sizeof t, "%u.%u.%u.%u", b[0], b[1], b[2], b[3]);
      } else if (mac) {
        std::snprintf(t, sizeof t, "%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5]);
      } else if (ip6) {
        std::string x;
        for (size_t i = 0; i < 16; i += 2) {
          char w[8];
          std::snprintf(w, sizeof w, "%s%x", i ? ":" : "", Be16(b + i));
          x += w;
        }
        return x;
      } else {
        uint32_t v = 0;
        for (size_t i = 0; i < n; ++i) v = v << 8 | b[i];
        std::snprintf(t, sizeof t, "%u", v);
      }
      return std::string(t);
    };
    *out += std::string(" ") + name + (full ? " is " + text(sp) : " spec " + text(sp) + " mask " + text(mp));
  };
  auto u8 = [](const auto& v) { return reinterpret_cast<const uint8_t*>(&v); };
  std::string out;
  const bool v4 = r.items & NMX_PV_FLOW_ITEM_IPV4, v6 = r.items & NMX_PV_FLOW_ITEM_IPV6;
  auto item = [&](uint32_t bit, const char* name) {
    if (!(r.items & bit)) return;
    out += out.empty() ? "" : " /";
    out += out.empty() ? name : std::string(" ") + name;
    switch (bit) {
      case NMX_PV_FLOW_ITEM_ETH:
        field(&out, "dst", s.eth_dst, m.eth_dst, 6, false, false, true);
        field(&out, "src", s.eth_src, m.eth_src, 6, false, false, true);
        field(&out, "type", u8(s.eth_type), u8(m.eth_type), 2, false, false, false);
        break;
      case NMX_PV_FLOW_ITEM_VLAN:
        field(&out, "tci", u8(s.vlan_tci), u8(m.vlan_tci), 2, false, false, false);
        field(&out, "inner_type", u8(s.vlan_inner_type), u8(m.vlan_inner_type), 2, false, false, false);
        break;
      case NMX_PV_FLOW_ITEM_IPV4:
      case NMX_PV_FLOW_ITEM_IPV6:
        field(&out, "src", s.ip_src, m.ip_src, v4 ? 4 : 16, v4, v6, false);
        field(&out, "dst", s.ip_dst, m.ip_dst, v4 ? 4 : 16, v4, v6, false);
        field(&out, "proto", &s.ip_proto, &m.ip_proto, 1, false, false, false);
        field(&out, "tos", &s.ip_tos, &m.ip_tos, 1, false, false, false);
        break;
      default:
        field(&out, "src", u8(s.l4_src), u8(m.l4_src), 2, false, false, false);
        field(&out, "dst", u8(s.l4_dst), u8(m.l4_dst), 2, false, false, false);
    }
  };
  item(NMX_PV_FLOW_ITEM_ETH, "eth");
  item(NMX_PV_FLOW_ITEM_VLAN, "vlan");
  item(NMX_PV_FLOW_ITEM_IPV4, "ipv4");
  item(NMX_PV_FLOW_ITEM_IPV6, "ipv6");
  item(NMX_PV_FLOW_ITEM_TCP, "tcp");
  item(NMX_PV_FLOW_ITEM_UDP, "udp");
  if (out.empty()) out = "any";
  std::string act;
  auto add = [&](const std::string& a) { act += (act.empty() ? "" : ", ") + a; };
  if (r.actions & NMX_PV_FLOW_ACTION_QUEUE) add("queue " + std::to_string(r.queue));
  if (r.actions & NMX_PV_FLOW_ACTION_DROP) add("drop");
  if (r.actions & NMX_PV_FLOW_ACTION_RSS) {
    std::string q;
    for (uint32_t i = 0; i < r.rss_queue_num && i < NMX_PV_FLOW_RSS_MAX_QUEUES; ++i) {
      q += (i ? " " : "") + std::to_string(r.rss_queues[i]);
    }
    add("rss queues " + q);
  }
  if (r.actions & NMX_PV_FLOW_ACTION_MARK) add("mark " + std::to_string(r.mark));
  return out + " -> " + act;
}

void ParseFlowKey(const PacketRef& p, FlowKey* k) {
  uint8_t b[96];
  const uint32_t n = Gather(p, b, sizeof b);
  F f{};
  k->items = 0;
  if (n >= 14) {
    k->items |= NMX_PV_FLOW_ITEM_ETH;
    std::memcpy(f.eth_dst, b, 6);
    std::memcpy(f.eth_src, b + 6, 6);
    std::memcpy(&f.eth_type, b + 12, 2);
    uint16_t type = Be16(b + 12);
    uint32_t l3 = 14, l4 = 0;
    uint8_t proto = 0;
    if ((type == 0x8100 || type == 0x88a8) && n >= 18) {
      k->items |= NMX_PV_FLOW_ITEM_VLAN;
      std::memcpy(&f.vlan_tci, b + 14, 2);
      std::memcpy(&f.vlan_inner_type, b + 16, 2);
      type = Be16(b + 16);
      l3 = 18;
    }
    if (type == 0x0800 && n >= l3 + 20 && (b[l3] >> 4) == 4) {
      const uint32_t ihl = (b[l3] & 15u) * 4;
      if (ihl >= 20 && n >= l3 + ihl) {
        k->items |= NMX_PV_FLOW_ITEM_IPV4;
        f.ip_tos = b[l3 + 1];
        proto = f.ip_proto = b[l3 + 9];
        std::memcpy(f.ip_src, b + l3 + 12, 4);
        std::memcpy(f.ip_dst, b + l3 + 16, 4);
        if ((Be16(b + l3 + 6) & 0x1fff) == 0) l4 = l3 + ihl;  // not a later fragment: ports follow
      }
    } else if (type == 0x86dd && n >= l3 + 40 && (b[l3] >> 4) == 6) {
      k->items |= NMX_PV_FLOW_ITEM_IPV6;
      f.ip_tos = static_cast<uint8_t>((b[l3] & 15u) << 4 | b[l3 + 1] >> 4);
      proto = f.ip_proto = b[l3 + 6];
      std::memcpy(f.ip_src, b + l3 + 8, 16);
      std::memcpy(f.ip_dst, b + l3 + 24, 16);
      l4 = l3 + 40;  // extension headers are not walked
    }
    if (l4 && (proto == 6 || proto == 17) && n >= l4 + 4) {
      k->items |= proto == 6 ? NMX_PV_FLOW_ITEM_TCP : NMX_PV_FLOW_ITEM_UDP;
      std::memcpy(&f.l4_src, b + l4, 2);
      std::memcpy(&f.l4_dst, b + l4 + 2, 2);
    }
  }
  std::memcpy(k->w.data(), &f, sizeof f);
}

uint32_t Toeplitz(const uint8_t* key, const uint8_t* data, size_t n) {
  uint32_t hash = 0;
  uint32_t window = static_cast<uint32_t>(key[0]) << 24 | key[1] << 16 | key[2] << 8 | key[3];
  size_t next = 4;  // the key byte that shifts in next
  for (size_t i = 0; i < n; ++i) {
    const uint8_t kb = next < NMX_PV_FLOW_RSS_KEY ? key[next] : 0;
    ++next;
    for (int bit = 7; bit >= 0; --bit) {
      if (data[i] & (1u << bit)) hash ^= window;
      window = window << 1 | ((kb >> bit) & 1u);
    }
  }
  return hash;
}

uint32_t FlowTable::Add(const nmx_pv_flow_rule& r) {
  uint32_t id = ++next_id_;
  if (id == 0) id = ++next_id_;  // never 0
  Insert(r, id);
  return id;
}

void FlowTable::Restore(const nmx_pv_flow_rule& r, uint32_t id) { Insert(r, id); }

void FlowTable::Insert(const nmx_pv_flow_rule& r, uint32_t id) {
  auto rule = std::make_unique<FlowRule>();
  rule->id = id;
  rule->seq = next_seq_++;
  rule->wire = r;
  // Bits of the spec outside the mask mean nothing (rte_flow): dropped.
  auto* s = reinterpret_cast<uint8_t*>(&rule->wire.spec);
  const auto* m = reinterpret_cast<const uint8_t*>(&rule->wire.mask);
  for (size_t i = 0; i < sizeof(F); ++i) s[i] &= m[i];
  std::memcpy(rule->spec.data(), &rule->wire.spec, sizeof(F));
  std::memcpy(rule->mask.data(), &rule->wire.mask, sizeof(F));
  auto at = std::upper_bound(rules_.begin(), rules_.end(), rule, [](const auto& a, const auto& b) {
    return a->wire.priority != b->wire.priority ? a->wire.priority < b->wire.priority : a->seq < b->seq;
  });
  rules_.insert(at, std::move(rule));
}

bool FlowTable::Remove(uint32_t id) {
  auto it = std::find_if(rules_.begin(), rules_.end(), [id](const auto& r) { return r->id == id; });
  if (it == rules_.end()) return false;
  rules_.erase(it);
  return true;
}

FlowVerdict FlowTable::Classify(const PacketRef& p) const {
  FlowVerdict v;
  if (rules_.empty()) return v;
  FlowKey k;
  ParseFlowKey(p, &k);
  for (const auto& r : rules_) {
    if (r->wire.items & ~k.items) continue;
    bool hit = true;
    for (size_t i = 0; i < 7; ++i) hit &= (k.w[i] & r->mask[i]) == r->spec[i];
    if (!hit) continue;
    r->hits.fetch_add(1, std::memory_order_relaxed);
    v.rule = r.get();
    const nmx_pv_flow_rule& w = r->wire;
    if (w.actions & NMX_PV_FLOW_ACTION_MARK) v.mark = true, v.mark_value = w.mark;
    if (w.actions & NMX_PV_FLOW_ACTION_DROP) v.drop = true;
    if (w.actions & NMX_PV_FLOW_ACTION_QUEUE) v.queue = static_cast<int32_t>(w.queue);
    if (w.actions & NMX_PV_FLOW_ACTION_RSS) {
      // What the hash covers for this kind of frame (types 0: every kind offered).
      const uint64_t types = w.rss_types ? w.rss_types : kFlowRssTypes;
      const bool v4 = k.items & NMX_PV_FLOW_ITEM_IPV4, v6 = k.items & NMX_PV_FLOW_ITEM_IPV6;
      const bool tcp = k.items & NMX_PV_FLOW_ITEM_TCP, udp = k.items & NMX_PV_FLOW_ITEM_UDP;
      const uint64_t l3 = v4 ? NMX_PV_RSS_IPV4 : v6 ? NMX_PV_RSS_IPV6 : 0;
      const uint64_t l4 = v4 ? (tcp ? NMX_PV_RSS_IPV4_TCP : udp ? NMX_PV_RSS_IPV4_UDP : 0)
                          : v6 ? (tcp ? NMX_PV_RSS_IPV6_TCP : udp ? NMX_PV_RSS_IPV6_UDP : 0)
                               : 0;
      F f;
      std::memcpy(&f, k.w.data(), sizeof f);
      uint8_t in[36];
      const size_t alen = v4 ? 4 : 16;
      size_t n = 0;
      if ((l4 & types) || (l3 & types)) {
        std::memcpy(in, f.ip_src, alen);
        std::memcpy(in + alen, f.ip_dst, alen);
        n = 2 * alen;
        if (l4 & types) {
          std::memcpy(in + n, &f.l4_src, 2);
          std::memcpy(in + n + 2, &f.l4_dst, 2);
          n += 4;
        }
      }
      if (n) {
        v.rss = true;
        v.hash = Toeplitz(w.rss_key_len ? w.rss_key : kDefaultRssKey, in, n);
        v.queue = w.rss_queues[v.hash % w.rss_queue_num];
      } else {
        v.queue = w.rss_queues[0];
      }
    }
    return v;
  }
  return v;
}

}  // namespace nicmux::pv
