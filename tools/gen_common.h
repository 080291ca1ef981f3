// What nicmux-pktgen (a vhost-user frontend) and nicmux-pvgen (a pv driver) share beyond their
// frames (pktgen_frames.h): the command line's common options and number parsing, the signals,
// what a round does with a received frame, transmit pacing, the progress line, the back-off of
// a round with nothing to do, and the report at the end (RTT percentiles, the verdict). Each
// tool keeps only what its transport needs: rings, buffers, headers, sleeping on its fds.
// Header-only: nicmux-pvgen-static compiles it without the project's libraries.
#pragma once

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "tools/pktgen_frames.h"

namespace nicmux {

inline uint64_t GenNowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

// ---- the command line ------------------------------------------------------------------------

// Errors name the tool and point at its --help; exit status 2.
class GenCli {
 public:
  explicit GenCli(const char* prog) : prog_(prog) {}
  [[noreturn]] void Usage(const std::string& e) const {
    std::fprintf(stderr, "%s: %s\n(see %s --help)\n", prog_, e.c_str(), prog_);
    std::exit(2);
  }
  uint64_t Num(const std::string& opt, const std::string& v, uint64_t lo, uint64_t hi) const {
    char* end;
    errno = 0;
    const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end || errno || n < lo || n > hi) {
      Usage(opt + " " + v + ": expected a number in " + std::to_string(lo) + ".." + std::to_string(hi));
    }
    return n;
  }
  // Seconds in (lo, hi] (lo_open) or [lo, hi].
  double Seconds(const std::string& opt, const std::string& v, double lo, double hi, bool lo_open) const {
    char* end;
    const double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end || !(lo_open ? d > lo : d >= lo) || d > hi) {
      Usage(opt + " " + v + ": seconds, " + (lo_open ? "> " : ">= ") + std::to_string(static_cast<int>(lo)) +
            ", at most " + std::to_string(static_cast<int>(hi)));
    }
    return d;
  }

 private:
  const char* prog_;
};

inline bool ParseMac(const std::string& t, uint8_t* out) {
  unsigned b[6];
  char tail;
  if (std::sscanf(t.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6) {
    return false;
  }
  for (int i = 0; i < 6; ++i) out[i] = static_cast<uint8_t>(b[i]);
  return true;
}

inline std::string MacString(const uint8_t* m) {
  char s[18];
  std::snprintf(s, sizeof s, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  return s;
}

// The options both tools take, with the same meaning (their --help texts say so).
struct GenOptions {
  std::string mode;  // tx, rx, reflect, bidir, ping
  uint32_t size = 64;
  uint64_t rate = 0;   // frames per second (0: as fast as the ring takes them)
  bool poisson = false;  // with rate: one frame at a time, exponential gaps (mean 1/rate)
  uint64_t count = 0;  // 0: until --duration
  double duration = 10;
  bool duration_given = false;
  bool verify = false;
  uint32_t stream = 0;
  double interval = 1;  // progress lines (0: none)
  double delay = 0;
  bool hold = false;  // send only after SIGUSR1
  bool announce = false;
  std::string rtt_file;
  bool busy_poll = false;
  bool yield = false;
  uint32_t tso = 0;  // MSS; 0: pktgen frames
  bool static_payload = false;
  bool mac_given = false;
  uint8_t mac[6] = {0x02, 0x6e, 0x6d, 0x78, 0x00, 0x01};
  uint8_t peer_mac[6] = {0x02, 0x6e, 0x6d, 0x78, 0x00, 0x02};

  bool ping() const { return mode == "ping"; }
  bool reflect() const { return mode == "reflect"; }
  bool sends() const { return mode == "tx" || mode == "bidir" || ping(); }
  bool tx_only() const { return mode == "tx"; }
  bool rx_side() const { return mode == "rx" || reflect(); }
  bool bidir() const { return mode == "bidir"; }
};

// Takes argument `a` if it is one of GenOptions' (val() reads its value); false otherwise.
inline bool ParseGenOption(const GenCli& cli, const std::string& a, const std::function<std::string()>& val,
                           GenOptions& o) {
  if (a == "--mode") {
    o.mode = val();
    if (o.mode != "tx" && o.mode != "rx" && o.mode != "reflect" && o.mode != "bidir" && o.mode != "ping") {
      cli.Usage("--mode " + o.mode + ": use tx, rx, reflect, bidir or ping");
    }
  } else if (a == "--size") {
    o.size = static_cast<uint32_t>(cli.Num(a, val(), 60, 65000));
  } else if (a == "--rate") {
    o.rate = cli.Num(a, val(), 1, 1'000'000'000);
  } else if (a == "--poisson") {
    o.poisson = true;
  } else if (a == "--count") {
    o.count = cli.Num(a, val(), 1, UINT64_MAX / 2);
  } else if (a == "--duration") {
    o.duration = cli.Seconds(a, val(), 0, 86400, true);
    o.duration_given = true;
  } else if (a == "--tso") {
    o.tso = static_cast<uint32_t>(cli.Num(a, val(), 64, 9000));
  } else if (a == "--static-payload") {
    o.static_payload = true;
  } else if (a == "--yield") {
    o.yield = true;
  } else if (a == "--hold") {
    o.hold = true;
  } else if (a == "--announce") {
    o.announce = true;
  } else if (a == "--busy-poll") {
    o.busy_poll = true;
  } else if (a == "--rtt-file") {
    o.rtt_file = val();
  } else if (a == "--verify") {
    o.verify = true;
  } else if (a == "--mac" || a == "--peer-mac") {
    const std::string v = val();
    if (!ParseMac(v, a == "--mac" ? o.mac : o.peer_mac)) cli.Usage(a + " " + v + ": expected xx:xx:xx:xx:xx:xx");
    if (a == "--mac" && (o.mac[0] & 1)) cli.Usage("--mac " + v + ": a multicast address cannot be a source");
    if (a == "--mac") o.mac_given = true;
  } else if (a == "--stream") {
    o.stream = static_cast<uint32_t>(cli.Num(a, val(), 0, (1u << 28) - 1));
  } else if (a == "--delay") {
    o.delay = cli.Seconds(a, val(), 0, 3600, false);
  } else if (a == "--interval") {
    o.interval = cli.Seconds(a, val(), 0, 86400, false);
  } else {
    return false;
  }
  return true;
}

// ---- signals ---------------------------------------------------------------------------------

inline std::atomic<bool> g_stop{false};
inline std::atomic<bool> g_go{false};  // --hold: SIGUSR1 came

// SIGINT/SIGTERM stop the run (the summary is still printed), SIGUSR1 releases a --hold sender.
// Installed before "connected" is printed: a test may send SIGUSR1 right then.
inline void InstallGenSignals() {
  std::signal(SIGINT, [](int) { g_stop.store(true); });
  std::signal(SIGTERM, [](int) { g_stop.store(true); });
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGUSR1, [](int) { g_go.store(true); });
}

// ---- receiving -------------------------------------------------------------------------------

// What a round does with each received frame: counts it, checks it (--verify), takes a ping's
// round trip, and says whether a reflector sends it back.
class RxAccount {
 public:
  RxAccount(const GenOptions& o, Stats* st, std::vector<uint32_t>* rtt_ns) : o_(o), st_(st), rtt_ns_(rtt_ns) {}

  // f: the whole frame (no virtio header); partial: its TCP checksum is left to the receiver
  // (a virtio-net NEEDS_CSUM frame). True: a pktgen frame that a reflector sends back.
  bool Take(const uint8_t* f, uint32_t len, bool partial) {
    // TCP mode: a TSO frame or a segment of one.
    if (len >= kTcpHdrs && f[12] == 0x08 && f[13] == 0x00 && f[23] == 6) {
      ++st_->rx;
      st_->rx_bytes += len;
      if (o_.verify) {
        if (!tcp_ver_.Check(f, len, partial, st_)) ++st_->bad;
      } else {
        st_->tcp_payload += len - kTcpHdrs;
      }
      return false;
    }
    // Not a pktgen frame (another ethertype: ARP, IPv6 neighbour discovery from a host on the
    // same switch, an announce): counted apart, neither received nor bad.
    if (len < 14 || f[12] != 0x88 || f[13] != 0xb5) {
      ++st_->other;
      return false;
    }
    ++st_->rx;
    st_->rx_bytes += len;
    if (o_.ping()) {
      // The send time travels in the frame (after the pktgen header).
      if (len >= kMinFrame + 8) {
        uint64_t sent_ns;
        std::memcpy(&sent_ns, f + kMinFrame, 8);
        const uint64_t now = GenNowNs();
        if (now >= sent_ns && now - sent_ns < (1ull << 32)) rtt_ns_->push_back(static_cast<uint32_t>(now - sent_ns));
      }
      return false;
    }
    if (o_.verify && !ver_.Check(f, len, st_)) ++st_->bad;
    return o_.reflect();
  }

 private:
  const GenOptions& o_;
  Stats* st_;
  std::vector<uint32_t>* rtt_ns_;
  Verifier ver_;
  TcpVerifier tcp_ver_;
};

// ---- sending ---------------------------------------------------------------------------------

// When frames are due. Evenly: frame k (from 0) after send_from + k / rate. --poisson: one at a
// time, each after a gap drawn from an exponential distribution of mean 1 / rate (a Poisson
// process: single-frame bursts at random gaps, the way independent senders' frames come).
class Pacer {
 public:
  explicit Pacer(const GenOptions& o) : o_(o), rng_(0x9E3779B97F4A7C15ull ^ (uint64_t{o.stream} << 1 | 1)) {}
  // Frames a sender may post now (t: seconds since the start), at most `burst`.
  uint64_t Allowance(double t, double send_from, uint64_t sent, uint64_t burst) {
    if (!o_.rate) return burst;
    if (!o_.poisson) {
      const double due = o_.rate * (t - send_from);
      return due > sent ? std::min<uint64_t>(burst, static_cast<uint64_t>(due - sent) + 1) : 0;
    }
    return t >= NextDue(send_from, sent) ? 1 : 0;
  }
  // When the next frame is due (seconds since the start).
  double NextDue(double send_from, uint64_t sent) {
    if (!o_.poisson) return send_from + (sent + 1.0) / o_.rate;
    while (gaps_ <= sent) {
      // xorshift64*, then a uniform in (0, 1]
      rng_ ^= rng_ >> 12;
      rng_ ^= rng_ << 25;
      rng_ ^= rng_ >> 27;
      const double u = static_cast<double>((rng_ * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0;
      at_ += -std::log(1.0 - u) / static_cast<double>(o_.rate);
      ++gaps_;
    }
    return send_from + at_;
  }

 private:
  const GenOptions& o_;
  uint64_t rng_;
  uint64_t gaps_ = 0;  // gaps drawn: frame gaps_-1 is due at send_from + at_
  double at_ = 0;
};

// ---- the loop's bookkeeping ------------------------------------------------------------------

// A progress line every --interval seconds.
class Progress {
 public:
  Progress(const GenOptions& o, uint64_t t0) : o_(o), t0_(t0), last_t_(t0), next_(t0 + IntervalNs()) {}
  // True when it printed one.
  bool Maybe(uint64_t now, const Stats& st) {
    if (o_.interval <= 0 || now < next_) return false;
    const double dt = (now - last_t_) / 1e9;
    std::printf("t=%.1fs tx %.3f Mpps %.2f Gbit/s, rx %.3f Mpps %.2f Gbit/s, bad %" PRIu64 " lost %" PRIu64 "\n",
                (now - t0_) / 1e9, (st.tx - last_.tx) / dt / 1e6, (st.tx_bytes - last_.tx_bytes) * 8 / dt / 1e9,
                (st.rx - last_.rx) / dt / 1e6, (st.rx_bytes - last_.rx_bytes) * 8 / dt / 1e9, st.bad, st.lost);
    std::fflush(stdout);
    last_ = st;
    last_t_ = now;
    next_ = now + IntervalNs();
    return true;
  }

 private:
  uint64_t IntervalNs() const { return static_cast<uint64_t>(o_.interval * 1e9); }
  const GenOptions& o_;
  uint64_t t0_, last_t_, next_;
  Stats last_{};
};

// After a round: a paced sender with nothing due gives the CPU away until its next frame is
// (at most 200 us); a sender blocked for 64 rounds (ring full, nothing received) backs off for
// 20 us, since on a machine where the backend and the peer share our CPUs spinning only delays
// them. spin: ping with a round trip outstanding (a sleep would be measured).
class Backoff {
 public:
  explicit Backoff(Pacer* pacer) : pacer_(pacer) {}
  void AfterRound(const GenOptions& o, bool work, bool sending, bool spin, double elapsed_s, double send_from,
                  uint64_t sent) {
    if (o.yield) sched_yield();  // two endpoints on one CPU: let the other run every round
    if (!work && o.rate && o.sends() && sending && !spin) {
      const double wait = pacer_->NextDue(send_from, sent) - elapsed_s;
      if (wait > 0) usleep(static_cast<useconds_t>(std::min(wait, 200e-6) * 1e6));
    }
    if (!work && sending && !spin && ++stalled_ > 64) {
      stalled_ = 0;
      usleep(20);
    } else if (work) {
      stalled_ = 0;
    }
  }

 private:
  Pacer* pacer_;
  uint32_t stalled_ = 0;
};

// ---- the end ---------------------------------------------------------------------------------

// Whether the run did what was asked: nothing bad or lost when verifying, and --count frames
// sent and (receivers) received.
inline bool GenVerdict(const GenOptions& o, const Stats& st) {
  if (o.verify && (st.bad || st.lost)) return false;
  if (o.count) {
    if (o.sends() && st.tx < o.count) return false;
    if ((o.rx_side() || o.bidir()) && st.rx < o.count) return false;
  }
  return true;
}

// ping: the round trips' percentiles, and each one into --rtt-file. False when the file could
// not be written.
inline bool ReportRtt(const char* prog, const GenOptions& o, const std::vector<uint32_t>& rtt_ns) {
  std::vector<uint32_t> sorted = rtt_ns;
  std::sort(sorted.begin(), sorted.end());
  auto pct = [&](double q) {
    if (sorted.empty()) return 0.0;
    const size_t i = static_cast<size_t>(q * (sorted.size() - 1) + 0.5);
    return sorted[std::min(i, sorted.size() - 1)] / 1e3;
  };
  std::printf("rtt samples=%zu rtt_p50_us=%.2f rtt_p99_us=%.2f rtt_p999_us=%.2f rtt_max_us=%.2f\n", sorted.size(),
              pct(0.5), pct(0.99), pct(0.999), sorted.empty() ? 0.0 : sorted.back() / 1e3);
  if (o.rtt_file.empty()) return true;
  FILE* f = std::fopen(o.rtt_file.c_str(), "w");
  if (f == nullptr) {
    std::fprintf(stderr, "%s: cannot write %s: %s\n", prog, o.rtt_file.c_str(), std::strerror(errno));
    return false;
  }
  for (uint32_t v : rtt_ns) std::fprintf(f, "%u\n", v);
  return std::fclose(f) == 0;
}

}  // namespace nicmux
