// nicmuxctl: the command-line client of nicmuxd's control socket (protocol: docs/control.md).
// One connection per invocation; each command is one request (stats: two or more, on the same
// connection; capture: one request, then the stream). The daemon's replies are checked before
// use: a malformed reply is an error (exit 1), never a crash. See kUsage for the commands and
// the exit status.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "base/unique_fd.h"
#include "control/control_server.h"
#include "control/pcap.h"

namespace nicmux {
namespace {

using json = nlohmann::json;

constexpr const char* kUsage = R"(usage: nicmuxctl [--socket PATH] [--json] COMMAND

Talks to a running nicmuxd over its control socket.

commands:
  port list                       ports with kind, state, queues and counters
  port show NAME                  one port in detail (options, VLAN, drop reasons)
  port add SPEC                   add a port, e.g.
                                    port add vhost-user:vm3:socket=/run/nicmux/vm3.sock
  port del NAME                   remove a port
  port kinds                      the port kinds the daemon has, with every option
  port flows NAME                 the flow rules a pv device's application made: each
                                  rule, its hits and where it runs ("software");
                                  also: pv flows NAME
  port caps NAME                  what the port takes on transmit (offloads the switch
                                  leaves to it), its limits, and what its device can do
  fdb show                        the MAC table: MAC, VLAN, port, age
  fdb flush [PORT]                forget learned MACs (all, or those of PORT)
  sched show                      per worker over the last second: its CPU and NUMA node, its
                                  polling (busy, or adaptive with the idle window it uses
                                  now), CPU %, time asleep, wake-ups, packets/s, ns of CPU per
                                  packet, and the queues it polls with their packets/s
                                  (* = pinned, @nN = its port's memory is on node N)
  stats [PORT] [--watch] [--interval S]
                                  packets/s, Mbit/s and drops per port, measured over S
                                  seconds (default 1); --watch refreshes every S seconds
                                  until Ctrl-C
  upgrade [PATH]                  live upgrade: nicmuxd starts PATH (default: the binary at
                                  its own path, as the file is now) with its arguments and
                                  hands it every port, socket and MAC; guests keep their
                                  connections (docs/upgrade.md). Prints the new pid and how
                                  long forwarding paused; on failure the old nicmuxd goes on
                                  serving and the error says why
  capture PORT -w FILE [-c COUNT] [--duration S]
                                  write PORT's packets (both directions) to FILE as pcap
                                  ("-w -": standard output, e.g. | tcpdump -r -); stops
                                  after COUNT packets, S seconds or Ctrl-C

options:
  --socket PATH   the control socket (default: $NICMUX_CONTROL, else /run/nicmux/nicmuxd.sock)
  --json          print the daemon's result as JSON instead of a table (stats: one sample,
                  no rates; with --watch, one line per interval)
  -h, --help      this text
  --version       the version

exit status:
  0  ok
  1  the daemon reported a failure, or its reply was missing, late (10 s) or malformed
  2  bad command line
  3  cannot reach the daemon (no socket, permission denied, connection refused)
  4  not found (no such port)
  5  already exists (name clash)
  6  invalid request or argument (bad port spec, bad option)
  7  permission denied by the daemon
)";

constexpr const char* kDefaultSocket = "/run/nicmux/nicmuxd.sock";
constexpr int kReplyTimeoutMs = 10'000;
constexpr size_t kMaxReplyLineBytes = 64u << 20;

enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,
  kExitUsage = 2,
  kExitUnreachable = 3,
  kExitNotFound = 4,
  kExitExists = 5,
  kExitInvalid = 6,
  kExitDenied = 7,
  kExitInterrupted = 130,
};

volatile sig_atomic_t g_interrupted = 0;
sigset_t g_wait_mask;  // the mask while waiting in ppoll: SIGINT/SIGTERM deliverable

void OnSignal(int) { g_interrupted = 1; }

// SIGINT and SIGTERM are blocked except inside ppoll(), so a Ctrl-C is noticed exactly where
// we wait, never between a check and a wait.
void SetUpSignals() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &g_wait_mask);
  sigdelset(&g_wait_mask, SIGINT);
  sigdelset(&g_wait_mask, SIGTERM);
}

uint64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

[[noreturn]] void Fail(int code, const std::string& message) {
  std::fprintf(stderr, "nicmuxctl: %s\n", message.c_str());
  std::exit(code);
}

[[noreturn]] void UsageError(const std::string& message) {
  std::fprintf(stderr, "nicmuxctl: %s\nTry 'nicmuxctl --help'.\n", message.c_str());
  std::exit(kExitUsage);
}

int ExitCodeFor(const std::string& code) {
  if (code == kCodeNotFound) return kExitNotFound;
  if (code == kCodeExists) return kExitExists;
  if (code == kCodeInvalid || code == kCodeBadRequest) return kExitInvalid;
  if (code == kCodeDenied) return kExitDenied;
  return kExitFailed;
}

// Sleeps ms; false when interrupted.
bool Sleep(int ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1'000'000L};
  uint64_t end = NowNs() + static_cast<uint64_t>(ms) * 1'000'000u;
  while (!g_interrupted) {
    int r = ppoll(nullptr, 0, &ts, &g_wait_mask);
    if (r == 0) return true;
    uint64_t now = NowNs();
    if (now >= end) return !g_interrupted;
    uint64_t left = end - now;
    ts = {static_cast<time_t>(left / 1'000'000'000u), static_cast<long>(left % 1'000'000'000u)};
  }
  return false;
}

// A daemon's error reply, or a failure to get a reply at all.
struct Failure {
  int exit_code;
  std::string message;
};

class Connection {
 public:
  enum class Read { kLine, kEof, kTimeout, kInterrupted };

  // Exits 3 when the daemon cannot be reached.
  static Connection Open(const std::string& path) {
    auto unreachable = [&](const std::string& why) {
      Fail(kExitUnreachable, "cannot connect to " + path + ": " + why +
                                 " (is nicmuxd running? use --socket PATH or NICMUX_CONTROL)");
    };
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path) unreachable("path too long");
    std::memcpy(addr.sun_path, path.data(), path.size());
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) unreachable(std::strerror(errno));
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) < 0) {
      unreachable(std::strerror(errno));
    }
    timeval tv{kReplyTimeoutMs / 1000, 0};  // a daemon that stops reading must not hang us
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return Connection(path, std::move(fd));
  }

  const std::string& path() const { return path_; }

  // False when the connection is gone (the daemon may still have left a reply to read).
  bool SendLine(const json& line) {
    std::string s = DumpJsonLine(line);
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = ::send(fd_.get(), s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      off += static_cast<size_t>(n);
    }
    return true;
  }

  void ShutdownWrite() { ::shutdown(fd_.get(), SHUT_WR); }

  // One line into *line. timeout_ms < 0: no timeout; 0: only what is already here.
  Read ReadLine(int timeout_ms, std::string* line, std::string* error) {
    uint64_t deadline = timeout_ms < 0 ? 0 : NowNs() + uint64_t(timeout_ms) * 1'000'000u;
    for (;;) {
      size_t nl = buf_.find('\n', scanned_);
      if (nl != std::string::npos) {
        line->assign(buf_, 0, nl);
        buf_.erase(0, nl + 1);
        scanned_ = 0;
        return Read::kLine;
      }
      scanned_ = buf_.size();
      if (buf_.size() > kMaxReplyLineBytes) {
        *error = "reply from nicmuxd longer than " + std::to_string(kMaxReplyLineBytes) + " bytes";
        return Read::kEof;
      }
      if (eof_) return Read::kEof;
      if (g_interrupted) return Read::kInterrupted;
      timespec ts{}, *tsp = nullptr;
      if (timeout_ms >= 0) {
        uint64_t now = NowNs();
        uint64_t left = deadline > now ? deadline - now : 0;
        ts = {static_cast<time_t>(left / 1'000'000'000u), static_cast<long>(left % 1'000'000'000u)};
        tsp = &ts;
      }
      pollfd p{fd_.get(), POLLIN, 0};
      int r = ppoll(&p, 1, tsp, &g_wait_mask);
      if (r < 0 && errno == EINTR) continue;  // g_interrupted is checked above
      if (r == 0) return Read::kTimeout;
      char chunk[64 * 1024];
      ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, MSG_DONTWAIT);
      if (n > 0) {
        buf_.append(chunk, static_cast<size_t>(n));
      } else if (n == 0) {
        eof_ = true;
      } else if (errno != EINTR && errno != EAGAIN) {
        *error = std::string("reading from ") + path_ + ": " + std::strerror(errno);
        eof_ = true;
      }
    }
  }

  // Sends one request and waits (10 s) for its reply: the "result", or why there is none.
  std::variant<json, Failure> Call(const std::string& cmd, const json& args) {
    json request{{"cmd", cmd}};
    if (!args.is_null()) request["args"] = args;
    bool sent = SendLine(request);
    std::string line, error;
    switch (ReadLine(kReplyTimeoutMs, &line, &error)) {
      case Read::kLine:
        break;
      case Read::kTimeout:
        return Failure{kExitFailed, "no reply from nicmuxd on " + path_ + " within " +
                                        std::to_string(kReplyTimeoutMs / 1000) + " s"};
      case Read::kInterrupted:
        return Failure{kExitInterrupted, "interrupted"};
      case Read::kEof:
        if (error.empty()) {
          error = std::string("nicmuxd closed the connection on ") + path_ +
                  (sent ? " without a reply" : " before the request was sent");
        }
        return Failure{kExitFailed, error};
    }
    return ParseReply(line);
  }

  json CallOrFail(const std::string& cmd, const json& args) {
    auto r = Call(cmd, args);
    if (auto* f = std::get_if<Failure>(&r)) Fail(f->exit_code, f->message);
    return std::move(std::get<json>(r));
  }

 private:
  Connection(std::string path, UniqueFd fd) : path_(std::move(path)), fd_(std::move(fd)) {}

  static std::variant<json, Failure> ParseReply(const std::string& line) {
    json reply = json::parse(line, nullptr, /*allow_exceptions=*/false);
    auto ok = reply.is_object() ? reply.find("ok") : reply.end();
    if (reply.is_discarded() || !reply.is_object() || ok == reply.end() || !ok->is_boolean()) {
      return Failure{kExitFailed, "malformed reply from nicmuxd: " + line.substr(0, 200)};
    }
    if (ok->get<bool>()) {
      auto result = reply.find("result");
      return result == reply.end() ? json::object() : std::move(*result);
    }
    auto err = reply.find("error");
    std::string code = kCodeFailed, message = "nicmuxd reported an error without a message";
    if (err != reply.end() && err->is_object()) {
      auto c = err->find("code");
      auto m = err->find("message");
      if (c != err->end() && c->is_string()) code = c->get<std::string>();
      if (m != err->end() && m->is_string()) message = m->get<std::string>();
    }
    return Failure{ExitCodeFor(code), message};
  }

  std::string path_;
  UniqueFd fd_;
  std::string buf_;
  size_t scanned_ = 0;  // buf_[0, scanned_) has no '\n'
  bool eof_ = false;
};

// ---------------------------------------------------------------------------------------------
// Reading results: the daemon is trusted to be nicmuxd, but a wrong type prints as 0 or "-",
// never crashes.

uint64_t U64(const json& o, const char* key) {
  if (!o.is_object()) return 0;
  auto it = o.find(key);
  if (it == o.end()) return 0;
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer())
    return static_cast<uint64_t>(std::max<int64_t>(0, it->get<int64_t>()));
  if (it->is_number_float()) return static_cast<uint64_t>(std::max(0.0, it->get<double>()));
  return 0;
}

bool Has(const json& o, const char* key) { return o.is_object() && o.contains(key); }

std::string Str(const json& o, const char* key, const char* dflt = "-") {
  if (!o.is_object()) return dflt;
  auto it = o.find(key);
  if (it == o.end() || it->is_null()) return dflt;
  if (it->is_string()) return it->get<std::string>();
  return it->dump(-1, ' ', false, json::error_handler_t::replace);
}

const json& Array(const json& o, const char* key) {
  static const json kEmpty = json::array();
  if (!o.is_object()) return kEmpty;
  auto it = o.find(key);
  return it != o.end() && it->is_array() ? *it : kEmpty;
}

// Drops by reason, largest first.
std::vector<std::pair<std::string, uint64_t>> Drops(const json& port) {
  std::vector<std::pair<std::string, uint64_t>> out;
  if (!Has(port, "drops") || !port["drops"].is_object()) return out;
  for (auto& [reason, n] : port["drops"].items())
    out.emplace_back(reason, U64(port["drops"], reason.c_str()));
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  return out;
}

std::string Fmt(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

// Columns separated by two spaces; right-aligned where right[i].
void PrintTable(const std::vector<std::string>& head, const std::vector<bool>& right,
                const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(head.size());
  for (size_t i = 0; i < head.size(); ++i) width[i] = head[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < width.size(); ++i)
      width[i] = std::max(width[i], r[i].size());
  }
  auto print_row = [&](const std::vector<std::string>& r) {
    std::string line;
    for (size_t i = 0; i < head.size(); ++i) {
      const std::string& cell = i < r.size() ? r[i] : "";
      std::string pad(width[i] - std::min(width[i], cell.size()), ' ');
      if (i > 0) line += "  ";
      line += right[i] ? pad + cell : (i + 1 == head.size() ? cell : cell + pad);
    }
    std::printf("%s\n", line.c_str());
  };
  print_row(head);
  for (const auto& r : rows) print_row(r);
}

void PrintJson(const json& j) {
  std::printf("%s\n", j.dump(2, ' ', false, json::error_handler_t::replace).c_str());
}

// ---------------------------------------------------------------------------------------------
// Commands

struct Options {
  std::string socket;
  bool json = false;
  bool watch = false;
  std::optional<double> interval_s;
  std::optional<std::string> write_file;
  std::optional<uint64_t> count;
  std::optional<double> duration_s;
  std::vector<std::string> words;
};

void PortList(Connection& c, const Options& o) {
  json r = c.CallOrFail("port.list", nullptr);
  if (o.json) return PrintJson(r);
  const json& ports = Array(r, "ports");
  if (ports.empty()) {
    std::printf("no ports\n");
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const json& p : ports) {
    rows.push_back({Str(p, "name"), Str(p, "kind"), Str(p, "state"), Str(p, "queues"),
                    std::to_string(U64(p, "rx_packets")), std::to_string(U64(p, "rx_bytes")),
                    std::to_string(U64(p, "tx_packets")), std::to_string(U64(p, "tx_bytes")),
                    std::to_string(U64(p, "rx_dropped") + U64(p, "tx_dropped"))});
  }
  PrintTable(
      {"NAME", "KIND", "STATE", "QUEUES", "RX pkts", "RX bytes", "TX pkts", "TX bytes", "DROPS"},
      {false, false, false, true, true, true, true, true, true}, rows);
}

void PortShow(Connection& c, const Options& o) {
  json r = c.CallOrFail("port.show", {{"name", o.words[2]}});
  if (o.json) return PrintJson(r);
  if (!r.is_object()) Fail(kExitFailed, "malformed port.show result from nicmuxd");
  // The usual keys first, in this order; then whatever else the port kind reports, sorted.
  static const char* kFirst[] = {"name",     "kind",       "state",     "spec",
                                 "queues",   "rx_packets", "rx_bytes",  "tx_packets",
                                 "tx_bytes", "rx_dropped", "tx_dropped"};
  std::vector<std::pair<std::string, std::string>> lines;
  for (const char* k : kFirst) {
    if (Has(r, k)) lines.emplace_back(k, Str(r, k));
  }
  std::vector<std::string> rest;
  for (auto it = r.begin(); it != r.end(); ++it) {
    const std::string& k = it.key();
    bool listed = std::find_if(std::begin(kFirst), std::end(kFirst),
                               [&](const char* f) { return k == f; }) != std::end(kFirst);
    if (k != "drops" && !listed) rest.push_back(k);
  }
  std::sort(rest.begin(), rest.end());
  for (const std::string& k : rest) lines.emplace_back(k, Str(r, k.c_str()));
  size_t w = 0;
  for (const auto& [k, v] : lines) w = std::max(w, k.size());
  for (const auto& [k, v] : lines) {
    std::printf("%-*s  %s\n", static_cast<int>(w + 1), (k + ":").c_str(), v.c_str());
  }
  auto drops = Drops(r);
  if (drops.empty()) {
    std::printf("%-*s  none\n", static_cast<int>(w + 1), "drops:");
  } else {
    std::printf("drops:\n");
    size_t dw = 0;
    for (const auto& [reason, n] : drops) dw = std::max(dw, reason.size());
    for (const auto& [reason, n] : drops) {
      std::printf("  %-*s  %llu\n", static_cast<int>(dw + 1), (reason + ":").c_str(),
                  static_cast<unsigned long long>(n));
    }
  }
}

void PortAdd(Connection& c, const Options& o) {
  const std::string& spec = o.words[2];
  json r = c.CallOrFail("port.add", {{"spec", spec}});
  if (o.json) return PrintJson(r);
  std::string name = Str(r, "name", "");
  if (name.empty()) {  // KIND:NAME[:options]
    size_t a = spec.find(':');
    size_t b = a == std::string::npos ? a : spec.find(':', a + 1);
    name =
        a == std::string::npos ? spec : spec.substr(a + 1, b == std::string::npos ? b : b - a - 1);
  }
  std::printf("added port %s\n", name.c_str());
}

void PortKinds(Connection& c, const Options& o) {
  json r = c.CallOrFail("port.kinds", nullptr);
  if (o.json) return PrintJson(r);
  auto options = [](const json& list) {
    for (const json& opt : list) {
      std::string head = Str(opt, "name", "");
      if (opt.contains("value")) head += "=" + Str(opt, "value", "");
      std::string text = Str(opt, "help", "");
      if (opt.value("required", false)) {
        text += " (required)";
      } else if (opt.contains("default")) {
        text += " (default " + Str(opt, "default", "") + ")";
      }
      std::printf("    %-22s %s\n", head.c_str(), text.c_str());
    }
  };
  for (const json& k : r.value("kinds", json::array())) {
    std::printf("%s:NAME:%s\n  %s\n", Str(k, "name", "").c_str(), Str(k, "synopsis", "").c_str(),
                Str(k, "summary", "").c_str());
    options(k.value("options", json::array()));
  }
  std::printf("every kind:\n");
  options(r.value("every_kind", json::array()));
}

void PortCapsCmd(Connection& c, const Options& o) {
  json r = c.CallOrFail("port.caps", {{"name", o.words[2]}});
  if (o.json) return PrintJson(r);
  if (!r.is_object()) Fail(kExitFailed, "malformed port.caps result from nicmuxd");
  std::string offloads;
  for (const json& n : r.value("tx_offloads", json::array())) {
    offloads += (offloads.empty() ? "" : " ") + (n.is_string() ? n.get<std::string>() : n.dump());
  }
  auto limit = [](uint64_t v) { return v ? std::to_string(v) : std::string("not known"); };
  std::printf("%-14s %s (%s)\n", "port:", Str(r, "name", "").c_str(), Str(r, "kind", "").c_str());
  std::printf("%-14s %llu of at most %llu\n", "queues:", static_cast<unsigned long long>(U64(r, "queues")),
              static_cast<unsigned long long>(U64(r, "max_queues")));
  std::printf("%-14s %s\n", "tx offloads:", offloads.empty() ? "none (the switch completes every request)" : offloads.c_str());
  std::printf("%-14s %s\n", "mtu:", limit(U64(r, "mtu")).c_str());
  std::printf("%-14s %s\n", "max frame:", limit(U64(r, "max_frame")).c_str());
  if (Has(r, "peer_features")) std::printf("%-14s %s\n", "peer features:", Str(r, "peer_features").c_str());
  if (r.contains("device") && r["device"].is_object() && !r["device"].empty()) {
    std::printf("device:\n");
    size_t w = 0;
    for (auto it = r["device"].begin(); it != r["device"].end(); ++it) w = std::max(w, it.key().size());
    for (auto it = r["device"].begin(); it != r["device"].end(); ++it) {
      std::printf("  %-*s  %s\n", static_cast<int>(w + 1), (it.key() + ":").c_str(), Str(r["device"], it.key().c_str()).c_str());
    }
  }
}

void PortFlows(Connection& c, const Options& o) {
  json r = c.CallOrFail("port.flows", {{"name", o.words[2]}});
  if (o.json) return PrintJson(r);
  if (!r.is_object() || !r.contains("flows") || !r["flows"].is_array()) {
    Fail(kExitFailed, "malformed port.flows result from nicmuxd");
  }
  const json& f = r["flows"];
  std::printf("port %s (%s): %zu flow rules\n", Str(r, "name", "").c_str(), Str(r, "kind", "").c_str(), f.size());
  if (f.empty()) return;
  std::printf("%6s %8s %12s %-9s %s\n", "id", "priority", "hits", "runs", "rule");
  for (const json& e : f) {
    if (!e.is_object()) continue;
    std::printf("%6llu %8llu %12llu %-9s %s\n", static_cast<unsigned long long>(U64(e, "id")),
                static_cast<unsigned long long>(U64(e, "priority")), static_cast<unsigned long long>(U64(e, "hits")),
                Str(e, "runs", "").c_str(), Str(e, "rule", "").c_str());
  }
}

void PortDel(Connection& c, const Options& o) {
  json r = c.CallOrFail("port.del", {{"name", o.words[2]}});
  if (o.json) return PrintJson(r);
  std::printf("removed port %s\n", o.words[2].c_str());
}

void SchedShow(Connection& c, const Options& o) {
  json r = c.CallOrFail("sched.show", nullptr);
  if (o.json) return PrintJson(r);
  std::vector<std::vector<std::string>> rows;
  auto pct = [](const json& v) {
    char b[32];
    std::snprintf(b, sizeof b, "%.1f", v.is_number() ? v.get<double>() : 0.0);
    return std::string(b);
  };
  for (const json& w : Array(r, "workers")) {
    std::string queues;
    const json& qs = Array(w, "queues");
    // Busiest first; a long list is cut (--json has them all).
    std::vector<const json*> order;
    for (const json& q : qs) order.push_back(&q);
    std::stable_sort(order.begin(), order.end(), [](const json* a, const json* b) {
      return a->value("packets_per_s", uint64_t{0}) > b->value("packets_per_s", uint64_t{0});
    });
    constexpr size_t kShown = 12;
    for (size_t i = 0; i < order.size() && i < kShown; ++i) {
      const json& q = *order[i];
      if (!queues.empty()) queues += " ";
      const int64_t qnode = q.value("node", int64_t{-1});
      queues += Str(q, "port") + "/" + Str(q, "queue") + (q.value("pinned", false) ? "*" : "") +
                (qnode >= 0 ? "@n" + std::to_string(qnode) : "") + "(" + Str(q, "packets_per_s") + ")";
    }
    if (order.size() > kShown) queues += " ... (" + std::to_string(order.size()) + " in all)";
    if (queues.empty()) queues = "-";
    const int64_t cpu = w.value("cpu", -1);
    const double win = w.value("window_us", 0.0);
    char polling[48];
    std::snprintf(polling, sizeof polling, "adaptive %.0f us", win);
    const int64_t node = w.value("node", int64_t{-1});
    rows.push_back({Str(w, "worker"), cpu < 0 ? "-" : std::to_string(cpu), node < 0 ? "-" : std::to_string(node),
                    w.value("busy_poll", false) ? "busy" : polling,
                    pct(w["cpu_pct"]), pct(w["sleep_pct"]), Has(w, "busy_pct") ? pct(w["busy_pct"]) : "-",
                    Str(w, "wakeups_per_s"), Str(w, "packets_per_s"), Str(w, "ns_per_packet"),
                    Has(w, "cycles_per_packet") ? Str(w, "cycles_per_packet") : "-", queues});
  }
  PrintTable({"WORKER", "CPU", "NODE", "POLLING", "CPU %", "ASLEEP %", "BUSY %", "WAKEUPS/s", "PKTS/s", "NS/PKT",
              "CYC/PKT", "QUEUES (PORT/Q@NODE(PKTS/s))"},
             {false, true, true, false, true, true, true, true, true, true, true, false}, rows);
  std::printf("%s rebalance(s), %s queue move(s) by load, %s by NUMA node", Str(r, "rebalances").c_str(),
              Str(r, "queues_moved").c_str(), Has(r, "numa_moves") ? Str(r, "numa_moves").c_str() : "0");
  const uint64_t cap = Has(r, "max_busy_workers") ? U64(r, "max_busy_workers") : 0;
  if (cap != 0) {
    std::printf("; at most %s busy-polling worker(s), %s change(s)", std::to_string(cap).c_str(),
                Has(r, "busy_swaps") ? Str(r, "busy_swaps").c_str() : "0");
  }
  std::printf("\n");
}

void FdbShow(Connection& c, const Options& o) {
  json r = c.CallOrFail("fdb.show", nullptr);
  if (o.json) return PrintJson(r);
  struct Row {
    uint64_t vlan;
    std::string mac, port, age;
  };
  std::vector<Row> entries;
  for (const json& e : Array(r, "entries")) {
    entries.push_back({U64(e, "vlan"), Str(e, "mac"), Str(e, "port"), Str(e, "age_s")});
  }
  std::sort(entries.begin(), entries.end(), [](const Row& a, const Row& b) {
    return std::tie(a.vlan, a.mac) < std::tie(b.vlan, b.mac);
  });
  std::string capacity = Has(r, "capacity") ? " (capacity " + Str(r, "capacity") + ")" : "";
  if (entries.empty()) {
    std::printf("the MAC table is empty%s\n", capacity.c_str());
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const Row& e : entries) rows.push_back({e.mac, std::to_string(e.vlan), e.port, e.age});
  PrintTable({"MAC", "VLAN", "PORT", "AGE (s)"}, {false, true, false, true}, rows);
  uint64_t size = Has(r, "size") ? U64(r, "size") : entries.size();
  std::printf("%llu entr%s%s\n", static_cast<unsigned long long>(size), size == 1 ? "y" : "ies",
              capacity.c_str());
}

void FdbFlush(Connection& c, const Options& o) {
  json args = json::object();
  if (o.words.size() > 2) args["port"] = o.words[2];
  json r = c.CallOrFail("fdb.flush", args);
  if (o.json) return PrintJson(r);
  uint64_t n = U64(r, "flushed");
  std::printf("flushed %llu entr%s%s\n", static_cast<unsigned long long>(n), n == 1 ? "y" : "ies",
              o.words.size() > 2 ? (" of port " + o.words[2]).c_str() : "");
}

// upgrade: one request ({"started"}), then one {"end"} line with the outcome; the old
// nicmuxd writes it just before it exits, or goes on serving after a failure.
int Upgrade(Connection& c, const Options& o) {
  json args = json::object();
  if (o.words.size() > 1) args["binary"] = o.words[1];
  json r = c.CallOrFail("upgrade", args);
  if (!o.json) {
    std::printf("upgrading: started %s (pid %lld)\n", Has(r, "binary") && r["binary"].is_string() ? r["binary"].get<std::string>().c_str() : "?",
                Has(r, "pid") && r["pid"].is_number_integer() ? static_cast<long long>(r["pid"].get<int64_t>()) : -1LL);
    std::fflush(stdout);
  }
  std::string line, error;
  // nicmuxd's own limits add up to 28 s at most (hello 10 s, then 5 s per step and 2 s per
  // message): its outcome comes before this.
  switch (c.ReadLine(35'000, &line, &error)) {
    case Connection::Read::kLine:
      break;
    case Connection::Read::kTimeout:
      Fail(kExitFailed, "no outcome from nicmuxd within 35 s: see its log");
    case Connection::Read::kInterrupted:
      Fail(kExitInterrupted, "interrupted (the upgrade goes on; see nicmuxd's log)");
    case Connection::Read::kEof:
      Fail(kExitFailed, "nicmuxd closed the connection without saying how the upgrade went: see its log" +
                            (error.empty() ? std::string() : " (" + error + ")"));
  }
  json msg = json::parse(line, nullptr, false);
  if (msg.is_discarded() || !Has(msg, "end") || !msg["end"].is_object()) Fail(kExitFailed, "malformed outcome: " + line);
  const json& end = msg["end"];
  const bool ok = end.value("ok", false);
  if (o.json) {
    PrintJson(end);
  } else if (ok) {
    std::printf("upgraded: pid %lld now serves %llu port(s) (was pid %lld); forwarding paused %llu us\n",
                static_cast<long long>(end.value("pid", int64_t{-1})), static_cast<unsigned long long>(end.value("ports", uint64_t{0})),
                static_cast<long long>(end.value("from_pid", int64_t{-1})),
                static_cast<unsigned long long>(end.value("paused_us", uint64_t{0})));
    if (Has(end, "warnings") && end["warnings"].is_array()) {
      for (const json& w : end["warnings"]) {
        if (w.is_string()) std::printf("warning: %s\n", w.get<std::string>().c_str());
      }
    }
  }
  if (!ok) Fail(kExitFailed, "upgrade failed, the running nicmuxd goes on serving: " + end.value("error", std::string("?")));
  return kExitOk;
}

// stats: rates between two samples of the counters.
struct Sample {
  json result;
  uint64_t time_ns;  // the daemon's clock when it has one, else ours
};

// In watch mode a Ctrl-C while waiting for the reply is the normal end: exit 0.
Sample TakeSample(Connection& c, const json& args, bool watch) {
  auto reply = c.Call("stats", args);
  if (auto* f = std::get_if<Failure>(&reply)) {
    if (watch && f->exit_code == kExitInterrupted) std::exit(kExitOk);
    Fail(f->exit_code, f->message);
  }
  json& r = std::get<json>(reply);
  uint64_t t = Has(r, "time_ns") ? U64(r, "time_ns") : NowNs();
  return Sample{std::move(r), t};
}

void PrintRates(const Sample& prev, const Sample& cur, bool watch, double interval_s) {
  double dt = cur.time_ns > prev.time_ns ? double(cur.time_ns - prev.time_ns) / 1e9 : interval_s;
  std::map<std::string, const json*> before;
  for (const json& p : Array(prev.result, "ports")) before[Str(p, "name")] = &p;
  std::vector<std::vector<std::string>> rows;
  std::map<std::string, uint64_t> reasons;
  for (const json& p : Array(cur.result, "ports")) {
    std::string name = Str(p, "name");
    uint64_t drops = U64(p, "rx_dropped") + U64(p, "tx_dropped");
    for (const auto& [reason, n] : Drops(p)) reasons[reason] += n;
    auto it = before.find(name);
    // A rate needs the port in both samples with counters that did not go back (re-added).
    auto rate = [&](const char* key, double scale, const char* fmt) -> std::string {
      if (it == before.end()) return "-";
      uint64_t a = U64(*it->second, key), b = U64(p, key);
      if (b < a || dt <= 0) return "-";
      return Fmt(fmt, double(b - a) * scale / dt);
    };
    std::string drop_cell;
    if (!watch) {
      drop_cell = std::to_string(drops);
    } else if (it == before.end()) {
      drop_cell = "-";
    } else {
      uint64_t a = U64(*it->second, "rx_dropped") + U64(*it->second, "tx_dropped");
      drop_cell = drops < a || dt <= 0 ? "-" : Fmt("%.0f", double(drops - a) / dt);
    }
    rows.push_back({name, rate("rx_packets", 1, "%.0f"), rate("rx_bytes", 8e-6, "%.2f"),
                    rate("tx_packets", 1, "%.0f"), rate("tx_bytes", 8e-6, "%.2f"), drop_cell});
  }
  if (rows.empty()) {
    std::printf("no ports\n");
    return;
  }
  PrintTable({"PORT", "RX pps", "RX Mbit/s", "TX pps", "TX Mbit/s", watch ? "DROPS/s" : "DROPS"},
             {false, true, true, true, true, true}, rows);
  if (!reasons.empty()) {
    std::vector<std::pair<std::string, uint64_t>> sorted(reasons.begin(), reasons.end());
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second > b.second : a.first < b.first;
    });
    std::printf("\ndrops by reason (total):");
    for (const auto& [reason, n] : sorted) {
      std::printf(" %s %llu", reason.c_str(), static_cast<unsigned long long>(n));
    }
    std::printf("\n");
  }
}

int Stats(Connection& c, const Options& o) {
  json args = json::object();
  if (o.words.size() > 1) args["port"] = o.words[1];
  double interval = o.interval_s.value_or(1.0);
  int interval_ms = static_cast<int>(std::lround(interval * 1000));
  Sample prev = TakeSample(c, args, o.watch);
  if (o.json && !o.watch) {
    PrintJson(prev.result);
    return kExitOk;
  }
  if (o.json) std::printf("%s\n", DumpJsonLine(prev.result).c_str());
  bool tty = ::isatty(STDOUT_FILENO) == 1;
  for (bool first = true;; first = false) {
    std::fflush(stdout);
    if (!Sleep(interval_ms)) return o.watch ? kExitOk : kExitInterrupted;
    Sample cur = TakeSample(c, args, o.watch);
    if (o.json) {
      std::fputs(DumpJsonLine(cur.result).c_str(), stdout);
    } else {
      if (o.watch) {
        if (tty) {
          std::printf("\033[H\033[2J");  // cursor home, clear screen
        } else if (!first) {
          std::printf("\n");
        }
        std::printf("every %g s on %s, Ctrl-C to stop\n\n", interval, c.path().c_str());
      }
      PrintRates(prev, cur, o.watch, interval);
    }
    if (!o.watch) return kExitOk;
    prev = std::move(cur);
  }
}

// capture: one request, then {"pkt"} lines until {"end"}, the count, the duration or Ctrl-C.
int Capture(Connection& c, const Options& o) {
  const std::string& port = o.words[1];
  const std::string& file = *o.write_file;
  bool to_stdout = file == "-";
  FILE* out = to_stdout ? stderr : stdout;  // the summary must not mix with pcap bytes
  auto writer = to_stdout ? PcapWriter::FromFd(UniqueFd(::dup(STDOUT_FILENO)), "standard output")
                          : PcapWriter::Open(file);
  if (!writer) Fail(kExitFailed, writer.error().message());
  auto discard = [&] {
    (void)writer->Close();
    if (!to_stdout) ::unlink(file.c_str());
  };

  json args{{"port", port}};
  if (o.count) args["count"] = *o.count;
  auto reply = c.Call("capture", args);
  if (auto* f = std::get_if<Failure>(&reply)) {
    discard();
    Fail(f->exit_code, f->message);
  }
  std::fprintf(stderr, "capturing on %s to %s, Ctrl-C to stop\n", port.c_str(),
               to_stdout ? "standard output" : file.c_str());

  uint64_t deadline = o.duration_s ? NowNs() + uint64_t(*o.duration_s * 1e9) : 0;
  std::optional<uint64_t> daemon_dropped;
  std::string line, error;
  int status = kExitOk;
  bool stopped = false;  // by us: count, duration, Ctrl-C, a write error
  bool ended = false;    // by the daemon: "end" line or connection closed
  while (!stopped && !ended) {
    int timeout_ms = -1;
    if (deadline != 0) {
      uint64_t now = NowNs();
      timeout_ms = now >= deadline ? 0 : int((deadline - now + 999'999) / 1'000'000);
    }
    // Drain what is here without blocking; flush before waiting, so `-w - | tcpdump` is live.
    Connection::Read rd = c.ReadLine(0, &line, &error);
    if (rd == Connection::Read::kTimeout) {
      if (auto r = writer->Flush(); !r) {
        std::fprintf(stderr, "nicmuxctl: %s\n", r.error().message().c_str());
        status = kExitFailed;
        break;
      }
      rd = c.ReadLine(timeout_ms, &line, &error);
    }
    switch (rd) {
      case Connection::Read::kTimeout:
        stopped = true;  // the duration is over
        continue;
      case Connection::Read::kInterrupted:
        stopped = true;
        continue;
      case Connection::Read::kEof:
        if (!error.empty()) std::fprintf(stderr, "nicmuxctl: %s\n", error.c_str());
        ended = true;
        continue;
      case Connection::Read::kLine:
        break;
    }
    json msg = json::parse(line, nullptr, false);
    if (Has(msg, "end")) {
      if (Has(msg["end"], "dropped")) daemon_dropped = U64(msg["end"], "dropped");
      ended = true;
      continue;
    }
    if (!Has(msg, "pkt") || !msg["pkt"].is_object()) continue;  // a line from a newer daemon
    const json& pkt = msg["pkt"];
    auto data_it = pkt.find("data");
    auto bytes = data_it != pkt.end() && data_it->is_string()
                     ? Base64Decode(data_it->get_ref<const std::string&>())
                     : Result<std::vector<std::byte>>(Error("no \"data\""));
    if (!bytes) {
      std::fprintf(stderr, "nicmuxctl: skipping a malformed packet line: %s\n",
                   bytes.error().message().c_str());
      continue;
    }
    uint64_t len = std::min<uint64_t>(U64(pkt, "len"), UINT32_MAX);
    if (auto r = writer->Write(U64(pkt, "ts_ns"), static_cast<uint32_t>(len), *bytes); !r) {
      std::fprintf(stderr, "nicmuxctl: %s\n", r.error().message().c_str());
      status = kExitFailed;
      stopped = true;
      continue;
    }
    if (o.count && writer->packets() >= *o.count) stopped = true;
  }
  // We stopped first: half-close, so nicmuxd ends the stream and sends its "end" line (with
  // its drop count); wait a little for it, writing nothing more.
  if (stopped && !ended) {
    c.ShutdownWrite();
    uint64_t give_up = NowNs() + 2'000'000'000u;
    g_interrupted = 0;  // a second Ctrl-C stops the wait
    while (NowNs() < give_up) {
      int left_ms = int((give_up - NowNs()) / 1'000'000) + 1;
      auto rd = c.ReadLine(left_ms, &line, &error);
      if (rd != Connection::Read::kLine) break;
      json msg = json::parse(line, nullptr, false);
      if (Has(msg, "end")) {
        if (Has(msg["end"], "dropped")) daemon_dropped = U64(msg["end"], "dropped");
        break;
      }
    }
  }
  uint64_t n = writer->packets();
  if (auto r = writer->Close(); !r) {
    std::fprintf(stderr, "nicmuxctl: %s\n", r.error().message().c_str());
    status = kExitFailed;
  }
  if (daemon_dropped) {
    std::fprintf(out, "%llu packets captured (%llu dropped)\n", static_cast<unsigned long long>(n),
                 static_cast<unsigned long long>(*daemon_dropped));
  } else {
    std::fprintf(out, "%llu packets captured\n", static_cast<unsigned long long>(n));
  }
  return status;
}

// ---------------------------------------------------------------------------------------------
// Command line

double ParseSeconds(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno != 0 || !std::isfinite(d) || d < 0.01 || d > 86400) {
    UsageError(flag + " wants seconds between 0.01 and 86400, not \"" + v + "\"");
  }
  return d;
}

uint64_t ParseCount(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0 || n == 0) {
    UsageError(flag + " wants a positive number, not \"" + v + "\"");
  }
  return n;
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  const char* env = std::getenv("NICMUX_CONTROL");
  o.socket = env != nullptr && *env != '\0' ? env : kDefaultSocket;
  bool only_words = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (only_words || a.empty() || a[0] != '-' || a == "-") {
      o.words.push_back(a);
      continue;
    }
    if (a == "--") {
      only_words = true;
      continue;
    }
    std::string flag = a, value;
    bool has_value = false;
    if (size_t eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
      flag = a.substr(0, eq);
      value = a.substr(eq + 1);
      has_value = true;
    }
    auto take = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) UsageError(flag + " needs a value");
      return argv[++i];
    };
    auto no_value = [&] {
      if (has_value) UsageError(flag + " takes no value");
    };
    if (flag == "-h" || flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(kExitOk);
    } else if (flag == "--version") {
      std::printf("nicmuxctl 0.1.0\n");
      std::exit(kExitOk);
    } else if (flag == "--socket") {
      o.socket = take();
    } else if (flag == "--json") {
      no_value();
      o.json = true;
    } else if (flag == "--watch") {
      no_value();
      o.watch = true;
    } else if (flag == "--interval") {
      o.interval_s = ParseSeconds(flag, take());
    } else if (flag == "--duration") {
      o.duration_s = ParseSeconds(flag, take());
    } else if (flag == "-w") {
      o.write_file = take();
      if (o.write_file->empty()) UsageError("-w needs a file name");
    } else if (flag == "-c") {
      o.count = ParseCount(flag, take());
    } else {
      UsageError("unknown option " + a);
    }
  }
  return o;
}

int Run(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);
  const auto& w = o.words;
  if (w.empty()) UsageError("no command");
  auto words = [&](size_t min, size_t max, const char* form) {
    if (w.size() < min || w.size() > max) UsageError(std::string("usage: nicmuxctl ") + form);
  };
  // Command-specific options only where they mean something.
  bool is_stats = w[0] == "stats", is_capture = w[0] == "capture";
  if (!is_stats && (o.watch || o.interval_s)) UsageError("--watch and --interval are for stats");
  if (!is_capture && (o.write_file || o.count || o.duration_s)) {
    UsageError("-w, -c and --duration are for capture");
  }

  void (*simple)(Connection&, const Options&) = nullptr;
  if (w[0] == "port") {
    std::string sub = w.size() > 1 ? w[1] : "";
    if (sub == "list") {
      words(2, 2, "port list");
      simple = PortList;
    } else if (sub == "show") {
      words(3, 3, "port show NAME");
      simple = PortShow;
    } else if (sub == "add") {
      words(3, 3, "port add KIND:NAME[:key=value,...]");
      simple = PortAdd;
    } else if (sub == "del") {
      words(3, 3, "port del NAME");
      simple = PortDel;
    } else if (sub == "kinds") {
      words(2, 2, "port kinds");
      simple = PortKinds;
    } else if (sub == "caps") {
      words(3, 3, "port caps NAME");
      simple = PortCapsCmd;
    } else if (sub == "flows") {
      words(3, 3, "port flows NAME");
      simple = PortFlows;
    } else {
      UsageError("port wants list, show NAME, add SPEC, del NAME, kinds, caps NAME or flows NAME");
    }
  } else if (w[0] == "pv") {
    if ((w.size() > 1 ? w[1] : "") != "flows") UsageError("pv wants flows NAME");
    words(3, 3, "pv flows NAME");
    simple = PortFlows;
  } else if (w[0] == "sched") {
    if ((w.size() > 1 ? w[1] : "") != "show") UsageError("sched wants show");
    words(2, 2, "sched show");
    simple = SchedShow;
  } else if (w[0] == "fdb") {
    std::string sub = w.size() > 1 ? w[1] : "";
    if (sub == "show") {
      words(2, 2, "fdb show");
      simple = FdbShow;
    } else if (sub == "flush") {
      words(2, 3, "fdb flush [PORT]");
      simple = FdbFlush;
    } else {
      UsageError("fdb wants show or flush [PORT]");
    }
  } else if (w[0] == "upgrade") {
    words(1, 2, "upgrade [PATH]");
  } else if (is_stats) {
    words(1, 2, "stats [PORT] [--watch] [--interval S]");
  } else if (is_capture) {
    words(2, 2, "capture PORT -w FILE [-c COUNT] [--duration S]");
    if (!o.write_file) UsageError("capture needs -w FILE (or -w - for standard output)");
  } else {
    UsageError("unknown command \"" + w[0] + "\"");
  }

  SetUpSignals();
  Connection c = Connection::Open(o.socket);
  if (simple != nullptr) {
    simple(c, o);
    return kExitOk;
  }
  if (w[0] == "upgrade") return Upgrade(c, o);
  return is_stats ? Stats(c, o) : Capture(c, o);
}

}  // namespace
}  // namespace nicmux

int main(int argc, char** argv) {
  // Results are read through checked accessors; this is the net for anything they missed.
  try {
    int status = nicmux::Run(argc, argv);
    std::fflush(stdout);
    return status;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nicmuxctl: unexpected reply from nicmuxd: %s\n", e.what());
    return nicmux::kExitFailed;
  }
}
