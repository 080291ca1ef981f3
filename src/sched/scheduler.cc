#include "sched/scheduler.h"

#include <algorithm>

#include "base/check.h"
#include "base/log.h"

namespace nicmux {

Result<std::vector<int>> ParseQueueAffinity(const std::string& port, const std::string& text, uint32_t queues,
                                            uint32_t workers) {
  std::vector<int> pins(queues, -1);
  auto number = [](const std::string& t, uint32_t* v) {
    if (t.empty() || t.size() > 6 || t.find_first_not_of("0123456789") != std::string::npos) return false;
    *v = static_cast<uint32_t>(std::stoul(t));
    return true;
  };
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find('/', at), text.size());
    const std::string item = text.substr(at, end - at);
    const std::string where = "port " + port + ": queue_affinity: '" + item + "'";
    const size_t colon = item.find(':');
    uint32_t q = 0, w = 0;
    if (colon == std::string::npos || !number(item.substr(0, colon), &q) || !number(item.substr(colon + 1), &w)) {
      return Error(where + " is not QUEUE:WORKER");
    }
    if (q >= queues) {
      return Error(where + ": the port has " + std::to_string(queues) + " queue pair(s), 0.." +
                   std::to_string(queues - 1));
    }
    if (w >= workers) {
      return Error(where + ": there are " + std::to_string(workers) + " worker(s), 0.." + std::to_string(workers - 1) +
                   " (--workers)");
    }
    if (pins[q] >= 0) return Error(where + ": queue " + std::to_string(q) + " is pinned twice");
    pins[q] = static_cast<int>(w);
    at = end + 1;
  }
  return pins;
}

Scheduler::Scheduler(const SchedulerOptions& o) : opt_(o) {
  NICMUX_CHECK(o.workers >= 1);
  opt_.busy_poll = o.busy_poll || o.idle_poll_us == Worker::kBusyPoll;
  const uint32_t idle_poll_us = o.idle_poll_us == Worker::kBusyPoll ? Worker::kDefaultIdlePollUs : o.idle_poll_us;
  // With one node there is nothing to prefer: no worker has a node for placement.
  const bool numa = o.topology.nodes() > 1;
  for (uint32_t i = 0; i < o.workers; ++i) {
    const int cpu = i < o.cpus.size() ? o.cpus[i] : -1;
    auto w = std::make_unique<Worker>("worker" + std::to_string(i), cpu, idle_poll_us, o.fixed_window);
    const int node = numa ? o.topology.NodeOfCpu(cpu) : -1;
    worker_nodes_.push_back(node);
    w->SetNode(node);
    // Until loads are measured, the first max_busy_workers busy-poll.
    busy_.push_back(opt_.busy_poll && (o.max_busy_workers == 0 || i < o.max_busy_workers));
    w->SetBusyPoll(busy_.back());
    workers_.push_back(std::move(w));
  }
  std::vector<int> nodes;
  for (int n : worker_nodes_) {
    if (n >= 0 && std::find(nodes.begin(), nodes.end(), n) == nodes.end()) nodes.push_back(n);
  }
  multi_node_ = nodes.size() > 1;
}

Scheduler::~Scheduler() { Stop(); }

Result<void> Scheduler::Start() {
  for (auto& w : workers_) NICMUX_TRY(w->Start());
  started_ = true;
  return Ok();
}

void Scheduler::Stop() {
  for (auto& w : workers_) w->Stop();
  started_ = false;
}

void Scheduler::Pause() {
  for (auto& w : workers_) w->Pause();
}

void Scheduler::Resume() {
  for (auto it = workers_.rbegin(); it != workers_.rend(); ++it) (*it)->Resume();
}

std::vector<uint32_t> Scheduler::PollersOf(const Port* port) const {
  std::vector<uint32_t> out;
  for (const auto& r : recs_) {
    if (r->src.port == port && r->worker >= 0) out.push_back(static_cast<uint32_t>(r->worker));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

void Scheduler::Publish(uint32_t w) {
  std::vector<Worker::Polled> qs;
  for (const auto& r : recs_) {
    if (r->worker == static_cast<int>(w)) qs.push_back({r->src, &r->packets});
  }
  workers_[w]->SetQueues(std::move(qs));
}

std::vector<QueueLoad> Scheduler::Loads() const {
  std::vector<QueueLoad> qs;
  qs.reserve(recs_.size());
  for (const auto& r : recs_) qs.push_back({r->load, r->pin, r->worker, r->node});
  return qs;
}

void Scheduler::AddPort(Port* port, uint16_t id, const std::vector<int>& pins) {
  std::vector<QueueLoad> qs = Loads();
  const size_t first = qs.size();
  const int node = port->numa_node();
  for (uint32_t q = 0; q < port->NumQueuePairs(); ++q) {
    const int pin = q < pins.size() ? pins[q] : -1;
    NICMUX_CHECK(pin < static_cast<int>(workers_.size()));
    qs.push_back({0, pin, -1, node});
    auto r = std::make_unique<Record>();
    r->src = {port, id, static_cast<uint16_t>(q)};
    r->pin = pin;
    r->node = node;
    recs_.push_back(std::move(r));
  }
  QueueAssignment::PlaceNew(qs, num_workers(), worker_nodes_);
  std::vector<uint32_t> touched;
  for (size_t i = first; i < qs.size(); ++i) {
    recs_[i]->worker = qs[i].worker;
    touched.push_back(static_cast<uint32_t>(qs[i].worker));
  }
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  for (uint32_t w : touched) {
    PauseGuard pause(*workers_[w]);
    Publish(w);
  }
}

void Scheduler::RemovePort(Port* port) {
  const std::vector<uint32_t> pollers = PollersOf(port);
  for (uint32_t w : pollers) workers_[w]->Pause();
  std::erase_if(recs_, [&](const std::unique_ptr<Record>& r) { return r->src.port == port; });
  for (uint32_t w : pollers) Publish(w);
  for (auto it = pollers.rbegin(); it != pollers.rend(); ++it) workers_[*it]->Resume();
}

void Scheduler::PortPause::Pause() {
  if (depth_++ > 0) return;
  paused_ = port_ ? s_->PollersOf(port_) : std::vector<uint32_t>{};
  for (uint32_t w : paused_) s_->workers_[w]->Pause();
  // The other workers may still send to it: they find it closed (under its TxLocks) until
  // Resume. With one worker there is no other.
  closed_ = port_ != nullptr && paused_.size() < s_->workers_.size() ? port_ : nullptr;
  if (closed_) closed_->CloseTx();
}

void Scheduler::PortPause::Resume() {
  NICMUX_CHECK(depth_ > 0);
  if (--depth_ > 0) return;
  if (closed_) closed_->OpenTx();
  closed_ = nullptr;
  for (auto it = paused_.rbegin(); it != paused_.rend(); ++it) s_->workers_[*it]->Resume();
  paused_.clear();
}

uint64_t Scheduler::Apply(const std::vector<int>& placement, const char* why) {
  // Each moving queue: its old and new worker paused, the lists of both republished.
  std::vector<uint32_t> touched;
  for (size_t i = 0; i < recs_.size(); ++i) {
    if (placement[i] == recs_[i]->worker) continue;
    touched.push_back(static_cast<uint32_t>(recs_[i]->worker));
    touched.push_back(static_cast<uint32_t>(placement[i]));
  }
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  if (touched.empty()) return 0;
  for (uint32_t w : touched) workers_[w]->Pause();
  uint64_t moved = 0;
  for (size_t i = 0; i < recs_.size(); ++i) {
    if (placement[i] == recs_[i]->worker) continue;
    NICMUX_LOG(kInfo, "scheduler: port %s queue %u moves from worker%d to worker%d (%s; %lu packets/interval, node %d)",
               recs_[i]->src.port->name().c_str(), recs_[i]->src.q, recs_[i]->worker, placement[i], why,
               static_cast<unsigned long>(recs_[i]->load), recs_[i]->node);
    recs_[i]->worker = placement[i];
    ++moved;
  }
  for (uint32_t w : touched) Publish(w);
  for (auto it = touched.rbegin(); it != touched.rend(); ++it) workers_[*it]->Resume();
  return moved;
}

bool Scheduler::FollowNodes() {
  // One node (or no pinned worker): nothing to follow, and no port is asked.
  if (!multi_node_) return false;
  std::vector<QueueLoad> qs = Loads();
  std::vector<std::pair<const Port*, int>> read;  // each port asked once
  bool move = false;
  for (size_t i = 0; i < recs_.size(); ++i) {
    Record& r = *recs_[i];
    int node = -2;
    for (const auto& [p, n] : read) {
      if (p == r.src.port) node = n;
    }
    if (node == -2) {
      node = r.src.port->numa_node();
      read.emplace_back(r.src.port, node);
    }
    if (node == r.node) {
      r.node_ticks = 0;
      continue;
    }
    // A new node must hold node_hold_ticks ticks in a row before the queue follows it: a
    // frontend that changes memory tables every second cannot make workers pause each time.
    if (node != r.seen_node) {
      r.seen_node = node;
      r.node_ticks = 0;
    }
    if (++r.node_ticks < std::max<uint32_t>(1, opt_.node_hold_ticks)) continue;
    r.node_ticks = 0;
    // Debug: the frontend decides when (each new memory table, each reconnect); what moves is
    // logged by Apply.
    if (r.src.q == 0) {
      NICMUX_LOG(kDebug, "scheduler: port %s: its memory is on NUMA node %d now (was %d)",
                 r.src.port->name().c_str(), node, r.node);
    }
    r.node = qs[i].node = node;
    // Pinned, unknown, already on a worker of the node, or no worker on it: it stays.
    if (r.pin >= 0 || node < 0 ||
        QueueAssignment::Eligible(static_cast<uint32_t>(r.worker), node, num_workers(), worker_nodes_)) {
      continue;
    }
    qs[i].worker = -1;
    move = true;
  }
  if (!move) return false;
  QueueAssignment::PlaceNew(qs, num_workers(), worker_nodes_);
  numa_moved_ += Apply(QueueAssignment::Current(qs), "its port's NUMA node");
  return true;
}

void Scheduler::CapBusy(const std::vector<uint64_t>& load) {
  const uint32_t n = num_workers(), cap = opt_.max_busy_workers;
  if (!opt_.busy_poll || cap == 0 || cap >= n) return;
  // The busiest `cap`, a busy-polling worker's load counted with the margin another must beat.
  std::vector<uint64_t> score(n);
  for (uint32_t w = 0; w < n; ++w) {
    score[w] = busy_[w] ? load[w] + load[w] * opt_.busy_swap_pct / 100 + opt_.busy_swap_min_load : load[w];
  }
  std::vector<uint32_t> order(n);
  for (uint32_t w = 0; w < n; ++w) order[w] = w;
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return score[a] > score[b]; });
  std::vector<bool> want(n, false);
  for (uint32_t i = 0; i < cap; ++i) want[order[i]] = true;
  if (want == busy_) {
    busy_change_ticks_ = 0;
    busy_want_.clear();
    return;
  }
  // The same set wanted busy_swap_ticks ticks in a row, not any change.
  if (want != busy_want_) {
    busy_want_ = want;
    busy_change_ticks_ = 0;
  }
  if (++busy_change_ticks_ < std::max<uint32_t>(1, opt_.busy_swap_ticks)) return;
  busy_change_ticks_ = 0;
  busy_want_.clear();
  // Off first, then on: never more than the cap at once.
  for (int on = 0; on < 2; ++on) {
    for (uint32_t w = 0; w < n; ++w) {
      if (want[w] == busy_[w] || want[w] != static_cast<bool>(on)) continue;
      NICMUX_LOG(kInfo, "scheduler: worker%u %s (max_busy_workers=%u; %lu packets/interval)", w,
                 on ? "busy-polls now" : "polls adaptively now", cap, static_cast<unsigned long>(load[w]));
      workers_[w]->SetBusyPoll(on != 0);
    }
  }
  busy_ = want;
  ++busy_swaps_;
}

bool Scheduler::Tick() {
  const uint64_t now_ns = MonotonicNowNs();
  const uint64_t now_cycles = CycleCount();
  const uint64_t dt = last_tick_ns_ != 0 && now_ns > last_tick_ns_ ? now_ns - last_tick_ns_ : 0;
  const uint64_t dcycles = last_tick_cycles_ != 0 && now_cycles > last_tick_cycles_ ? now_cycles - last_tick_cycles_ : 0;
  last_tick_ns_ = now_ns;
  last_tick_cycles_ = now_cycles;
  interval_.resize(workers_.size());
  for (uint32_t w = 0; w < num_workers(); ++w) {
    Interval& in = interval_[w];
    const Worker& wk = *workers_[w];
    const uint64_t cpu = wk.cpu_ns(), slept = wk.sleep_ns(), sleeps = wk.sleeps(), packets = wk.packets();
    const uint64_t rounds = wk.rounds(), busy_rounds = wk.busy_rounds(), busy_cycles = wk.busy_cycles();
    if (dt != 0) {
      in.cpu_pct = 100.0 * static_cast<double>(cpu - std::min(cpu, in.cpu_ns)) / static_cast<double>(dt);
      // (A sleep is counted when it ends: one that began in the previous interval can push this
      // past 100.)
      in.sleep_pct = std::min(100.0, 100.0 * static_cast<double>(slept - std::min(slept, in.sleep_ns)) / static_cast<double>(dt));
      in.wakeups = sleeps - in.sleeps;
      const uint64_t moved = packets - in.packets;
      in.ns_per_packet = moved ? (cpu - std::min(cpu, in.cpu_ns)) / moved : 0;
      const uint64_t busy = busy_cycles - std::min(busy_cycles, in.busy_cycles);
      in.busy_pct = dcycles ? std::min(100.0, 100.0 * static_cast<double>(busy) / static_cast<double>(dcycles)) : 0;
      const uint64_t nr = rounds - std::min(rounds, in.rounds);
      in.busy_rounds_pct = nr ? 100.0 * static_cast<double>(busy_rounds - std::min(busy_rounds, in.busy_rounds)) / static_cast<double>(nr) : 0;
      in.cycles_per_packet = moved ? busy / moved : 0;
    }
    in.rounds = rounds;
    in.busy_rounds = busy_rounds;
    in.busy_cycles = busy_cycles;
    in.cpu_ns = cpu;
    in.sleep_ns = slept;
    in.sleeps = sleeps;
    in.packets = packets;
  }
  for (auto& r : recs_) {
    const uint64_t now = r->packets.Get();
    r->load = now - r->seen;
    r->seen = now;
  }
  std::vector<QueueLoad> qs = Loads();
  const std::vector<uint64_t> loads = QueueAssignment::WorkerLoads(qs, QueueAssignment::Current(qs), num_workers());
  CapBusy(loads);
  if (FollowNodes()) return true;
  if (opt_.rebalance_ticks == 0 || workers_.size() < 2) return false;
  const uint64_t busiest = QueueAssignment::Max(loads);
  const std::vector<int> better = QueueAssignment::Balanced(qs, num_workers(), worker_nodes_);
  const uint64_t after = QueueAssignment::Max(QueueAssignment::WorkerLoads(qs, better, num_workers()));
  const bool worth = busiest >= opt_.rebalance_min_load && after * 100 <= busiest * (100 - opt_.rebalance_pct);
  imbalanced_ticks_ = worth ? imbalanced_ticks_ + 1 : 0;
  if (imbalanced_ticks_ < opt_.rebalance_ticks) return false;
  imbalanced_ticks_ = 0;
  NICMUX_LOG(kInfo, "scheduler: rebalancing, the busiest worker's load %lu -> %lu packets/interval",
             static_cast<unsigned long>(busiest), static_cast<unsigned long>(after));
  moved_ += Apply(better, "load");
  ++rebalances_;
  return true;
}

std::vector<Scheduler::WorkerView> Scheduler::Show() const {
  std::vector<WorkerView> out;
  for (uint32_t w = 0; w < num_workers(); ++w) {
    WorkerView v;
    v.name = workers_[w]->name();
    v.cpu = workers_[w]->cpu();
    v.node = opt_.topology.NodeOfCpu(v.cpu);
    v.busy_poll = workers_[w]->busy_poll();
    if (w < interval_.size()) {
      v.cpu_pct = interval_[w].cpu_pct;
      v.sleep_pct = interval_[w].sleep_pct;
      v.wakeups = interval_[w].wakeups;
      v.ns_per_packet = interval_[w].ns_per_packet;
      v.busy_pct = interval_[w].busy_pct;
      v.busy_rounds_pct = interval_[w].busy_rounds_pct;
      v.cycles_per_packet = interval_[w].cycles_per_packet;
    }
    for (const auto& r : recs_) {
      if (r->worker != static_cast<int>(w)) continue;
      v.queues.push_back({r->src.port->name(), r->src.q, r->pin >= 0, r->load, r->node});
      v.load += r->load;
    }
    out.push_back(std::move(v));
  }
  return out;
}

}  // namespace nicmux
