#include "switch/l2_switch.h"

#include "packet/offload_ops.h"

#include <time.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "base/check.h"
#include "base/log.h"

namespace nicmux {
namespace {

constexpr int16_t kFlood = ForwardPlan::kFlood;
constexpr int16_t kDrop = ForwardPlan::kDrop;
static_assert(ForwardPlan::kMaxPorts == L2Switch::kMaxPorts);
constexpr uint16_t kEtherTypeVlan = 0x8100;
constexpr uint32_t kEthHeaderBytes = 14;
constexpr uint32_t kVlanTagBytes = 4;

uint64_t MonotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);
}

uint16_t Load16Be(const std::byte* p) {
  return static_cast<uint16_t>(static_cast<uint8_t>(p[0]) << 8 | static_cast<uint8_t>(p[1]));
}

}  // namespace

std::string VlanConfig::ToString() const {
  switch (mode) {
    case Mode::kTrunkAll: return "trunk (all)";
    case Mode::kAccess: return "access " + std::to_string(access_vid);
    case Mode::kTrunk: {
      std::string s = "trunk";
      for (uint32_t v = 0; v < 4096; ++v) {
        if (allowed.test(v)) s += " " + std::to_string(v);
      }
      return s;
    }
  }
  return "?";
}

Result<VlanConfig> ParseVlan(const std::string& port, const std::string* vlan, const std::string* trunk) {
  VlanConfig c;
  auto number = [&](const std::string& key, const std::string& t, uint32_t lo) -> Result<uint16_t> {
    if (t.empty() || t.size() > 4 || t.find_first_not_of("0123456789") != std::string::npos) {
      return Error("port " + port + ": " + key + ": '" + t + "' is not a VLAN id");
    }
    uint32_t v = static_cast<uint32_t>(std::stoul(t));
    if (v < lo || v > 4094) {
      return Error("port " + port + ": " + key + ": VLAN " + t + " is outside " + std::to_string(lo) + "..4094");
    }
    return static_cast<uint16_t>(v);
  };
  if (vlan && trunk) return Error("port " + port + ": vlan= (access) and trunk= exclude each other");
  if (vlan) {
    NICMUX_TRY_ASSIGN(v, number("vlan", *vlan, 1));
    c.mode = VlanConfig::Mode::kAccess;
    c.access_vid = v;
  } else if (trunk) {
    c.mode = VlanConfig::Mode::kTrunk;
    size_t pos = 0;
    while (true) {
      size_t slash = trunk->find('/', pos);
      std::string item = trunk->substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
      size_t dash = item.find('-');
      if (dash == std::string::npos) {
        NICMUX_TRY_ASSIGN(v, number("trunk", item, 0));
        c.allowed.set(v);
      } else {
        NICMUX_TRY_ASSIGN(a, number("trunk", item.substr(0, dash), 0));
        NICMUX_TRY_ASSIGN(b, number("trunk", item.substr(dash + 1), 0));
        if (a > b) return Error("port " + port + ": trunk: range " + item + " is backwards");
        for (uint32_t v = a; v <= b; ++v) c.allowed.set(v);
      }
      if (slash == std::string::npos) break;
      pos = slash + 1;
    }
  }
  return c;
}

std::string MacToString(uint64_t mac) {
  char buf[18];
  std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", unsigned(mac >> 40 & 0xff),
                unsigned(mac >> 32 & 0xff), unsigned(mac >> 24 & 0xff), unsigned(mac >> 16 & 0xff),
                unsigned(mac >> 8 & 0xff), unsigned(mac & 0xff));
  return buf;
}

Result<std::vector<uint64_t>> ParseAllowedMacs(const std::string& port, const std::string& text) {
  const std::string what = "port " + port + ": allowed_macs: ";
  std::vector<uint64_t> macs;
  size_t pos = 0;
  while (true) {
    const size_t slash = text.find('/', pos);
    const std::string item = text.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
    bool ok = item.size() == 17;
    uint64_t mac = 0;
    for (size_t i = 0; ok && i < 17; ++i) {
      const char c = item[i];
      if (i % 3 == 2) {
        ok = c == ':';
        continue;
      }
      const int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      ok = v >= 0;
      mac = mac << 4 | static_cast<uint64_t>(v < 0 ? 0 : v);
    }
    if (!ok) return Error(what + "'" + item + "' is not a MAC address (xx:xx:xx:xx:xx:xx)");
    if (MacIsMulticast(mac) || mac == 0) {
      return Error(what + item + " is a multicast or zero address, never a frame's source");
    }
    if (std::find(macs.begin(), macs.end(), mac) != macs.end()) return Error(what + item + " is listed twice");
    if (macs.size() == SwitchPortConfig::kMaxAllowedMacs) {
      return Error(what + "more than " + std::to_string(SwitchPortConfig::kMaxAllowedMacs) + " addresses");
    }
    macs.push_back(mac);
    if (slash == std::string::npos) break;
    pos = slash + 1;
  }
  return macs;
}

// --------------------------------------------------------------------------- L2Switch

L2Switch::L2Switch(const SwitchOptions& o)
    : clock_ns_(o.clock_ns), macs_(o.mac_table_size, o.mac_aging_s), start_ns_(NowNs()) {
  static_assert(SwitchWorker::Hold{}.credit_ns == kMaxStallNs, "a destination starts with a whole hold credit");
  NICMUX_CHECK(o.workers >= 1 && o.workers <= 64);
  for (uint32_t i = 0; i < o.workers; ++i) workers_.push_back(std::make_unique<SwitchWorker>(this, o.workers > 1));
}

L2Switch::~L2Switch() = default;

uint64_t L2Switch::NowNs() const { return clock_ns_ ? clock_ns_() : MonotonicNs(); }

Result<uint16_t> L2Switch::AddPort(Port* port, const SwitchPortConfig& config) {
  for (uint16_t id = 0; id < kMaxPorts; ++id) {
    if (ports_[id].port != nullptr) continue;
    ports_[id] = {port, config};
    link_generation_[id] = port->link_generation();
    for (auto& w : workers_) {
      (*w->counters_)[id].drops.Reset();
      (*w->counters_)[id].flooded.Reset();
      (*w->counters_)[id].unlearned.Reset();
      w->hold_[id] = SwitchWorker::Hold{};
    }
    macs_.set_port_limit(id, config.mac_limit);
    if (id >= num_ids_) num_ids_ = static_cast<uint16_t>(id + 1);
    return id;
  }
  return Error("the switch has " + std::to_string(kMaxPorts) + " ports already");
}

void L2Switch::RemovePort(uint16_t id) {
  NICMUX_CHECK(id < kMaxPorts && ports_[id].port != nullptr);
  ports_[id] = Slot{};
  capture_[id].store(nullptr, std::memory_order_relaxed);
  macs_.FlushPort(id);
  macs_.set_port_limit(id, macs_.max_entries());
  while (num_ids_ > 0 && ports_[num_ids_ - 1].port == nullptr) --num_ids_;
}

void L2Switch::SetPortConfig(uint16_t id, const SwitchPortConfig& config) {
  NICMUX_CHECK(id < kMaxPorts && ports_[id].port != nullptr);
  ports_[id].config = config;
  macs_.FlushPort(id);  // what it learned may belong to VLANs it no longer has
  macs_.set_port_limit(id, config.mac_limit);
}

void L2Switch::Tick() {
  const uint32_t now = static_cast<uint32_t>((NowNs() - start_ns_) / 1'000'000'000) + 1;
  now_s_.store(now, std::memory_order_relaxed);
  macs_.Age(now);
  // A port whose peer went away (and maybe came back) since the last tick: the stations behind
  // it are gone, and traffic to them would be sent into a dead port until aging. Forgotten,
  // they are flooded to (and learned again wherever they show up). What a new peer announced
  // before this tick was learned in the new epoch and stays (MacTable::FlushPortBefore).
  for (uint16_t id = 0; id < num_ids_; ++id) {
    const Port* p = ports_[id].port;
    if (p == nullptr) continue;
    const uint64_t g = p->link_generation();
    if (g == link_generation_[id]) continue;
    link_generation_[id] = g;
    const size_t n = macs_.FlushPortBefore(id, static_cast<uint16_t>(g));
    if (n) NICMUX_LOG(kInfo, "port %s: its peer went away; %zu MAC address(es) forgotten", p->name().c_str(), n);
  }
}

void L2Switch::set_mac_aging_s(uint32_t s) {
  macs_.set_aging_s(s);
}

uint64_t L2Switch::DropsFor(uint16_t id, DropReason r) const {
  uint64_t n = 0;
  for (const auto& w : workers_) n += (*w->counters_)[id].drops.Get(r);
  return n;
}

uint64_t L2Switch::Flooded(uint16_t id) const {
  uint64_t n = 0;
  for (const auto& w : workers_) n += (*w->counters_)[id].flooded.Get();
  return n;
}

uint64_t L2Switch::Unlearned(uint16_t id) const {
  uint64_t n = 0;
  for (const auto& w : workers_) n += (*w->counters_)[id].unlearned.Get();
  return n;
}

uint32_t L2Switch::MacsOf(uint16_t id) {
  return macs_.port_size(id);
}

// --------------------------------------------------------------------------- SwitchWorker

SwitchWorker::SwitchWorker(L2Switch* sw, bool shared)
    : Forwarder(shared), sw_(sw), shared_(shared), counters_(std::make_unique<CounterTable>()) {}

void SwitchWorker::PreferNode(int node) {
  nicmux::PreferNode(this, sizeof *this, node);
  nicmux::PreferNode(counters_.get(), sizeof *counters_, node);
}

// Hold credit (the header's "Backpressure"): spent while holding, refilled at
// 1/kHoldRefillDiv of the time otherwise, at most kMaxStallNs.
bool SwitchWorker::MayHold(Hold& h, uint64_t now_ns) const {
  Settle(h, now_ns);
  if (h.congested) {
    // Until the credit is whole again: with a coarse clock (4 ms ticks) a credit of a few
    // hundred microseconds would otherwise buy a hold to the next tick, every tick.
    if (h.credit_ns < L2Switch::kMaxStallNs) return false;
    h.congested = false;
  }
  if (h.credit_ns == 0) {
    h.congested = true;
    h.holding = false;
    return false;
  }
  return true;
}

void SwitchWorker::Earn(Hold& h, uint32_t taken) const {
  if (h.credit_ns == L2Switch::kMaxStallNs && !h.congested) return;  // whole: nothing to count
  if ((h.taken += taken) < L2Switch::kTakenToRestore) return;
  h.taken = 0;
  h.credit_ns = L2Switch::kMaxStallNs;
  h.congested = false;
}

void SwitchWorker::Settle(Hold& h, uint64_t now_ns) const {
  const uint64_t dt = h.at_ns != 0 && now_ns > h.at_ns ? now_ns - h.at_ns : 0;
  if (h.holding) {
    h.credit_ns -= std::min(h.credit_ns, dt);
  } else {
    h.credit_ns = std::min(L2Switch::kMaxStallNs, h.credit_ns + dt / L2Switch::kHoldRefillDiv);
  }
  h.at_ns = now_ns;
}

WorkDone SwitchWorker::ForwardAll() {
  WorkDone w;
  for (uint16_t id = 0; id < sw_->num_ids_; ++id) {
    Port* p = sw_->ports_[id].port;
    if (p == nullptr) continue;
    for (uint32_t q = 0; q < p->NumQueuePairs(); ++q) {
      const WorkDone d = Forward(id, q);
      w.packets += d.packets;
      w.bytes += d.bytes;
    }
  }
  return w;
}

// Pass 1 for one packet: its VLAN (the head normalized to untagged), source learned, and a
// destination. False: drop, for the reason in *why (counted by the caller once the batch's cut
// is known). *unlearned: its source MAC was not learned, the port being at its mac_limit.
inline bool SwitchWorker::Classify(uint16_t src, PacketRef& p, uint16_t* vid_out, int* dst, DropReason* why,
                            bool* unlearned, uint32_t now_s, BatchMemo& memo, L4Layout* l4) {
  // UNTRUSTED: every byte of the head is the guest's; lengths are checked before each read.
  if (p.len < kEthHeaderBytes || p.head_len < kEthHeaderBytes) {
    *why = DropReason::kBadFrame;
    return false;
  }
  const SwitchPortConfig& pc = sw_->ports_[src].config;
  const VlanConfig& in = pc.vlan;
  uint16_t vid = 0;
  const bool tagged = Load16Be(p.head + 12) == kEtherTypeVlan;
  if (tagged) {
    if (p.head_len < kEthHeaderBytes + kVlanTagBytes) {
      *why = DropReason::kBadFrame;
      return false;
    }
    // UNTRUSTED: the VLAN id is masked to 12 bits (0..4095, the bitset's size) and checked
    // against the port's VLANs below.
    vid = Load16Be(p.head + 14) & 0x0fff;
    if (in.mode == VlanConfig::Mode::kAccess && vid != 0) {
      *why = DropReason::kVlan;
      return false;
    }
    // Untag the private head; the bytes after it are unchanged in the source. The frame is
    // no longer the source's bytes: copied, never held (packet/hold.h).
    p.holder = nullptr;
    std::memmove(p.head + 12, p.head + 16, p.head_len - 16);
    p.head_len -= kVlanTagBytes;
    p.len -= kVlanTagBytes;
    p.offload.ShiftL2(-static_cast<int>(kVlanTagBytes));
  }
  if (in.mode == VlanConfig::Mode::kAccess) vid = in.access_vid;
  if (!in.Admits(vid)) {
    *why = DropReason::kVlan;
    return false;
  }
  // UNTRUSTED: the offload record is the source's: checked against the headers it names before
  // anything uses it (a packet with none, the common case, skips this).
  if (!p.offload.none()) {
    if (const char* field = CheckOffload(p, l4)) {
      NICMUX_LOG_RATELIMITED(kWarning, "port %s: dropped a %u-byte frame: bad offload request (%s)",
                             sw_->ports_[src].port->name().c_str(), p.len, field);
      *why = DropReason::kBadOffload;
      return false;
    }
  }
  *vid_out = vid;
  // UNTRUSTED: both MACs are the guest's. A multicast or zero source is refused, a source not
  // in the port's allowed_macs (when it has one) too; what is learned is bounded by the port's
  // mac_limit and the table's size (MacTable::Learn).
  const MacAddr dmac = LoadMac(p.head), smac = LoadMac(p.head + 6);
  if (MacIsMulticast(smac) || smac == 0) {
    *why = DropReason::kBadSource;
    return false;
  }
  // A batch is mostly one flow: learn and look up once per distinct (VLAN, MAC) in a row. No
  // lock is held: another worker's learning or the control thread's aging may change the table
  // meanwhile, and the rest of the batch goes by the answer this one had (as if it had come a
  // moment earlier). A known station on its port is learned and looked up without locking.
  MacTable& t = sw_->macs_;
  const uint64_t skey = uint64_t{vid} << 48 | smac;
  if (skey != memo.learned) {
    if (!pc.allowed_macs.empty() &&
        std::find(pc.allowed_macs.begin(), pc.allowed_macs.end(), smac) == pc.allowed_macs.end()) {
      *why = DropReason::kMacNotAllowed;
      return false;
    }
    const MacTable::LearnResult r = t.Learn(smac, vid, src, now_s, memo.epoch);
    memo.learned = skey;
    memo.learned_over_limit = r == MacTable::LearnResult::kPortFull;
    // (kPortFull may have forgotten a station that moved here.)
    if (r != MacTable::LearnResult::kKnown && r != MacTable::LearnResult::kFull) memo.looked = ~0ull;
  }
  *unlearned = memo.learned_over_limit;
  if (MacIsMulticast(dmac)) {
    *dst = kFlood;
    return true;
  }
  const uint64_t dkey = uint64_t{vid} << 48 | dmac;
  if (dkey != memo.looked) {
    memo.looked = dkey;
    memo.looked_port = t.Lookup(dmac, vid, now_s);
  }
  const int port = memo.looked_port;
  if (port < 0) {
    *dst = kFlood;
    return true;
  }
  if (port == src) {
    *why = DropReason::kNoRoute;
    return false;
  }
  *dst = port;
  return true;
}

namespace {
// t = p with an 802.1Q tag for vid inserted after the MACs (t's head rebuilt; p's untouched).
void TagInto(const PacketRef& p, uint16_t vid, PacketRef& t) {
  t.segs = p.segs;
  t.holder = nullptr;  // a tag pushed: copied, never held
  t.nsegs = p.nsegs;
  t.seg = p.seg;
  t.seg_off = p.seg_off;
  t.offload = p.offload;
  std::memcpy(t.head, p.head, 12);
  t.head[12] = std::byte{0x81};
  t.head[13] = std::byte{0x00};
  t.head[14] = static_cast<std::byte>(vid >> 8);
  t.head[15] = static_cast<std::byte>(vid & 0xff);
  std::memcpy(t.head + 16, p.head + 12, p.head_len - 12);
  t.head_len = p.head_len + kVlanTagBytes;
  t.len = p.len + kVlanTagBytes;
  t.offload.ShiftL2(static_cast<int>(kVlanTagBytes));
}

// The same in place (a segment the switch made: its head has the room).
void TagInPlace(PacketRef& q, uint16_t vid) {
  NICMUX_CHECK(q.head_len + kVlanTagBytes <= kHeadRoomBytes);
  std::memmove(q.head + 16, q.head + 12, q.head_len - 12);
  q.head[12] = std::byte{0x81};
  q.head[13] = std::byte{0x00};
  q.head[14] = static_cast<std::byte>(vid >> 8);
  q.head[15] = static_cast<std::byte>(vid & 0xff);
  q.head_len += kVlanTagBytes;
  q.len += kVlanTagBytes;
  q.offload.ShiftL2(static_cast<int>(kVlanTagBytes));
}
}  // namespace

const PacketRef* SwitchWorker::Tagged(uint32_t i, uint16_t vid) {
  PacketRef& t = tagged_[i];
  if (!(tagged_valid_ & (1u << i))) {
    TagInto(batch_[i], vid, t);
    tagged_valid_ |= 1u << i;
  }
  return &t;
}

// A destination that cannot take batch_[i]'s partial checksum: complete it in the head copy,
// once for all destinations (a complete checksum is good for every port; the tagged copy, if
// one was made, is made again from the completed packet).
void SwitchWorker::CompleteChecksumOf(uint32_t i) {
  if (!batch_[i].offload.needs_csum()) return;
  CompleteChecksum(batch_[i]);
  tagged_valid_ &= ~(1u << i);
}

// A destination without the GSO type batch_[i] asks for: cut it into segments and send them in
// bursts (tagged, if the destination wants tags). Segments the destination has no room for are
// dropped (queue_full): a GSO frame cannot be held in part. Returns the segments sent.
size_t SwitchWorker::SendSegmented(uint32_t i, uint16_t vid, bool tag, Port* dp, uint32_t dq, uint32_t mtu,
                                   PortCounters& cnt, Capture* capture) {
  const PacketRef& p = batch_[i];
  const L4Layout& l = plan_.l4[i];
  if (seg_out_.empty()) seg_out_.resize(kMaxGsoSegments);
  const uint32_t n = segmenter_.Cut(p, l, seg_out_);
  if (mtu != 0 && seg_out_[0].len > mtu + kEthHeaderBytes) {
    cnt.drops.Add(DropReason::kMtu, n);
    return 0;
  }
  // The segments' checksums are partial: the destination takes them so, or completes them in
  // its copy (kCsumOnCopy); only for any other are they summed here, reading the payload.
  const bool sum_here = !dp->Caps().Accepts(seg_out_[0].offload);
  const PacketRef* out[kBurst];
  size_t sent = 0;
  for (uint32_t at = 0; at < n;) {
    const uint32_t m = std::min<uint32_t>(kBurst, n - at);
    for (uint32_t k = 0; k < m; ++k) {
      if (sum_here) CompleteChecksum(seg_out_[at + k]);
      if (tag) TagInPlace(seg_out_[at + k], vid);
      out[k] = &seg_out_[at + k];
    }
    const size_t took = SendTo(dp, dq, {out, m}, shared_, debts_);
    if (capture) {
      for (size_t k = 0; k < took; ++k) capture->Add(*out[k], true);
    }
    sent += took;
    at += static_cast<uint32_t>(took);
    if (took < m) {
      cnt.drops.Add(DropReason::kQueueFull, n - at);
      break;
    }
  }
  return sent;
}

// Groups the batch per destination, in packet order; a flood adds the packet to every other
// port that admits its VLAN. Drops are noted in the plan (counted with the cut).
void SwitchWorker::FillGroups(uint16_t src, uint32_t n, uint16_t nids) {
  ForwardPlan& plan = plan_;
  for (uint32_t i = 0; i < n; ++i) {
    const int16_t d = plan.dst[i];
    if (d >= 0) {
      if (sw_->ports_[d].config.vlan.Admits(plan.vid[i])) {
        plan.AddTo(static_cast<uint16_t>(d), i);
      } else {
        plan.dst[i] = kDrop;
        plan.drop[i] = static_cast<uint8_t>(DropReason::kVlan);
        plan.counts = true;
      }
    } else if (d == kFlood) {
      bool any = false;
      for (uint16_t o = 0; o < nids; ++o) {
        if (o == src || sw_->ports_[o].port == nullptr || !sw_->ports_[o].config.vlan.Admits(plan.vid[i])) continue;
        plan.AddTo(o, i);
        any = true;
      }
      if (!any) plan.drop[i] = static_cast<uint8_t>(DropReason::kNoRoute);
    }
  }
}

// Backpressure (the header's comment): the batch's cut, before which everything is delivered
// now; the packets from the cut on stay with the source, to be received again. Only packets
// for destinations that cannot take their whole group are ever behind the cut.
uint32_t SwitchWorker::Cut(uint32_t q, uint32_t n) {
  ForwardPlan& plan = plan_;
  uint32_t hold_at = n;  // the first packet a destination that may hold has no room for
  uint32_t must = 0;     // 1 + the last packet for a destination with room for its group
  uint64_t now = 0;      // read only when a destination is short or stops being held
  bool may_hold[ForwardPlan::kMaxPorts];
  for (uint32_t k = 0; k < plan.num_ids; ++k) {
    const uint16_t d = plan.ids[k];
    Port* dp = sw_->ports_[d].port;
    const size_t room = TxRoomOf(dp, q % dp->NumQueuePairs(), shared_);
    may_hold[k] = false;
    if (room >= plan.count[d]) {
      must = std::max<uint32_t>(must, plan.group[d][plan.count[d] - 1] + 1u);
      Hold& h = hold_[d];
      if (h.holding) {
        if (now == 0) now = sw_->NowNs();
        Settle(h, now);
        h.holding = false;
      }
      // Credit is earned by taking packets: kTakenToRestore of them since the credit was last
      // spent give it all back. A receiver that was off the CPU drains its senders' backlog
      // when it runs and earns it at once; one that refills a few buffers now and then (to
      // hold its senders) earns 50 ms of holding per 256 packets it really takes. Counted
      // only while the credit is not whole (never while traffic simply fits).
      Earn(h, plan.count[d]);
      continue;
    }
    // The packets it has room for go now: they earn credit too (a receiver that is the
    // bottleneck is short at every batch and still takes everything it can).
    Hold& h = hold_[d];
    Earn(h, static_cast<uint32_t>(room));
    if (now == 0) now = sw_->NowNs();
    if (!MayHold(h, now)) continue;  // congested: what does not fit is dropped
    may_hold[k] = true;
    hold_at = std::min<uint32_t>(hold_at, plan.group[d][room]);
  }
  // Everything up to the last packet for a destination with room goes now: the copies a short
  // destination has no room for before that are dropped (queue_full), not held.
  const uint32_t cut = std::max(hold_at, must);
  for (uint32_t k = 0; k < plan.num_ids; ++k) {
    if (!may_hold[k]) continue;
    Hold& h = hold_[plan.ids[k]];
    const bool held = plan.group[plan.ids[k]][plan.count[plan.ids[k]] - 1] >= cut;
    if (held != h.holding) {
      Settle(h, now);
      h.holding = held;
    }
  }
  return cut;
}

// Counts what pass 1 and the grouping decided for the packets before the cut: those after it
// are received again, and counted then.
void SwitchWorker::CountDecided(PortCounters& cnt, uint32_t cut) {
  if (!plan_.counts) return;
  for (uint32_t i = 0; i < cut; ++i) {
    if (plan_.dst[i] == kFlood) cnt.flooded.Add();
    if (plan_.drop[i] != ForwardPlan::kNoDrop) cnt.drops.Add(static_cast<DropReason>(plan_.drop[i]));
    if (plan_.unlearned[i]) cnt.unlearned.Add();
  }
}

WorkDone SwitchWorker::Forward(uint16_t src, uint32_t q) {
  WorkDone w;
  Port* sp = sw_->ports_[src].port;
  batch_.Clear();
  // Read before the burst: a frame of a peer that went away must not be learned as the new one's.
  const auto epoch = static_cast<uint16_t>(sp->link_generation());
  const size_t n = sp->Rx(q, batch_, kBurst);
  if (n == 0) {
    sp->RxDone(q, batch_, 0);  // (bad chains only: their completions may be deferred too)
    if (sp->defers_signals()) [[unlikely]] debts_.NoteRx(sp, q);
    return w;
  }
  auto& cnt = (*counters_)[src];
  if (Capture* c = sw_->capture_[src].load(std::memory_order_acquire)) {
    for (uint32_t i = 0; i < n; ++i) c->Add(batch_[i], false);
  }

  // Pass 1: decide every packet. The MAC table takes no lock for known stations (MacTable).
  const uint32_t now_s = sw_->now_s();
  ForwardPlan& plan = plan_;
  plan.counts = false;
  {
    BatchMemo memo;
    memo.epoch = epoch;
    for (uint32_t i = 0; i < n; ++i) {
      int dst = kDrop;
      uint16_t vid = 0;
      DropReason why = DropReason::kBadFrame;
      bool unlearned = false;
      const bool ok = Classify(src, batch_[i], &vid, &dst, &why, &unlearned, now_s, memo, &plan.l4[i]);
      plan.dst[i] = ok ? static_cast<int16_t>(dst) : kDrop;
      plan.drop[i] = ok ? ForwardPlan::kNoDrop : static_cast<uint8_t>(why);
      plan.unlearned[i] = unlearned;
      plan.vid[i] = vid;
      plan.counts |= !ok || unlearned || dst == kFlood;
      // A frame for several ports is copied to each (copy once per destination), never held.
      if (dst == kFlood) batch_[i].holder = nullptr;
    }
  }

  // Group per destination, in packet order.
  const uint16_t nids = sw_->num_ids_;
  plan.ClearGroups(nids);
  // The common case first: the whole batch for one port and VLAN (a flow between two
  // guests) is one group without a per-packet pass.
  bool uniform = plan.dst[0] >= 0;
  for (uint32_t i = 1; uniform && i < n; ++i) {
    uniform = plan.dst[i] == plan.dst[0] && plan.vid[i] == plan.vid[0];
  }
  if (uniform && sw_->ports_[plan.dst[0]].config.vlan.Admits(plan.vid[0])) {
    plan.SetOneGroup(static_cast<uint16_t>(plan.dst[0]), n);
  } else {
    FillGroups(src, n, nids);
  }

  const uint32_t cut = Cut(q, static_cast<uint32_t>(n));
  CountDecided(cnt, cut);

  // Pass 2: one Tx per destination with its packets before the cut.
  tagged_valid_ = 0;
  for (uint32_t k = 0; k < plan.num_ids; ++k) {
    const uint16_t d = plan.ids[k];
    const L2Switch::Slot& slot = sw_->ports_[d];
    const PacketRef* out[kBurst];
    uint32_t m = 0;
    const uint32_t mtu = slot.config.mtu;
    Port* dp = slot.port;
    const uint32_t dq = q % dp->NumQueuePairs();
    Capture* capture = sw_->capture_[d].load(std::memory_order_acquire);
    const PortCaps caps = dp->Caps();
    auto flush = [&] {
      if (m == 0) return;
      const size_t sent = SendTo(dp, dq, {out, m}, shared_, debts_);
      if (sent < m) cnt.drops.Add(DropReason::kQueueFull, m - sent);
      if (capture) {
        for (size_t k = 0; k < sent; ++k) capture->Add(*out[k], true);
      }
      m = 0;
    };
    for (uint32_t j = 0; j < plan.count[d]; ++j) {
      const uint32_t i = plan.group[d][j];
      if (i >= cut) break;
      const PacketRef& p = batch_[i];
      const bool tag = slot.config.vlan.Tags(plan.vid[i]);
      // The MTU first (a GSO frame: its segments' size), before any work is done for it.
      if (mtu != 0 && (p.offload.gso() ? plan.l4[i].hdrs + uint32_t{p.offload.gso_size} : p.len) >
                          mtu + kEthHeaderBytes) {
        cnt.drops.Add(DropReason::kMtu);
        continue;
      }
      // What the destination cannot take is done here, in software (docs/offloads.md).
      if (!p.offload.none() && caps.MustComplete(p.offload)) {
        if (p.offload.gso()) {
          flush();  // in order: what came before first
          SendSegmented(i, plan.vid[i], tag, dp, dq, mtu, cnt, capture);
          continue;
        }
        CompleteChecksumOf(i);
      }
      out[m++] = tag ? Tagged(i, plan.vid[i]) : &p;
    }
    flush();
  }

  uint64_t bytes = 0;
  for (uint32_t i = 0; i < cut; ++i) bytes += batch_[i].len;
  w.packets = cut;
  w.bytes = bytes;
  sp->RxDone(q, batch_, cut);
  if (sp->defers_signals()) [[unlikely]] debts_.NoteRx(sp, q);
  return w;
}

}  // namespace nicmux
