#include "sched/worker.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include "base/log.h"
#include "base/peer_io.h"

namespace nicmux {
namespace {
// The longest sleep: a safety net for a missed notification (correctness does not depend on
// it).
constexpr int kMaxSleepMs = 100;
// The longest sleep while a running queue has no kick fd (its frontend asked for polling,
// vhost-user SET_VRING_KICK without an fd): it is polled this often while the worker idles, so
// one such frontend cannot keep the worker (and every port on it) from sleeping.
constexpr int kPollingQueueSleepMs = 1;
}  // namespace

Worker::Worker(std::string name, int cpu, uint32_t idle_poll_us, bool fixed_window)
    : name_(std::move(name)),
      cpu_(cpu),
      idle_poll_ns_(uint64_t{idle_poll_us == kBusyPoll ? kDefaultIdlePollUs : idle_poll_us} * 1000),
      fixed_window_(fixed_window),
      busy_(idle_poll_us == kBusyPoll) {
  auto e = EventFd::Create();
  NICMUX_CHECK(e.has_value());
  wake_ = std::move(*e);
}

Worker::~Worker() { Stop(); }

Result<void> Worker::Start() {
  NICMUX_CHECK(!started_);
  NICMUX_CHECK(fwd_ != nullptr);
  // The thread pins itself first, so that what it touches from then on (its forwarder's
  // buffers, PreferNode) is on its CPU's node, and tells Start how that went.
  pin_result_.store(-1);
  thread_ = std::thread([this] {
    int e = 0;
    if (cpu_ >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu_, &set);
      e = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
    }
    pin_result_.store(e);
    pin_result_.notify_one();
    if (e != 0) return;
    if (node_ >= 0) fwd_->PreferNode(node_);
    Loop();
  });
  pin_result_.wait(-1);
  if (const int e = pin_result_.load(); e != 0) {
    thread_.join();
    return Error::FromErrno("pinning worker " + name_ + " to cpu " + std::to_string(cpu_), e);
  }
  has_cpu_clock_.store(pthread_getcpuclockid(thread_.native_handle(), &cpu_clock_) == 0);
  started_ = true;
  return Ok();
}

void Worker::Stop() {
  if (!thread_.joinable()) return;
  has_cpu_clock_.store(false);
  stop_.store(true);
  wake_.Signal();
  thread_.join();
  started_ = false;
}

uint64_t Worker::cpu_ns() const {
  // The clock of a running thread; read on the control thread, which also stops the worker.
  timespec ts;
  if (!has_cpu_clock_.load() || ::clock_gettime(cpu_clock_, &ts) != 0) return 0;
  return uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);
}

void Worker::Pause() {
  if (depth_++ > 0 || !started_) return;
  std::unique_lock lock(mu_);
  // The worker must have left the previous pause first; it then runs one whole round before
  // it can pause again. Without this, a Pause right after a Resume found the worker still
  // "paused" and returned at once, and a frontend sending pausing requests back to back
  // (SEND_RARP, SET_VRING_CALL: one pause each) kept every worker paused (review of issue 17).
  cv_.wait(lock, [this] { return !paused_; });
  pause_req_.store(true, std::memory_order_release);
  wake_.Signal();
  cv_.wait(lock, [this] { return paused_; });
}

void Worker::Resume() {
  NICMUX_CHECK(depth_ > 0);
  if (--depth_ > 0 || !started_) return;
  {
    std::lock_guard lock(mu_);
    pause_req_.store(false, std::memory_order_release);
  }
  cv_.notify_all();
}

void Worker::FlushSignals(bool force) {
  if (fwd_ == nullptr || fwd_->debts().empty()) return;
  fwd_->debts().Flush(MonotonicNowNs(), force);
}

void Worker::MaybePause() {
  if (!pause_req_.load(std::memory_order_acquire)) return;
  // Nothing deferred waits on a paused worker (interrupt moderation, SignalDebts).
  FlushSignals(true);
  std::unique_lock lock(mu_);
  paused_ = true;
  cv_.notify_all();
  cv_.wait(lock, [this] { return !pause_req_.load(std::memory_order_acquire); });
  paused_ = false;
  cv_.notify_all();  // a Pause waiting for the end of the previous one
}

void Worker::Sleep() {
  // Every signal deferred for moderation is given before sleeping: a guest waiting for one
  // must not wait for this worker's next packet. One that could not be (its port closed for a
  // change) keeps the sleep short.
  FlushSignals(true);
  fds_.clear();
  bool pending = false;
  bool can_sleep = fwd_ == nullptr || fwd_->debts().empty();
  for (const Polled& p : queues_) {
    can_sleep &= p.src.port->CanSleep(p.src.q);
    pending |= p.src.port->ArmNotify(p.src.q, &fds_);
  }
  if (!pending) {
    pfds_.clear();
    pfds_.push_back({wake_.fd(), POLLIN, 0});
    for (const NotifyFd& f : fds_) pfds_.push_back({f.fd, POLLIN, 0});
    sleeps_.fetch_add(1, std::memory_order_relaxed);
    const uint64_t t0 = MonotonicNowNs();
    // With no queue and no hold there is nothing to miss: sleep until woken.
    const int timeout = fds_.empty() && queues_.empty() && can_sleep ? -1 : can_sleep ? kMaxSleepMs : kPollingQueueSleepMs;
    int n = ::poll(pfds_.data(), pfds_.size(), timeout);
    sleep_ns_.fetch_add(MonotonicNowNs() - t0, std::memory_order_relaxed);
    if (n > 0) {
      // Drain the eventfds that woke us. Kick fds are the frontends': one could drain its own
      // between our poll() and our read(), or make it blocking, so the read must not block
      // whatever the fd's flags say (base/peer_io.h). Other fds (TAP) stay readable: their
      // data is the work.
      bool kicked = false;
      for (size_t i = 0; i < pfds_.size(); ++i) {
        if (!(pfds_[i].revents & (POLLIN | POLLERR | POLLHUP))) continue;
        kicked |= i != 0;
        const bool is_eventfd = i == 0 || fds_[i - 1].eventfd;
        if (is_eventfd && (pfds_[i].revents & POLLIN)) DrainPeerEventFd(pfds_[i].fd);
      }
      if (kicked) kick_wakeups_.fetch_add(1, std::memory_order_relaxed);
    }
  }
  for (const Polled& p : queues_) p.src.port->DisarmNotify(p.src.q);
}

void Worker::NoteSpell(uint64_t polled_ns, bool hit) {
  // Each candidate window w (idle_poll / 16 .. idle_poll) is scored on what this idle spell
  // showed: a packet came after polled_ns (hit) — polling for any w beyond it would have caught
  // it, worth kBonus idle windows (a wake-up saved, and its latency) less the time spent; a
  // shorter w would have polled in vain — or none came within polled_ns (the spell ended in a
  // sleep): every w up to it would have polled in vain; longer ones learn nothing. Decayed sums;
  // the window is the best candidate, or none (sleep at once) when none scores above 0. The
  // bonus sets the balance: a reply that comes 30 us after its request scores, the lone packets
  // of an independent trickle (gaps spread like a Poisson process's) do not.
  const double bonus = kBonus * static_cast<double>(idle_poll_ns_);
  const double t = static_cast<double>(polled_ns);
  uint64_t best = 0;
  double best_score = 0;
  for (uint32_t k = 0; k < kWindows; ++k) {
    const uint64_t wn = idle_poll_ns_ >> (kWindows - 1 - k);
    const double w = static_cast<double>(wn);
    if (hit) {
      score_[k] += ((w > t ? bonus - t : -w) - score_[k]) / 16;
    } else if (wn <= polled_ns) {
      score_[k] += (-w - score_[k]) / 16;
    }
    if (score_[k] > best_score) {
      best_score = score_[k];
      best = wn;
    }
  }
  window_ns_.store(best, std::memory_order_relaxed);
}

void Worker::Loop() {
  // Empty rounds since the last packet; the clock is read when an idle spell starts, every
  // 64 empty rounds after (8 while the window is short), and when a packet ends it — never
  // while packets flow.
  uint32_t idle = 0;
  uint64_t idle_since = 0;
  uint64_t spell_window = 0;  // this idle spell's window
  uint32_t spells = 0;
  const bool adaptive = idle_poll_ns_ != 0 && !fixed_window_;
  while (!stop_.load(std::memory_order_relaxed)) {
    MaybePause();
    const bool busy = busy_.load(std::memory_order_relaxed);
    const uint64_t round_start = CycleCount();  // ~8 ns; a busy round at 64 B is microseconds
    uint64_t moved = 0;
    // One bounded burst per queue per round, in turn: a flooding queue cannot starve the
    // others on this worker.
    const size_t nq = queues_.size();
    for (size_t i = 0; i < nq; ++i) {
      const Polled& p = queues_[i];
      // Many queues: the next one's ring lines (the frontend's CPU wrote them last, and with
      // dozens of ports they are not in this cache) are fetched while this one is forwarded
      // (scale_peak, 5 pairs: 32 and 64 ports +3 % median, spread 0.97-1.31). With two queues
      // each is polled right after the other: no hint, the loopback path is unchanged.
      if (nq > 2) {
        const Polled& next = queues_[i + 1 == nq ? 0 : i + 1];
        next.src.port->PrefetchRx(next.src.q);
      }
      const WorkDone d = fwd_->Forward(p.src.id, p.src.q);
      if (d.packets != 0) {
        p.packets->Add(d.packets);
        moved += d.packets;
      }
    }
    // Deferred signals (interrupt moderation) whose time has come; a clock read per round
    // only while some are deferred.
    if (!fwd_->debts().empty()) [[unlikely]] fwd_->debts().Flush(MonotonicNowNs(), false);
    rounds_.Add();
    if (moved) {
      busy_cycles_.Add(CycleCount() - round_start);
      busy_rounds_.Add();
      packets_.fetch_add(moved, std::memory_order_relaxed);
      // Caught while polling: the spell's exact length is what polling bought.
      if (idle != 0 && adaptive) NoteSpell(MonotonicNowNs() - idle_since, true);
      idle = 0;
      continue;
    }
    if (busy) {
      idle = 0;  // an idle spell starts afresh when busy polling is switched off
      continue;
    }
    if (idle++ == 0) {
      idle_since = MonotonicNowNs();
      // The window learned, except one spell in 64 that polls the whole idle_poll: what
      // longer windows would catch is learned only by polling that long.
      spell_window = !adaptive ? idle_poll_ns_ : ++spells % 64 == 0 ? idle_poll_ns_ : window_ns_.load(std::memory_order_relaxed);
      if (spell_window != 0) continue;
    } else if (idle % (spell_window < 20'000 ? 8 : 64) != 0 || MonotonicNowNs() - idle_since < spell_window) {
      continue;
    }
    if (adaptive && spell_window != 0) NoteSpell(spell_window, false);
    idle = 0;
    if (pause_req_.load(std::memory_order_acquire)) continue;
    Sleep();
  }
  FlushSignals(true);
}

}  // namespace nicmux
