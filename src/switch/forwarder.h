// Forwarder: one worker's forwarding context — the L2 switch's (SwitchWorker) or the
// cross-connects' (XconnectWorker). The scheduler (src/sched/) decides which source queues a
// worker polls and calls Forward for each of them; the forwarder knows nothing about workers:
// it moves one bounded burst from the queue it is given and says how much it moved.
//
// A source queue is (port id, queue pair) in the forwarder's own port table (L2Switch ids,
// Xconnect ids); its Port* comes with it for the scheduler's per-queue notifications.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

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

// A destination queue's TxRoom / Tx as every forwarder does them: under its TxLock when more
// than one worker may send to it (shared), and, locked, nothing at all while the port is
// closed for a change of its own (Port::tx_closed): no room, nothing taken.
inline size_t TxRoomOf(Port* dst, uint32_t dq, bool shared) {
  if (!shared) return dst->TxRoom(dq);
  std::lock_guard lock(dst->tx_lock(dq));
  return dst->tx_closed() ? 0 : dst->TxRoom(dq);
}
inline size_t SendTo(Port* dst, uint32_t dq, std::span<const PacketRef* const> out, bool shared) {
  if (!shared) return dst->Tx(dq, out);
  std::lock_guard lock(dst->tx_lock(dq));
  return dst->tx_closed() ? 0 : dst->Tx(dq, out);
}

class Forwarder {
 public:
  virtual ~Forwarder() = default;
  // At most one burst (kBurst) from source queue q of port id. The caller owns the queue
  // (one worker at a time).
  virtual WorkDone Forward(uint16_t id, uint32_t q) = 0;
};

}  // namespace nicmux
