// Every reason nicmux drops a packet, rejects a descriptor chain or breaks a queue: one enum and
// one name table (DESIGN.md "Errors", kind 1). Counted per queue/port, named in logs and stats.
// Add new reasons here, never a second enum.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace nicmux {

// X(enum name, counter name, what it means)
#define NICMUX_DROP_REASONS(X)                                                                   \
  X(kDescOutsideMemory, "desc_outside_memory", "descriptor buffer not inside one memory region") \
  X(kDescNextOutOfRange, "desc_next_out_of_range", "descriptor next >= table size")              \
  X(kDescLoop, "desc_loop", "descriptor chain loops (more hops than table entries)")            \
  X(kChainTooLong, "chain_too_long", "chain has more descriptors than the queue or we walk")    \
  X(kChainTooManyBytes, "chain_too_many_bytes", "chain is longer than 2^32 bytes")                \
  X(kIndirectNotNegotiated, "indirect_not_negotiated", "INDIRECT flag without the feature")     \
  X(kIndirectNested, "indirect_nested", "indirect descriptor inside an indirect table")         \
  X(kIndirectBadLen, "indirect_bad_len", "indirect table length zero or not a multiple of 16") \
  X(kIndirectWithNext, "indirect_with_next", "INDIRECT and NEXT flags together")                 \
  X(kIndirectOutsideMemory, "indirect_outside_memory", "indirect table not inside one region")  \
  X(kWritableExpected, "writable_expected", "device-readable descriptor where writable needed") \
  X(kReadableExpected, "readable_expected", "device-writable descriptor where readable needed") \
  X(kReadableAfterWritable, "readable_after_writable", "readable descriptor after a writable")  \
  X(kHeadOutOfRange, "head_out_of_range", "avail ring names a head >= queue size")              \
  X(kAvailIdxJump, "avail_idx_jump", "avail idx moved by more than the queue size")             \
  X(kPackedWrapInconsistent, "packed_wrap_inconsistent", "packed chain descriptor not available") \
  X(kPackedIdOutOfRange, "packed_id_out_of_range", "packed buffer id >= queue size")            \
  X(kPackedIdInFlight, "packed_id_in_flight", "packed buffer id reused while in flight")        \
  X(kPackedRingOverrun, "packed_ring_overrun", "packed chain reaches into slots still in flight") \
  X(kUsedIdOutOfRange, "used_id_out_of_range", "device returned an id we did not give")         \
  X(kUsedLenTooLong, "used_len_too_long", "device returned more bytes than the buffer holds")   \
  X(kUsedIdxJump, "used_idx_jump", "used idx moved by more than the buffers in flight")         \
  X(kQueueBroken, "queue_broken", "queue is broken until the peer resets it")                  \
  X(kPortDown, "port_down", "destination queue not running (peer absent or not ready)")          \
  X(kTooBig, "too_big_for_buffers", "packet larger than the receive buffers offered")           \
  X(kBadFrame, "bad_frame", "frame shorter than its virtio-net header")                          \
  X(kQueueFull, "queue_full", "destination out of buffers and the source cannot hold it")       \
  X(kNoRoute, "no_route", "destination is the port the frame came in on, or no port to send to") \
  X(kVlan, "vlan", "frame's VLAN not admitted by the port it came in on")                       \
  X(kMtu, "mtu", "frame larger than the destination port's MTU")                                \
  X(kBadSource, "bad_source", "source MAC is multicast or zero")                                \
  X(kMacNotAllowed, "mac_not_allowed", "source MAC not in the ingress port's allowed_macs")   \
  X(kBadOffload, "bad_offload", "offload request inconsistent with the frame's headers")          \
  X(kHdrMismatch, "hdr_mismatch",                                                                 \
    "frame shifted by 2 bytes: the frontend uses another virtio-net header length than negotiated") \
  X(kFlowDrop, "flow_drop", "a flow rule of the destination device (a pv port) said drop")    \
  X(kRxChainTooSmall, "rx_chain_too_small",                                                      \
    "receive chain (no MRG_RXBUF) cannot hold a virtio-net and an Ethernet header: completed empty")

enum class DropReason : uint8_t {
#define NICMUX_DROP_ENUM(e, name, desc) e,
  NICMUX_DROP_REASONS(NICMUX_DROP_ENUM)
#undef NICMUX_DROP_ENUM
};

inline constexpr size_t kNumDropReasons = 0
#define NICMUX_DROP_COUNT(e, name, desc) +1
    NICMUX_DROP_REASONS(NICMUX_DROP_COUNT)
#undef NICMUX_DROP_COUNT
    ;

struct DropReasonInfo {
  std::string_view name;
  std::string_view description;
};

inline constexpr DropReasonInfo kDropReasonInfo[kNumDropReasons] = {
#define NICMUX_DROP_INFO(e, name, desc) {name, desc},
    NICMUX_DROP_REASONS(NICMUX_DROP_INFO)
#undef NICMUX_DROP_INFO
};

constexpr std::string_view DropReasonName(DropReason r) {
  return kDropReasonInfo[static_cast<size_t>(r)].name;
}

}  // namespace nicmux
