// Counters read by the control plane while a worker writes them. One writer per counter (the
// thread that owns the queue or port), any number of readers: relaxed load + store, no locked
// read-modify-write on the hot path.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "base/drop_reason.h"

namespace nicmux {

class Counter {
 public:
  void Add(uint64_t n = 1) { v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed); }
  uint64_t Get() const { return v_.load(std::memory_order_relaxed); }
  void Reset() { v_.store(0, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> v_{0};
};

// One counter per DropReason.
class DropCounters {
 public:
  void Add(DropReason r, uint64_t n = 1) { c_[static_cast<size_t>(r)].Add(n); }
  uint64_t Get(DropReason r) const { return c_[static_cast<size_t>(r)].Get(); }
  uint64_t Total() const {
    uint64_t t = 0;
    for (const auto& c : c_) t += c.Get();
    return t;
  }
  void Reset() {
    for (auto& c : c_) c.Reset();
  }

 private:
  std::array<Counter, kNumDropReasons> c_{};
};

}  // namespace nicmux
