// The parts of the kernel's AF_XDP and netdev-netlink interfaces that Debian 12's headers
// (linux-libc-dev 6.1, libbpf 1.1, libxdp 1.3.1) lack, for the af_xdp port's TX metadata
// (docs/af_xdp.md "Offloads"). Written from the kernel's uapi, which these mirror:
//   include/uapi/linux/if_xdp.h   (Linux 6.8 and later; XDP_UMEM_TX_METADATA_LEN from commit
//                                  d5e726d9143c, "xsk: require XDP_UMEM_TX_METADATA_LEN ...")
//   include/uapi/linux/netdev.h   (generated from Documentation/netlink/specs/netdev.yaml)
// and Documentation/networking/xsk-tx-metadata.rst. Checked against Linux 6.18. The names
// are ours (namespace xsk), so that newer system headers with the kernel's macros do not clash.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nicmux::xsk {

// ---- if_xdp.h

// struct xdp_umem_reg's flags.
inline constexpr uint32_t kUmemTxSwCsum = 1u << 1;       // XDP_UMEM_TX_SW_CSUM (copy mode: sum on the CPU)
inline constexpr uint32_t kUmemTxMetadataLen = 1u << 2;  // XDP_UMEM_TX_METADATA_LEN: tx_metadata_len is meant

// struct xdp_umem_reg as of 6.8: the 6.1 header's (addr .. flags) plus tx_metadata_len where
// the old struct had its 4 bytes of tail padding. The kernel reads all 32 bytes when optlen
// says 32; a kernel that does not know the flag refuses it (EINVAL: flags it does not know).
struct UmemReg {
  uint64_t addr;             // the UMEM's first byte
  uint64_t len;              // its length
  uint32_t chunk_size;       // the frame size
  uint32_t headroom;         // bytes the kernel leaves before a received frame (besides its own)
  uint32_t flags;            // kUmem* and XDP_UMEM_UNALIGNED_CHUNK_FLAG
  uint32_t tx_metadata_len;  // with kUmemTxMetadataLen: bytes before every TX frame's data, < 256, a multiple of 8
};
static_assert(sizeof(UmemReg) == 32);
static_assert(offsetof(UmemReg, flags) == 24 && offsetof(UmemReg, tx_metadata_len) == 28);

// struct xsk_tx_metadata's flags.
inline constexpr uint64_t kTxmdTimestamp = 1u << 0;   // XDP_TXMD_FLAGS_TIMESTAMP
inline constexpr uint64_t kTxmdChecksum = 1u << 1;    // XDP_TXMD_FLAGS_CHECKSUM
inline constexpr uint64_t kTxmdLaunchTime = 1u << 2;  // XDP_TXMD_FLAGS_LAUNCH_TIME (6.15)

// struct xsk_tx_metadata: tx_metadata_len bytes before a TX descriptor's addr (at
// addr - tx_metadata_len), read by the kernel when the descriptor has kTxMetadata in its
// options. Host byte order. The kernel's is a u64 and a union of a request (csum_start,
// csum_offset, launch_time, this padded to 8) and a completion (tx_timestamp, over the
// request's first 8 bytes): 24 bytes since 6.15 added launch_time, 16 before.
struct TxMetadata {
  uint64_t flags;         // kTxmd*
  uint16_t csum_start;    // kTxmdChecksum: where summing starts, from the frame's first byte (addr)
  uint16_t csum_offset;   // kTxmdChecksum: where the 16-bit sum goes, from csum_start
  uint32_t pad;           // (the request struct's padding before launch_time)
  uint64_t launch_time;   // kTxmdLaunchTime: ns on the device's PTP clock
};
static_assert(sizeof(TxMetadata) == 24);
static_assert(offsetof(TxMetadata, csum_start) == 8 && offsetof(TxMetadata, csum_offset) == 10 &&
              offsetof(TxMetadata, launch_time) == 16);

// struct xdp_desc's options.
inline constexpr uint32_t kTxMetadata = 1u << 1;  // XDP_TX_METADATA: the frame carries metadata

// ---- netdev.h (generic netlink family "netdev", version 1)

inline constexpr const char* kNetdevFamilyName = "netdev";  // NETDEV_FAMILY_NAME
inline constexpr uint8_t kNetdevCmdDevGet = 1;              // NETDEV_CMD_DEV_GET
// enum netdev_a_dev: the attributes of a dev-get request and reply.
inline constexpr uint16_t kNetdevADevIfindex = 1;             // u32
inline constexpr uint16_t kNetdevADevPad = 2;                 // (alignment padding, ignored)
inline constexpr uint16_t kNetdevADevXdpFeatures = 3;         // u64, enum netdev_xdp_act
inline constexpr uint16_t kNetdevADevXdpZcMaxSegs = 4;        // u32
inline constexpr uint16_t kNetdevADevXdpRxMetadataFeatures = 5;  // u64
inline constexpr uint16_t kNetdevADevXskFeatures = 6;         // u64, enum netdev_xsk_flags (6.8)
// enum netdev_xdp_act
inline constexpr uint64_t kXdpActBasic = 1, kXdpActRedirect = 2, kXdpActNdoXmit = 4, kXdpActXskZerocopy = 8,
                          kXdpActHwOffload = 16, kXdpActRxSg = 32, kXdpActNdoXmitSg = 64;
// enum netdev_xsk_flags: what the driver does with TX metadata in zero-copy mode.
inline constexpr uint64_t kXskFlagsTxTimestamp = 1, kXskFlagsTxChecksum = 2, kXskFlagsTxLaunchTimeFifo = 4;

}  // namespace nicmux::xsk
