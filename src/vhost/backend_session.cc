#include "vhost/backend_session.h"

#include "base/fd_reaper.h"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <string>
#include <string_view>

#include "base/log.h"
#include "virtio/features.h"
#include "virtio/vring.h"

namespace nicmux::vhost {

using virtio::Bit;
using virtio::Has;

namespace {

std::string Hex(uint64_t v) {
  char b[24];
  snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

uint64_t U64(const Message& m) { return m.As<uint64_t>(); }

// A size as max_memory= takes it: "16G" when a whole number of the largest binary unit that
// divides it, else bytes.
std::string SizeString(uint64_t v) {
  static constexpr char kUnits[] = "KMGT";
  for (int u = 3; u >= 0; --u) {
    const uint64_t unit = uint64_t{1} << (10 * (u + 1));
    if (v != 0 && v % unit == 0) return std::to_string(v / unit) + kUnits[u];
  }
  return std::to_string(v);
}

Result<void> CheckEventFd(int fd, uint32_t queue) {
  if (!IsEventFd(fd)) return Error("queue " + std::to_string(queue) + ": the fd is not an eventfd");
  int fl = ::fcntl(fd, F_GETFL);
  if (fl < 0 || ::fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return Error::FromErrno("fcntl O_NONBLOCK");
  return Ok();
}

}  // namespace

BackendSession::BackendSession(const BackendConfig& config, Pausable* worker)
    : config_(config), worker_(worker) {
  NICMUX_CHECK(worker_ != nullptr);
  NICMUX_CHECK(config_.queue_pairs >= 1 && config_.queue_pairs <= kMaxQueuePairs);
  NICMUX_CHECK(config_.max_memory >= 1 && config_.max_memory <= kMaxMemoryBytes);
  // Offered only what fully works: no dirty log; offloads where the port asks (checksum and
  // TCP segmentation, both ways: docs/offloads.md). IN_ORDER holds because
  // every queue completes chains in the order it popped them. The one exception is a chain
  // that fails its checks: it is completed empty at once, possibly ahead of good chains
  // popped before it; only a misbehaving driver makes one, and only its own queue sees the
  // order change.
  offered_features_ = Bit(virtio::kFVersion1) | Bit(virtio::kNetFMrgRxbuf) |
                      Bit(virtio::kFRingEventIdx) | Bit(virtio::kFRingIndirectDesc) |
                      Bit(virtio::kFRingPacked) | Bit(virtio::kFInOrder) | Bit(virtio::kNetFMq) |
                      Bit(virtio::kNetFGuestAnnounce) | Bit(kFProtocolFeatures);
  if (config_.mtu != 0) offered_features_ |= Bit(virtio::kNetFMtu);
  if (config_.offloads) {
    offered_features_ |= Bit(virtio::kNetFCsum) | Bit(virtio::kNetFGuestCsum) | Bit(virtio::kNetFHostTso4) |
                         Bit(virtio::kNetFHostTso6) | Bit(virtio::kNetFHostEcn) | Bit(virtio::kNetFGuestTso4) |
                         Bit(virtio::kNetFGuestTso6) | Bit(virtio::kNetFGuestEcn);
  }
  offered_protocol_features_ = Bit(kProtoMq) | Bit(kProtoReplyAck) | Bit(kProtoRarp) |
                               Bit(kProtoConfigureMemSlots) | Bit(kProtoStatus);
  if (config_.mtu != 0) offered_protocol_features_ |= Bit(kProtoNetMtu);
  mtu_ = config_.mtu;
}

BackendSession::~BackendSession() { Reset(); }

void BackendSession::Reset() {
  {
    PauseGuard pause(*worker_);
    for (uint32_t i = 0; i < kMaxQueues; ++i) {
      if (queues_[i].running) StopLocked(i);
      queues_[i].Forget();
    }
    mem_.reset();
    region_refs_.clear();
    region_fds_.clear();
    import_kicks_.clear();
  }
  features_ = 0;
  features_set_ = false;
  protocol_features_ = 0;
  status_ = 0;
  mtu_ = config_.mtu;
  net_hdr_len_ = 12;
  mrg_rxbuf_ = false;
  peer_sends_offloads_ = false;
  rarp_.store(0, std::memory_order_relaxed);
}

std::optional<std::array<uint8_t, 6>> BackendSession::TakeRarp() {
  const uint64_t v = rarp_.exchange(0, std::memory_order_acquire);
  if (v == 0) return std::nullopt;
  std::array<uint8_t, 6> mac;
  for (int i = 0; i < 6; ++i) mac[i] = static_cast<uint8_t>(v >> (40 - 8 * i));
  return mac;
}

Result<void> BackendSession::Handle(Message& msg, Channel& ch) {
  // UNTRUSTED: the whole message. Version, request, payload size and fd count are checked here
  // against the request table before any handler reads a field.
  const uint32_t req = msg.hdr.request;
  const std::string name(RequestName(req));
  if ((msg.hdr.flags & kVersionMask) != kVersion) {
    return Error(name + ": header flags " + Hex(msg.hdr.flags) + " do not say protocol version 1");
  }
  const RequestInfo* info = FindRequest(req);
  if (info == nullptr) return Error(name + ": request not supported");
  bool size_ok = false;
  switch (info->size_rule) {
    case SizeRule::kExact:
      size_ok = msg.hdr.size == info->payload;
      break;
    case SizeRule::kAtMost:
      size_ok = msg.hdr.size <= info->payload;
      break;
    case SizeRule::kMemTable: {
      size_ok = msg.hdr.size >= sizeof(MemoryHeader);
      if (size_ok) {
        uint32_t n = msg.As<MemoryHeader>().nregions;
        if (n < 1 || n > kMaxFds) return Error(name + ": nregions " + std::to_string(n) + " is outside 1..8");
        size_ok = msg.hdr.size == sizeof(MemoryHeader) + n * sizeof(MemoryRegion);
      }
      break;
    }
  }
  if (!size_ok) return Error(name + ": payload size " + std::to_string(msg.hdr.size) + " is wrong");
  if (msg.fds.size() < info->min_fds || msg.fds.size() > info->max_fds) {
    return Error(name + ": carries " + std::to_string(msg.fds.size()) + " file descriptors, expected " +
                 std::to_string(info->min_fds) + (info->min_fds == info->max_fds ? "" : "..") +
                 (info->min_fds == info->max_fds ? "" : std::to_string(info->max_fds)));
  }
  const bool ack = (msg.hdr.flags & kFlagNeedReply) && Has(protocol_features_, kProtoReplyAck) &&
                   !info->has_reply;
  bool replied = false;
  Result<void> r = Dispatch(*info, msg, ch, &replied);
  msg.fds.clear();  // whatever a handler did not take is closed now
  if (ack) {
    uint64_t status = r ? 0 : 1;
    auto s = ch.SendValue(req, kVersion | kFlagReply, status);
    if (r && !s) r = s.error();
  }
  if (!r) return r.error().Wrap(name);
  return Ok();
}

Result<uint32_t> BackendSession::QueueIndex(const RequestInfo& info, uint32_t index) const {
  // UNTRUSTED: a queue index; bounded by the queues we offer.
  if (index >= 2 * config_.queue_pairs) {
    return Error("queue index " + std::to_string(index) + " is not below " +
                 std::to_string(2 * config_.queue_pairs));
  }
  return index;
}

Result<void> BackendSession::Dispatch(const RequestInfo& info, Message& msg, Channel& ch,
                                      bool* replied) {
  const uint32_t req = msg.hdr.request;
  auto reply_u64 = [&](uint64_t v) {
    *replied = true;
    return ch.SendValue(req, kVersion | kFlagReply, v);
  };
  switch (info.request) {
    case Request::kGetFeatures:
      return reply_u64(offered_features_);
    case Request::kSetFeatures: {
      uint64_t v = U64(msg);
      if (v & ~offered_features_) return Error("features " + Hex(v & ~offered_features_) + " were not offered");
      for (const DeviceQueue& q : queues_) {
        if (q.running && v != features_) return Error("features change while queues run");
      }
      features_ = v;
      features_set_ = true;
      mrg_rxbuf_ = Has(v, virtio::kNetFMrgRxbuf);
      peer_sends_offloads_ = Has(v, virtio::kNetFCsum) || Has(v, virtio::kNetFHostTso4) || Has(v, virtio::kNetFHostTso6);
      net_hdr_len_ = (Has(v, virtio::kFVersion1) || mrg_rxbuf_) ? 12 : 10;
      for (uint32_t i = 0; i < kMaxQueues; ++i) NICMUX_TRY(Reconcile(i));
      return Ok();
    }
    case Request::kGetProtocolFeatures:
      return reply_u64(offered_protocol_features_);
    case Request::kSetProtocolFeatures: {
      uint64_t v = U64(msg);
      if (v & ~offered_protocol_features_) {
        return Error("protocol features " + Hex(v & ~offered_protocol_features_) + " were not offered");
      }
      protocol_features_ = v;
      return Ok();
    }
    case Request::kSetOwner:
      return Ok();
    case Request::kResetOwner: {
      // QEMU 7.2 sends this on a guest's device reset (when RESET_DEVICE is not offered) and
      // then sets the device up again from scratch, memory table included: forget it all
      // but the protocol features, which it does not send again (and whose REPLY_ACK it
      // keeps relying on).
      {
        PauseGuard pause(*worker_);
        for (uint32_t i = 0; i < kMaxQueues; ++i) {
          if (queues_[i].running) StopLocked(i);
          queues_[i].Forget();
        }
        mem_.reset();
        region_refs_.clear();
        region_fds_.clear();
      }
      features_set_ = false;
      features_ = 0;
      status_ = 0;
      return Ok();
    }
    case Request::kSetMemTable:
      return SetMemTable(msg);
    case Request::kAddMemReg:
      return AddMemReg(msg);
    case Request::kRemMemReg:
      return RemMemReg(msg);
    case Request::kGetMaxMemSlots:
      return reply_u64(kMaxMemSlots);
    case Request::kSetVringNum: {
      auto s = msg.As<VringState>();
      auto i = QueueIndex(info, s.index);
      if (!i) return i.error();
      if (queues_[*i].running) return Error("queue " + std::to_string(*i) + " is running");
      // The layout is known only once features are; the size is checked again at start.
      if (s.num == 0 || s.num > virtio::kMaxQueueSize) {
        return Error("queue " + std::to_string(*i) + " size " + std::to_string(s.num) +
                     " is outside 1.." + std::to_string(virtio::kMaxQueueSize));
      }
      if (!Has(features_, virtio::kFRingPacked) && (s.num & (s.num - 1)) != 0) {
        return Error("queue " + std::to_string(*i) + " size " + std::to_string(s.num) +
                     " is not a power of two");
      }
      queues_[*i].num = s.num;
      return Ok();
    }
    case Request::kSetVringAddr: {
      auto a = msg.As<VringAddr>();
      auto i = QueueIndex(info, a.index);
      if (!i) return i.error();
      if (a.flags != 0) return Error("queue " + std::to_string(*i) + " flags " + Hex(a.flags) + ": dirty logging is not offered");
      if (queues_[*i].running) return Error("queue " + std::to_string(*i) + " is running");
      queues_[*i].addr = a;
      return Ok();
    }
    case Request::kSetVringBase: {
      auto s = msg.As<VringState>();
      auto i = QueueIndex(info, s.index);
      if (!i) return i.error();
      if (queues_[*i].running) return Error("queue " + std::to_string(*i) + " is running");
      // Split rings: the 16-bit last_avail_idx. Packed rings: avail position | wrap << 15 in
      // the low half; QEMU 7.2 puts the used position and wrap in the high half too (0 from
      // DPDK). With nothing in flight across a restart (we keep no inflight state) they are
      // equal; the ring restarts from the avail half.
      if (s.num > 0xffff && !Has(features_, virtio::kFRingPacked)) {
        return Error("queue " + std::to_string(*i) + " base " + Hex(s.num) + " is not a 16-bit index");
      }
      queues_[*i].base = s.num & 0xffff;
      return Ok();
    }
    case Request::kGetVringBase: {
      auto s = msg.As<VringState>();
      auto i = QueueIndex(info, s.index);
      if (!i) return i.error();
      DeviceQueue& q = queues_[*i];
      {
        PauseGuard pause(*worker_);
        if (q.running) StopLocked(*i);
      }
      // vhost-user.rst: the ring is stopped; a new SET_VRING_KICK starts it again.
      q.kick.Reset();
      q.kick_set = false;
      *replied = true;
      // Packed: the used half equals the avail half (no chain in flight once stopped).
      const uint32_t base = q.packed ? (q.base | (q.base << 16)) : q.base;
      return ch.SendValue(req, kVersion | kFlagReply, VringState{*i, base});
    }
    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      return SetVringFd(info, msg);
    case Request::kGetQueueNum:
      return reply_u64(config_.queue_pairs);
    case Request::kSetVringEnable: {
      auto s = msg.As<VringState>();
      auto i = QueueIndex(info, s.index);
      if (!i) return i.error();
      if (s.num > 1) return Error("queue " + std::to_string(*i) + " enable value " + std::to_string(s.num) + " is not 0 or 1");
      queues_[*i].enabled = s.num == 1;
      return Reconcile(*i);
    }
    case Request::kSendRarp: {
      std::array<uint8_t, 6> mac;
      std::memcpy(mac.data(), msg.payload.data(), 6);
      uint64_t v = kRarpSet;
      for (int i = 0; i < 6; ++i) v |= uint64_t{mac[i]} << (40 - 8 * i);
      rarp_.store(v, std::memory_order_release);  // the datapath takes it on its next burst
      return Ok();
    }
    case Request::kNetSetMtu: {
      uint64_t v = U64(msg);
      if (v < 68 || v > 65535) return Error("mtu " + std::to_string(v) + " is outside 68..65535");
      mtu_ = static_cast<uint16_t>(v);
      return Ok();
    }
    case Request::kSetStatus: {
      uint64_t v = U64(msg);
      if (v > 0xff) return Error("status " + Hex(v) + " is not one byte");
      status_ = static_cast<uint8_t>(v);
      return Ok();
    }
    case Request::kGetStatus:
      return reply_u64(status_);
    default:
      return Error("request not supported");
  }
}

Result<void> BackendSession::SetVringFd(const RequestInfo& info, Message& msg) {
  const uint64_t v = U64(msg);
  // UNTRUSTED: index bits 0-7, bit 8 "no fd"; nothing else may be set.
  if (v & ~(kVringIdxMask | kVringNoFd)) return Error("payload " + Hex(v) + " has unknown bits set");
  auto i = QueueIndex(info, static_cast<uint32_t>(v & kVringIdxMask));
  if (!i) return i.error();
  const bool no_fd = (v & kVringNoFd) != 0;
  if (no_fd != msg.fds.empty()) {
    return Error(std::string("queue ") + std::to_string(*i) + (no_fd ? ": 'no fd' flag with an fd" : ": no fd and no 'no fd' flag"));
  }
  UniqueFd fd = no_fd ? UniqueFd() : std::move(msg.fds[0]);
  // UNTRUSTED: the fd. The worker writes to call fds and reads kick fds; a pipe or a blocking
  // eventfd could block it (and with it every port it polls), so only eventfds are taken, and
  // made non-blocking.
  if (fd.valid()) NICMUX_TRY(CheckEventFd(fd.get(), *i));
  DeviceQueue& q = queues_[*i];
  switch (info.request) {
    case Request::kSetVringKick: {
      // QEMU sends no memory table when no region of guest RAM has a file to pass (RAM not
      // shared), and goes on: say what to change, it is the usual cause.
      if (!mem_) {
        return Error("queue " + std::to_string(*i) +
                     ": kick before any memory table (QEMU sends none when guest memory is not shared: "
                     "-object memory-backend-memfd,share=on, or libvirt's <memoryBacking><source type='memfd'/>"
                     "<access mode='shared'/>)");
      }
      {
        PauseGuard pause(*worker_);
        q.kick = std::move(fd);
        q.kick_set = true;
      }
      return Reconcile(*i);
    }
    case Request::kSetVringCall: {
      PauseGuard pause(*worker_);
      q.call = std::move(fd);
      return Ok();
    }
    default: {
      // The worker writes to it when the ring breaks (CheckBroken): swapped with it paused,
      // as the call fd is (closing an fd a running worker may write to would let it write to
      // whatever took the number next).
      PauseGuard pause(*worker_);
      q.err = std::move(fd);
      return Ok();
    }
  }
}

// UNTRUSTED: region sizes, checked before anything is mapped, against the port's max_memory
// (at most kMaxMemoryBytes). Sparse files cost no RAM when mapped but do cost address space,
// shared by every port of this process, and every page nicmuxd reads first is charged to
// nicmuxd's memory cgroup (a shmem page is allocated on a read fault): one frontend may not
// take it all. `total` is what the table would hold: every region's size is checked against
// kMaxMemoryBytes before it is added, so the sum of at most 64 of them cannot wrap.
static Result<void> CheckTotal(uint64_t total, uint64_t limit) {
  if (total > limit) {
    return Error("memory table of " + std::to_string(total) + " bytes exceeds max_memory=" + SizeString(limit) +
                 " (" + std::to_string(limit) + " bytes), what one frontend of this port may map");
  }
  return Ok();
}

Result<void> BackendSession::SetMemTable(Message& msg) {
  const uint32_t n = msg.As<MemoryHeader>().nregions;  // 1..8, checked in Handle
  if (msg.fds.size() != n) {
    return Error(std::to_string(n) + " regions but " + std::to_string(msg.fds.size()) + " file descriptors");
  }
  uint64_t total = 0;
  for (uint32_t r = 0; r < n; ++r) {
    MemoryRegion m;
    std::memcpy(&m, msg.payload.data() + sizeof(MemoryHeader) + r * sizeof(MemoryRegion), sizeof m);
    // UNTRUSTED: a region larger than any table is refused by its own size (no sum to wrap).
    if (m.memory_size > kMaxMemoryBytes) return CheckTotal(m.memory_size, config_.max_memory);
    total += m.memory_size;
  }
  NICMUX_TRY(CheckTotal(total, config_.max_memory));
  std::vector<GuestRegion> regions;
  for (uint32_t r = 0; r < n; ++r) {
    MemoryRegion m;
    std::memcpy(&m, msg.payload.data() + sizeof(MemoryHeader) + r * sizeof(MemoryRegion), sizeof m);
    auto g = GuestMemory::MapRegion({m.guest_phys_addr, m.memory_size, m.userspace_addr, m.mmap_offset},
                                    msg.fds[r].get(), fault_fd_);
    if (!g) return g.error().Wrap("region " + std::to_string(r));
    regions.push_back(std::move(*g));
  }
  auto mem = GuestMemory::Create(std::move(regions));
  if (!mem) return mem.error();
  NICMUX_TRY(SwapMemory(std::move(*mem), "SET_MEM_TABLE"));
  region_refs_.clear();
  region_fds_.clear();
  for (uint32_t r = 0; r < n; ++r) {
    MemoryRegion m;
    std::memcpy(&m, msg.payload.data() + sizeof(MemoryHeader) + r * sizeof(MemoryRegion), sizeof m);
    const auto key = std::make_tuple(m.guest_phys_addr, m.memory_size, m.userspace_addr);
    region_refs_[key] = 1;
    region_fds_[key] = std::move(msg.fds[r]);
  }
  return Ok();
}

Result<void> BackendSession::AddMemReg(Message& msg) {
  auto s = msg.As<SingleMemoryRegion>();
  const auto key = std::make_tuple(s.region.guest_phys_addr, s.region.memory_size, s.region.userspace_addr);
  if (auto it = region_refs_.find(key); it != region_refs_.end()) {
    // UNTRUSTED: a region we have, again: from another of the frontend's devices, one per
    // queue pair, so the count is bounded (a loop of ADDs cannot wrap it), and it must be the
    // same part of the file, as it is not mapped again.
    if (it->second >= kMaxRegionRefs) {
      return Error("region at guest_phys_addr " + Hex(s.region.guest_phys_addr) + " added " +
                   std::to_string(it->second) + " times without a removal, at most " +
                   std::to_string(kMaxRegionRefs));
    }
    for (const GuestRegion& r : mem_ ? mem_->regions() : std::span<const GuestRegion>()) {
      if (r.gpa == s.region.guest_phys_addr && r.mmap_offset != s.region.mmap_offset) {
        return Error("region at guest_phys_addr " + Hex(r.gpa) + " added again with mmap_offset " +
                     Hex(s.region.mmap_offset) + ", was " + Hex(r.mmap_offset));
      }
    }
    ++it->second;
    return Ok();
  }
  // UNTRUSTED: the number of regions, bounded by the slots GET_MAX_MEM_SLOTS announces.
  if (mem_ && mem_->regions().size() >= kMaxMemSlots) {
    return Error("already " + std::to_string(mem_->regions().size()) + " memory regions, at most " +
                 std::to_string(kMaxMemSlots) + " (GET_MAX_MEM_SLOTS)");
  }
  // UNTRUSTED: the new region's size. The regions held add up to at most max_memory (checked
  // when each came), so with a region of at most kMaxMemoryBytes the sum cannot wrap; a larger
  // one is refused by its own size.
  if (s.region.memory_size > kMaxMemoryBytes) return CheckTotal(s.region.memory_size, config_.max_memory);
  uint64_t total = s.region.memory_size;
  if (mem_) {
    for (const GuestRegion& r : mem_->regions()) total += r.size;
  }
  NICMUX_TRY(CheckTotal(total, config_.max_memory));
  auto g = GuestMemory::MapRegion({s.region.guest_phys_addr, s.region.memory_size,
                                   s.region.userspace_addr, s.region.mmap_offset},
                                  msg.fds[0].get(), fault_fd_);
  if (!g) return g.error();
  auto mem = mem_ ? mem_->WithRegion(std::move(*g)) : GuestMemory::Create({std::move(*g)});
  if (!mem) return mem.error();
  NICMUX_TRY(SwapMemory(std::move(*mem), "ADD_MEM_REG"));
  region_refs_[key] = 1;
  region_fds_[key] = std::move(msg.fds[0]);
  return Ok();
}

Result<void> BackendSession::RemMemReg(Message& msg) {
  if (!mem_) return Error("no memory table");
  auto s = msg.As<SingleMemoryRegion>();
  const auto key = std::make_tuple(s.region.guest_phys_addr, s.region.memory_size, s.region.userspace_addr);
  auto it = region_refs_.find(key);
  if (it != region_refs_.end() && it->second > 1) {
    --it->second;
    return Ok();
  }
  auto mem = mem_->WithoutRegion({s.region.guest_phys_addr, s.region.memory_size,
                                  s.region.userspace_addr, s.region.mmap_offset});
  if (!mem) return mem.error();
  NICMUX_TRY(SwapMemory(std::move(*mem), "REM_MEM_REG"));
  if (it != region_refs_.end()) region_refs_.erase(it);
  region_fds_.erase(key);
  return Ok();
}

Result<void> BackendSession::SwapMemory(std::shared_ptr<const GuestMemory> m, const char*) {
  PauseGuard pause(*worker_);
  // Every started queue restarts on the new table from where it stood: between bursts no
  // chain is in flight, so its ring state is just the base.
  std::array<bool, kMaxQueues> was_running{};
  for (uint32_t i = 0; i < kMaxQueues; ++i) {
    was_running[i] = queues_[i].running;
    if (was_running[i]) StopLocked(i);
  }
  std::shared_ptr<const GuestMemory> old = std::exchange(mem_, std::move(m));
  for (uint32_t i = 0; i < kMaxQueues; ++i) {
    if (!was_running[i]) continue;
    auto r = StartLocked(i);
    if (!r) return r.error();
  }
  return Ok();
}

Result<void> BackendSession::Reconcile(uint32_t i) {
  DeviceQueue& q = queues_[i];
  // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled as soon as it starts.
  const bool enabled = q.enabled || !Has(features_, kFProtocolFeatures);
  const bool ready = mem_ && features_set_ && q.num != 0 && q.addr && q.kick_set && enabled;
  if (ready == q.running) return Ok();
  PauseGuard pause(*worker_);
  if (!ready) {
    StopLocked(i);
    return Ok();
  }
  return StartLocked(i);
}

Result<void> BackendSession::StartLocked(uint32_t i) {
  DeviceQueue& q = queues_[i];
  q.error_signalled = false;
  const bool packed = Has(features_, virtio::kFRingPacked);
  const std::string qname = "queue " + std::to_string(i);
  auto size_ok = virtio::CheckQueueSize(q.num, packed);
  if (!size_ok) return size_ok.error().Wrap(qname);
  const virtio::VringConfig config{q.num, features_,
                                   i % 2 == 0 ? virtio::ChainPolicy::kWriteOnly : virtio::ChainPolicy::kReadOnly};
  // UNTRUSTED: ring addresses (frontend virtual); mapped with full lengths and alignment.
  Result<void> r = Ok();
  if (packed) {
    // For packed rings the "avail" and "used" addresses name the driver and device areas.
    auto areas = virtio::MapPackedRing(*mem_, virtio::RingAddrSpace::kFrontendVirtual, q.addr->desc_user_addr,
                                       q.addr->avail_user_addr, q.addr->used_user_addr, q.num);
    if (!areas) return areas.error().Wrap(qname);
    r = q.packed_ring.Init(config, *areas, mem_.get(), static_cast<uint16_t>(q.base));
  } else {
    auto areas = virtio::MapSplitRing(*mem_, virtio::RingAddrSpace::kFrontendVirtual, q.addr->desc_user_addr,
                                      q.addr->avail_user_addr, q.addr->used_user_addr, q.num);
    if (!areas) return areas.error().Wrap(qname);
    r = q.split.Init(config, *areas, mem_.get(), static_cast<uint16_t>(q.base));
  }
  if (!r) return r.error().Wrap(qname);
  q.packed = packed;
  q.running = true;
  ++generation_;
  NICMUX_LOG(kDebug, "vhost-user: %s started (%s ring, size %u, base %u)", qname.c_str(),
             packed ? "packed" : "split", q.num, q.base);
  return Ok();
}

void BackendSession::StopLocked(uint32_t i) {
  DeviceQueue& q = queues_[i];
  if (!q.running) return;
  if (stop_hook_) stop_hook_(i);
  q.base = q.packed ? q.packed_ring.avail_state() : q.split.last_avail_idx();
  q.running = false;
  ++generation_;
}

// Live upgrade (docs/upgrade.md). The keys are a format between builds: add keys, never
// change what one means (bump control/handover.h's version for that).
Result<void> BackendSession::Export(HandoverRecord* out) const {
  for (uint32_t i = 0; i < kMaxQueues; ++i) {
    const DeviceQueue& q = queues_[i];
    if (!q.running) continue;
    const bool broken = q.packed ? q.packed_ring.broken() : q.split.broken();
    if (!broken && !(q.packed ? q.packed_ring.quiescent() : q.split.quiescent())) {
      return Error("queue " + std::to_string(i) + " has chains in flight");
    }
  }
  out->Set("s.protocol_features", protocol_features_);
  out->Set("s.features", features_);
  out->Set("s.features_set", features_set_);
  out->Set("s.status", status_);
  out->Set("s.mtu", mtu_);
  out->Set("s.rarp", rarp_.load(std::memory_order_relaxed));
  uint32_t n = 0;
  for (const auto& [key, refs] : region_refs_) {
    auto fd = region_fds_.find(key);
    if (fd == region_fds_.end() || !fd->second.valid()) return Error("a memory region has no file");
    const std::string k = "s.region." + std::to_string(n++) + ".";
    uint64_t offset = 0;
    bool found = false;
    for (const GuestRegion& r : mem_ ? mem_->regions() : std::span<const GuestRegion>()) {
      if (std::make_tuple(r.gpa, r.size, r.uva) == key) {
        offset = r.mmap_offset;
        found = true;
      }
    }
    if (!found) return Error("a referenced memory region is not mapped");
    out->Set(k + "gpa", std::get<0>(key));
    out->Set(k + "size", std::get<1>(key));
    out->Set(k + "uva", std::get<2>(key));
    out->Set(k + "offset", offset);
    out->Set(k + "refs", refs);
    NICMUX_TRY(out->SetFd(k + "fd", fd->second.get()));
  }
  out->Set("s.regions", n);
  for (uint32_t i = 0; i < 2 * config_.queue_pairs; ++i) {
    const DeviceQueue& q = queues_[i];
    const std::string k = "s.q." + std::to_string(i) + ".";
    const bool broken = q.running && (q.packed ? q.packed_ring.broken() : q.split.broken());
    uint32_t base = q.base;
    if (q.running) base = q.packed ? q.packed_ring.avail_state() : q.split.last_avail_idx();
    out->Set(k + "num", q.num);
    out->Set(k + "base", base);
    out->Set(k + "enabled", q.enabled);
    if (q.addr) {
      out->Set(k + "desc", q.addr->desc_user_addr);
      out->Set(k + "avail", q.addr->avail_user_addr);
      out->Set(k + "used", q.addr->used_user_addr);
    }
    // A broken ring stays stopped in the new process until the frontend sets it up again
    // (a new SET_VRING_KICK), as it would here: its kick is not handed over.
    if (q.kick_set && !broken) {
      if (q.kick.valid()) {
        NICMUX_TRY(out->SetFd(k + "kick", q.kick.get()));
      } else {
        out->Set(k + "kick_polled", 1);
      }
    }
    if (q.call.valid()) NICMUX_TRY(out->SetFd(k + "call", q.call.get()));
    if (q.err.valid()) NICMUX_TRY(out->SetFd(k + "err", q.err.get()));
  }
  return Ok();
}

namespace {

// A message as the frontend would have sent it, for Import.
template <typename T>
Message Synth(Request r, const T& v, UniqueFd fd = UniqueFd()) {
  Message m;
  m.hdr.request = static_cast<uint32_t>(r);
  m.hdr.flags = kVersion;
  m.hdr.size = sizeof(T);
  std::memcpy(m.payload.data(), &v, sizeof(T));
  if (fd.valid()) m.fds.push_back(std::move(fd));
  return m;
}

// UNTRUSTED (the old process, another build): every key under `prefix` that names a queue
// ("s.q.5.num") names one this session has (its spec's queue pairs): a queue the record has
// and the session would skip is a queue of the guest that would stop without a word. Keys
// under the prefix that name no queue (a newer build's, like "s.p.rarp") are not looked at.
Result<void> CheckQueueKeys(const HandoverRecord& in, const std::string& prefix, uint32_t queues) {
  for (auto it = in.values().lower_bound(prefix);
       it != in.values().end() && it->first.compare(0, prefix.size(), prefix) == 0; ++it) {
    const std::string& key = it->first;
    const char* b = key.data() + prefix.size();
    const char* e = key.data() + key.size();
    if (b == e || *b < '0' || *b > '9') continue;
    uint64_t i = 0;
    auto [end, ec] = std::from_chars(b, e, i);
    if (ec != std::errc() || end == e || *end != '.' || i >= queues) {
      return Error("handover: " + key + " names a queue this port does not have (it has " + std::to_string(queues) +
                   ")");
    }
  }
  return Ok();
}

}  // namespace

Result<void> BackendSession::Import(HandoverRecord& in) {
  NICMUX_TRY(CheckQueueKeys(in, "s.q.", 2 * config_.queue_pairs));
  // No request below asks for a reply (no NEED_REPLY, no GET_*): the channel is never
  // written, so it needs no socket.
  Channel none{UniqueFd()};
  auto handle = [&](Message m) { return Handle(m, none); };
  NICMUX_TRY_ASSIGN(proto, in.Get("s.protocol_features"));
  NICMUX_TRY(handle(Synth(Request::kSetProtocolFeatures, proto)));
  NICMUX_TRY_ASSIGN(features_set, in.Get("s.features_set", 1));
  NICMUX_TRY_ASSIGN(features, in.Get("s.features"));
  if (features_set) NICMUX_TRY(handle(Synth(Request::kSetFeatures, features)));
  NICMUX_TRY_ASSIGN(status, in.Get("s.status", 0xff));
  NICMUX_TRY(handle(Synth(Request::kSetStatus, status)));
  NICMUX_TRY_ASSIGN(mtu, in.Get("s.mtu", 65535));
  if (mtu != 0 && mtu != config_.mtu) NICMUX_TRY(handle(Synth(Request::kNetSetMtu, mtu)));
  NICMUX_TRY_ASSIGN(nregions, in.Get("s.regions", kMaxMemSlots));
  for (uint64_t r = 0; r < nregions; ++r) {
    const std::string k = "s.region." + std::to_string(r) + ".";
    SingleMemoryRegion m{};
    NICMUX_TRY_ASSIGN(gpa, in.Get(k + "gpa"));
    NICMUX_TRY_ASSIGN(size, in.Get(k + "size"));
    NICMUX_TRY_ASSIGN(uva, in.Get(k + "uva"));
    NICMUX_TRY_ASSIGN(offset, in.Get(k + "offset"));
    NICMUX_TRY_ASSIGN(refs, in.Get(k + "refs", kMaxRegionRefs));
    NICMUX_TRY_ASSIGN(fd, in.TakeFd(k + "fd"));
    m.region = {gpa, size, uva, offset};
    // The first ADD maps the region; the others count the frontend's references to it (each
    // ADD_MEM_REG carries the file, as the frontend's do).
    for (uint64_t j = 1; j < refs; ++j) {
      UniqueFd again(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
      if (!again.valid()) return Error::FromErrno("handover: dup of a region's fd");
      NICMUX_TRY(handle(Synth(Request::kAddMemReg, m, std::move(again))));
    }
    NICMUX_TRY(handle(Synth(Request::kAddMemReg, m, std::move(fd))));
  }
  for (uint32_t i = 0; i < 2 * config_.queue_pairs; ++i) {
    const std::string k = "s.q." + std::to_string(i) + ".";
    if (!in.Has(k + "num")) continue;
    NICMUX_TRY_ASSIGN(num, in.Get(k + "num", virtio::kMaxQueueSize));
    if (num != 0) NICMUX_TRY(handle(Synth(Request::kSetVringNum, VringState{i, static_cast<uint32_t>(num)})));
    if (in.Has(k + "desc")) {
      VringAddr a{};
      a.index = i;
      NICMUX_TRY_ASSIGN(desc, in.Get(k + "desc"));
      NICMUX_TRY_ASSIGN(avail, in.Get(k + "avail"));
      NICMUX_TRY_ASSIGN(used, in.Get(k + "used"));
      a.desc_user_addr = desc;
      a.avail_user_addr = avail;
      a.used_user_addr = used;
      NICMUX_TRY(handle(Synth(Request::kSetVringAddr, a)));
    }
    NICMUX_TRY_ASSIGN(base, in.Get(k + "base", 0xffff));
    NICMUX_TRY(handle(Synth(Request::kSetVringBase, VringState{i, static_cast<uint32_t>(base)})));
    for (const char* fdname : {"call", "err"}) {
      if (!in.Has(k + fdname)) continue;
      NICMUX_TRY_ASSIGN(fd, in.TakeFd(k + fdname));
      const Request r = fdname[0] == 'c' ? Request::kSetVringCall : Request::kSetVringErr;
      NICMUX_TRY(handle(Synth(r, uint64_t{i}, std::move(fd))));
    }
    NICMUX_TRY_ASSIGN(enabled, in.Get(k + "enabled", 1));
    if (enabled) NICMUX_TRY(handle(Synth(Request::kSetVringEnable, VringState{i, 1})));
    if (in.Has(k + "kick")) {
      NICMUX_TRY_ASSIGN(fd, in.TakeFd(k + "kick"));
      import_kicks_[i] = std::move(fd);
    } else if (in.Has(k + "kick_polled")) {
      import_kicks_[i] = UniqueFd();
    }
  }
  NICMUX_TRY_ASSIGN(rarp, in.GetOr("s.rarp", 0));
  // UNTRUSTED: a SEND_RARP waiting to be taken: none, or the flag and a MAC.
  if (rarp != 0 && (rarp & ~(kRarpSet | 0xffffffffffffull)) != 0) return Error("handover: s.rarp is malformed");
  rarp_.store(rarp, std::memory_order_release);
  return Ok();
}

Result<void> BackendSession::ExportPositions(HandoverRecord* out) const {
  for (uint32_t i = 0; i < 2 * config_.queue_pairs; ++i) {
    const DeviceQueue& q = queues_[i];
    if (!q.running) continue;
    const std::string k = "s.p." + std::to_string(i) + ".";
    if (q.packed ? q.packed_ring.broken() : q.split.broken()) {
      out->Set(k + "broken", 1);
      continue;
    }
    if (!(q.packed ? q.packed_ring.quiescent() : q.split.quiescent())) {
      return Error("queue " + std::to_string(i) + " has chains in flight");
    }
    out->Set(k + "base", q.packed ? q.packed_ring.avail_state() : q.split.last_avail_idx());
  }
  out->Set("s.p.rarp", rarp_.load(std::memory_order_relaxed));
  return Ok();
}

Result<void> BackendSession::ImportPositions(HandoverRecord& in) {
  NICMUX_TRY(CheckQueueKeys(in, "s.p.", 2 * config_.queue_pairs));
  Channel none{UniqueFd()};
  auto handle = [&](Message m) { return Handle(m, none); };
  for (uint32_t i = 0; i < 2 * config_.queue_pairs; ++i) {
    const std::string k = "s.p." + std::to_string(i) + ".";
    auto kick = import_kicks_.find(i);
    // UNTRUSTED (the old process): a position only for a queue whose kick came in step 1. (A
    // ring that was broken already then came without its kick, and is still "broken" now:
    // nothing to start.)
    if (kick == import_kicks_.end()) {
      if (in.Has(k + "base")) return Error("queue " + std::to_string(i) + " has a position but was not set up");
      continue;
    }
    UniqueFd fd = std::move(kick->second);
    import_kicks_.erase(kick);
    if (in.Has(k + "broken")) continue;  // stopped until the frontend sets it up again
    if (in.Has(k + "base")) {
      NICMUX_TRY_ASSIGN(base, in.Get(k + "base", 0xffff));
      NICMUX_TRY(handle(Synth(Request::kSetVringBase, VringState{i, static_cast<uint32_t>(base)})));
    }
    const bool polled = !fd.valid();
    NICMUX_TRY(handle(Synth(Request::kSetVringKick, uint64_t{i} | (polled ? kVringNoFd : 0), std::move(fd))));
  }
  import_kicks_.clear();
  NICMUX_TRY_ASSIGN(rarp, in.GetOr("s.p.rarp", 0));
  // UNTRUSTED: a SEND_RARP waiting to be taken: none, or the flag and a MAC.
  if (rarp != 0 && (rarp & ~(kRarpSet | 0xffffffffffffull)) != 0) return Error("handover: s.p.rarp is malformed");
  rarp_.store(rarp, std::memory_order_release);
  return Ok();
}

}  // namespace nicmux::vhost
