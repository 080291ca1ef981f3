// Scheduler: nicmuxd's workers and which source queues each polls (docs/scheduler.md).
//
// - Assignment (QueueAssignment): a port's queues join when it is added — pinned ones
//   (queue_affinity) on their worker, the rest on the worker with the fewest queues — and
//   leave when it is removed. Only the workers whose list changes are paused.
// - Load: every Tick (the daemon's, once a second) reads each queue's packet counter; the
//   packets of the last interval are its load.
// - Rebalancing: when a balanced placement (greedy, heaviest first) would lower the busiest
//   worker's load by rebalance_pct or more, the busiest carries at least rebalance_min_pps,
//   and both held for rebalance_ticks ticks in a row, the queues that move are moved: each
//   move pauses only its two workers, between bursts (nothing in flight, nothing lost: a
//   chain not yet received stays in its ring).
// - NUMA: a worker pinned to a CPU is on that CPU's node (SchedulerOptions::topology); a
//   port's queues go to workers on the node of its memory (Port::numa_node, read every Tick)
//   when there are any, and are re-placed on the next Tick when that node changes (a guest's
//   new memory table). Pins still win. Each worker keeps its forwarder's buffers on its node
//   (Forwarder::PreferNode).
// - Busy polling: with busy_poll, at most max_busy_workers workers busy-poll at a time — the
//   busiest, re-decided every Tick with hysteresis — and the others poll adaptively.
// - Pausing: Pause()/Resume() pause every worker (a forwarder's port table changes);
//   PortPause pauses only the workers that poll one port's queues and closes the port's
//   transmit side to the others (Port::CloseTx) — a port's own changes (a guest's new memory
//   table, a queue stopping) stop no one else.
//
// Control thread only, except what the workers themselves do.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/counter.h"
#include "base/numa.h"
#include "base/pausable.h"
#include "base/result.h"
#include "sched/queue_assignment.h"
#include "sched/worker.h"

namespace nicmux {

struct SchedulerOptions {
  uint32_t workers = 1;
  std::vector<int> cpus;  // empty: not pinned; else one per worker
  uint32_t idle_poll_us = Worker::kDefaultIdlePollUs;  // Worker::kBusyPoll: busy_poll, within the default
  bool fixed_window = false;                           // always poll idle_poll_us (no adapting)
  // Workers never sleep (--busy-poll)...
  bool busy_poll = false;
  // ...at most this many at a time (the busiest; the others poll adaptively within
  // idle_poll_us). 0: no cap.
  uint32_t max_busy_workers = 0;
  // A worker that does not busy-poll takes over from one that does when its load is above the
  // other's by busy_swap_pct percent plus busy_swap_min_load packets, for busy_swap_ticks ticks
  // in a row (hysteresis: two workers with about the same load do not swap back and forth).
  uint32_t busy_swap_pct = 25;
  uint64_t busy_swap_min_load = 1000;
  uint32_t busy_swap_ticks = 3;
  // The CPUs' NUMA nodes (the daemon: NumaTopology::FromSysfs()).
  NumaTopology topology;
  // Rebalancing: the busiest worker's load must drop by at least this share (percent)...
  uint32_t rebalance_pct = 25;
  // ...it must carry at least this many packets per interval (below: nothing to gain)...
  uint64_t rebalance_min_load = 10000;
  // ...and both for this many ticks in a row (hysteresis). 0: never rebalance.
  uint32_t rebalance_ticks = 3;
  // A port's new NUMA node is followed once read this many ticks in a row.
  uint32_t node_hold_ticks = 3;
};

// A port's queue_affinity=Q:W/Q:W/... as a worker per queue pair (-1: not pinned): Q below
// queues, W below workers, each Q once. Errors name the port and the bad item.
Result<std::vector<int>> ParseQueueAffinity(const std::string& port, const std::string& text, uint32_t queues,
                                            uint32_t workers);

class Scheduler final : public Pausable {
 public:
  explicit Scheduler(const SchedulerOptions& o);
  ~Scheduler() override;

  uint32_t num_workers() const { return static_cast<uint32_t>(workers_.size()); }
  Worker& worker(uint32_t i) { return *workers_[i]; }
  const Worker& worker(uint32_t i) const { return *workers_[i]; }
  // Worker i's forwarding context, before Start().
  void SetForwarder(uint32_t i, Forwarder* f) { workers_[i]->SetForwarder(f); }
  Result<void> Start();
  void Stop();

  // Every worker, for changes of a forwarder's port table.
  void Pause() override;
  void Resume() override;

  // The port's queues join the assignment (pins[q]: the worker for queue q, -1 or missing:
  // any; each pin < num_workers(), checked by the caller). Pauses the workers that get one.
  void AddPort(Port* port, uint16_t id, const std::vector<int>& pins);
  // Its queues leave (the workers that polled them are paused meanwhile).
  void RemovePort(Port* port);

  // The Pausable a port is made with (PortContext::workers): see the header comment. The
  // port is named once it exists (set_port), and un-named before it is destroyed.
  class PortPause final : public Pausable {
   public:
    explicit PortPause(Scheduler* s) : s_(s) {}
    void set_port(Port* p) { port_ = p; }
    void Pause() override;
    void Resume() override;

   private:
    Scheduler* s_;
    Port* port_ = nullptr;
    int depth_ = 0;
    std::vector<uint32_t> paused_;  // the workers this pause holds
    Port* closed_ = nullptr;        // the port whose transmit side it closed
  };
  std::unique_ptr<PortPause> MakePortPause() { return std::make_unique<PortPause>(this); }

  // Once per interval (the daemon: a second). Measures each queue's load and rebalances when an
  // imbalance persisted. Returns true when queues moved.
  bool Tick();
  uint64_t rebalances() const { return rebalances_; }
  uint64_t queues_moved() const { return moved_; }
  // Queues moved to a worker on their port's new NUMA node.
  uint64_t numa_moves() const { return numa_moved_; }
  // Times the set of busy-polling workers changed (max_busy_workers).
  uint64_t busy_swaps() const { return busy_swaps_; }
  // The cap in force: 0 when there is none (none set, busy polling off, or not fewer than the
  // workers).
  uint32_t max_busy_workers() const {
    return opt_.busy_poll && opt_.max_busy_workers < workers_.size() ? opt_.max_busy_workers : 0;
  }

  // For `nicmuxctl sched show` and the metrics.
  struct QueueView {
    std::string port;
    uint32_t q = 0;
    bool pinned = false;
    uint64_t load = 0;  // packets in the last interval
    int node = -1;      // its port's NUMA node as of the last Tick (-1: unknown)
  };
  struct WorkerView {
    std::string name;
    int cpu = -1;
    int node = -1;  // its CPU's NUMA node (-1: not pinned)
    bool busy_poll = false;
    std::vector<QueueView> queues;
    uint64_t load = 0;  // packets in the last interval, its queues' sum
    // Over the last interval: its thread's CPU time and time asleep (percent of the
    // interval), wake-ups, and CPU nanoseconds per packet moved (0: no packets).
    double cpu_pct = 0, sleep_pct = 0;
    uint64_t wakeups = 0;
    uint64_t ns_per_packet = 0;
    // Over the last interval: the share of time in rounds that moved packets, the share of
    // rounds that did, and the cycles (CycleCount) of those rounds per packet moved.
    double busy_pct = 0, busy_rounds_pct = 0;
    uint64_t cycles_per_packet = 0;
  };
  std::vector<WorkerView> Show() const;

 private:
  struct Record {
    SourceQueue src;
    int pin = -1;
    int worker = -1;
    int node = -1;    // its port's NUMA node, as last acted on
    int seen_node = -1;        // a different node read, not yet held long enough
    uint32_t node_ticks = 0;   // ticks seen_node has been read in a row
    Counter packets;  // the worker adds, Tick reads
    uint64_t seen = 0;  // packets at the last Tick
    uint64_t load = 0;  // packets in the last interval
  };
  // The workers polling any of the port's queues, ascending.
  std::vector<uint32_t> PollersOf(const Port* port) const;
  // Gives worker w its list from recs_ (the caller has paused it, or it is not started).
  void Publish(uint32_t w);
  // Moves queues to the placement (one per record), pausing only the workers concerned.
  // Returns how many moved.
  uint64_t Apply(const std::vector<int>& placement, const char* why);
  // The placement's view of the records.
  std::vector<QueueLoad> Loads() const;
  // Reads each port's NUMA node; moves the queues whose node changed to a worker on it (when
  // there is one). True when queues moved.
  bool FollowNodes();
  // max_busy_workers: the busiest workers busy-poll (with hysteresis).
  void CapBusy(const std::vector<uint64_t>& worker_loads);

  // Per worker, its counters at the last Tick and the interval's figures (WorkerView).
  struct Interval {
    uint64_t cpu_ns = 0, sleep_ns = 0, sleeps = 0, packets = 0;  // at the last Tick
    uint64_t rounds = 0, busy_rounds = 0, busy_cycles = 0;        // at the last Tick
    double cpu_pct = 0, sleep_pct = 0, busy_pct = 0, busy_rounds_pct = 0;
    uint64_t wakeups = 0, ns_per_packet = 0, cycles_per_packet = 0;
  };

  SchedulerOptions opt_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<Interval> interval_;
  uint64_t last_tick_ns_ = 0;
  uint64_t last_tick_cycles_ = 0;  // CycleCount at the last Tick
  std::vector<std::unique_ptr<Record>> recs_;
  bool started_ = false;
  uint32_t imbalanced_ticks_ = 0;
  uint64_t rebalances_ = 0, moved_ = 0, numa_moved_ = 0;
  std::vector<int> worker_nodes_;  // per worker, its CPU's node (-1: not pinned)
  std::vector<bool> busy_;         // per worker, whether it busy-polls (max_busy_workers)
  uint32_t busy_change_ticks_ = 0;
  std::vector<bool> busy_want_;  // the set wanted for busy_change_ticks_ ticks in a row
  bool multi_node_ = false;      // the workers are on two NUMA nodes or more (FollowNodes)
  uint64_t busy_swaps_ = 0;
};

}  // namespace nicmux
