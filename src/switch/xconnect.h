// Xconnect: port A <-> port B, every packet from one to the other, queue pair q to queue pair
// q (mod the other side's count). The single-copy path of DESIGN.md: A's transmit chains become
// PacketRefs, B copies them into its receive chains, A completes the chains it sent and gives
// back the ones B had no room for (backpressure instead of loss). Offload requests are checked
// and, where B's caps do not take them, completed here as the switch does (docs/offloads.md).
#pragma once

#include <algorithm>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "base/log.h"
#include "packet/offload_ops.h"
#include "port/port.h"
#include "switch/forwarder.h"

namespace nicmux {

class Xconnect;

// One worker's context for the cross-connects: a Forwarder over the source queues the
// scheduler gives it. Page aligned, so that PreferNode can keep it on the worker's NUMA node.
class alignas(kNumaPageBytes) XconnectWorker final : public Forwarder {
 public:
  // shared: more than one worker (a destination queue is sent to under its TxLock).
  XconnectWorker(const Xconnect* x, bool shared) : Forwarder(shared), x_(x), shared_(shared) {}
  WorkDone Forward(uint16_t id, uint32_t q) override;
  // Its batch and segment table.
  void PreferNode(int node) override { nicmux::PreferNode(this, sizeof *this, node); }
  // One burst from every source queue (tests: one thread polls everything).
  WorkDone ForwardAll();

 private:

  void Move(Port* src, uint32_t sq, Port* dst, uint32_t dq, WorkDone* w) {
    const size_t room = TxRoomOf(dst, dq, shared_);
    // No room: the source's chains stay in its ring, so its worker does not sleep (its
    // ArmNotify sees them) and polls until the destination has room.
    if (room == 0) return;
    batch_.Clear();
    if (src->Rx(sq, batch_, room) == 0) {
      src->RxDone(sq, batch_, 0);  // (bad chains only: their completions may be deferred too)
      if (src->defers_signals()) [[unlikely]] debts_.NoteRx(src, sq);
      return;
    }
    const uint32_t n = batch_.size();
    bool plain = true;
    for (uint32_t k = 0; k < n; ++k) plain &= batch_[k].offload.none();
    size_t sent;
    if (plain) {
      const PacketRef* ptrs[kBurst];
      for (uint32_t k = 0; k < n; ++k) ptrs[k] = &batch_[k];
      sent = SendTo(dst, dq, {ptrs, n}, shared_, debts_);
    } else {
      sent = MoveWithOffloads(src, dst, dq);
    }
    for (size_t k = 0; k < sent; ++k) w->bytes += batch_[static_cast<uint32_t>(k)].len;
    w->packets += sent;
    src->RxDone(sq, batch_, sent);
    if (src->defers_signals()) [[unlikely]] debts_.NoteRx(src, sq);
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
      const size_t took = SendTo(dst, dq, {ptrs, m}, shared_, debts_);
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
              const size_t took = SendTo(dst, dq, {segs, c}, shared_, debts_);
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

  const Xconnect* x_;
  bool shared_;
  Batch batch_;
  Segmenter segmenter_;
  std::vector<PacketRef> seg_out_;  // kMaxGsoSegments, made at the first GSO frame to cut
};

// The cross-connects' table: pairs of ports, ids 2k and 2k+1 for pair k, fixed at start.
class Xconnect {
 public:
  explicit Xconnect(uint32_t workers) {
    for (uint32_t i = 0; i < workers; ++i) workers_.push_back(std::make_unique<XconnectWorker>(this, workers > 1));
  }
  // Before any worker runs. Returns a's id (b's is one more).
  uint16_t AddPair(Port* a, Port* b) {
    ports_.push_back(a);
    ports_.push_back(b);
    return static_cast<uint16_t>(ports_.size() - 2);
  }
  uint16_t num_ids() const { return static_cast<uint16_t>(ports_.size()); }
  Port* port(uint16_t id) const { return ports_[id]; }
  Port* peer(uint16_t id) const { return ports_[id ^ 1u]; }
  XconnectWorker* worker(uint32_t i) { return workers_[i].get(); }

 private:
  std::vector<Port*> ports_;
  std::vector<std::unique_ptr<XconnectWorker>> workers_;
};

inline WorkDone XconnectWorker::Forward(uint16_t id, uint32_t q) {
  WorkDone w;
  Port* src = x_->port(id);
  Port* dst = x_->peer(id);
  Move(src, q, dst, q % dst->NumQueuePairs(), &w);
  return w;
}

inline WorkDone XconnectWorker::ForwardAll() {
  WorkDone w;
  for (uint16_t id = 0; id < x_->num_ids(); ++id) {
    for (uint32_t q = 0; q < x_->port(id)->NumQueuePairs(); ++q) {
      const WorkDone d = Forward(id, q);
      w.packets += d.packets;
      w.bytes += d.bytes;
    }
  }
  return w;
}

}  // namespace nicmux
