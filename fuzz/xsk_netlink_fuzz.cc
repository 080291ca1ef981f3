// libFuzzer target: what the af_xdp port reads from the kernel's netlink replies while it
// detects AF_XDP TX metadata (ParseGenlFamilyReply, ParseNetdevDevReply), and the checksum
// request it writes from a peer's offload record (WriteTxChecksumRequest).
// Input: [0] bit 0 picks the parser (family / device), bit 1 also fuzzes the request writer;
// [1..4] the expected sequence number; [5..8] the ifindex; [9..16] an offload record
// (csum_start, csum_offset, flags) with len and head_len; the rest is the reply as recv() gave it.
// Checks: nothing read outside the buffer (sanitizers); a parsed device reply with no
// xsk-features attribute reports no xsk features; a written request lies inside both len and
// head_len, and nothing is written when the writer refuses.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "port/af_xdp_tx_metadata.h"

using namespace nicmux;

namespace {

void Require(bool ok) {
  if (!ok) std::abort();
}

uint32_t U32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint16_t U16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 17) return 0;
  const uint8_t mode = data[0];
  const uint32_t seq = U32(data + 1), ifindex = U32(data + 5);
  const std::span<const std::byte> reply(reinterpret_cast<const std::byte*>(data + 17), size - 17);
  if (mode & 1) {
    auto r = ParseNetdevDevReply(reply, seq, ifindex);
    if (r.has_value() && !r->has_xsk_features) Require(r->xsk_features == 0);
  } else {
    (void)ParseGenlFamilyReply(reply, seq);
  }
  if (mode & 2) {
    Offload o;
    o.csum_start = U16(data + 9);
    o.csum_offset = U16(data + 11);
    o.flags = data[13];
    const uint32_t len = data[14] * 64u + (data[15] & 63u), head_len = data[16] * 2u;
    std::byte meta[kTxMetadataLen];
    std::memset(meta, 0xa5, sizeof meta);
    const bool wrote = WriteTxChecksumRequest(o, len, head_len, meta);
    if (wrote) {
      const uint32_t end = uint32_t{o.csum_start} + o.csum_offset + 2u;
      Require(o.needs_csum() && end <= len && end <= head_len);
    } else {
      for (std::byte b : meta) Require(b == std::byte{0xa5});
    }
  }
  return 0;
}
