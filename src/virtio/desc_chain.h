// DescChain: one descriptor chain as the device side sees it after a checked walk — the
// buffers resolved through GuestMemory into host segments, device-readable ones first. Callers
// never touch raw descriptors: they read a chain with ChainReader and fill it with ChainWriter.
//
// Invariants (established by ChainBuilder, the one place that appends segments):
//  - every segment lies inside one guest memory region of the snapshot the walk used;
//  - segments [0, num_readable) are device-readable, [num_readable, num_segments) writable;
//  - readable_bytes + writable_bytes <= 2^32 (virtio 1.2 §2.7.5.2: "Drivers MUST NOT add a
//    descriptor chain longer than 2^32 bytes in total");
//  - at most kMaxChainSegments segments (zero-length descriptors add none);
//  - the walk that built it read at most kMaxChainDescs descriptors, empty ones and indirect
//    table entries included (the rings enforce this: a walk's cost is bounded whatever the
//    driver writes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

#include "base/drop_reason.h"
#include "memory/guest_memory.h"
#include "packet/segment.h"

namespace nicmux::virtio {

// The most buffers one chain may carry. Linux virtio_net uses at most MAX_SKB_FRAGS + 2 (19);
// a longer chain is dropped as kChainTooLong rather than held on the heap.
inline constexpr uint32_t kMaxChainSegments = 64;
// The most descriptors one chain's walk may read, of any length, indirect table entries
// included: a bound on what one chain costs the worker that polls it (a chain of 32768 empty
// descriptors cost 134-200 us to walk). Twice the segment cap: zero-length descriptors are
// legal, but a driver has no use for more than a few.
inline constexpr uint32_t kMaxChainDescs = 2 * kMaxChainSegments;
inline constexpr uint64_t kMaxChainBytes = 1ull << 32;

// Which buffers a queue's chains may have: a net TX queue only device-readable ones, an RX
// queue only device-writable ones.
enum class ChainPolicy : uint8_t { kAny, kReadOnly, kWriteOnly };

using ChainSegment = nicmux::Segment;

struct DescChain {
  uint16_t id = 0;         // what Push() takes back: split head index, packed buffer id
  uint16_t num_descs = 0;  // ring slots the chain occupied (packed rings advance by this)
  uint16_t num_readable = 0;
  uint16_t num_segments = 0;
  // Where the ring stood when this chain was popped (split: the avail index; packed: the
  // position and wrap counter), and how many bad chains the ring had completed by then; see
  // Rewind() in the rings.
  uint16_t ring_pos = 0;
  bool ring_wrap = false;
  uint64_t bad_seq = 0;
  uint64_t readable_bytes = 0;
  uint64_t writable_bytes = 0;
  ChainSegment segs[kMaxChainSegments];

  std::span<const ChainSegment> readable() const { return {segs, num_readable}; }
  std::span<const ChainSegment> writable() const {
    return {segs + num_readable, static_cast<size_t>(num_segments - num_readable)};
  }
};

// Appends checked segments to a chain during a walk.
class ChainBuilder {
 public:
  ChainBuilder(const GuestMemory& mem, ChainPolicy policy, DescChain* chain)
      : mem_(mem), policy_(policy), chain_(chain) {
    chain_->num_readable = chain_->num_segments = 0;
    chain_->readable_bytes = chain_->writable_bytes = 0;
  }

  // The common chain, one direct descriptor, without a builder: the same checks as Add()
  // (policy, translation; a zero length is left to the general walk). False, with *chain
  // untouched, when any fails: the caller then walks the chain the general way.
  static bool SingleSegment(const GuestMemory& mem, ChainPolicy policy, uint64_t addr, uint32_t len,
                            bool writable, DescChain* chain) {
    if (len == 0 || policy == (writable ? ChainPolicy::kReadOnly : ChainPolicy::kWriteOnly)) return false;
    std::byte* p = mem.TranslateFast(GuestAddr{addr}, len, writable ? Access::kWrite : Access::kRead);
    if (p == nullptr) return false;
    chain->segs[0] = {p, len};
    chain->num_segments = 1;
    chain->num_readable = writable ? 0 : 1;
    chain->readable_bytes = writable ? 0 : len;
    chain->writable_bytes = writable ? len : 0;
    return true;
  }

  // UNTRUSTED: addr, len and the write flag come from a descriptor; each is checked here
  // (policy, order, translation into one region, segment count, 2^32-byte total).
  std::optional<DropReason> Add(uint64_t addr, uint32_t len, bool writable) {
    if (writable && policy_ == ChainPolicy::kReadOnly) return DropReason::kReadableExpected;
    if (!writable && policy_ == ChainPolicy::kWriteOnly) return DropReason::kWritableExpected;
    if (!writable && chain_->num_segments != chain_->num_readable) {
      return DropReason::kReadableAfterWritable;
    }
    if (len == 0) return std::nullopt;
    std::byte* p = mem_.TranslateFast(GuestAddr{addr}, len, writable ? Access::kWrite : Access::kRead);
    if (p == nullptr) return DropReason::kDescOutsideMemory;
    if (chain_->num_segments == kMaxChainSegments) return DropReason::kChainTooLong;
    uint64_t& bytes = writable ? chain_->writable_bytes : chain_->readable_bytes;
    bytes += len;
    if (chain_->readable_bytes + chain_->writable_bytes > kMaxChainBytes) {
      return DropReason::kChainTooManyBytes;
    }
    chain_->segs[chain_->num_segments++] = {p, len};
    if (!writable) chain_->num_readable = chain_->num_segments;
    return std::nullopt;
  }

 private:
  const GuestMemory& mem_;
  ChainPolicy policy_;
  DescChain* chain_;
};

// Reads the device-readable part of a chain as one byte stream.
class ChainReader {
 public:
  explicit ChainReader(const DescChain& c) : segs_(c.readable()), left_(c.readable_bytes) {}

  uint64_t remaining() const { return left_; }

  // Copies up to n bytes into dst; returns how many it copied.
  size_t Read(void* dst, size_t n) { return Walk(static_cast<std::byte*>(dst), n); }
  size_t Skip(size_t n) { return Walk(nullptr, n); }

 private:
  size_t Walk(std::byte* dst, size_t n) {
    size_t done = 0;
    while (done < n && seg_ < segs_.size()) {
      const ChainSegment& s = segs_[seg_];
      size_t take = std::min<size_t>(n - done, s.len - off_);
      if (dst) std::memcpy(dst + done, s.data + off_, take);
      done += take;
      off_ += take;
      if (off_ == s.len) {
        ++seg_;
        off_ = 0;
      }
    }
    left_ -= done;
    return done;
  }

  std::span<const ChainSegment> segs_;
  size_t seg_ = 0;
  size_t off_ = 0;
  uint64_t left_;
};

// Fills the device-writable part of a chain as one byte stream.
// Writes n bytes at offset `at` of the chain's writable bytes; returns how many fitted.
inline size_t PatchChain(std::span<const ChainSegment> segs, size_t at, const std::byte* src, size_t n) {
  size_t done = 0;
  for (const ChainSegment& s : segs) {
    if (done == n) break;
    if (at >= s.len) {
      at -= s.len;
      continue;
    }
    const size_t k = std::min<size_t>(n - done, s.len - at);
    std::memcpy(s.data + at, src + done, k);
    done += k;
    at = 0;
  }
  return done;
}
inline size_t PatchChain(const DescChain& c, size_t at, const std::byte* src, size_t n) {
  return PatchChain(c.writable(), at, src, n);
}

class ChainWriter {
 public:
  explicit ChainWriter(const DescChain& c) : segs_(c.writable()), left_(c.writable_bytes) {}

  uint64_t remaining() const { return left_; }
  uint64_t written() const { return written_; }

  // Overwrites n bytes already written, at offset `at` from the first byte written.
  void Patch(size_t at, const void* src, size_t n) {
    NICMUX_CHECK(at + n <= written_);
    PatchChain(segs_, at, static_cast<const std::byte*>(src), n);
  }

  // Copies up to n bytes from src; returns how many fitted.
  size_t Write(const void* src, size_t n) {
    const std::byte* from = static_cast<const std::byte*>(src);
    size_t done = 0;
    while (done < n && seg_ < segs_.size()) {
      const ChainSegment& s = segs_[seg_];
      size_t take = std::min<size_t>(n - done, s.len - off_);
      std::memcpy(s.data + off_, from + done, take);
      done += take;
      off_ += take;
      if (off_ == s.len) {
        ++seg_;
        off_ = 0;
      }
    }
    left_ -= done;
    written_ += done;
    return done;
  }

 private:
  std::span<const ChainSegment> segs_;
  size_t seg_ = 0;
  size_t off_ = 0;
  uint64_t left_;
  uint64_t written_ = 0;
};

}  // namespace nicmux::virtio
