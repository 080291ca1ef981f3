// Xconnect: port A <-> port B, every packet from one to the other, queue pair q to queue pair
// q (mod the other side's count). The single-copy path of DESIGN.md: A's transmit chains become
// PacketRefs, B copies them into its receive chains, A completes the chains it sent and gives
// back the ones B had no room for (backpressure instead of loss). Offload requests are checked
// and, where B's caps do not take them, completed here as the switch does (docs/offloads.md).
#pragma once

#include <algorithm>
#include <vector>

#include "base/log.h"
#include "packet/offload_ops.h"
#include "port/port.h"
#include "switch/forwarder.h"

namespace nicmux {

class Xconnect final : public Forwarder {
 public:
  Xconnect(Port* a, Port* b) : a_(a), b_(b) {}

  WorkDone Poll() override {
    WorkDone w;
    const uint32_t qa = a_->NumQueuePairs(), qb = b_->NumQueuePairs();
    for (uint32_t q = 0; q < qa; ++q) Move(a_, q, b_, q % qb, &w);
    for (uint32_t q = 0; q < qb; ++q) Move(b_, q, a_, q % qa, &w);
    return w;
  }
  bool ArmNotify(std::vector<NotifyFd>* fds) override {
    bool pending = a_->ArmNotify(fds);
    pending |= b_->ArmNotify(fds);
    return pending;
  }
  void DisarmNotify() override {
    a_->DisarmNotify();
    b_->DisarmNotify();
  }
  bool CanSleep() const override { return a_->CanSleep() && b_->CanSleep(); }

 private:
  void Move(Port* src, uint32_t sq, Port* dst, uint32_t dq, WorkDone* w) {
    const size_t room = dst->TxRoom(dq);
    if (room == 0) return;
    batch_.Clear();
    if (src->Rx(sq, batch_, room) == 0) {
      src->RxDone(sq, batch_, 0);
      return;
    }
    const uint32_t n = batch_.size();
    bool plain = true;
    for (uint32_t k = 0; k < n; ++k) plain &= batch_[k].offload.none();
    size_t sent;
    if (plain) {
      const PacketRef* ptrs[kBurst];
      for (uint32_t k = 0; k < n; ++k) ptrs[k] = &batch_[k];
      sent = dst->Tx(dq, {ptrs, n});
    } else {
      sent = MoveWithOffloads(src, dst, dq);
    }
    for (size_t k = 0; k < sent; ++k) w->bytes += batch_[static_cast<uint32_t>(k)].len;
    w->packets += sent;
    src->RxDone(sq, batch_, sent);
  }

  // A burst with offload requests (docs/offloads.md), packet by packet as the switch does: a
  // request that does not match its frame is dropped (bad_offload, in the log); what the
  // destination's caps do not accept is done here (checksum completed, GSO frame cut into
  // segments; segments it has no room for are dropped: a GSO frame is never held in part).
  // Returns how many of the burst count as sent: all before the first packet the destination
  // did not take (the rest go back to the source, to be received again).
  size_t MoveWithOffloads(Port* src, Port* dst, uint32_t dq) {
    const uint32_t n = batch_.size();
    const PortCaps caps = dst->Caps();
    const PacketRef* ptrs[kBurst];
    uint32_t idx[kBurst];
    uint32_t m = 0;
    // Sends the group gathered; kAll when all were taken, else the first packet not taken.
    constexpr uint32_t kAll = ~0u;
    auto flush = [&]() -> uint32_t {
      if (m == 0) return kAll;
      const size_t took = dst->Tx(dq, {ptrs, m});
      const uint32_t r = took < m ? idx[took] : kAll;
      m = 0;
      return r;
    };
    for (uint32_t k = 0; k < n; ++k) {
      PacketRef& p = batch_[k];
      if (!p.offload.none()) {
        L4Layout l;
        if (const char* field = CheckOffload(p, &l)) {
          NICMUX_LOG_RATELIMITED(kWarning, "port %s: dropped a %u-byte frame: bad offload request (%s)",
                                 src->name().c_str(), p.len, field);
          continue;  // dropped: its chain is completed with the others sent
        }
        if (caps.MustComplete(p.offload)) {
          if (p.offload.gso()) {
            if (const uint32_t r = flush(); r != kAll) return r;
            if (seg_out_.empty()) seg_out_.resize(kMaxGsoSegments);
            const uint32_t nseg = segmenter_.Cut(p, l, seg_out_);
            // Partial checksums: summed here only for a port that neither takes them nor sums
            // them in its copy.
            const bool sum_here = !caps.Accepts(seg_out_[0].offload);
            for (uint32_t at = 0; at < nseg;) {
              const uint32_t c = std::min<uint32_t>(kBurst, nseg - at);
              const PacketRef* segs[kBurst];
              for (uint32_t j = 0; j < c; ++j) {
                if (sum_here) CompleteChecksum(seg_out_[at + j]);
                segs[j] = &seg_out_[at + j];
              }
              const size_t took = dst->Tx(dq, {segs, c});
              at += static_cast<uint32_t>(took);
              if (took < c) break;
            }
            continue;
          }
          CompleteChecksum(p);
        }
      }
      ptrs[m] = &p;
      idx[m++] = k;
    }
    if (const uint32_t r = flush(); r != kAll) return r;
    return n;
  }

  Port* a_;
  Port* b_;
  Batch batch_;
  Segmenter segmenter_;
  std::vector<PacketRef> seg_out_;  // kMaxGsoSegments, made at the first GSO frame to cut
};

}  // namespace nicmux
