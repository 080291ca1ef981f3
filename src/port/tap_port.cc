#include "port/tap_port.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/log.h"
#include "port/virtio_net_edge.h"

namespace nicmux {

namespace {

// The kernel's dev_valid_name() rules, checked here for a readable error; '%' is refused too
// (the kernel would pick a name "tap%d" itself, and we want exactly the name asked for).
Result<void> CheckIfname(const std::string& port, const std::string& ifname) {
  if (ifname.empty()) return Error("port " + port + ": empty interface name");
  if (ifname.size() > IFNAMSIZ - 1) {
    return Error("port " + port + ": interface name \"" + ifname + "\" is longer than " +
                 std::to_string(IFNAMSIZ - 1) + " characters");
  }
  if (ifname == "." || ifname == "..") {
    return Error("port " + port + ": bad interface name \"" + ifname + "\"");
  }
  for (char c : ifname) {
    if (c == '/' || c == ':' || c == '%' || c <= ' ' || c == 0x7f) {
      return Error("port " + port + ": bad interface name \"" + ifname +
                   "\" (no '/', ':', '%' or whitespace)");
    }
  }
  return Ok();
}

// "A.B.C.D/P" (P 0..32) into an address and a netmask, network byte order.
bool ParseCidr(const std::string& s, in_addr* addr, in_addr* mask) {
  const size_t slash = s.find('/');
  if (slash == std::string::npos) return false;
  const std::string ip = s.substr(0, slash), len = s.substr(slash + 1);
  if (len.empty() || len.size() > 2) return false;
  uint32_t prefix = 0;
  for (char c : len) {
    if (c < '0' || c > '9') return false;
    prefix = prefix * 10 + static_cast<uint32_t>(c - '0');
  }
  if (prefix > 32) return false;
  if (inet_pton(AF_INET, ip.c_str(), addr) != 1) return false;
  mask->s_addr = htonl(prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix));
  return true;
}

ifreq IfReq(const std::string& ifname) {
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, ifname.data(), std::min<size_t>(ifname.size(), IFNAMSIZ - 1));
  return ifr;
}

void SetSockaddrIn(sockaddr* sa, in_addr a) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr = a;
  std::memcpy(sa, &sin, sizeof sin);
}

// MTU, address and link state through the classic interface ioctls on an AF_INET socket.
Result<void> ConfigureInterface(const TapPortOptions& o, const std::string& ifname) {
  const std::string what = "port " + o.name + ": interface " + ifname;
  UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return Error::FromErrno(what + ": socket(AF_INET)");
  if (o.mtu != 0) {
    ifreq ifr = IfReq(ifname);
    ifr.ifr_mtu = static_cast<int>(o.mtu);
    if (::ioctl(sock.get(), SIOCSIFMTU, &ifr) < 0) {
      return Error::FromErrno(what + ": set MTU " + std::to_string(o.mtu));
    }
  }
  if (!o.address.empty()) {
    in_addr addr{}, mask{};
    ParseCidr(o.address, &addr, &mask);  // checked in Create
    ifreq ifr = IfReq(ifname);
    SetSockaddrIn(&ifr.ifr_addr, addr);
    if (::ioctl(sock.get(), SIOCSIFADDR, &ifr) < 0) {
      return Error::FromErrno(what + ": set address " + o.address);
    }
    ifr = IfReq(ifname);
    SetSockaddrIn(&ifr.ifr_netmask, mask);
    if (::ioctl(sock.get(), SIOCSIFNETMASK, &ifr) < 0) {
      return Error::FromErrno(what + ": set netmask of " + o.address);
    }
  }
  if (o.up) {
    ifreq ifr = IfReq(ifname);
    if (::ioctl(sock.get(), SIOCGIFFLAGS, &ifr) < 0) return Error::FromErrno(what + ": get flags");
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    if (::ioctl(sock.get(), SIOCSIFFLAGS, &ifr) < 0) return Error::FromErrno(what + ": set up");
  }
  return Ok();
}

// Writes p's frame bytes into a flat buffer (the bounce path of Tx).
struct FlatWriter {
  std::byte* dst;
  size_t room;
  size_t Write(const void* src, size_t n) {
    const size_t k = std::min(n, room);
    std::memcpy(dst, src, k);
    dst += k;
    room -= k;
    return k;
  }
};

}  // namespace

Result<std::unique_ptr<TapPort>> TapPort::Create(const TapPortOptions& o, HandoverRecord* handover) {
  const std::string what = "port " + o.name;
  const std::string ifname = o.ifname.empty() ? o.name : o.ifname;
  // Every option is checked before anything is created.
  NICMUX_TRY(CheckIfname(o.name, ifname));
  if (o.queues < 1 || o.queues > kMaxQueues) {
    return Error(what + ": queues=" + std::to_string(o.queues) + " out of range 1.." +
                 std::to_string(kMaxQueues));
  }
  if (o.mtu != 0 && (o.mtu < 68 || o.mtu > 65535)) {
    return Error(what + ": mtu=" + std::to_string(o.mtu) + " out of range 68..65535");
  }
  in_addr addr{}, mask{};
  if (!o.address.empty() && !ParseCidr(o.address, &addr, &mask)) {
    return Error(what + ": address \"" + o.address + "\" is not A.B.C.D/PREFIX (IPv4)");
  }
  // Never take over a device someone else made (IFF_TUN_EXCL below closes the race).
  if (!handover && ::if_nametoindex(ifname.c_str()) != 0) {
    return Error(what + ": interface " + ifname + " exists already", EEXIST);
  }

  std::unique_ptr<TapPort> port(new TapPort(o.name, ifname));
  auto bufs = MappedRegion::Anonymous(uint64_t{o.queues} * kBurst * kSlotBytes);
  if (!bufs) return bufs.error().Wrap(what + ": receive buffers");
  port->buffers_ = std::move(*bufs);
  auto bounce = MappedRegion::Anonymous(uint64_t{o.queues} * kMaxFrameBytes);
  if (!bounce) return bounce.error().Wrap(what + ": transmit bounce buffers");
  port->bounce_ = std::move(*bounce);

  if (handover) {
    // The old process's queue fds: the same interface, set up as this spec says (the specs
    // are one), so nothing is configured again.
    for (uint32_t q = 0; q < o.queues; ++q) {
      auto s = std::make_unique<Queue>();
      auto fd = handover->TakeFd("t.q." + std::to_string(q) + ".fd");
      if (!fd) return fd.error().Wrap(what + ": handover");
      // UNTRUSTED (the old process): a TAP fd of this interface, with virtio-net headers.
      ifreq ifr{};
      if (::ioctl(fd->get(), TUNGETIFF, &ifr) < 0 || std::string(ifr.ifr_name) != ifname ||
          !(ifr.ifr_flags & IFF_TAP) || !(ifr.ifr_flags & IFF_VNET_HDR)) {
        return Error(what + ": handover: queue " + std::to_string(q) + "'s fd is not a TAP fd of " + ifname);
      }
      s->fd = std::move(*fd);
      for (uint32_t i = 0; i < kBurst; ++i) s->order[i] = static_cast<uint8_t>(i);
      s->bounce = port->bounce_.data() + uint64_t{q} * kMaxFrameBytes;
      port->q_.push_back(std::move(s));
    }
    if (handover->Has("t.q." + std::to_string(o.queues) + ".fd")) {
      return Error(what + ": handover: the old port had more than " + std::to_string(o.queues) + " queue(s)");
    }
    if (o.offloads) {
      port->SetCaps({PortCaps::kCsum | PortCaps::kCsumValid | PortCaps::kTso4 | PortCaps::kTso6 | PortCaps::kEcn,
                     static_cast<uint16_t>(o.mtu), kMaxFrameBytes});
    }
    return port;
  }

  // From here on an error closes the fds opened so far, which removes the interface.
  for (uint32_t q = 0; q < o.queues; ++q) {
    auto s = std::make_unique<Queue>();
    s->fd.Reset(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!s->fd) return Error::FromErrno(what + ": open /dev/net/tun");
    ifreq ifr = IfReq(ifname);
    int flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (o.queues > 1) flags |= IFF_MULTI_QUEUE;
    if (q == 0) flags |= IFF_TUN_EXCL;  // create, never attach to an existing device
    ifr.ifr_flags = static_cast<short>(flags);
    if (::ioctl(s->fd.get(), TUNSETIFF, &ifr) < 0) {
      if (q == 0 && errno == EBUSY) {
        return Error(what + ": interface " + ifname + " exists already", EEXIST);
      }
      return Error::FromErrno(what + ": TUNSETIFF " + ifname + " (queue " + std::to_string(q) +
                              ")");
    }
    int hdr_sz = kVnetHdrBytes;
    if (::ioctl(s->fd.get(), TUNSETVNETHDRSZ, &hdr_sz) < 0) {
      return Error::FromErrno(what + ": TUNSETVNETHDRSZ " + std::to_string(hdr_sz));
    }
    int le = 1;  // virtio 1.x headers are little-endian on every host
    if (::ioctl(s->fd.get(), TUNSETVNETLE, &le) < 0)
      return Error::FromErrno(what + ": TUNSETVNETLE");
    const unsigned long offload = o.offloads ? (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN) : 0UL;
    if (::ioctl(s->fd.get(), TUNSETOFFLOAD, offload) < 0) {
      return Error::FromErrno(what + ": TUNSETOFFLOAD " + std::to_string(offload));
    }
    for (uint32_t i = 0; i < kBurst; ++i) s->order[i] = static_cast<uint8_t>(i);
    s->bounce = port->bounce_.data() + uint64_t{q} * kMaxFrameBytes;
    port->q_.push_back(std::move(s));
  }
  if (o.offloads) {
    port->SetCaps({PortCaps::kCsum | PortCaps::kCsumValid | PortCaps::kTso4 | PortCaps::kTso6 | PortCaps::kEcn,
                   static_cast<uint16_t>(o.mtu), kMaxFrameBytes});
  }
  NICMUX_TRY(ConfigureInterface(o, ifname));
  NICMUX_LOG(kInfo, "port %s: interface %s, %u queue(s)%s%s", o.name.c_str(), ifname.c_str(),
             o.queues, o.address.empty() ? "" : ", address ", o.address.c_str());
  return port;
}

// --------------------------------------------------------------------------- live upgrade

Result<void> TapPort::Export(HandoverRecord* out) {
  for (uint32_t q = 0; q < q_.size(); ++q) NICMUX_TRY(out->SetFd("t.q." + std::to_string(q) + ".fd", q_[q]->fd.get()));
  return Ok();
}

Result<void> TapPort::ExportPositions(HandoverRecord* out) {
  for (uint32_t q = 0; q < q_.size(); ++q) {
    Queue& s = *q_[q];
    if (s.held == 0) continue;
    // Frames the kernel gave us that a full destination has not taken yet: they go over in a
    // memfd, header and frame each, oldest first.
    const std::string k = "t.q." + std::to_string(q) + ".";
    UniqueFd mfd(::memfd_create("nicmux-tap-held", MFD_CLOEXEC));
    if (!mfd.valid()) return Error::FromErrno("port " + name() + ": memfd for held frames");
    for (uint32_t i = 0; i < s.held; ++i) {
      const uint32_t slot = s.order[i];
      const size_t bytes = kVnetHdrBytes + s.frame_len[slot];
      const std::byte* b = Slot(q, slot);
      for (size_t done = 0; done < bytes;) {
        ssize_t n = ::write(mfd.get(), b + done, bytes - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return Error::FromErrno("port " + name() + ": writing held frames");
        done += static_cast<size_t>(n);
      }
      out->Set(k + "len." + std::to_string(i), s.frame_len[slot]);
    }
    out->Set(k + "held", s.held);
    NICMUX_TRY(out->SetFd(k + "frames", mfd.get()));
  }
  return Ok();
}

Result<void> TapPort::ImportPositions(HandoverRecord& in) {
  for (uint32_t q = 0; q < q_.size(); ++q) {
    Queue& s = *q_[q];
    const std::string k = "t.q." + std::to_string(q) + ".";
    NICMUX_TRY_ASSIGN(held, in.GetOr(k + "held", 0, kBurst));
    if (held == 0) continue;
    NICMUX_TRY_ASSIGN(mfd, in.TakeFd(k + "frames"));
    uint64_t off = 0;
    for (uint32_t i = 0; i < held; ++i) {
      // UNTRUSTED (the old process): each length fits a slot, as it did there.
      NICMUX_TRY_ASSIGN(len, in.Get(k + "len." + std::to_string(i), kMaxFrameBytes));
      if (len < kMinFrameBytes) return Error("port " + name() + ": handover: a held frame of " + std::to_string(len) + " bytes");
      std::byte* b = Slot(q, i);
      const size_t bytes = kVnetHdrBytes + len;
      ssize_t n = ::pread(mfd.get(), b, bytes, static_cast<off_t>(off));
      if (n != static_cast<ssize_t>(bytes)) return Error("port " + name() + ": handover: held frames cut short");
      off += bytes;
      s.frame_len[i] = static_cast<uint32_t>(len);
    }
    for (uint32_t i = 0; i < kBurst; ++i) s.order[i] = static_cast<uint8_t>(i);
    s.held = static_cast<uint32_t>(held);
    s.kept.store(s.held, std::memory_order_relaxed);
  }
  return Ok();
}

// --------------------------------------------------------------------------- data path

void TapPort::Emit(uint32_t q, uint32_t slot, Batch& out) {
  Queue& s = *q_[q];
  std::byte* b = Slot(q, slot);
  const uint32_t len = s.frame_len[slot];
  PacketRef* p = out.TryPush();
  NICMUX_DCHECK(p != nullptr);
  PacketFromFlat(p, &s.segs[slot], b + kVnetHdrBytes, len);
  // UNTRUSTED: the kernel's virtio-net header, translated as a guest's would be. With no
  // offloads enabled it is zero or DATA_VALID. The kernel writes only the first 10 bytes
  // (struct virtio_net_hdr); num_buffers, which holds whatever the buffer held, is not read.
  virtio::VirtioNetHdrV1 h;
  std::memcpy(&h, b, sizeof h);
  p->offload = OffloadFromVirtio(h);
}

size_t TapPort::Rx(uint32_t q, Batch& out, size_t max) {
  Queue& s = *q_[q];
  s.batch_base = out.size();
  max = std::min<size_t>({max, kBurst, kBurst - out.size()});
  uint32_t n = 0;
  // Frames kept by the last RxDone first, in the order they were read.
  for (; n < s.held && n < max; ++n) Emit(q, s.order[n], out);
  // Then new frames into free slots; at most kBurst reads, bad frames included.
  if (n == s.held && !s.gone.load(std::memory_order_relaxed)) {
    for (uint32_t reads = 0; n < max && reads < kBurst; ++reads) {
      const uint32_t slot = s.order[s.held];
      std::byte* b = Slot(q, slot);
      const ssize_t r = ::read(s.fd.get(), b, kSlotBytes);
      if (r < 0) {
        const int err = errno;
        if (err == EAGAIN || err == EINTR) break;
        if (err == EBADFD || err == ENODEV || err == ENXIO) {
          // The interface was deleted under us (ip link del): poll() would now report POLLERR
          // forever, so stop reading and stop offering the fd for sleeping.
          if (!s.gone.exchange(true, std::memory_order_relaxed)) PeerGone();  // MACs forgotten
          NICMUX_LOG(kWarning, "port %s: interface %s is gone (read: %s)", name().c_str(),
                     ifname_.c_str(), std::strerror(err));
        } else {
          NICMUX_LOG_RATELIMITED(kWarning, "port %s: read %s queue %u: %s", name().c_str(),
                                 ifname_.c_str(), q, std::strerror(err));
        }
        break;
      }
      // UNTRUSTED: r, the frame length, is at most kSlotBytes (read's bound); it must hold a
      // virtio-net header and an Ethernet header, and a frame that filled the whole buffer
      // may have been cut (no real frame is that long: kMaxFrameBytes > 65535 + headers).
      const bool full = r == static_cast<ssize_t>(kSlotBytes);
      if (r < static_cast<ssize_t>(kVnetHdrBytes + kMinFrameBytes) || full) {
        const DropReason why = full ? DropReason::kTooBig : DropReason::kBadFrame;
        s.rxc.dropped.Add();
        s.rxc.drops.Add(why);
        NICMUX_LOG_RATELIMITED(kWarning, "port %s: dropped a %zd-byte read from %s (%s)",
                               name().c_str(), r, ifname_.c_str(), DropReasonName(why).data());
        continue;  // the slot is still free: the next read reuses it
      }
      s.frame_len[slot] = static_cast<uint32_t>(r) - kVnetHdrBytes;
      ++s.held;
      Emit(q, slot, out);
      ++n;
    }
  }
  s.emitted = n;
  return n;
}

void TapPort::RxDone(uint32_t q, Batch& batch, size_t sent) {
  Queue& s = *q_[q];
  // batch[batch_base, batch_base + emitted) are ours (order[0, emitted)); the first `done` of
  // them were sent. The rest stay held, oldest first, ahead of anything read later.
  const size_t ours_sent = sent > s.batch_base ? sent - s.batch_base : 0;
  const uint32_t done = static_cast<uint32_t>(std::min<size_t>(ours_sent, s.emitted));
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < done; ++i) bytes += s.frame_len[s.order[i]];
  s.rxc.packets.Add(done);
  s.rxc.bytes.Add(bytes);
  std::rotate(s.order, s.order + done, s.order + s.held);
  s.held -= done;
  s.emitted = 0;
  s.kept.store(s.held, std::memory_order_relaxed);
}

int TapPort::WritePacket(Queue& s, const PacketRef& p) {
  NICMUX_CHECK(p.head_len <= p.len && p.head_len <= kHeadRoomBytes);
  if (p.len > kMaxFrameBytes) return EMSGSIZE;
  // The record as the switch left it (nothing this port does not accept, caps), but the
  // checksum-valid mark only where the port takes it: the kernel would skip verifying.
  Offload o = p.offload;
  if (!Caps().has(PortCaps::kCsumValid)) o.flags &= static_cast<uint8_t>(~Offload::kCsumValid);
  virtio::VirtioNetHdrV1 hdr = VirtioFromOffload(o);
  s.iov[0] = {&hdr, sizeof hdr};
  int n = 1;
  if (p.head_len > 0) s.iov[n++] = {const_cast<std::byte*>(p.head), p.head_len};
  // The bytes after the head, straight from the source's segments (bounded by the source
  // when it made the PacketRef; a segment list that ends early is refused, not read past).
  size_t left = p.len - p.head_len;
  uint32_t seg = p.seg, off = p.seg_off;
  while (left > 0 && seg < p.nsegs && n < static_cast<int>(kMaxIov)) {
    const Segment& sg = p.segs[seg];
    if (off > sg.len) return EINVAL;
    const size_t k = std::min<size_t>(left, sg.len - off);
    if (k > 0) s.iov[n++] = {sg.data + off, k};
    left -= k;
    ++seg;
    off = 0;
  }
  if (left > 0) {
    if (seg >= p.nsegs) return EINVAL;
    // More segments than iovecs: flatten into the bounce buffer (one extra copy, rare).
    FlatWriter w{s.bounce, kMaxFrameBytes};
    if (CopyPacket(p, w) != p.len) return EINVAL;
    s.iov[1] = {s.bounce, p.len};
    n = 2;
  }
  if (::writev(s.fd.get(), s.iov, n) < 0) return errno;
  return 0;
}

size_t TapPort::Tx(uint32_t q, std::span<const PacketRef* const> in) {
  Queue& s = *q_[q];
  size_t k = 0;
  uint64_t sent = 0, bytes = 0;
  for (; k < in.size(); ++k) {
    const int err = WritePacket(s, *in[k]);
    if (err == 0) {
      ++sent;
      bytes += in[k]->len;
      continue;
    }
    // The kernel pushes back: the switch holds or drops the rest.
    if (err == EAGAIN || err == ENOBUFS || err == EINTR) break;
    const DropReason why = err == EMSGSIZE                  ? DropReason::kTooBig
                           : err == EINVAL || err == EFAULT ? DropReason::kBadFrame
                                                            : DropReason::kPortDown;
    s.txc.dropped.Add();
    s.txc.drops.Add(why);
    NICMUX_LOG_RATELIMITED(kWarning, "port %s: write to %s queue %u dropped a %u-byte frame: %s",
                           name().c_str(), ifname_.c_str(), q, in[k]->len, std::strerror(err));
  }
  s.txc.packets.Add(sent);
  s.txc.bytes.Add(bytes);
  return k;
}

bool TapPort::ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) {
  const auto& s = q_[q];
  // A TAP fd is not an eventfd: POLLIN is the frame itself, Rx reads it.
  if (!s->gone.load(std::memory_order_relaxed)) fds->push_back({s->fd.get(), false});
  return s->kept.load(std::memory_order_relaxed) > 0;
}

std::string TapPort::State() const {
  for (const auto& s : q_) {
    if (s->gone.load(std::memory_order_relaxed)) return "down";
  }
  UniqueFd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  ifreq ifr = IfReq(ifname_);
  if (!sock) return "unknown";
  // ENODEV: the interface was moved into another network namespace (our fds still work).
  if (::ioctl(sock.get(), SIOCGIFFLAGS, &ifr) < 0) return errno == ENODEV ? "up (other netns)" : "unknown";
  return (ifr.ifr_flags & IFF_UP) ? "up" : "down";
}

PortStats TapPort::Stats() const {
  PortStats st = SumQueueStats(q_);
  for (const auto& s : q_) st.connected &= !s->gone.load(std::memory_order_relaxed);
  return st;
}

uint64_t TapPort::DropsFor(DropReason r) const { return SumQueueDrops(q_, r); }

PortKind TapPortKind() {
  PortKind k;
  k.name = "tap";
  k.summary =
      "the host kernel's network stack (docs/tap.md): nicmuxd creates TAP interface IF, multi-queue with "
      "queues>1, gives it the address and brings it up (unless `down`), and removes it at exit.";
  k.max_queues = TapPort::kMaxQueues;
  k.options = {
      {"ifname", OptionType::kString, "IF", "NAME", "the interface's name"},
      {"queues", OptionType::kUInt, "N", "1", "queues, 1..8", 1, TapPort::kMaxQueues},
      {"address", OptionType::kString, "A.B.C.D/LEN", "", "an IPv4 address given to the interface"},
      {"down", OptionType::kFlag, "", "", "leave the interface down"},
      {"up", OptionType::kFlag, "", "", "bring the interface up (the default)"},
      {"offloads", OptionType::kOnOff, "on|off", "on",
       "checksum offload and TSO both ways; off: TUNSETOFFLOAD 0, whole checksummed frames only"},
  };
  auto ifname = [](const PortSpec& s) { return s.Has("ifname") ? s.options.at("ifname") : s.name; };
  k.claims = [ifname](const PortSpec& s) { return "interface " + ifname(s); };
  k.hands_over = true;
  k.create = [ifname](const PortSpec& s, const PortContext& c) -> Result<std::unique_ptr<Port>> {
    TapPortOptions o;
    o.name = s.name;
    o.ifname = ifname(s);
    NICMUX_TRY_ASSIGN(q, s.UInt("queues", 1, TapPort::kMaxQueues, 1));
    o.queues = static_cast<uint32_t>(q);
    if (s.Has("address")) o.address = s.options.at("address");
    o.up = !s.Has("down");
    o.mtu = c.mtu;
    NICMUX_TRY_ASSIGN(offloads, s.OnOff("offloads", true));
    o.offloads = offloads;
    NICMUX_TRY_ASSIGN(p, TapPort::Create(o, c.handover));
    NICMUX_LOG(kInfo, "port %s: TAP interface %s%s", s.name.c_str(), o.ifname.c_str(), c.handover ? " (handed over)" : "");
    return std::unique_ptr<Port>(std::move(p));
  };
  return k;
}

}  // namespace nicmux
