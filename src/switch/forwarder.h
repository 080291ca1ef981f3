// Forwarder: one worker's forwarding context — the L2 switch's (SwitchWorker) or the
// cross-connects' (XconnectWorker). The scheduler (src/sched/) decides which source queues a
// worker polls and calls Forward for each of them; the forwarder knows nothing about workers:
// it moves one bounded burst from the queue it is given and says how much it moved.
//
// A source queue is (port id, queue pair) in the forwarder's own port table (L2Switch ids,
// Xconnect ids); its Port* comes with it for the scheduler's per-queue notifications.
#pragma once

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "base/numa.h"
#include "port/port.h"

namespace nicmux {

struct WorkDone {
  uint64_t packets = 0;
  uint64_t bytes = 0;
};

// A queue the scheduler hands to a worker.
struct SourceQueue {
  Port* port = nullptr;
  uint16_t id = 0;  // the port's id in the forwarder's table
  uint16_t q = 0;   // queue pair
  bool operator==(const SourceQueue&) const = default;
};

// Signals a port deferred (interrupt moderation, Port::defers_signals) on queues this worker
// sent to or received from: noted after each Tx / RxDone into such a port, flushed by the
// worker each round once a deadline is due (Flush) and all at once before it sleeps or pauses
// (force). One worker's; `shared` as for SendTo (the Tx side's flush takes the TxLock then).
// A debt stays until the port says nothing is deferred there any more; one to a port closed
// for a change waits for it to open again (the change itself signals what it stops:
// VhostUserPort's stop hook).
class SignalDebts {
 public:
  explicit SignalDebts(bool shared) : shared_(shared) {}
  // After a Tx into queue q of p / an RxDone of p's queue q, on the same thread (and under
  // the same lock): a debt when the port deferred a signal there (Port::signal_due).
  void NoteTx(Port* p, uint32_t q) { Note(p, q, true, p->signal_due(q, true)); }
  void NoteRx(Port* p, uint32_t q) { Note(p, q, false, p->signal_due(q, false)); }
  bool empty() const { return debts_.empty(); }
  // Flushes what is due (force: everything that is deferred).
  void Flush(uint64_t now_ns, bool force) {
    if (!force && now_ns < next_ns_) return;
    next_ns_ = UINT64_MAX;
    for (size_t i = 0; i < debts_.size();) {
      const Debt& d = debts_[i];
      uint64_t next;
      if (!d.tx) {
        next = d.port->FlushRxSignal(d.q, now_ns, force);
      } else if (!shared_) {
        next = d.port->FlushTxSignal(d.q, now_ns, force);
      } else {
        std::lock_guard lock(d.port->tx_lock(d.q));
        // Closed: the port is changing its queues; the debt waits (looked at again in 50 us).
        next = d.port->tx_closed() ? now_ns + 50'000 : d.port->FlushTxSignal(d.q, now_ns, force);
      }
      if (next == 0) {
        debts_[i] = debts_.back();
        debts_.pop_back();
        continue;
      }
      next_ns_ = std::min(next_ns_, next);
      ++i;
    }
  }
  size_t size() const { return debts_.size(); }

 private:
  struct Debt {
    Port* port;
    uint32_t q;
    bool tx;
  };
  void Note(Port* p, uint32_t q, bool tx, uint64_t due) {
    if (due == 0) return;
    next_ns_ = std::min(next_ns_, due);
    for (const Debt& d : debts_) {
      if (d.port == p && d.q == q && d.tx == tx) return;
    }
    debts_.push_back({p, q, tx});
  }
  bool shared_;
  uint64_t next_ns_ = UINT64_MAX;
  std::vector<Debt> debts_;
};

// A destination queue's TxRoom / Tx as every forwarder does them: under its TxLock when more
// than one worker may send to it (shared), and, locked, nothing at all while the port is
// closed for a change of its own (Port::tx_closed): no room, nothing taken. A port that
// defers signals is noted in `debts`.
inline size_t TxRoomOf(Port* dst, uint32_t dq, bool shared) {
  if (!shared) return dst->TxRoom(dq);
  std::lock_guard lock(dst->tx_lock(dq));
  return dst->tx_closed() ? 0 : dst->TxRoom(dq);
}
inline size_t SendTo(Port* dst, uint32_t dq, std::span<const PacketRef* const> out, bool shared,
                     SignalDebts& debts) {
  if (!shared) {
    const size_t took = dst->Tx(dq, out);
    if (dst->defers_signals()) [[unlikely]] debts.NoteTx(dst, dq);
    return took;
  }
  std::lock_guard lock(dst->tx_lock(dq));
  if (dst->tx_closed()) return 0;
  const size_t took = dst->Tx(dq, out);
  if (dst->defers_signals()) [[unlikely]] debts.NoteTx(dst, dq);
  return took;
}

class Forwarder {
 public:
  virtual ~Forwarder() = default;
  // At most one burst (kBurst) from source queue q of port id. The caller owns the queue
  // (one worker at a time).
  virtual WorkDone Forward(uint16_t id, uint32_t q) = 0;
  // Signals deferred by the ports this worker sent to or received from (the Worker flushes
  // them: each round when due, all before it sleeps or pauses).
  SignalDebts& debts() { return debts_; }

  // The worker's thread, pinned to a CPU of NUMA node `node`, before its first Forward: the
  // forwarder keeps its own per-worker buffers on that node (docs/scheduler.md "NUMA").
  virtual void PreferNode(int node) {}

 protected:
  explicit Forwarder(bool shared) : debts_(shared) {}
  SignalDebts debts_;
};

}  // namespace nicmux
