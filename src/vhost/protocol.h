// The vhost-user protocol's wire format (QEMU docs/interop/vhost-user.rst): the message header,
// the payloads nicmux reads or writes, the request codes and feature bits — and the one table
// that states, for every request we accept, its payload size and how many fds it carries.
// Everything a peer sends is checked against this table before a handler looks at it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace nicmux::vhost {

// Header flags (vhost-user.rst "Header").
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;

struct MsgHeader {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // payload bytes that follow
};
static_assert(sizeof(MsgHeader) == 12);

inline constexpr size_t kMaxPayload = 4096;  // larger than any message we accept
inline constexpr size_t kMaxFds = 8;         // VHOST_MEMORY_BASELINE_NREGIONS

enum class Request : uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
};

// Protocol feature bits (vhost-user.rst "Protocol features").
inline constexpr int kProtoMq = 0;
inline constexpr int kProtoLogShmfd = 1;
inline constexpr int kProtoRarp = 2;
inline constexpr int kProtoReplyAck = 3;
inline constexpr int kProtoNetMtu = 4;
inline constexpr int kProtoBackendReq = 5;
inline constexpr int kProtoConfig = 9;
inline constexpr int kProtoInflightShmfd = 12;
inline constexpr int kProtoResetDevice = 13;
inline constexpr int kProtoConfigureMemSlots = 15;
inline constexpr int kProtoStatus = 16;

// VHOST_USER_F_PROTOCOL_FEATURES, a bit of the virtio feature word.
inline constexpr int kFProtocolFeatures = 30;

// SET_VRING_KICK/CALL/ERR payload: queue index in bits 0-7, bit 8 "no fd" (polling).
inline constexpr uint64_t kVringIdxMask = 0xff;
inline constexpr uint64_t kVringNoFd = 1u << 8;

struct VringState {
  uint32_t index;
  uint32_t num;
};
static_assert(sizeof(VringState) == 8);

struct VringAddr {
  uint32_t index;
  uint32_t flags;  // bit 0: VHOST_VRING_F_LOG
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40);

struct MemoryRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};
static_assert(sizeof(MemoryRegion) == 32);

// SET_MEM_TABLE: { u32 nregions; u32 padding; MemoryRegion regions[nregions] }.
struct MemoryHeader {
  uint32_t nregions;
  uint32_t padding;
};
static_assert(sizeof(MemoryHeader) == 8);

// ADD_MEM_REG / REM_MEM_REG: { u64 padding; MemoryRegion region }.
struct SingleMemoryRegion {
  uint64_t padding;
  MemoryRegion region;
};
static_assert(sizeof(SingleMemoryRegion) == 40);

// How a request's payload size is checked.
enum class SizeRule : uint8_t {
  kExact,      // size == payload
  kMemTable,   // 8 + nregions * 32, 1 <= nregions <= 8
  kAtMost,     // size <= payload (GET_CONFIG and friends)
};

struct RequestInfo {
  Request request;
  std::string_view name;
  SizeRule size_rule;
  uint32_t payload;      // bytes (see size_rule)
  uint8_t min_fds;
  uint8_t max_fds;
  bool has_reply;        // the request itself is answered (GET_*), not only with REPLY_ACK
};

// The table of every request nicmux accepts. A request not in it is refused by name/number.
const RequestInfo* FindRequest(uint32_t request);
std::string_view RequestName(uint32_t request);  // "SET_MEM_TABLE", or "request 99"

}  // namespace nicmux::vhost
