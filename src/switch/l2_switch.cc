#include "switch/l2_switch.h"

#include <time.h>

#include <cstring>
#include <mutex>

#include "base/check.h"

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

// The virtio-net header's offsets count from the frame's start: a tag added or removed in
// front of them moves them.
void ShiftOffloadOffsets(virtio::VirtioNetHdrV1& h, int delta) {
  if (h.flags & virtio::kNetHdrFNeedsCsum) {
    h.csum_start = Le16::Of(static_cast<uint16_t>(h.csum_start.get() + delta));
  }
  if (h.gso_type != virtio::kNetHdrGsoNone) {
    h.hdr_len = Le16::Of(static_cast<uint16_t>(h.hdr_len.get() + delta));
  }
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

// --------------------------------------------------------------------------- L2Switch

L2Switch::L2Switch(const SwitchOptions& o)
    : macs_(o.mac_table_size, o.mac_aging_s), start_ns_(MonotonicNs()) {
  NICMUX_CHECK(o.workers >= 1 && o.workers <= 64);
  for (uint32_t i = 0; i < o.workers; ++i) workers_.push_back(std::make_unique<SwitchWorker>(this, i));
}

L2Switch::~L2Switch() = default;

Result<uint16_t> L2Switch::AddPort(Port* port, const SwitchPortConfig& config) {
  for (uint16_t id = 0; id < kMaxPorts; ++id) {
    if (ports_[id].port != nullptr) continue;
    ports_[id] = {port, config};
    for (auto& w : workers_) {
      (*w->counters_)[id].drops.Reset();
      (*w->counters_)[id].flooded.Reset();
      w->full_since_ns_[id] = 0;
    }
    if (id >= num_ids_) num_ids_ = static_cast<uint16_t>(id + 1);
    return id;
  }
  return Error("the switch has " + std::to_string(kMaxPorts) + " ports already");
}

void L2Switch::RemovePort(uint16_t id) {
  NICMUX_CHECK(id < kMaxPorts && ports_[id].port != nullptr);
  ports_[id] = Slot{};
  capture_[id].store(nullptr, std::memory_order_relaxed);
  {
    std::lock_guard lock(macs_.lock());
    macs_.FlushPort(id);
  }
  while (num_ids_ > 0 && ports_[num_ids_ - 1].port == nullptr) --num_ids_;
}

void L2Switch::SetPortConfig(uint16_t id, const SwitchPortConfig& config) {
  NICMUX_CHECK(id < kMaxPorts && ports_[id].port != nullptr);
  ports_[id].config = config;
  std::lock_guard lock(macs_.lock());
  macs_.FlushPort(id);  // what it learned may belong to VLANs it no longer has
}

void L2Switch::Tick() {
  const uint32_t now = static_cast<uint32_t>((MonotonicNs() - start_ns_) / 1'000'000'000) + 1;
  now_s_.store(now, std::memory_order_relaxed);
  std::lock_guard lock(macs_.lock());
  macs_.Age(now);
}

void L2Switch::set_mac_aging_s(uint32_t s) {
  std::lock_guard lock(macs_.lock());
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

// --------------------------------------------------------------------------- SwitchWorker

SwitchWorker::SwitchWorker(L2Switch* sw, uint32_t index)
    : sw_(sw), index_(index), counters_(std::make_unique<std::array<PortCounters, 256>>()) {}

WorkDone SwitchWorker::Poll() {
  WorkDone w;
  const uint32_t nw = sw_->num_workers();
  for (uint16_t id = 0; id < sw_->num_ids_; ++id) {
    Port* p = sw_->ports_[id].port;
    if (p == nullptr) continue;
    const uint32_t nq = p->NumQueuePairs();
    for (uint32_t q = 0; q < nq; ++q) {
      if ((id + q) % nw == index_) Forward(id, q, &w);
    }
  }
  return w;
}

bool SwitchWorker::ArmNotify(std::vector<NotifyFd>* fds) {
  // Every port: a worker may sleep on kicks of queues it does not poll, which only costs a
  // spurious wake-up; it must not miss its own.
  bool pending = false;
  for (uint16_t id = 0; id < sw_->num_ids_; ++id) {
    if (Port* p = sw_->ports_[id].port) pending |= p->ArmNotify(fds);
  }
  return pending;
}

void SwitchWorker::DisarmNotify() {
  for (uint16_t id = 0; id < sw_->num_ids_; ++id) {
    if (Port* p = sw_->ports_[id].port) p->DisarmNotify();
  }
}

bool SwitchWorker::CanSleep() const {
  for (uint16_t id = 0; id < sw_->num_ids_; ++id) {
    if (Port* p = sw_->ports_[id].port; p && !p->CanSleep()) return false;
  }
  return true;
}

// Pass 1 for one packet: its VLAN (the head normalized to untagged), source learned, and a
// destination. False: drop (counted by the caller under the reason in *dst's place).
bool SwitchWorker::Classify(uint16_t src, PacketRef& p, uint16_t* vid_out, int* dst, uint32_t now_s,
                            BatchMemo& memo) {
  auto& cnt = (*counters_)[src].drops;
  // UNTRUSTED: every byte of the head is the guest's; lengths are checked before each read.
  if (p.len < kEthHeaderBytes || p.head_len < kEthHeaderBytes) {
    cnt.Add(DropReason::kBadFrame);
    return false;
  }
  const VlanConfig& in = sw_->ports_[src].config.vlan;
  uint16_t vid = 0;
  const bool tagged = Load16Be(p.head + 12) == kEtherTypeVlan;
  if (tagged) {
    if (p.head_len < kEthHeaderBytes + kVlanTagBytes) {
      cnt.Add(DropReason::kBadFrame);
      return false;
    }
    vid = Load16Be(p.head + 14) & 0x0fff;
    if (in.mode == VlanConfig::Mode::kAccess && vid != 0) {
      cnt.Add(DropReason::kVlan);
      return false;
    }
    // Untag the private head; the bytes after it are unchanged in the source.
    std::memmove(p.head + 12, p.head + 16, p.head_len - 16);
    p.head_len -= kVlanTagBytes;
    p.len -= kVlanTagBytes;
    ShiftOffloadOffsets(p.vnet, -static_cast<int>(kVlanTagBytes));
  }
  if (in.mode == VlanConfig::Mode::kAccess) vid = in.access_vid;
  if (!in.Admits(vid)) {
    cnt.Add(DropReason::kVlan);
    return false;
  }
  *vid_out = vid;
  const MacAddr dmac = LoadMac(p.head), smac = LoadMac(p.head + 6);
  if (MacIsMulticast(smac) || smac == 0) {
    cnt.Add(DropReason::kBadSource);
    return false;
  }
  // A batch is mostly one flow: learn and look up once per distinct (VLAN, MAC) in a row. The
  // table's lock is held for the whole pass, so only our own learning can change an answer.
  MacTable& t = sw_->macs_;
  const uint64_t skey = uint64_t{vid} << 48 | smac;
  if (skey != memo.learned) {
    const MacTable::LearnResult r = t.Learn(smac, vid, src, now_s);
    memo.learned = skey;
    if (r == MacTable::LearnResult::kNew || r == MacTable::LearnResult::kMoved) memo.looked = ~0ull;
  }
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
    cnt.Add(DropReason::kNoRoute);
    return false;
  }
  *dst = port;
  return true;
}

const PacketRef* SwitchWorker::Tagged(uint32_t i, uint16_t vid) {
  PacketRef& t = tagged_[i];
  if (!(tagged_valid_ & (1u << i))) {
    const PacketRef& p = batch_[i];
    t = p;  // segments, rest offset, vnet header; the head is rebuilt below
    std::memcpy(t.head, p.head, 12);
    t.head[12] = std::byte{0x81};
    t.head[13] = std::byte{0x00};
    t.head[14] = static_cast<std::byte>(vid >> 8);
    t.head[15] = static_cast<std::byte>(vid & 0xff);
    std::memcpy(t.head + 16, p.head + 12, p.head_len - 12);
    t.head_len = p.head_len + kVlanTagBytes;
    t.len = p.len + kVlanTagBytes;
    ShiftOffloadOffsets(t.vnet, static_cast<int>(kVlanTagBytes));
    tagged_valid_ |= 1u << i;
  }
  return &t;
}

// Groups the batch per destination, in packet order; a flood adds the packet to every other
// port that admits its VLAN.
void SwitchWorker::FillGroups(uint16_t src, uint32_t n, uint16_t nids, PortCounters& cnt) {
  ForwardPlan& plan = plan_;
  for (uint32_t i = 0; i < n; ++i) {
    const int16_t d = plan.dst[i];
    if (d >= 0) {
      if (sw_->ports_[d].config.vlan.Admits(plan.vid[i])) {
        plan.AddTo(static_cast<uint16_t>(d), i);
      } else {
        cnt.drops.Add(DropReason::kVlan);
      }
    } else if (d == kFlood) {
      cnt.flooded.Add();
      bool any = false;
      for (uint16_t o = 0; o < nids; ++o) {
        if (o == src || sw_->ports_[o].port == nullptr || !sw_->ports_[o].config.vlan.Admits(plan.vid[i])) continue;
        plan.AddTo(o, i);
        any = true;
      }
      if (!any) cnt.drops.Add(DropReason::kNoRoute);
    }
  }
}

void SwitchWorker::Forward(uint16_t src, uint32_t q, WorkDone* w) {
  Port* sp = sw_->ports_[src].port;
  batch_.Clear();
  const size_t n = sp->Rx(q, batch_, kBurst);
  if (n == 0) {
    sp->RxDone(q, batch_, 0);
    return;
  }
  auto& cnt = (*counters_)[src];
  if (Capture* c = sw_->capture_[src].load(std::memory_order_acquire)) {
    for (uint32_t i = 0; i < n; ++i) c->Add(batch_[i], false);
  }

  // Pass 1: decide every packet, under the MAC table lock once for the batch.
  const uint32_t now_s = sw_->now_s();
  {
    std::lock_guard lock(sw_->macs_.lock());
    BatchMemo memo;
    for (uint32_t i = 0; i < n; ++i) {
      int dst = kDrop;
      uint16_t vid = 0;
      plan_.dst[i] = Classify(src, batch_[i], &vid, &dst, now_s, memo) ? static_cast<int16_t>(dst) : kDrop;
      plan_.vid[i] = vid;
    }
  }

  // Group per destination, in packet order.
  ForwardPlan& plan = plan_;
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
    FillGroups(src, n, nids, cnt);
  }

  // Backpressure: the batch is cut before the first packet a destination has no room for,
  // unless that destination has not taken whole batches for kMaxStallNs (congested: what does
  // not fit is dropped until it takes a whole batch again). Floods are held like unicast, so a receiver that is slow
  // for a moment loses nothing whether or not its MAC was learned yet.
  const uint32_t nw = sw_->num_workers();
  uint32_t cut = n;
  for (uint32_t k = 0; k < plan.num_ids; ++k) {
    const uint16_t d = plan.ids[k];
    Port* dp = sw_->ports_[d].port;
    const size_t room = dp->TxRoom(q % dp->NumQueuePairs());
    if (room >= plan.count[d]) {
      full_since_ns_[d] = 0;
      continue;
    }
    // Held since when: a destination that takes one buffer at a time is as congested as one
    // that takes none (else a guest could pace every sender to everyone by dribbling).
    const uint64_t now = MonotonicNs();
    if (full_since_ns_[d] == 0) full_since_ns_[d] = now;
    if (now - full_since_ns_[d] > L2Switch::kMaxStallNs) continue;  // congested: drop
    const uint32_t i = plan.group[d][room];
    if (i < cut) cut = i;
  }

  // Pass 2: one Tx per destination with its packets before the cut.
  tagged_valid_ = 0;
  for (uint32_t k = 0; k < plan.num_ids; ++k) {
    const uint16_t d = plan.ids[k];
    const L2Switch::Slot& slot = sw_->ports_[d];
    const PacketRef* out[kBurst];
    uint32_t m = 0;
    const uint32_t mtu = slot.config.mtu;
    for (uint32_t j = 0; j < plan.count[d]; ++j) {
      const uint32_t i = plan.group[d][j];
      if (i >= cut) break;
      const PacketRef& p = batch_[i];
      if (mtu != 0 && p.len > mtu + kEthHeaderBytes && p.vnet.gso_type == virtio::kNetHdrGsoNone) {
        cnt.drops.Add(DropReason::kMtu);
        continue;
      }
      out[m++] = slot.config.vlan.Tags(plan.vid[i]) ? Tagged(i, plan.vid[i]) : &p;
    }
    if (m == 0) continue;
    Port* dp = slot.port;
    const uint32_t dq = q % dp->NumQueuePairs();
    size_t sent;
    if (nw > 1) {
      std::lock_guard lock(dp->tx_lock(dq));
      sent = dp->Tx(dq, {out, m});
    } else {
      sent = dp->Tx(dq, {out, m});
    }
    if (sent < m) cnt.drops.Add(DropReason::kQueueFull, m - sent);
    if (Capture* c = sw_->capture_[d].load(std::memory_order_acquire)) {
      for (size_t k = 0; k < sent; ++k) c->Add(*out[k], true);
    }
  }

  uint64_t bytes = 0;
  for (uint32_t i = 0; i < cut; ++i) bytes += batch_[i].len;
  w->packets += cut;
  w->bytes += bytes;
  sp->RxDone(q, batch_, cut);
}

}  // namespace nicmux
