// The af_xdp port's checksum offload through AF_XDP TX metadata (docs/af_xdp.md "Offloads"):
// encoding a partial checksum as the kernel's struct xsk_tx_metadata, and detecting whether
// the interface, in the AF_XDP mode the port got, would honour it. Detection asks, never
// assumes:
//   - the kernel: does the UMEM registration take XDP_UMEM_TX_METADATA_LEN (af_xdp_port.cc);
//   - zero-copy: does the driver sum (the netdev generic-netlink family's xsk-features has
//     tx-checksum: the driver implements the request, which it otherwise ignores);
//   - copy mode: the kernel builds an skb per frame (net/xdp/xsk.c xsk_build_skb) and a
//     checksum request makes it CHECKSUM_PARTIAL (xsk_skb_metadata), whatever the driver; the
//     device sums it where it has NETIF_F_HW_CSUM (ethtool's tx-checksum-ip-generic). Without
//     that the kernel sums in software (the skb has no protocol set, so NETIF_F_IP_CSUM and
//     IPV6_CSUM do not apply: validate_xmit_skb -> skb_checksum_help), a second pass after its
//     copy: the port's own fused copy is cheaper, so the port does not ask then.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "base/result.h"
#include "packet/offload.h"

namespace nicmux {

// What the kernel's netdev family says about one interface (NETDEV_CMD_DEV_GET).
struct NetdevXdpInfo {
  uint64_t xdp_features = 0;  // enum netdev_xdp_act
  uint64_t xsk_features = 0;  // enum netdev_xsk_flags
  bool has_xsk_features = false;  // the reply had the attribute (Linux 6.8 and later)
};

// "basic redirect ndo-xmit xsk-zerocopy hw-offload rx-sg ndo-xmit-sg" (the netdev.yaml names,
// unknown bits as "bitN"), or "none".
std::string XdpFeatureNames(uint64_t f);
// "tx-timestamp tx-checksum tx-launch-time-fifo", or "none".
std::string XskFeatureNames(uint64_t f);

// Netlink messages (request building and reply parsing; the parsers are unit-tested on bytes
// and QueryNetdev runs them against the kernel).
// A CTRL_CMD_GETFAMILY request for the family named `name`.
std::string GenlGetFamilyRequest(const char* name, uint32_t seq);
// A NETDEV_CMD_DEV_GET request for ifindex to the family `family`.
std::string NetdevDevGetRequest(uint16_t family, uint32_t seq, uint32_t ifindex);
// The replies, as recv() returned them: every message in buf with this seq is read; an
// NLMSG_ERROR with an error fails (its errno kept), anything else malformed fails too.
// UNTRUSTED lengths: every length in buf is checked against what is left before it is used.
Result<uint16_t> ParseGenlFamilyReply(std::span<const std::byte> buf, uint32_t seq);
Result<NetdevXdpInfo> ParseNetdevDevReply(std::span<const std::byte> buf, uint32_t seq, uint32_t ifindex);

// Asks the kernel (a NETLINK_GENERIC socket, one request each for the family and the device;
// a reply not there within 1 s is an error).
Result<NetdevXdpInfo> QueryNetdev(uint32_t ifindex);

// Whether ifname has tx-checksum-ip-generic (NETIF_F_HW_CSUM) active (SIOCETHTOOL
// ETHTOOL_GFEATURES).
Result<bool> TxChecksumIpGeneric(const std::string& ifname);

// What detection found, and the decision: use carries the checksum in the metadata;
// detail is "checksum" or "none (why)", for port show / port caps and the log.
struct TxCsumInputs {
  std::string ifname;
  bool option_off = false;  // tx_csum=off
  int umem_errno = 0;       // 0: the UMEM took XDP_UMEM_TX_METADATA_LEN; else its errno
  bool zero_copy = false;
  const Result<NetdevXdpInfo>* netdev = nullptr;  // zero-copy's evidence
  const Result<bool>* hw_csum = nullptr;          // copy mode's
};
struct TxCsumDecision {
  bool use = false;
  std::string detail;
  std::string path;  // with use: where the sum is made, for port caps
};
TxCsumDecision DecideTxChecksum(const TxCsumInputs& in);

// The metadata area's size the port registers (sizeof struct xsk_tx_metadata, 6.15 and later)
// and so the bytes every TX frame's data starts after.
inline constexpr uint32_t kTxMetadataLen = 24;

// Writes the checksum request for a packet of len bytes whose record is o into meta (the
// kTxMetadataLen bytes before the frame's data) and returns true; false, writing nothing,
// when o asks for no checksum or one the kernel would refuse: it checks csum_start +
// csum_offset + 2 <= the descriptor's length and refuses the descriptor otherwise, and in copy
// mode a refused descriptor stays at the head of the TX ring, retried at every kick, so the
// queue would stop (net/xdp/xsk.c, xsk_build_skb: "Let application retry"). Also false
// when the field lies past head_len (the caller's record CheckOffload did not pass; the
// software copy leaves such a frame as it is too).
bool WriteTxChecksumRequest(const Offload& o, uint32_t len, uint32_t head_len, std::byte* meta);

}  // namespace nicmux
