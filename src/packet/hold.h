// Holds: how a destination keeps a packet's memory past the source's RxDone instead of copying
// it (zero copy towards a device, docs/architecture.md "The port contract", docs/dpdk.md).
//
// A source that can defer completing a packet's buffers names a PacketHolder in the PacketRef
// (PacketRef::holder, with its own hold_cookie); every other PacketRef has holder == nullptr.
// The switch clears it wherever the frame is not sent whole and unchanged to one port (a flood,
// a VLAN tag pushed or popped, a checksum completed, a GSO frame cut): those are copied as
// before. A destination that wants the memory calls, inside its Tx:
//
//   t = p.holder->Hold(p)   // on the thread that called the source's Rx (the switch's worker,
//                           // between Rx and RxDone); kNoHold: copy as usual
//   p.holder->Unhold(t)     // the same Tx, when the packet was not sent after all
//   p.holder->Release(t)    // any thread, exactly once, when the device is done with the bytes
//
// and the source's RxDone completes every sent packet but the held ones, which it completes
// when their release comes back (on its own thread: releases cross threads through a
// lock-free ring).
//
// HoldTable is the source's side, one per source queue: the bound on holds at once, the slots,
// the ring of releases, and what keeps the memory of held packets alive (a snapshot of guest
// memory, kept by reference until the last hold into it is released, whatever the source does
// meanwhile: a new memory table, a disconnect, the port removed). The table is reference
// counted by its owner and by every hold outstanding: a port that goes away abandons it, and
// the last release deletes it (so a release never touches freed memory, and the memory it
// keeps is unmapped only when no device reads it any more).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "base/check.h"
#include "base/counter.h"

namespace nicmux {

struct PacketRef;

class PacketHolder {
 public:
  static constexpr uint32_t kNoHold = ~0u;
  // See above. Hold and Unhold: the source's thread; Release: any thread.
  virtual uint32_t Hold(const PacketRef& p) = 0;
  virtual void Unhold(uint32_t ticket) = 0;
  virtual void Release(uint32_t ticket) = 0;

 protected:
  ~PacketHolder() = default;
};

// A bounded multi-producer, single-consumer ring of tickets (D. Vyukov's bounded queue with a
// sequence number per cell). Push never fails while fewer than capacity() values are in it,
// which the caller guarantees (a HoldTable has no more holds outstanding than slots).
class MpscTicketRing {
 public:
  explicit MpscTicketRing(uint32_t capacity_pow2);
  void Push(uint32_t v);
  bool Pop(uint32_t* v);  // the one consumer
  bool Empty() const;     // the consumer's view
  uint32_t capacity() const { return mask_ + 1; }

 private:
  struct alignas(64) Cell {
    std::atomic<uint32_t> seq;
    uint32_t value;
  };
  std::unique_ptr<Cell[]> cells_;
  uint32_t mask_;
  alignas(64) std::atomic<uint32_t> tail_{0};  // producers
  alignas(64) uint32_t head_ = 0;              // the consumer
};

class HoldTable final : public PacketHolder {
 public:
  // The most holds one table gives at once (a source queue's ring may be larger: the table's
  // limit is set by the owner, a fraction of its ring).
  static constexpr uint32_t kMaxSlots = 1024;

  // A table owned by the caller (one reference): give it up with Abandon(), never delete.
  static HoldTable* Create(uint32_t slots = kMaxSlots);
  HoldTable(const HoldTable&) = delete;
  HoldTable& operator=(const HoldTable&) = delete;

  // The owner goes away: its reference is dropped. Holds outstanding keep the table (and the
  // memory they keep alive) until their release; the last one deletes it.
  void Abandon();

  // ---- The owner's thread (or the owner's control thread with its worker paused).
  // Holds allowed at once from now on (<= the slots; 0: none, Hold refuses).
  void set_limit(uint32_t n) { limit_ = n < slots_.size() ? n : static_cast<uint32_t>(slots_.size()); }
  uint32_t limit() const { return limit_; }
  // What a new hold keeps alive (the source's memory now; nullptr: nothing to keep, Hold
  // refuses). A hold taken while it is S keeps S until released, whatever is set after. The
  // owner clears it when its queue stops, so that the table keeps nothing of a departed peer
  // but what holds still need.
  void set_keepalive(std::shared_ptr<const void> keep) { keep_ = std::move(keep); }
  const void* keepalive() const { return keep_.get(); }

  // The source's cookie for a packet: its chain's id (what the completion names) and its index
  // in the burst (bit `index` of TakeBatchHeld()).
  static uint32_t Cookie(uint16_t id, uint32_t index) { return index << 16 | id; }
  // The burst's chains a destination held (bit i: the chain at index i), cleared.
  uint32_t TakeBatchHeld() { return std::exchange(batch_held_, 0u); }

  // Completions: done(id) for every released hold (in release order), their slots freed.
  // Returns how many.
  template <typename Done>
  uint32_t Drain(Done&& done) {
    uint32_t n = 0, t;
    while (ring_.Pop(&t)) {
      NICMUX_CHECK(t < slots_.size() && slots_[t].state != Slot::kFree);
      if (slots_[t].state == Slot::kHeld) {
        done(slots_[t].id);
        ++n;
      }
      Free(t);
    }
    return n;
  }
  // The source's queue stops (a memory table change, a disconnect, GET_VRING_BASE): Drain,
  // then every hold still outstanding is completed now, early: done(id) for each; its slot
  // and the memory it keeps stay until its release, which then completes nothing. Returns
  // how many were completed early.
  template <typename Done>
  uint32_t CompleteEarly(Done&& done) {
    Drain(done);
    uint32_t n = 0;
    for (Slot& s : slots_) {
      if (s.state != Slot::kHeld) continue;
      done(s.id);
      s.state = Slot::kEarly;
      ++n;
    }
    early_.Add(n);
    return n;
  }
  // Holds given and not yet drained (early ones included).
  uint32_t outstanding() const { return outstanding_; }
  // Releases waiting for Drain.
  bool release_pending() const { return !ring_.Empty(); }

  // ---- PacketHolder.
  uint32_t Hold(const PacketRef& p) override;
  void Unhold(uint32_t ticket) override;
  void Release(uint32_t ticket) override;

  // Any thread: holds completed early (their frame possibly not yet sent by the device).
  uint64_t early() const { return early_.Get(); }

 private:
  explicit HoldTable(uint32_t slots);
  ~HoldTable();
  struct Pin {
    std::shared_ptr<const void> keep;
    uint32_t n = 0;
  };
  struct Slot {
    enum State : uint8_t { kFree, kHeld, kEarly };
    State state = kFree;
    uint8_t index = 0;  // in the burst
    uint16_t id = 0;
    Pin* pin = nullptr;
  };
  void Free(uint32_t t);
  void Unpin(Pin* p);

  std::vector<Slot> slots_;
  std::vector<uint32_t> free_;  // a stack of free slots
  std::vector<std::unique_ptr<Pin>> pins_;
  std::shared_ptr<const void> keep_;
  uint32_t limit_ = 0;
  uint32_t outstanding_ = 0;
  uint32_t batch_held_ = 0;
  Counter early_;
  MpscTicketRing ring_;
  // The owner's reference and one per hold outstanding (taken by Hold, given back by Release
  // or Unhold): the table is deleted when it reaches 0.
  std::atomic<uint32_t> refs_{1};
};

}  // namespace nicmux
