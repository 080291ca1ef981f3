#include "sched/queue_assignment.h"

#include <algorithm>
#include <numeric>

namespace nicmux {

bool QueueAssignment::Eligible(uint32_t w, int node, uint32_t workers, const Nodes& worker_nodes) {
  if (node < 0 || worker_nodes.size() < workers) return true;
  if (worker_nodes[w] == node) return true;
  for (uint32_t v = 0; v < workers; ++v) {
    if (worker_nodes[v] == node) return false;  // there is one on its node, and w is not
  }
  return true;
}

void QueueAssignment::PlaceNew(std::vector<QueueLoad>& qs, uint32_t workers, const Nodes& worker_nodes) {
  std::vector<uint32_t> count(workers, 0);
  std::vector<uint64_t> load(workers, 0);
  for (const QueueLoad& q : qs) {
    if (q.worker >= 0 && static_cast<uint32_t>(q.worker) < workers) {
      ++count[q.worker];
      load[q.worker] += q.load;
    }
  }
  for (QueueLoad& q : qs) {
    if (q.worker >= 0 && static_cast<uint32_t>(q.worker) < workers) continue;
    uint32_t best = workers;
    if (q.pin >= 0 && static_cast<uint32_t>(q.pin) < workers) {
      best = static_cast<uint32_t>(q.pin);
    } else {
      for (uint32_t w = 0; w < workers; ++w) {
        if (!Eligible(w, q.node, workers, worker_nodes)) continue;
        if (best == workers || count[w] < count[best] || (count[w] == count[best] && load[w] < load[best])) best = w;
      }
    }
    q.worker = static_cast<int>(best);
    ++count[best];
    load[best] += q.load;
  }
}

std::vector<int> QueueAssignment::Balanced(const std::vector<QueueLoad>& qs, uint32_t workers,
                                           const Nodes& worker_nodes) {
  std::vector<int> out(qs.size(), 0);
  std::vector<uint64_t> load(workers, 0);
  std::vector<uint32_t> count(workers, 0);
  std::vector<size_t> free;
  for (size_t i = 0; i < qs.size(); ++i) {
    const bool placed = qs[i].worker >= 0 && static_cast<uint32_t>(qs[i].worker) < workers;
    if (qs[i].pin >= 0 && static_cast<uint32_t>(qs[i].pin) < workers) {
      out[i] = qs[i].pin;
    } else if (qs[i].load == 0 && placed) {
      // An idle queue stays: moving it gains nothing (it would pile onto the least-loaded
      // worker and overload it when it wakes up) and costs two workers a pause.
      out[i] = qs[i].worker;
    } else {
      free.push_back(i);
      continue;
    }
    load[out[i]] += qs[i].load;
    ++count[out[i]];
  }
  // Heaviest first; equal loads keep their order (stable), so idle queues spread evenly.
  std::stable_sort(free.begin(), free.end(), [&](size_t a, size_t b) { return qs[a].load > qs[b].load; });
  for (size_t i : free) {
    uint32_t best = workers;
    for (uint32_t w = 0; w < workers; ++w) {
      if (!Eligible(w, qs[i].node, workers, worker_nodes)) continue;
      if (best == workers || load[w] < load[best] || (load[w] == load[best] && count[w] < count[best])) best = w;
    }
    // Where loads tie, a queue stays where it is (no move for nothing).
    if (qs[i].worker >= 0 && static_cast<uint32_t>(qs[i].worker) < workers &&
        Eligible(static_cast<uint32_t>(qs[i].worker), qs[i].node, workers, worker_nodes) &&
        load[qs[i].worker] == load[best] && count[qs[i].worker] <= count[best]) {
      best = static_cast<uint32_t>(qs[i].worker);
    }
    out[i] = static_cast<int>(best);
    load[best] += qs[i].load;
    ++count[best];
  }
  return out;
}

std::vector<uint64_t> QueueAssignment::WorkerLoads(const std::vector<QueueLoad>& qs, const std::vector<int>& placement,
                                                   uint32_t workers) {
  std::vector<uint64_t> load(workers, 0);
  for (size_t i = 0; i < qs.size(); ++i) {
    if (placement[i] >= 0 && static_cast<uint32_t>(placement[i]) < workers) load[placement[i]] += qs[i].load;
  }
  return load;
}

std::vector<int> QueueAssignment::Current(const std::vector<QueueLoad>& qs) {
  std::vector<int> out;
  out.reserve(qs.size());
  for (const QueueLoad& q : qs) out.push_back(q.worker);
  return out;
}

uint64_t QueueAssignment::Max(const std::vector<uint64_t>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}

}  // namespace nicmux
