// Logging to stderr with levels, one line per message, journal-friendly ("<3>" style priority
// prefixes when NICMUX_LOG_PRIORITY_PREFIX is set in the environment, as systemd reads them).
//
// Anything a peer can trigger must log through NICMUX_LOG_RATELIMITED so a hostile guest cannot
// flood the log: each call site lets a burst through per interval and then counts what it
// suppressed, reporting the count with the next message it lets through.
// NICMUX_LOG_RATELIMITED_BY takes a limiter the caller owns instead, one per port say: a call
// site shared by many ports (connect, disconnect, protocol errors) then lets each port's own
// burst through, and one noisy peer cannot silence another port's first message.
#pragma once

#include <atomic>
#include <cstdint>

namespace nicmux {

enum class LogLevel : int { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
bool LogEnabled(LogLevel level);

// printf-style; appends the newline.
void LogMessage(LogLevel level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Token bucket: kBurst messages per kIntervalNs (per call site, or per object with _BY).
class LogRateLimiter {
 public:
  static constexpr uint32_t kBurst = 10;
  static constexpr uint64_t kIntervalNs = 5'000'000'000;

  // True when this message may be printed; *suppressed gets how many were dropped before it.
  bool Allow(uint64_t now_ns, uint64_t* suppressed);

 private:
  std::atomic<uint64_t> window_start_ns_{0};
  std::atomic<uint32_t> in_window_{0};
  std::atomic<uint64_t> suppressed_{0};
};

uint64_t MonotonicNowNs();
// A cheap cycle count for measuring short spans on one thread (the TSC on x86, whose rate is
// constant on every CPU this runs on; elsewhere MonotonicNowNs). Rates come from comparing
// two readings of it with MonotonicNowNs over a long span (Scheduler::Tick).
inline uint64_t CycleCount() {
#if defined(__x86_64__)
  return __builtin_ia32_rdtsc();
#else
  return MonotonicNowNs();
#endif
}

}  // namespace nicmux

#define NICMUX_LOG(level, ...)                                                              \
  do {                                                                                      \
    if (::nicmux::LogEnabled(::nicmux::LogLevel::level))                                    \
      ::nicmux::LogMessage(::nicmux::LogLevel::level, __FILE__, __LINE__, __VA_ARGS__);     \
  } while (0)

#define NICMUX_LOG_RATELIMITED(level, fmt, ...)                                             \
  do {                                                                                      \
    static ::nicmux::LogRateLimiter nicmux_rl_;                                             \
    uint64_t nicmux_sup_ = 0;                                                               \
    if (::nicmux::LogEnabled(::nicmux::LogLevel::level) &&                                  \
        nicmux_rl_.Allow(::nicmux::MonotonicNowNs(), &nicmux_sup_)) {                       \
      if (nicmux_sup_ != 0)                                                                 \
        ::nicmux::LogMessage(::nicmux::LogLevel::level, __FILE__, __LINE__,                 \
                             "(%llu similar messages suppressed)",                          \
                             static_cast<unsigned long long>(nicmux_sup_));                 \
      ::nicmux::LogMessage(::nicmux::LogLevel::level, __FILE__, __LINE__, fmt __VA_OPT__(,) \
                               __VA_ARGS__);                                                \
    }                                                                                       \
  } while (0)

#define NICMUX_LOG_RATELIMITED_BY(limiter, level, fmt, ...)                                  \
  do {                                                                                      \
    uint64_t nicmux_sup_ = 0;                                                               \
    if (::nicmux::LogEnabled(::nicmux::LogLevel::level) &&                                  \
        (limiter).Allow(::nicmux::MonotonicNowNs(), &nicmux_sup_)) {                        \
      if (nicmux_sup_ != 0) {                                                               \
        ::nicmux::LogMessage(::nicmux::LogLevel::level, __FILE__, __LINE__,                 \
                             fmt " (%llu similar messages suppressed before this one)"      \
                                 __VA_OPT__(,) __VA_ARGS__,                                 \
                             static_cast<unsigned long long>(nicmux_sup_));                 \
      } else {                                                                              \
        ::nicmux::LogMessage(::nicmux::LogLevel::level, __FILE__, __LINE__, fmt __VA_OPT__(,) \
                                 __VA_ARGS__);                                              \
      }                                                                                     \
    }                                                                                       \
  } while (0)
