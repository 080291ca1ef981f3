#include "port/af_xdp_port.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/log.h"
#include "base/numa.h"
#include "packet/offload_ops.h"
#include "port/af_xdp_fill.h"
#include "port/af_xdp_tx_metadata.h"
#include "port/xsk_uapi.h"

namespace nicmux {
namespace {

std::string Errno(int e) { return std::strerror(e < 0 ? -e : e); }

// The XDP program: r2 = ctx->rx_queue_index; return bpf_redirect_map(&xsks, r2, XDP_PASS).
// A queue without a socket in the map passes its frames to the kernel's stack.
UniqueFd LoadProgram(int map_fd, std::string* log) {
  bpf_insn p[6] = {};
  p[0].code = BPF_LDX | BPF_W | BPF_MEM;  // r2 = *(u32 *)(r1 + offsetof(xdp_md, rx_queue_index))
  p[0].dst_reg = BPF_REG_2;
  p[0].src_reg = BPF_REG_1;
  p[0].off = offsetof(xdp_md, rx_queue_index);
  p[1].code = BPF_LD | BPF_DW | BPF_IMM;  // r1 = the map (a 16-byte instruction)
  p[1].dst_reg = BPF_REG_1;
  p[1].src_reg = BPF_PSEUDO_MAP_FD;
  p[1].imm = map_fd;
  p[3].code = BPF_ALU64 | BPF_MOV | BPF_K;  // r3 = XDP_PASS: the action when the lookup fails
  p[3].dst_reg = BPF_REG_3;
  p[3].imm = XDP_PASS;
  p[4].code = BPF_JMP | BPF_CALL;
  p[4].imm = BPF_FUNC_redirect_map;
  p[5].code = BPF_JMP | BPF_EXIT;
  char buf[4096] = {};
  LIBBPF_OPTS(bpf_prog_load_opts, opts);
  opts.log_level = 1;
  opts.log_size = sizeof buf;
  opts.log_buf = buf;
  const int fd = bpf_prog_load(BPF_PROG_TYPE_XDP, AfXdpPort::kProgName, "GPL", p, 6, &opts);
  if (fd < 0) *log = std::string(buf).substr(0, 300);
  return UniqueFd(fd < 0 ? -1 : fd);
}

// The name of the XDP program attached to ifindex in any mode, or "" when there is none.
std::string AttachedProgram(int ifindex, uint32_t* id_out) {
  uint32_t id = 0;
  *id_out = 0;
  if (bpf_xdp_query_id(ifindex, 0, &id) != 0 || id == 0) return "";
  *id_out = id;
  const int fd = bpf_prog_get_fd_by_id(id);
  if (fd < 0) return "(id " + std::to_string(id) + ")";
  bpf_prog_info info = {};
  uint32_t len = sizeof info;
  std::string name = "(id " + std::to_string(id) + ")";
  if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) name = info.name;
  ::close(fd);
  return name;
}

}  // namespace

AfXdpPort::Queue::~Queue() {
  for (const Map& m : maps) {
    if (m.addr) ::munmap(m.addr, m.len);
  }
  // Closing the socket unbinds it, deregisters its UMEM and takes it out of the XSKMAP.
}

namespace {

// Maps one of the socket's rings (n entries of `elem` bytes) and points r at it. Ring is
// xsk_ring_prod or xsk_ring_cons (the same layout); a producer ring starts all free.
template <typename Ring>
Result<void> MapRing(int fd, uint64_t pgoff, const xdp_ring_offset& off, uint32_t n, size_t elem, bool producer,
                     Ring* r, void** addr, size_t* len) {
  *len = off.desc + n * elem;
  void* m = ::mmap(nullptr, *len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, static_cast<off_t>(pgoff));
  if (m == MAP_FAILED) return Error::FromErrno("mmap");
  *addr = m;
  auto* base = static_cast<std::byte*>(m);
  r->producer = reinterpret_cast<uint32_t*>(base + off.producer);
  r->consumer = reinterpret_cast<uint32_t*>(base + off.consumer);
  r->flags = reinterpret_cast<uint32_t*>(base + off.flags);
  r->ring = base + off.desc;
  r->mask = n - 1;
  r->size = n;
  r->cached_prod = *r->producer;
  // (libxdp's convention, which its inline accessors expect: a producer's cached_cons runs
  // `size` ahead of the real consumer.)
  r->cached_cons = *r->consumer + (producer ? n : 0);
  return Ok();
}

// Points r's cached indexes at the shared ones as they are now (libxdp's convention, as
// MapRing): a live upgrade's new process mapped the rings while the old one still moved them.
template <typename Ring>
void SyncRing(Ring* r, bool producer) {
  r->cached_prod = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
  r->cached_cons = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE) + (producer ? r->size : 0);
}

// Calls f(index) for each entry queued in r (between its consumer and its producer).
template <typename Ring, typename F>
void ForEachQueued(const Ring& r, F f) {
  const uint32_t prod = __atomic_load_n(r.producer, __ATOMIC_ACQUIRE);
  const uint32_t cons = __atomic_load_n(r.consumer, __ATOMIC_ACQUIRE);
  const uint32_t n = std::min(prod - cons, r.size);
  for (uint32_t i = 0; i < n; ++i) f((cons + i) & r.mask);
}

}  // namespace

Result<void> AfXdpPort::MapRings(Queue& q, const std::string& what) {
  xdp_mmap_offsets off = {};
  socklen_t olen = sizeof off;
  if (::getsockopt(q.fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &olen) != 0) return Error::FromErrno(what + ": XDP_MMAP_OFFSETS");
  if (olen != sizeof off) return Error(what + ": XDP_MMAP_OFFSETS without ring flags (a kernel before 5.4)");
  NICMUX_TRY(MapRing(q.fd, XDP_UMEM_PGOFF_FILL_RING, off.fr, opt_.ring, sizeof(uint64_t), true, &q.fill, &q.maps[0].addr,
                     &q.maps[0].len));
  NICMUX_TRY(MapRing(q.fd, XDP_UMEM_PGOFF_COMPLETION_RING, off.cr, opt_.ring, sizeof(uint64_t), false, &q.comp,
                     &q.maps[1].addr, &q.maps[1].len));
  NICMUX_TRY(MapRing(q.fd, XDP_PGOFF_RX_RING, off.rx, opt_.ring, sizeof(xdp_desc), false, &q.rx, &q.maps[2].addr,
                     &q.maps[2].len));
  NICMUX_TRY(MapRing(q.fd, XDP_PGOFF_TX_RING, off.tx, opt_.ring, sizeof(xdp_desc), true, &q.tx, &q.maps[3].addr,
                     &q.maps[3].len));
  return Ok();
}

Result<void> AfXdpPort::OpenQueue(Queue& q, uint32_t i, bool zero_copy, uint32_t meta_len, int* umem_errno) {
  const std::string what = "port " + opt_.name + ": interface " + opt_.ifname + ": queue " + std::to_string(i);
  q.sock = UniqueFd(::socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0));
  if (q.sock.get() < 0) return Error::FromErrno(what + ": cannot create an AF_XDP socket");
  q.fd = q.sock.get();
  const uint64_t per_queue = uint64_t{2} * opt_.ring * kFrameBytes;
  xsk::UmemReg mr = {};
  mr.addr = reinterpret_cast<uintptr_t>(umem_area_.data() + q.base);
  mr.len = per_queue;
  mr.chunk_size = kFrameBytes;
  mr.headroom = 0;
  *umem_errno = 0;
  if (meta_len) {
    mr.flags = xsk::kUmemTxMetadataLen;
    mr.tx_metadata_len = meta_len;
    if (::setsockopt(q.fd, SOL_XDP, XDP_UMEM_REG, &mr, sizeof mr) != 0) {
      *umem_errno = errno;  // a kernel without TX metadata: register without it
      mr.flags = 0;
      mr.tx_metadata_len = 0;
    }
  }
  if ((!meta_len || *umem_errno) && ::setsockopt(q.fd, SOL_XDP, XDP_UMEM_REG, &mr, sizeof mr) != 0) {
    return Error::FromErrno(what + ": cannot register the UMEM");
  }
  const int n = static_cast<int>(opt_.ring);
  for (int opt : {XDP_UMEM_FILL_RING, XDP_UMEM_COMPLETION_RING, XDP_RX_RING, XDP_TX_RING}) {
    if (::setsockopt(q.fd, SOL_XDP, opt, &n, sizeof n) != 0) return Error::FromErrno(what + ": cannot size its rings");
  }
  NICMUX_TRY(MapRings(q, what));
  sockaddr_xdp sa = {};
  sa.sxdp_family = AF_XDP;
  sa.sxdp_flags = static_cast<uint16_t>((zero_copy ? XDP_ZEROCOPY : XDP_COPY) | XDP_USE_NEED_WAKEUP);
  sa.sxdp_ifindex = static_cast<uint32_t>(ifindex_);
  sa.sxdp_queue_id = i;
  if (::bind(q.fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    const int e = errno;
    return Error(what + ": cannot bind an AF_XDP socket (" + (zero_copy ? "zero-copy" : "copy") + " mode): " + Errno(e) +
                     (e == EINVAL ? " (has the interface that many queues?)" : ""),
                 e);
  }
  return Ok();
}

Result<std::unique_ptr<AfXdpPort>> AfXdpPort::Create(const AfXdpPortOptions& o, HandoverRecord* handover) {
  std::unique_ptr<AfXdpPort> p(new AfXdpPort(o));
  NICMUX_TRY(p->CheckOptions());
  if (handover) {
    p->owns_program_ = false;
    auto r = p->Adopt(*handover);
    if (!r) return r.error().Wrap("port " + o.name + ": handover");
    return p;
  }
  NICMUX_TRY(p->Open());
  return p;
}

Result<void> AfXdpPort::CheckOptions() {
  const std::string what = "port " + opt_.name + ": interface " + opt_.ifname;
  if (opt_.mode != "auto" && opt_.mode != "zero-copy" && opt_.mode != "native" && opt_.mode != "generic") {
    return Error("port " + opt_.name + ": mode=" + opt_.mode + ": expected auto, zero-copy, native or generic");
  }
  if (opt_.tx_csum != "auto" && opt_.tx_csum != "off") {
    return Error("port " + opt_.name + ": tx_csum=" + opt_.tx_csum + ": expected auto or off");
  }
  // Everything that can be checked without touching the interface first.
  ifindex_ = static_cast<int>(if_nametoindex(opt_.ifname.c_str()));
  if (ifindex_ == 0) return Error("port " + opt_.name + ": no interface named " + opt_.ifname);
  node_ = NodeOfNetdev(opt_.ifname);
  {
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq r = {};
    std::strncpy(r.ifr_name, opt_.ifname.c_str(), IFNAMSIZ - 1);
    if (s.get() < 0 || ::ioctl(s.get(), SIOCGIFMTU, &r) != 0) return Error(what + ": cannot read its MTU: " + Errno(errno));
    mtu_ = static_cast<uint32_t>(r.ifr_mtu);
  }
  if (mtu_ + 18 > kMaxFrameBytes) {
    return Error(what + ": MTU " + std::to_string(mtu_) + " does not fit a " + std::to_string(kFrameBytes) +
                 "-byte UMEM frame (at most " + std::to_string(kMaxFrameBytes - 18) + ")");
  }
  return Ok();
}

Result<void> AfXdpPort::Open() {
  const std::string what = "port " + opt_.name + ": interface " + opt_.ifname;
  uint32_t old_id = 0;
  const std::string old = AttachedProgram(ifindex_, &old_id);
  if (!old.empty() && old != kProgName) {
    return Error(what + " has XDP program '" + old + "' attached (id " + std::to_string(old_id) +
                 "); nicmuxd does not replace another program");
  }
  const int map = bpf_map_create(BPF_MAP_TYPE_XSKMAP, "nicmux_xsks", 4, 4, 64, nullptr);
  if (map < 0) {
    return Error("port " + opt_.name + ": cannot create an XSKMAP: " + Errno(errno) +
                 (errno == EPERM ? " (XDP needs root, or CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW and CAP_IPC_LOCK)" : ""));
  }
  map_fd_ = UniqueFd(map);
  std::string log;
  prog_fd_ = LoadProgram(map_fd_.get(), &log);
  if (prog_fd_.get() < 0) {
    return Error("port " + opt_.name + ": the kernel refused the XDP program: " + Errno(errno) +
                 (log.empty() ? "" : " (" + log + ")"));
  }
  const uint64_t per_queue = uint64_t{2} * opt_.ring * kFrameBytes;
  // The UMEM in a memfd, so that a live upgrade's new process can map the same pages.
  umem_fd_ = UniqueFd(::memfd_create("nicmux-umem", MFD_CLOEXEC));
  if (!umem_fd_.valid()) return Error::FromErrno("port " + opt_.name + ": memfd for the UMEM");
  if (::ftruncate(umem_fd_.get(), static_cast<off_t>(per_queue * opt_.queues)) != 0) {
    return Error::FromErrno("port " + opt_.name + ": sizing the UMEM (" + std::to_string(per_queue * opt_.queues) + " bytes)");
  }
  NICMUX_TRY_ASSIGN(area, MappedRegion::MapFd(umem_fd_.get(), 0, per_queue * opt_.queues));
  umem_area_ = std::move(area);

  // Now the interface: attach (native first unless told), then one socket per queue.
  const bool want_native = opt_.mode != "generic";
  if (!old.empty()) {
    NICMUX_LOG(kWarning, "port %s: replacing XDP program %s (id %u) that an earlier nicmuxd left on %s",
               opt_.name.c_str(), old.c_str(), old_id, opt_.ifname.c_str());
    uint32_t id = 0;
    for (uint32_t f : {XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE}) {
      if (bpf_xdp_query_id(ifindex_, static_cast<int>(f), &id) == 0 && id == old_id) bpf_xdp_detach(ifindex_, f, nullptr);
    }
  }
  int err = 0;
  if (want_native) {
    err = bpf_xdp_attach(ifindex_, prog_fd_.get(), XDP_FLAGS_DRV_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST, nullptr);
    if (err == 0) attach_flags_ = XDP_FLAGS_DRV_MODE;
  }
  if (attach_flags_ == 0 && opt_.mode != "native" && opt_.mode != "zero-copy") {
    err = bpf_xdp_attach(ifindex_, prog_fd_.get(), XDP_FLAGS_SKB_MODE | XDP_FLAGS_UPDATE_IF_NOEXIST, nullptr);
    if (err == 0) attach_flags_ = XDP_FLAGS_SKB_MODE;
  }
  if (attach_flags_ == 0) return Error(what + ": cannot attach the XDP program: " + Errno(err));
  // What the interface says of itself (read-only; the evidence for TX metadata, and shown).
  const Result<NetdevXdpInfo> netdev = QueryNetdev(static_cast<uint32_t>(ifindex_));
  xdp_features_ = netdev ? XdpFeatureNames(netdev->xdp_features) : "unknown (" + netdev.error().message() + ")";
  xsk_features_ = netdev ? (netdev->has_xsk_features ? XskFeatureNames(netdev->xsk_features) : "unknown (not reported)")
                         : "unknown (" + netdev.error().message() + ")";
  const uint32_t meta_len = opt_.tx_csum == "off" ? 0 : kTxMetadataLen;
  int umem_errno = 0;
  bool zero_copy = attach_flags_ == XDP_FLAGS_DRV_MODE && opt_.mode != "native";
  for (uint32_t i = 0; i < opt_.queues; ++i) {
    auto q = std::make_unique<Queue>();
    q->base = i * per_queue;
    int qerr = 0;
    auto opened = OpenQueue(*q, i, zero_copy, meta_len, &qerr);
    if (!opened && zero_copy && opt_.mode == "auto") {  // the driver has no zero-copy: copy mode
      zero_copy = false;
      q = std::make_unique<Queue>();
      q->base = i * per_queue;
      opened = OpenQueue(*q, i, zero_copy, meta_len, &qerr);
    }
    if (!opened) return opened.error();
    if (i == 0) {
      umem_errno = qerr;
      tx_headroom_ = meta_len && !qerr ? meta_len : 0;
    } else if ((meta_len && !qerr ? meta_len : 0) != tx_headroom_) {
      return Error(what + ": queue " + std::to_string(i) + ": its UMEM took XDP_UMEM_TX_METADATA_LEN differently from queue 0's");
    }
    const uint32_t key = i;
    if (bpf_map_update_elem(map_fd_.get(), &key, &q->fd, 0) != 0) {
      const int e = errno;
      return Error(what + ": queue " + std::to_string(i) + ": cannot add the socket to the XSKMAP: " + Errno(e));
    }
    // The first `ring` frames receive (into the fill ring), the next `ring` send.
    uint32_t idx = 0;
    NICMUX_CHECK(xsk_ring_prod__reserve(&q->fill, opt_.ring, &idx) == opt_.ring);
    for (uint32_t f = 0; f < opt_.ring; ++f) *xsk_ring_prod__fill_addr(&q->fill, idx + f) = uint64_t{f} * kFrameBytes;
    xsk_ring_prod__submit(&q->fill, opt_.ring);
    q->free_tx.reserve(opt_.ring);
    q->refill.reserve(opt_.ring);
    for (uint32_t f = 0; f < opt_.ring; ++f) q->free_tx.push_back(uint64_t{opt_.ring + f} * kFrameBytes);
    q_.push_back(std::move(q));
  }
  mode_ = std::string(zero_copy ? "zero-copy" : "copy") +
          (attach_flags_ == XDP_FLAGS_DRV_MODE ? " (native XDP)" : " (generic XDP)");
  // Checksums through TX metadata, where the kernel and the device in this mode honour them.
  const Result<bool> hw_csum = zero_copy || !meta_len || umem_errno ? Result<bool>(false) : TxChecksumIpGeneric(opt_.ifname);
  TxCsumInputs in;
  in.ifname = opt_.ifname;
  in.option_off = opt_.tx_csum == "off";
  in.umem_errno = umem_errno;
  in.zero_copy = zero_copy;
  in.netdev = &netdev;
  in.hw_csum = &hw_csum;
  const TxCsumDecision d = DecideTxChecksum(in);
  tx_csum_meta_ = d.use;
  tx_metadata_ = d.detail;
  tx_metadata_path_ = d.path;
  SetXdpCaps();
  NICMUX_LOG(kInfo, "port %s: AF_XDP on %s, %u queue(s), %s, ring %u, tx_metadata: %s%s", opt_.name.c_str(),
             opt_.ifname.c_str(), opt_.queues, mode_.c_str(), opt_.ring, tx_metadata_.c_str(),
             tx_csum_meta_ ? (" (" + tx_metadata_path_ + ")").c_str() : "");
  return Ok();
}

void AfXdpPort::SetXdpCaps() {
  PortCaps c;
  // AF_XDP takes whole frames; Tx sums a partial checksum in its copy, or hands it to the
  // kernel as TX metadata (kCsum: the switch passes partial checksums through).
  c.offloads = PortCaps::kCsumOnCopy | (tx_csum_meta_ ? PortCaps::kCsum : 0);
  c.mtu = static_cast<uint16_t>(mtu_);
  c.max_frame = kMaxFrameBytes;
  SetCaps(c);
}

// --------------------------------------------------------------------------- live upgrade

namespace {

constexpr const char* kModes[] = {"zero-copy (native XDP)", "copy (native XDP)", "copy (generic XDP)"};

// A set of a queue's frames (`first` up to `first + ring`, by address) as a bitmap in hex, bit
// i for frame first + i (4 bits a digit, lowest first): ring / 4 digits, in any order the
// frames came. The free send frames (first = ring) and the receive frames owed to the fill
// ring (first = 0) go over this way.
std::string FrameBitmap(const std::vector<uint64_t>& addrs, uint32_t first, uint32_t ring, uint32_t frame_bytes) {
  std::string bits(ring / 4, '0');
  for (uint64_t a : addrs) {
    const uint64_t i = a / frame_bytes - first;
    const int nib = bits[i / 4] <= '9' ? bits[i / 4] - '0' : bits[i / 4] - 'a' + 10;
    bits[i / 4] = "0123456789abcdef"[nib | (1 << (i % 4))];
  }
  return bits;
}

// The frames of such a bitmap, highest first (popped from the back, the lowest go first).
// UNTRUSTED (the old process): exactly ring / 4 hex digits.
Result<std::vector<uint64_t>> ParseFrameBitmap(const std::string& bits, uint32_t first, uint32_t ring,
                                               uint32_t frame_bytes, const std::string& what) {
  if (bits.size() != ring / 4) return Error(what + " is not " + std::to_string(ring / 4) + " hex digits");
  std::vector<uint64_t> frames;
  frames.reserve(ring);
  for (size_t d = bits.size(); d-- > 0;) {
    const char c = bits[d];
    const int nib = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (nib < 0) return Error(what + " has '" + std::string(1, c) + "'");
    for (int b = 3; b >= 0; --b) {
      if (nib & (1 << b)) frames.push_back((uint64_t{first} + d * 4 + static_cast<uint64_t>(b)) * frame_bytes);
    }
  }
  return frames;
}

}  // namespace

Result<void> AfXdpPort::Export(HandoverRecord* out) {
  out->Set("x.queues", q_.size());
  out->Set("x.ring", opt_.ring);
  out->Set("x.attach_flags", attach_flags_);
  out->SetText("x.mode", mode_);
  out->Set("x.tx_headroom", tx_headroom_);
  out->Set("x.tx_csum_meta", tx_csum_meta_ ? 1 : 0);
  out->SetText("x.tx_metadata", tx_metadata_);
  out->SetText("x.tx_metadata_path", tx_metadata_path_);
  out->SetText("x.xdp_features", xdp_features_);
  out->SetText("x.xsk_features", xsk_features_);
  NICMUX_TRY(out->SetFd("x.umem", umem_fd_.get()));
  NICMUX_TRY(out->SetFd("x.map", map_fd_.get()));
  NICMUX_TRY(out->SetFd("x.prog", prog_fd_.get()));
  for (uint32_t i = 0; i < q_.size(); ++i) NICMUX_TRY(out->SetFd("x.q." + std::to_string(i) + ".fd", q_[i]->fd));
  return Ok();
}

Result<void> AfXdpPort::Adopt(HandoverRecord& in) {
  const std::string what = "interface " + opt_.ifname;
  // UNTRUSTED (the old process, maybe another build): every value as this port's spec and the
  // interface say, every fd what it claims to be; nothing on the interface or in the rings
  // changes here (the old process still forwards through them).
  NICMUX_TRY_ASSIGN(queues, in.Get("x.queues", Port::kMaxQueues));
  NICMUX_TRY_ASSIGN(ring, in.Get("x.ring", 8192));
  if (queues != opt_.queues || ring != opt_.ring) {
    return Error("the old port had " + std::to_string(queues) + " queue(s) of ring " + std::to_string(ring) +
                 ", its spec here says " + std::to_string(opt_.queues) + " of " + std::to_string(opt_.ring));
  }
  NICMUX_TRY_ASSIGN(flags, in.Get("x.attach_flags", UINT32_MAX));
  if (flags != XDP_FLAGS_DRV_MODE && flags != XDP_FLAGS_SKB_MODE) return Error("x.attach_flags " + std::to_string(flags));
  NICMUX_TRY_ASSIGN(mode, in.GetText("x.mode"));
  if (std::find(std::begin(kModes), std::end(kModes), mode) == std::end(kModes)) return Error("x.mode \"" + mode + "\"");
  NICMUX_TRY_ASSIGN(headroom, in.Get("x.tx_headroom", kTxMetadataLen));
  NICMUX_TRY_ASSIGN(meta, in.Get("x.tx_csum_meta", 1));
  if (headroom != 0 && headroom != kTxMetadataLen) return Error("x.tx_headroom " + std::to_string(headroom));
  if (meta && !headroom) return Error("x.tx_csum_meta without a TX metadata area");
  mode_ = mode;
  tx_headroom_ = static_cast<uint32_t>(headroom);
  tx_csum_meta_ = meta != 0;
  NICMUX_TRY_ASSIGN(tx_metadata, in.GetText("x.tx_metadata"));
  NICMUX_TRY_ASSIGN(tx_metadata_path, in.GetText("x.tx_metadata_path"));
  NICMUX_TRY_ASSIGN(xdp_features, in.GetText("x.xdp_features"));
  NICMUX_TRY_ASSIGN(xsk_features, in.GetText("x.xsk_features"));
  tx_metadata_ = tx_metadata;
  tx_metadata_path_ = tx_metadata_path;
  xdp_features_ = xdp_features;
  xsk_features_ = xsk_features;

  // The program: the one attached to the interface now, in the mode the old port attached it.
  NICMUX_TRY_ASSIGN(prog, in.TakeFd("x.prog"));
  bpf_prog_info pinfo = {};
  uint32_t plen = sizeof pinfo;
  if (bpf_obj_get_info_by_fd(prog.get(), &pinfo, &plen) != 0 || pinfo.type != BPF_PROG_TYPE_XDP) {
    return Error("x.prog is not an XDP program");
  }
  uint32_t attached = 0;
  if (bpf_xdp_query_id(ifindex_, static_cast<int>(flags), &attached) != 0 || attached != pinfo.id) {
    return Error("the XDP program on " + opt_.ifname + " (id " + std::to_string(attached) +
                 ") is not the one handed over (id " + std::to_string(pinfo.id) + ")");
  }
  NICMUX_TRY_ASSIGN(map, in.TakeFd("x.map"));
  bpf_map_info minfo = {};
  uint32_t mlen = sizeof minfo;
  if (bpf_obj_get_info_by_fd(map.get(), &minfo, &mlen) != 0 || minfo.type != BPF_MAP_TYPE_XSKMAP) {
    return Error("x.map is not an XSKMAP");
  }
  prog_fd_ = std::move(prog);
  map_fd_ = std::move(map);
  attach_flags_ = static_cast<uint32_t>(flags);

  // The UMEM: the same pages, mapped here.
  const uint64_t per_queue = uint64_t{2} * opt_.ring * kFrameBytes;
  NICMUX_TRY_ASSIGN(umem, in.TakeFd("x.umem"));
  struct stat st = {};
  if (::fstat(umem.get(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != per_queue * opt_.queues) {
    return Error("x.umem is not a memfd of " + std::to_string(per_queue * opt_.queues) + " bytes");
  }
  NICMUX_TRY_ASSIGN(area, MappedRegion::MapFd(umem.get(), 0, per_queue * opt_.queues));
  umem_fd_ = std::move(umem);
  umem_area_ = std::move(area);

  for (uint32_t i = 0; i < opt_.queues; ++i) {
    const std::string qwhat = what + ": queue " + std::to_string(i);
    auto q = std::make_unique<Queue>();
    q->base = i * per_queue;
    NICMUX_TRY_ASSIGN(fd, in.TakeFd("x.q." + std::to_string(i) + ".fd"));
    int domain = 0;
    socklen_t dlen = sizeof domain;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_DOMAIN, &domain, &dlen) != 0 || domain != AF_XDP) {
      return Error(qwhat + ": x.q." + std::to_string(i) + ".fd is not an AF_XDP socket");
    }
    q->sock = std::move(fd);
    q->fd = q->sock.get();
    NICMUX_TRY(MapRings(*q, qwhat));  // indexes as of now; ImportPositions takes them again
    q->free_tx.reserve(opt_.ring);
    q->refill.reserve(opt_.ring);
    q_.push_back(std::move(q));
  }
  SetXdpCaps();
  return Ok();
}

Result<void> AfXdpPort::ExportPositions(HandoverRecord* out) {
  for (uint32_t i = 0; i < q_.size(); ++i) {
    Queue& q = *q_[i];
    const std::string k = "x.q." + std::to_string(i) + ".";
    Refill(q, nullptr, 0);  // (what the fill ring has room for by now; the rest goes over)
    if (q.n != 0) return Error("port " + name() + ": queue " + std::to_string(i) + ": a receive batch in flight");
    // The frames this side owns; the rest are the kernel's (fill, RX, TX and completion rings,
    // whose indexes are in the shared mappings the new process reads itself).
    out->SetText(k + "free", FrameBitmap(q.free_tx, opt_.ring, opt_.ring, kFrameBytes));
    out->SetText(k + "refill", FrameBitmap(q.refill, 0, opt_.ring, kFrameBytes));
    out->Set(k + "held", q.nheld);
    for (uint32_t h = 0; h < q.nheld; ++h) {
      out->Set(k + "held." + std::to_string(h) + ".addr", q.held_addr[h]);
      out->Set(k + "held." + std::to_string(h) + ".len", q.held_len[h]);
    }
  }
  return Ok();
}

Result<void> AfXdpPort::ImportPositions(HandoverRecord& in) {
  for (uint32_t i = 0; i < q_.size(); ++i) {
    Queue& q = *q_[i];
    const std::string k = "x.q." + std::to_string(i) + ".";
    const std::string what = "port " + name() + ": handover: queue " + std::to_string(i);
    // UNTRUSTED (the old process): a bitmap of exactly the send half; held frames in the
    // receive half, each once, each within its frame.
    NICMUX_TRY_ASSIGN(bits, in.GetText(k + "free"));
    NICMUX_TRY_ASSIGN(free_tx, ParseFrameBitmap(bits, opt_.ring, opt_.ring, kFrameBytes, what + ": " + k + "free"));
    // (A build before the owed refills sent none.)
    std::vector<uint64_t> refill;
    if (in.Has(k + "refill")) {
      NICMUX_TRY_ASSIGN(rbits, in.GetText(k + "refill"));
      NICMUX_TRY_ASSIGN(r, ParseFrameBitmap(rbits, 0, opt_.ring, kFrameBytes, what + ": " + k + "refill"));
      refill = std::move(r);
    }
    NICMUX_TRY_ASSIGN(held, in.Get(k + "held", kBurst));
    std::array<uint64_t, kBurst> haddr{};
    std::array<uint32_t, kBurst> hlen{};
    const uint64_t rx_half = uint64_t{opt_.ring} * kFrameBytes;
    // The receive frames this side owns: owed to the fill ring or held, each once.
    std::vector<uint8_t> mine(opt_.ring, 0);
    for (uint64_t a : refill) mine[a / kFrameBytes] = 1;
    for (uint32_t h = 0; h < held; ++h) {
      NICMUX_TRY_ASSIGN(a, in.Get(k + "held." + std::to_string(h) + ".addr", rx_half - 1));
      NICMUX_TRY_ASSIGN(len, in.Get(k + "held." + std::to_string(h) + ".len", kFrameBytes));
      const uint64_t frame = a & ~uint64_t{kFrameBytes - 1};
      if (len == 0 || (a - frame) + len > kFrameBytes) return Error(what + ": held frame " + std::to_string(h) + " out of its frame");
      if (mine[frame / kFrameBytes]) return Error(what + ": frame " + std::to_string(frame) + " held twice (or held and owed to the fill ring)");
      mine[frame / kFrameBytes] = 1;
      haddr[h] = a;
      hlen[h] = static_cast<uint32_t>(len);
    }
    // Neither a held or owed frame in the fill or RX ring nor a free send frame in the TX or
    // completion ring: the kernel's and ours at once, it would be refilled twice (an abort) or
    // sent while still being sent.
    std::vector<uint8_t> is_free(opt_.ring, 0);
    for (uint64_t a : free_tx) is_free[a / kFrameBytes - opt_.ring] = 1;
    auto held_frame = [&](uint64_t addr) {
      const uint64_t i = addr / kFrameBytes;
      return i < opt_.ring && mine[i];
    };
    auto free_frame = [&](uint64_t addr) {
      const uint64_t i = addr / kFrameBytes;
      return i >= opt_.ring && i < 2 * uint64_t{opt_.ring} && is_free[i - opt_.ring];
    };
    bool clash = false;
    ForEachQueued(q.fill, [&](uint32_t i) { clash |= held_frame(static_cast<const uint64_t*>(q.fill.ring)[i]); });
    ForEachQueued(q.rx, [&](uint32_t i) { clash |= held_frame(static_cast<const xdp_desc*>(q.rx.ring)[i].addr); });
    ForEachQueued(q.tx, [&](uint32_t i) { clash |= free_frame(static_cast<const xdp_desc*>(q.tx.ring)[i].addr); });
    ForEachQueued(q.comp, [&](uint32_t i) { clash |= free_frame(static_cast<const uint64_t*>(q.comp.ring)[i]); });
    if (clash) return Error(what + ": a frame handed over as ours is in one of the kernel's rings");
    q.free_tx = std::move(free_tx);
    q.refill = std::move(refill);
    q.refill.reserve(opt_.ring);
    q.refill_seen.store(static_cast<uint32_t>(q.refill.size()), std::memory_order_relaxed);
    q.held_addr = haddr;
    q.held_len = hlen;
    q.nheld = static_cast<uint32_t>(held);
    q.nheld_seen.store(q.nheld, std::memory_order_relaxed);
    // The rings' indexes now: the old process stopped between rounds, everything it reserved
    // submitted and everything it peeked released.
    SyncRing(&q.fill, true);
    SyncRing(&q.comp, false);
    SyncRing(&q.rx, false);
    SyncRing(&q.tx, true);
  }
  return Ok();
}

AfXdpPort::~AfXdpPort() {
  q_.clear();  // the sockets first, then the program
  if (attach_flags_ != 0 && owns_program_) {
    // Only if the program there is still ours.
    LIBBPF_OPTS(bpf_xdp_attach_opts, o, .old_prog_fd = prog_fd_.get());
    if (bpf_xdp_detach(ifindex_, attach_flags_ | XDP_FLAGS_REPLACE, &o) != 0) {
      NICMUX_LOG(kWarning, "port %s: could not detach the XDP program from %s", name().c_str(), opt_.ifname.c_str());
    }
  }
}

void AfXdpPort::Refill(Queue& q, const uint64_t* addrs, uint32_t n) {
  if (n == 0 && q.refill.empty()) return;
  // The fill ring holds `ring` entries and the queue owns `ring` receive frames, but a slot
  // shows free only once the kernel publishes its consumer index: what finds no room is owed.
  const uint32_t put = FillOrOwe(&q.fill, &q.refill, addrs, n, ~uint64_t{kFrameBytes - 1});
  q.refill_seen.store(static_cast<uint32_t>(q.refill.size()), std::memory_order_relaxed);
  if (put > 0 && xsk_ring_prod__needs_wakeup(&q.fill)) ::recvfrom(q.fd, nullptr, 0, MSG_DONTWAIT, nullptr, nullptr);
}

size_t AfXdpPort::Rx(uint32_t qi, Batch& out, size_t max) {
  Queue& q = *q_[qi];
  NICMUX_DCHECK(out.empty());
  q.n = 0;
  max = std::min<size_t>(max, kBurst);
  // What the switch did not take last time, first and in order.
  for (uint32_t i = 0; i < q.nheld && q.n < max; ++i) {
    PacketRef* p = out.TryPush();
    PacketFromFlat(p, &q.segs[q.n], Frame(q, q.held_addr[i]), q.held_len[i]);
    q.rx_addr[q.n] = q.held_addr[i];
    q.rx_len[q.n++] = q.held_len[i];
  }
  if (q.n < q.nheld) {  // (max smaller than what is held: keep the rest, in order)
    std::memmove(q.held_addr.data(), q.held_addr.data() + q.n, (q.nheld - q.n) * sizeof(uint64_t));
    std::memmove(q.held_len.data(), q.held_len.data() + q.n, (q.nheld - q.n) * sizeof(uint32_t));
    q.nheld -= q.n;
    q.nheld_seen.store(q.nheld, std::memory_order_relaxed);
    return out.size();
  }
  q.nheld = 0;
  q.nheld_seen.store(0, std::memory_order_relaxed);
  uint32_t idx = 0;
  const uint32_t got = xsk_ring_cons__peek(&q.rx, static_cast<uint32_t>(max - q.n), &idx);
  uint64_t bad[kBurst];
  uint32_t nbad = 0;
  const uint64_t span = uint64_t{2} * opt_.ring * kFrameBytes;
  for (uint32_t i = 0; i < got; ++i) {
    const xdp_desc* d = xsk_ring_cons__rx_desc(&q.rx, idx + i);
    // The kernel's descriptor, bounded anyway: within the queue's receive frames.
    const uint64_t frame = d->addr & ~uint64_t{kFrameBytes - 1};
    if (d->len == 0 || frame >= span / 2 || (d->addr - frame) + d->len > kFrameBytes) {
      q.rxc.dropped.Add();
      q.rxc.drops.Add(DropReason::kBadFrame);
      if (frame < span / 2) bad[nbad++] = frame;
      continue;
    }
    PacketRef* p = out.TryPush();
    PacketFromFlat(p, &q.segs[q.n], Frame(q, d->addr), d->len);
    q.rx_addr[q.n] = d->addr;
    q.rx_len[q.n++] = d->len;
  }
  xsk_ring_cons__release(&q.rx, got);
  Refill(q, bad, nbad);
  return out.size();
}

void AfXdpPort::RxDone(uint32_t qi, Batch& batch, size_t sent) {
  Queue& q = *q_[qi];
  uint64_t bytes = 0;
  for (size_t k = 0; k < sent; ++k) bytes += batch[static_cast<uint32_t>(k)].len;
  q.rxc.packets.Add(sent);
  q.rxc.bytes.Add(bytes);
  // The frames not sent are held (before any still held from an Rx that returned only part).
  const uint32_t keep = q.n - static_cast<uint32_t>(sent);
  if (keep > 0) {
    std::memmove(q.held_addr.data() + keep, q.held_addr.data(), q.nheld * sizeof(uint64_t));
    std::memmove(q.held_len.data() + keep, q.held_len.data(), q.nheld * sizeof(uint32_t));
    for (uint32_t i = 0; i < keep; ++i) {
      q.held_addr[i] = q.rx_addr[sent + i];
      q.held_len[i] = q.rx_len[sent + i];
    }
    q.nheld += keep;
    q.nheld_seen.store(q.nheld, std::memory_order_relaxed);
  }
  Refill(q, q.rx_addr.data(), static_cast<uint32_t>(sent));
  q.n = 0;
}

void AfXdpPort::Reclaim(Queue& q) {
  uint32_t idx = 0;
  const uint32_t done = xsk_ring_cons__peek(&q.comp, opt_.ring, &idx);
  // The kernel's completions, bounded anyway (as Rx bounds its descriptors): a frame of the
  // queue's send half, and never more free frames than the half has.
  const uint64_t lo = uint64_t{opt_.ring} * kFrameBytes, hi = 2 * lo;
  for (uint32_t i = 0; i < done; ++i) {
    const uint64_t frame = *xsk_ring_cons__comp_addr(&q.comp, idx + i) & ~uint64_t{kFrameBytes - 1};
    if (frame >= lo && frame < hi && q.free_tx.size() < opt_.ring) q.free_tx.push_back(frame);
  }
  xsk_ring_cons__release(&q.comp, done);
}

size_t AfXdpPort::Tx(uint32_t qi, std::span<const PacketRef* const> in) {
  Queue& q = *q_[qi];
  if (q.free_tx.size() < in.size()) Reclaim(q);
  size_t k = 0;
  uint64_t bytes = 0, sent = 0;
  uint32_t idx = 0;
  const uint32_t want = static_cast<uint32_t>(std::min(in.size(), q.free_tx.size()));
  const uint32_t slots = want ? xsk_ring_prod__reserve(&q.tx, want, &idx) : 0;
  uint32_t used = 0;
  for (; k < in.size(); ++k) {
    const PacketRef& p = *in[k];
    if (p.len > kMaxFrameBytes) {
      q.txc.dropped.Add();
      q.txc.drops.Add(DropReason::kTooBig);
      continue;
    }
    if (p.len < 14) {  // (xconnect passes frames unclassified) not a frame the kernel sends
      q.txc.dropped.Add();
      q.txc.drops.Add(DropReason::kBadFrame);
      continue;
    }
    if (used == slots) break;  // no frame or TX slot: the source keeps the rest
    const uint64_t addr = q.free_tx.back();
    q.free_tx.pop_back();
    // The frame's data after the TX metadata area (when the UMEM has one, every descriptor
    // must leave it: the kernel refuses one whose addr is less than tx_metadata_len into its
    // frame, with or without kTxMetadata).
    std::byte* data = Frame(q, addr) + tx_headroom_;
    uint32_t options = 0;
    if (tx_csum_meta_ && WriteTxChecksumRequest(p.offload, p.len, p.head_len, data - kTxMetadataLen)) {
      CopyPacketTo(p, data);  // the field keeps its pseudo-header seed: the kernel or the device sums
      options = xsk::kTxMetadata;
    } else {
      CopyPacketCompletingTo(p, data);
    }
    xdp_desc* d = xsk_ring_prod__tx_desc(&q.tx, idx + used++);
    d->addr = addr + tx_headroom_;
    d->len = p.len;
    d->options = options;
    bytes += p.len;
    ++sent;
  }
  if (used < slots) q.tx.cached_prod -= slots - used;  // give back the unused slots (not yet submitted)
  if (used) xsk_ring_prod__submit(&q.tx, used);
  // Kick whenever sends are outstanding and the kernel asks: a kick that met a busy device
  // (copy mode, EAGAIN) left descriptors in the ring, which only a later kick sends.
  if ((used || q.free_tx.size() < opt_.ring) && xsk_ring_prod__needs_wakeup(&q.tx)) {
    ::sendto(q.fd, nullptr, 0, MSG_DONTWAIT, nullptr, 0);
  }
  q.txc.packets.Add(sent);
  q.txc.bytes.Add(bytes);
  return k;
}

bool AfXdpPort::ArmNotify(uint32_t qi, std::vector<NotifyFd>* fds) {
  auto& q = q_[qi];
  fds->push_back({q->fd, false});
  const uint32_t prod = __atomic_load_n(q->rx.producer, __ATOMIC_ACQUIRE);
  const uint32_t cons = __atomic_load_n(q->rx.consumer, __ATOMIC_RELAXED);
  return prod != cons || q->nheld_seen.load(std::memory_order_relaxed) > 0 || q->refill_seen.load(std::memory_order_relaxed) > 0;
}

PortStats AfXdpPort::Stats() const { return SumQueueStats(q_); }

uint64_t AfXdpPort::DropsFor(DropReason r) const { return SumQueueDrops(q_, r); }

std::string AfXdpPort::State() const { return "up, " + mode_; }

std::vector<Port::Detail> AfXdpPort::Details() const {
  // The kernel's own counts for the sockets (XDP_STATISTICS, summed over the queues): frames
  // it dropped before they reached us — the RX ring full, or no free frame in the fill ring
  // (the switch held them for a full destination) — and descriptors it refused. A NIC cannot
  // be pushed back: these are where a slow receiver shows. They belong to the sockets, so a
  // live upgrade carries them on.
  xdp_statistics sum = {};
  for (const auto& q : q_) {
    xdp_statistics st = {};
    socklen_t len = sizeof st;
    if (::getsockopt(q->fd, SOL_XDP, XDP_STATISTICS, &st, &len) != 0) continue;
    sum.rx_dropped += st.rx_dropped;
    sum.rx_invalid_descs += st.rx_invalid_descs;
    sum.tx_invalid_descs += st.tx_invalid_descs;
    sum.rx_ring_full += st.rx_ring_full;
    sum.rx_fill_ring_empty_descs += st.rx_fill_ring_empty_descs;
  }
  return {{"xdp_mode", mode_},
          {"interface", opt_.ifname},
          {"interface_mtu", uint64_t{mtu_}},
          {"tx_metadata", tx_metadata_},
          {"kernel_rx_dropped", uint64_t{sum.rx_dropped + sum.rx_ring_full + sum.rx_invalid_descs}},
          {"kernel_rx_ring_full", uint64_t{sum.rx_ring_full}},
          {"kernel_rx_no_frame", uint64_t{sum.rx_dropped}},
          {"kernel_fill_ring_empty", uint64_t{sum.rx_fill_ring_empty_descs}},
          {"kernel_tx_invalid", uint64_t{sum.tx_invalid_descs}}};
}

std::vector<Port::Detail> AfXdpPort::DeviceCaps() const {
  return {{"interface", opt_.ifname},
          {"xdp_mode", mode_},
          {"interface_mtu", uint64_t{mtu_}},
          {"umem_frame", uint64_t{kFrameBytes}},
          {"max_frame", uint64_t{kMaxFrameBytes}},
          // docs/af_xdp.md "Offloads".
          {"tx_metadata", tx_metadata_},
          {"tx_offloads", tx_csum_meta_ ? "checksum through AF_XDP TX metadata (" + tx_metadata_path_ + "); no TSO"
                                        : std::string("none: whole frames, checksums completed in the port's copy")},
          {"tx_metadata_len", uint64_t{tx_headroom_}},
          {"xdp_features", xdp_features_},
          {"xsk_features", xsk_features_}};
}

PortKind AfXdpPortKind() {
  PortKind k;
  k.name = "af_xdp";
  k.summary =
      "a kernel interface (a NIC, a veth) through AF_XDP sockets, one per queue (docs/af_xdp.md): nicmuxd "
      "loads a small XDP program that hands the interface's frames to the switch, and sends the switch's "
      "frames out of it. Needs root (or CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW and CAP_IPC_LOCK); no bpffs.";
  k.max_queues = Port::kMaxQueues;
  k.privileged = true;
  k.options = {
      {"iface", OptionType::kString, "IF", "", "the kernel interface", 0, 0, true},
      {"queues", OptionType::kUInt, "N", "1", "the interface's queues 0..N-1 used, 1..8", 1, Port::kMaxQueues},
      {"mode", OptionType::kString, "MODE", "auto",
       "auto (zero-copy, else native XDP with copies, else generic XDP), zero-copy, native or generic"},
      {"ring", OptionType::kUInt, "N", "2048", "descriptors per AF_XDP ring, a power of two, 64..8192", 64, 8192},
      {"tx_csum", OptionType::kString, "auto|off", "auto",
       "auto: partial checksums go to the kernel as AF_XDP TX metadata where it and the interface, in the "
       "mode the port got, are found to honour them (port caps NAME: tx_metadata); off: the port always "
       "completes them in its copy"},
  };
  // The interface by its index where it exists (an altname is the same interface).
  k.claims = [](const PortSpec& s) {
    const std::string& n = s.options.at("iface");
    const unsigned idx = if_nametoindex(n.c_str());
    return idx ? "interface " + n + " (index " + std::to_string(idx) + ")" : "interface " + n;
  };
  k.hands_over = true;
  k.create = [](const PortSpec& s, const PortContext& c) -> Result<std::unique_ptr<Port>> {
    AfXdpPortOptions o;
    o.name = s.name;
    o.ifname = s.options.at("iface");
    NICMUX_TRY_ASSIGN(q, s.UInt("queues", 1, Port::kMaxQueues, 1));
    o.queues = static_cast<uint32_t>(q);
    if (s.Has("mode")) o.mode = s.options.at("mode");
    if (s.Has("tx_csum")) o.tx_csum = s.options.at("tx_csum");
    NICMUX_TRY_ASSIGN(ring, s.UInt("ring", 64, 8192, 2048));
    if ((ring & (ring - 1)) != 0) return Error("port " + s.name + ": ring=" + std::to_string(ring) + " is not a power of two");
    o.ring = static_cast<uint32_t>(ring);
    NICMUX_TRY_ASSIGN(p, AfXdpPort::Create(o, c.handover));
    if (c.handover) NICMUX_LOG(kInfo, "port %s: AF_XDP on %s (handed over, %s)", s.name.c_str(), o.ifname.c_str(), p->mode().c_str());
    return std::unique_ptr<Port>(std::move(p));
  };
  return k;
}

}  // namespace nicmux
