#include "port/af_xdp_tx_metadata.h"

#include <linux/ethtool.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "base/unique_fd.h"
#include "port/xsk_uapi.h"

namespace nicmux {

static_assert(sizeof(xsk::TxMetadata) == kTxMetadataLen);

namespace {

std::string Names(uint64_t f, std::initializer_list<const char*> names) {
  std::string s;
  uint32_t bit = 0;
  for (const char* n : names) {
    if (f & (uint64_t{1} << bit)) s += (s.empty() ? "" : " ") + std::string(n);
    ++bit;
  }
  for (; bit < 64; ++bit) {
    if (f & (uint64_t{1} << bit)) s += (s.empty() ? "bit" : " bit") + std::to_string(bit);
  }
  return s.empty() ? "none" : s;
}

uint32_t Align4(uint32_t n) { return (n + 3u) & ~3u; }

void PutAttr(std::string* m, uint16_t type, const void* data, uint16_t len) {
  nlattr a{};
  a.nla_len = static_cast<uint16_t>(sizeof a + len);
  a.nla_type = type;
  m->append(reinterpret_cast<const char*>(&a), sizeof a);
  m->append(static_cast<const char*>(data), len);
  m->append(Align4(len) - len, '\0');
}

std::string GenlRequest(uint16_t family, uint8_t cmd, uint8_t version, uint32_t seq, const std::string& attrs) {
  nlmsghdr h{};
  h.nlmsg_len = static_cast<uint32_t>(NLMSG_HDRLEN + GENL_HDRLEN + attrs.size());
  h.nlmsg_type = family;
  h.nlmsg_flags = NLM_F_REQUEST;
  h.nlmsg_seq = seq;
  genlmsghdr g{};
  g.cmd = cmd;
  g.version = version;
  std::string m(reinterpret_cast<const char*>(&h), sizeof h);
  m.append(reinterpret_cast<const char*>(&g), sizeof g);
  return m + attrs;
}

// Calls fn(type, payload) for each generic-netlink message of `seq` in buf (its payload after
// the genl header). An NLMSG_ERROR with an error ends it with that errno; one with 0 is an ack.
// UNTRUSTED: the kernel's bytes, every length bounded by what is left of buf.
template <typename Fn>
Result<void> ForEachMessage(std::span<const std::byte> buf, uint32_t seq, Fn fn) {
  size_t at = 0;
  while (buf.size() - at >= NLMSG_HDRLEN) {
    nlmsghdr h;
    std::memcpy(&h, buf.data() + at, sizeof h);
    if (h.nlmsg_len < NLMSG_HDRLEN || h.nlmsg_len > buf.size() - at) {
      return Error("netlink: a message of " + std::to_string(h.nlmsg_len) + " bytes in " +
                   std::to_string(buf.size() - at) + " left");
    }
    const auto body = buf.subspan(at + NLMSG_HDRLEN, h.nlmsg_len - NLMSG_HDRLEN);
    at += std::min<size_t>(NLMSG_ALIGN(h.nlmsg_len), buf.size() - at);
    if (h.nlmsg_seq != seq) continue;  // (an earlier request's late answer)
    if (h.nlmsg_type == NLMSG_ERROR) {
      int32_t err = 0;
      if (body.size() < sizeof err) return Error("netlink: a truncated error message");
      std::memcpy(&err, body.data(), sizeof err);
      if (err == 0) continue;  // an ack
      // (INT32_MIN has no negation: any such value is a protocol error.)
      const int e = err == INT32_MIN ? EPROTO : err < 0 ? -err : err;
      return Error::FromErrno("netlink", e);
    }
    if (h.nlmsg_type == NLMSG_DONE || h.nlmsg_type == NLMSG_NOOP) continue;
    if (body.size() < GENL_HDRLEN) return Error("netlink: a message without its generic netlink header");
    NICMUX_TRY(fn(h.nlmsg_type, body.subspan(GENL_HDRLEN)));
  }
  return Ok();
}

// Calls fn(type, payload) for each attribute in attrs. UNTRUSTED lengths, as above.
template <typename Fn>
Result<void> ForEachAttr(std::span<const std::byte> attrs, Fn fn) {
  size_t at = 0;
  while (attrs.size() - at >= NLA_HDRLEN) {
    nlattr a;
    std::memcpy(&a, attrs.data() + at, sizeof a);
    if (a.nla_len < NLA_HDRLEN || a.nla_len > attrs.size() - at) {
      return Error("netlink: an attribute of " + std::to_string(a.nla_len) + " bytes in " +
                   std::to_string(attrs.size() - at) + " left");
    }
    fn(static_cast<uint16_t>(a.nla_type & NLA_TYPE_MASK), attrs.subspan(at + NLA_HDRLEN, a.nla_len - NLA_HDRLEN));
    at += std::min<size_t>(NLA_ALIGN(a.nla_len), attrs.size() - at);
  }
  return Ok();
}

template <typename T>
bool Scalar(std::span<const std::byte> p, T* out) {
  if (p.size() != sizeof(T)) return false;
  std::memcpy(out, p.data(), sizeof(T));
  return true;
}

// One request, its reply (up to 1 s).
Result<std::vector<std::byte>> Exchange(int fd, const std::string& req) {
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd, req.data(), req.size(), 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    return Error::FromErrno("netlink: send");
  }
  std::vector<std::byte> buf(16384);
  const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  if (n < 0) return Error::FromErrno("netlink: no reply", errno == EAGAIN ? ETIMEDOUT : errno);
  buf.resize(static_cast<size_t>(n));
  return buf;
}

}  // namespace

std::string XdpFeatureNames(uint64_t f) {
  return Names(f, {"basic", "redirect", "ndo-xmit", "xsk-zerocopy", "hw-offload", "rx-sg", "ndo-xmit-sg"});
}

std::string XskFeatureNames(uint64_t f) { return Names(f, {"tx-timestamp", "tx-checksum", "tx-launch-time-fifo"}); }

std::string GenlGetFamilyRequest(const char* name, uint32_t seq) {
  std::string attrs;
  PutAttr(&attrs, CTRL_ATTR_FAMILY_NAME, name, static_cast<uint16_t>(std::strlen(name) + 1));
  return GenlRequest(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, seq, attrs);
}

std::string NetdevDevGetRequest(uint16_t family, uint32_t seq, uint32_t ifindex) {
  std::string attrs;
  PutAttr(&attrs, xsk::kNetdevADevIfindex, &ifindex, sizeof ifindex);
  return GenlRequest(family, xsk::kNetdevCmdDevGet, 1, seq, attrs);
}

Result<uint16_t> ParseGenlFamilyReply(std::span<const std::byte> buf, uint32_t seq) {
  uint16_t id = 0;
  bool bad = false;
  NICMUX_TRY(ForEachMessage(buf, seq, [&](uint16_t type, std::span<const std::byte> attrs) -> Result<void> {
    if (type != GENL_ID_CTRL) return Ok();
    return ForEachAttr(attrs, [&](uint16_t t, std::span<const std::byte> p) {
      if (t == CTRL_ATTR_FAMILY_ID && !Scalar(p, &id)) bad = true;
    });
  }));
  if (bad) return Error("netlink: CTRL_ATTR_FAMILY_ID is not 2 bytes");
  if (id == 0) return Error("netlink: no CTRL_ATTR_FAMILY_ID in the reply");
  return id;
}

Result<NetdevXdpInfo> ParseNetdevDevReply(std::span<const std::byte> buf, uint32_t seq, uint32_t ifindex) {
  NetdevXdpInfo info;
  bool got = false;
  std::string bad;
  NICMUX_TRY(ForEachMessage(buf, seq, [&](uint16_t, std::span<const std::byte> attrs) -> Result<void> {
    got = true;
    uint32_t idx = 0;
    bool has_idx = false;
    NICMUX_TRY(ForEachAttr(attrs, [&](uint16_t t, std::span<const std::byte> p) {
      switch (t) {
        case xsk::kNetdevADevIfindex:
          has_idx = Scalar(p, &idx);
          if (!has_idx) bad = "ifindex";
          break;
        case xsk::kNetdevADevXdpFeatures:
          if (!Scalar(p, &info.xdp_features)) bad = "xdp-features";
          break;
        case xsk::kNetdevADevXskFeatures:
          info.has_xsk_features = Scalar(p, &info.xsk_features);
          if (!info.has_xsk_features) bad = "xsk-features";
          break;
        default:  // pad, xdp-zc-max-segs, xdp-rx-metadata-features, and what later kernels add
          break;
      }
    }));
    if (bad.empty() && (!has_idx || idx != ifindex)) {
      bad = "ifindex (" + (has_idx ? std::to_string(idx) : std::string("none")) + ", asked " + std::to_string(ifindex) + ")";
    }
    return Ok();
  }));
  if (!bad.empty()) return Error("netlink: the netdev reply's " + bad + " is malformed");
  if (!got) return Error("netlink: no netdev reply");
  return info;
}

Result<NetdevXdpInfo> QueryNetdev(uint32_t ifindex) {
  UniqueFd fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC));
  if (fd.get() < 0) return Error::FromErrno("netlink: socket");
  timeval tv{1, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_nl me{};
  me.nl_family = AF_NETLINK;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&me), sizeof me) != 0) return Error::FromErrno("netlink: bind");
  NICMUX_TRY_ASSIGN(fam_reply, Exchange(fd.get(), GenlGetFamilyRequest(xsk::kNetdevFamilyName, 1)));
  auto family = ParseGenlFamilyReply(fam_reply, 1);
  if (!family) {
    if (family.error().sys_errno() == ENOENT) {
      return Error("the kernel has no generic netlink family 'netdev' (Linux 6.3 and later have it)", ENOENT);
    }
    return family.error().Wrap("looking up the netdev family");
  }
  NICMUX_TRY_ASSIGN(dev_reply, Exchange(fd.get(), NetdevDevGetRequest(*family, 2, ifindex)));
  auto info = ParseNetdevDevReply(dev_reply, 2, ifindex);
  if (!info) return info.error().Wrap("netdev dev-get");
  return info;
}

Result<bool> TxChecksumIpGeneric(const std::string& ifname) {
  UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (s.get() < 0) return Error::FromErrno("socket");
  auto call = [&](void* data) {
    ifreq r{};
    std::strncpy(r.ifr_name, ifname.c_str(), IFNAMSIZ - 1);
    r.ifr_data = static_cast<char*>(data);
    return ::ioctl(s.get(), SIOCETHTOOL, &r);
  };
  // How many feature names: ETHTOOL_GSSET_INFO (a header and one u32).
  alignas(8) uint32_t info_buf[(sizeof(ethtool_sset_info) + sizeof(uint32_t) + 3) / 4] = {};
  auto* info = reinterpret_cast<ethtool_sset_info*>(info_buf);
  info->cmd = ETHTOOL_GSSET_INFO;
  info->sset_mask = uint64_t{1} << ETH_SS_FEATURES;
  if (call(info) != 0) return Error::FromErrno("ETHTOOL_GSSET_INFO");
  uint32_t n = 0;
  std::memcpy(&n, reinterpret_cast<std::byte*>(info_buf) + sizeof(ethtool_sset_info), sizeof n);
  // (The kernel's count; bounded anyway: NETDEV_FEATURE_COUNT is under 100.)
  if (!(info->sset_mask & (uint64_t{1} << ETH_SS_FEATURES)) || n == 0 || n > 4096) {
    return Error("ETHTOOL_GSSET_INFO: no feature names");
  }
  std::vector<uint64_t> names((sizeof(ethtool_gstrings) + size_t{n} * ETH_GSTRING_LEN + 7) / 8);
  auto* gs = reinterpret_cast<ethtool_gstrings*>(names.data());
  gs->cmd = ETHTOOL_GSTRINGS;
  gs->string_set = ETH_SS_FEATURES;
  gs->len = n;
  if (call(gs) != 0) return Error::FromErrno("ETHTOOL_GSTRINGS");
  const uint32_t blocks = (n + 31) / 32;
  std::vector<uint64_t> feats((sizeof(ethtool_gfeatures) + blocks * sizeof(ethtool_get_features_block) + 7) / 8);
  auto* gf = reinterpret_cast<ethtool_gfeatures*>(feats.data());
  gf->cmd = ETHTOOL_GFEATURES;
  gf->size = blocks;
  if (call(gf) != 0) return Error::FromErrno("ETHTOOL_GFEATURES");
  const char* strings = reinterpret_cast<const char*>(names.data()) + sizeof(ethtool_gstrings);
  const auto* blk = reinterpret_cast<const ethtool_get_features_block*>(reinterpret_cast<const std::byte*>(feats.data()) +
                                                                        sizeof(ethtool_gfeatures));
  for (uint32_t i = 0; i < std::min(n, gs->len); ++i) {
    if (strncmp(strings + size_t{i} * ETH_GSTRING_LEN, "tx-checksum-ip-generic", ETH_GSTRING_LEN) == 0) {
      return (blk[i / 32].active >> (i % 32) & 1u) != 0;
    }
  }
  return Error("no feature named tx-checksum-ip-generic");
}

TxCsumDecision DecideTxChecksum(const TxCsumInputs& in) {
  auto none = [](const std::string& why) { return TxCsumDecision{false, "none (" + why + ")", ""}; };
  if (in.option_off) return none("tx_csum=off");
  if (in.umem_errno != 0) {
    return none(std::string("the kernel refused XDP_UMEM_TX_METADATA_LEN: ") + std::strerror(in.umem_errno) +
                "; it has no AF_XDP TX metadata");
  }
  if (in.zero_copy) {
    if (!in.netdev || !*in.netdev) {
      return none("zero-copy, and " + in.ifname + "'s xsk-features are unknown: " +
                  (in.netdev ? in.netdev->error().message() : std::string("not asked")));
    }
    const NetdevXdpInfo& i = **in.netdev;
    if (!i.has_xsk_features) return none("zero-copy, and the kernel's netdev family reports no xsk-features");
    if (!(i.xsk_features & xsk::kXskFlagsTxChecksum)) {
      return none("zero-copy, and " + in.ifname + "'s driver has no tx-checksum in its xsk-features (" +
                  XskFeatureNames(i.xsk_features) + "): it would ignore the request");
    }
    return {true, "checksum", "zero-copy: " + in.ifname + "'s driver (xsk-features tx-checksum)"};
  }
  if (!in.hw_csum || !*in.hw_csum) {
    return none("copy mode, and " + in.ifname + "'s tx-checksum-ip-generic is unknown: " +
                (in.hw_csum ? in.hw_csum->error().message() : std::string("not asked")));
  }
  if (!**in.hw_csum) {
    return none("copy mode, and " + in.ifname +
                " has tx-checksum-ip-generic off: the kernel would sum each frame in software after its copy, "
                "which the port's copy does for less");
  }
  return {true, "checksum",
          "copy mode: the kernel hands " + in.ifname +
              " each frame as CHECKSUM_PARTIAL, and the device (tx-checksum-ip-generic) or whoever receives it "
              "completes the sum"};
}

bool WriteTxChecksumRequest(const Offload& o, uint32_t len, uint32_t head_len, std::byte* meta) {
  if (!o.needs_csum()) return false;
  // UNTRUSTED: the offsets are the sending peer's (CheckOffload bounded them in the switch; a
  // record that did not pass it may still reach here): the field must lie within the frame
  // and the checked head, or the kernel would refuse the descriptor and stop the queue.
  const uint32_t end = uint32_t{o.csum_start} + o.csum_offset + 2u;
  if (end > len || end > head_len) return false;
  xsk::TxMetadata m{};
  m.flags = xsk::kTxmdChecksum;
  m.csum_start = o.csum_start;
  m.csum_offset = o.csum_offset;
  std::memcpy(meta, &m, sizeof m);
  return true;
}

}  // namespace nicmux
