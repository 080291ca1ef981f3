// Test doubles for the scheduler's tests: a forwarder that counts its calls and moves what it
// is told to, and a one-queue port that offers a kick fd (or cannot sleep).
#pragma once

#include <atomic>
#include <chrono>
#include <thread>
#include <string>
#include <vector>

#include "base/log.h"
#include "port/port.h"
#include "switch/forwarder.h"

namespace nicmux {

// Waits for an event with a generous bound (the machine may be busy): true once done().
template <typename F>
bool WaitFor(F done, std::chrono::milliseconds limit = std::chrono::seconds(20)) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return done();
}

class FakeForwarder final : public Forwarder {
 public:
  // shared: as with more than one worker (a Tx debt is flushed under the port's TxLock).
  explicit FakeForwarder(bool shared = false) : Forwarder(shared) {}
  // busy_id >= 0: that port id always has a burst (a heavy queue); pending: packets for any.
  // defer_to: a port the packets are "sent" to, which defers its signal (FakePort::Defer).
  WorkDone Forward(uint16_t id, uint32_t) override {
    if (static_cast<int>(id) == busy_id || static_cast<int>(id) == busy_id2) {
      polls.fetch_add(1);
      Sent();
      return WorkDone{kBurst, kBurst * 64};
    }
    in_poll.store(true);
    polls.fetch_add(1);
    WorkDone w;
    if (pending.load() > 0) {
      pending.fetch_sub(1);
      w.packets = 1;
      Sent();
    }
    in_poll.store(false);
    return w;
  }

  void Sent();
  class FakePort* defer_to = nullptr;
  std::atomic<bool> in_poll{false};
  std::atomic<uint64_t> polls{0};
  std::atomic<int> pending{0};
  int busy_id = -1, busy_id2 = -1;
};

// A one-queue port as far as sleeping goes: its kick fd and whether it can sleep; and the NUMA
// node it reports.
class FakePort final : public Port {
 public:
  explicit FakePort(std::string name = "fake") : Port(std::move(name)) {}
  uint32_t NumQueuePairs() const override { return 1; }
  size_t Rx(uint32_t, Batch&, size_t) override { return 0; }
  void RxDone(uint32_t, Batch&, size_t) override {}
  size_t Tx(uint32_t, std::span<const PacketRef* const> in) override { return in.size(); }
  size_t TxRoom(uint32_t) override { return kBurst; }
  bool ArmNotify(uint32_t, std::vector<NotifyFd>* fds) override {
    arms.fetch_add(1);
    if (kick_fd >= 0) fds->push_back({kick_fd, true});
    return false;
  }
  void DisarmNotify(uint32_t) override {}
  bool CanSleep(uint32_t) const override { return can_sleep; }
  PortStats Stats() const override { return {}; }
  uint64_t DropsFor(DropReason) const override { return 0; }
  std::string State() const override { return "up"; }
  int numa_node() const override { return node; }

  // Interrupt moderation: a Tx defers its signal `defer_ns` (the first one; later Tx leave
  // the deadline), given by FlushTxSignal when due or forced.
  void Defer(uint64_t ns) {
    set_defers_signals(true);
    defer_ns = ns;
  }
  void Deferring(uint64_t now_ns) {
    uint64_t zero = 0;
    if (deadline.compare_exchange_strong(zero, now_ns + defer_ns)) set_signal_due(0, true, now_ns + defer_ns);
  }
  uint64_t FlushTxSignal(uint32_t, uint64_t now_ns, bool force) override {
    const uint64_t d = deadline.load();
    if (d == 0) return 0;
    if (!force && now_ns < d) return d;
    set_signal_due(0, true, 0);
    deadline.store(0);
    if (force) forced.fetch_add(1);  // (before signals: a test that sees the signal sees how)
    signals.fetch_add(1);
    return 0;
  }

  std::atomic<uint64_t> arms{0};
  int kick_fd = -1;
  bool can_sleep = true;
  uint64_t defer_ns = 0;
  std::atomic<uint64_t> deadline{0};
  std::atomic<uint64_t> signals{0}, forced{0};
  int node = -1;
};

inline void FakeForwarder::Sent() {
  if (defer_to == nullptr) return;
  defer_to->Deferring(MonotonicNowNs());
  debts_.NoteTx(defer_to, 0);
}

}  // namespace nicmux
