#include "vhost/protocol.h"

#include <array>
#include <string>

namespace nicmux::vhost {
namespace {

using R = Request;
using S = SizeRule;

// Payload sizes and fd counts as QEMU 7.2's vhost-user-net and DPDK 22.11's virtio_user send
// them (vhost-user.rst, "Front-end message types").
constexpr RequestInfo kRequests[] = {
    {R::kGetFeatures, "GET_FEATURES", S::kExact, 0, 0, 0, true},
    {R::kSetFeatures, "SET_FEATURES", S::kExact, 8, 0, 0, false},
    {R::kSetOwner, "SET_OWNER", S::kExact, 0, 0, 0, false},
    {R::kResetOwner, "RESET_OWNER", S::kExact, 0, 0, 0, false},
    {R::kSetMemTable, "SET_MEM_TABLE", S::kMemTable, 0, 1, 8, false},
    {R::kSetVringNum, "SET_VRING_NUM", S::kExact, 8, 0, 0, false},
    {R::kSetVringAddr, "SET_VRING_ADDR", S::kExact, 40, 0, 0, false},
    {R::kSetVringBase, "SET_VRING_BASE", S::kExact, 8, 0, 0, false},
    {R::kGetVringBase, "GET_VRING_BASE", S::kExact, 8, 0, 0, true},
    // KICK/CALL/ERR carry an fd unless bit 8 of the payload says "no fd"; checked in the handler.
    {R::kSetVringKick, "SET_VRING_KICK", S::kExact, 8, 0, 1, false},
    {R::kSetVringCall, "SET_VRING_CALL", S::kExact, 8, 0, 1, false},
    {R::kSetVringErr, "SET_VRING_ERR", S::kExact, 8, 0, 1, false},
    {R::kGetProtocolFeatures, "GET_PROTOCOL_FEATURES", S::kExact, 0, 0, 0, true},
    {R::kSetProtocolFeatures, "SET_PROTOCOL_FEATURES", S::kExact, 8, 0, 0, false},
    {R::kGetQueueNum, "GET_QUEUE_NUM", S::kExact, 0, 0, 0, true},
    {R::kSetVringEnable, "SET_VRING_ENABLE", S::kExact, 8, 0, 0, false},
    {R::kSendRarp, "SEND_RARP", S::kExact, 8, 0, 0, false},
    {R::kNetSetMtu, "NET_SET_MTU", S::kExact, 8, 0, 0, false},
    {R::kGetMaxMemSlots, "GET_MAX_MEM_SLOTS", S::kExact, 0, 0, 0, true},
    {R::kAddMemReg, "ADD_MEM_REG", S::kExact, 40, 1, 1, false},
    // QEMU before 8.0 sends the region's fd with REM_MEM_REG too; it is closed unused.
    {R::kRemMemReg, "REM_MEM_REG", S::kExact, 40, 0, 1, false},
    {R::kSetStatus, "SET_STATUS", S::kExact, 8, 0, 0, false},
    {R::kGetStatus, "GET_STATUS", S::kExact, 0, 0, 0, true},
};

constexpr std::array<std::string_view, 41> kNames = [] {
  std::array<std::string_view, 41> n{};
  n[6] = "SET_LOG_BASE";
  n[7] = "SET_LOG_FD";
  n[21] = "SET_BACKEND_REQ_FD";
  n[22] = "IOTLB_MSG";
  n[23] = "SET_VRING_ENDIAN";
  n[24] = "GET_CONFIG";
  n[25] = "SET_CONFIG";
  n[31] = "GET_INFLIGHT_FD";
  n[32] = "SET_INFLIGHT_FD";
  n[34] = "RESET_DEVICE";
  n[35] = "VRING_KICK";
  for (const RequestInfo& r : kRequests) n[static_cast<uint32_t>(r.request)] = r.name;
  return n;
}();

}  // namespace

const RequestInfo* FindRequest(uint32_t request) {
  for (const RequestInfo& r : kRequests) {
    if (static_cast<uint32_t>(r.request) == request) return &r;
  }
  return nullptr;
}

std::string_view RequestName(uint32_t request) {
  if (request < kNames.size() && !kNames[request].empty()) return kNames[request];
  static thread_local std::string s;
  s = "request " + std::to_string(request);
  return s;
}

}  // namespace nicmux::vhost
