// QueueAssignment: which worker polls which source queue — the scheduler's placement policy,
// pure (no threads, no ports), so it is tested on its own.
//
// - NUMA: a queue whose port's memory is on a known node goes only to workers on that node
//   (pinned to one of its CPUs), when there is any; otherwise to any worker. Both PlaceNew and
//   Balanced keep to this; pins still win.
// - A queue pinned by configuration (queue_affinity) stays on its worker, whatever the load.
// - A new queue goes to the worker with the fewest queues (ties: the least load, then the
//   lowest index): with nothing measured yet this is round robin, and a port's queues spread
//   over the workers.
// - Rebalancing (Balanced): the unpinned busy queues, heaviest first, each onto the worker with
//   the least load so far (greedy longest-processing-time), the pinned loads counted first;
//   idle queues stay where they are. The
//   scheduler applies it only when it lowers the busiest worker's load by a margin, and only
//   when that margin persisted (sched/scheduler.h: hysteresis).
#pragma once

#include <cstdint>
#include <vector>

namespace nicmux {

struct QueueLoad {
  uint64_t load = 0;  // measured per interval (packets); 0: idle or not measured yet
  int pin = -1;       // the worker it must be on (queue_affinity), -1: any
  int worker = -1;    // where it is now, -1: not placed yet
  int node = -1;      // the NUMA node of its port's memory, -1: unknown (Port::numa_node)
};

class QueueAssignment {
 public:
  // worker_nodes[w]: worker w's NUMA node (-1: not pinned, any); empty: no NUMA preference.
  using Nodes = std::vector<int>;
  // Places every queue with worker < 0 (pinned ones on their pin); the others keep theirs.
  static void PlaceNew(std::vector<QueueLoad>& qs, uint32_t workers, const Nodes& worker_nodes = {});
  // A balanced placement of all queues (pinned ones on their pin), as a worker per queue.
  static std::vector<int> Balanced(const std::vector<QueueLoad>& qs, uint32_t workers,
                                   const Nodes& worker_nodes = {});
  // True when worker w may take a queue of node `node`: any worker when the node is unknown
  // or no worker is on it, else only the workers on it.
  static bool Eligible(uint32_t w, int node, uint32_t workers, const Nodes& worker_nodes);
  // Per worker: the sum of its queues' loads under a placement (a worker per queue).
  static std::vector<uint64_t> WorkerLoads(const std::vector<QueueLoad>& qs, const std::vector<int>& placement,
                                           uint32_t workers);
  // The placement the queues have now.
  static std::vector<int> Current(const std::vector<QueueLoad>& qs);
  static uint64_t Max(const std::vector<uint64_t>& v);
};

}  // namespace nicmux
