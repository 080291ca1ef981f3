// nicmuxd: the nicmux daemon. Runs in the foreground, logs to stderr, exits cleanly on SIGTERM
// or SIGINT (its sockets removed). See --help.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/log.h"
#include "base/privileges.h"
#include "base/seccomp.h"
#include "control/config.h"
#include "control/daemon.h"
#include "control/metrics.h"
#include "base/unix_socket.h"
#include "port/dpdk_port.h"
#include "port/registry.h"

namespace nicmux {
namespace {

constexpr const char* kUsage = R"(usage: nicmuxd [options] [--config FILE] [--port SPEC ...]

Connects VMs and containers (virtio-net over vhost-user), other vhost-user backends and the
host kernel (TAP) through a learning L2 switch.

options:
  --config FILE        read daemon settings and ports from a TOML file (docs/config.md);
                       SIGHUP re-reads it and applies the difference (only changed ports
                       are touched). Command-line flags override the file's settings.
  --port SPEC          a port, KIND:NAME[:key=value,...]; repeat for each port
  --forward MODE       switch: a learning L2 switch (MAC learning and aging, flooding,
                       VLANs) between all ports (default). xconnect: ports cross-connected
                       in pairs in the order given (1st <-> 2nd, 3rd <-> 4th, ...).
  --workers N          worker threads, 1..64 (default 1)
  --cpu LIST           pin worker i to the i-th CPU of LIST (e.g. 1 or 2,3; one per worker)
  --control PATH       the control socket for nicmuxctl (default /run/nicmux/nicmuxd.sock;
                       "none": no control socket)
  --metrics ADDR:PORT  serve Prometheus metrics at http://ADDR:PORT/metrics (127.0.0.1:9469,
                       [::1]:9469, or :9469 for every address; docs/metrics.md). Default: off
  --socket-group GROUP every socket nicmuxd serves (vhost-user, pv) gets this group (a name or
                       number) and mode 0660: QEMU under libvirt runs as libvirt-qemu
                       (docs/config.md "Socket ownership"). A missing socket directory is
                       made 0755. Per port: socket_group=. Default: the umask's mode and
                       nicmuxd's group
  --socket-mode MODE   their mode, octal (default 0660 with --socket-group)
  --control-group GROUP the control socket's group: its members may use nicmuxctl
  --poll-us N          the longest a worker keeps polling after the last packet before it
                       sleeps (default 100; 0..1000000; 0: sleep at once). Within it the
                       window adapts to the traffic: long enough to catch a reply that
                       follows a request, none for lone packets (docs/scheduler.md).
  --poll-fixed         always poll the whole --poll-us before sleeping (no adapting): more
                       CPU on sparse traffic, for a latency that does not depend on what
                       the window learned
  --busy-poll          workers never sleep: the lowest latency, a whole CPU per worker even
                       when idle (default: adaptive, sleep after --poll-us; docs/scheduler.md)
  --max-busy-workers N with --busy-poll: at most N workers busy-poll at a time, the busiest
                       (re-decided every second, with hysteresis); the others poll
                       adaptively within --poll-us. 0..64, default 0: no cap
  --mac-aging S        seconds a learned MAC lives without traffic (default 300)
  --mac-table-size N   MAC table entries, 16..1048576 (default 8192)
  --stats-interval S   log per-port counters every S seconds (default 0: only at exit)
  --dpdk-eal-args ARGS DPDK's EAL arguments, used when the first dpdk port is made (default
                       "--no-huge -m 256 --no-shconf --no-telemetry --no-pci"; docs/dpdk.md;
                       the config's [dpdk] eal_args)
  --log-level LEVEL    debug, info, warning or error (default info)
  --seccomp MODE       on: once set up, allow only the system calls nicmuxd uses (a seccomp
                       filter on every thread); any other call fails with EPERM and the
                       kernel logs it (audit type=1326). log: allow all, log the calls the
                       list lacks. off (default). docs/security.md
  --user USER[:GROUP]  once set up (as root), run as USER (with its groups, or only GROUP),
                       keeping only CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF and CAP_IPC_LOCK.
                       USER needs write access to the socket directories.
                       docs/security.md
  --takeover FD        internal: started by a running nicmuxd's live upgrade (`nicmuxctl
                       upgrade`, SIGUSR2), takes its ports over the UNIX socket FD instead of
                       making them (docs/upgrade.md)
  -h, --help           this text
  --version            the version

port kinds (generated from the port registry; `nicmuxctl port kinds` asks a running daemon):
)";

// After the port kinds.
constexpr const char* kUsageTail = R"(
examples:
  nicmuxd --port vhost-user:vm1:socket=/tmp/vm1.sock --port vhost-user:vm2:socket=/tmp/vm2.sock
  nicmuxd --config /etc/nicmux/nicmuxd.toml
  nicmuxd --port vhost-user:vm1:socket=/tmp/vm1.sock,vlan=10 --port tap:host0:address=10.0.0.1/24,vlan=10

signals: SIGTERM/SIGINT: clean shutdown (sockets and TAP devices removed); SIGHUP: reload
--config; SIGUSR2: live upgrade to the binary at this one's path (the file there now), with
the same arguments: guests keep their connections (docs/upgrade.md; `nicmuxctl upgrade
[PATH]` does the same and reports the outcome); counters are logged at exit.
exit status: 0 after SIGTERM/SIGINT, 2 for a bad command line or config file, 1 when a port,
the control socket or the metrics address cannot be set up.
)";

[[noreturn]] void Usage(const std::string& error) {
  std::fprintf(stderr, "nicmuxd: %s\n(see nicmuxd --help)\n", error.c_str());
  std::exit(2);
}

Result<uint64_t> Number(const std::string& flag, const std::string& v, uint64_t lo, uint64_t hi) {
  char* end;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || v[0] == '-' || n < lo || n > hi) {
    return Error(flag + " " + v + ": expected a number in " + std::to_string(lo) + ".." + std::to_string(hi));
  }
  return n;
}

bool ApplyLogLevel(const std::string& v) {
  if (v == "debug") SetLogLevel(LogLevel::kDebug);
  else if (v == "info") SetLogLevel(LogLevel::kInfo);
  else if (v == "warning") SetLogLevel(LogLevel::kWarning);
  else if (v == "error") SetLogLevel(LogLevel::kError);
  else return false;
  return true;
}

DaemonOptions ParseArgs(int argc, char** argv) {
  DaemonOptions o;
  // Flags are collected first, then laid over the config file's settings.
  std::optional<std::string> forward, control, log_level, config, eal_args, metrics, socket_group, socket_mode,
      control_group, seccomp, user;
  std::optional<uint64_t> workers, aging, table, stats, poll, max_busy;
  std::optional<bool> busy_poll, poll_fixed;
  std::optional<std::vector<int>> cpus;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(a + " needs a value");
      return argv[++i];
    };
    auto number = [&](uint64_t lo, uint64_t hi) {
      auto n = Number(a, value(), lo, hi);
      if (!n) Usage(n.error().message());
      return *n;
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::fputs(PortRegistry::Builtin().Help().c_str(), stdout);
      std::fputs(kUsageTail, stdout);
      std::exit(0);
    } else if (a == "--version") {
      std::puts("nicmuxd " NICMUX_VERSION);
      std::exit(0);
    } else if (a == "--port") {
      auto s = ParsePortSpec(value());
      if (!s) Usage(s.error().message());
      o.ports.push_back(*s);
    } else if (a == "--dpdk-eal-args") {
      eal_args = value();
    } else if (a == "--config") {
      config = value();
    } else if (a == "--forward") {
      forward = value();
      if (*forward != "switch" && *forward != "xconnect") Usage("--forward " + *forward + ": unknown mode (switch, xconnect)");
    } else if (a == "--workers") {
      workers = number(1, 64);
    } else if (a == "--cpu") {
      std::string v = value();
      std::vector<int> list;
      size_t pos = 0;
      while (true) {
        size_t comma = v.find(',', pos);
        auto n = Number("--cpu", v.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos), 0, 4095);
        if (!n) Usage(n.error().message() + " (a CPU number or a comma-separated list)");
        list.push_back(static_cast<int>(*n));
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
      cpus = list;
    } else if (a == "--control") {
      control = value();
    } else if (a == "--metrics") {
      metrics = value();
      if (auto m = ParseMetricsAddress(*metrics); !m) Usage(m.error().message());
    } else if (a == "--socket-group") {
      socket_group = value();
    } else if (a == "--socket-mode") {
      socket_mode = value();
    } else if (a == "--control-group") {
      control_group = value();
      if (auto g = ParseSocketAccess(*control_group, ""); !g) Usage("--control-group: " + g.error().message());
    } else if (a == "--poll-us") {
      poll = number(0, 1000000);
    } else if (a == "--busy-poll") {
      busy_poll = true;
    } else if (a == "--max-busy-workers") {
      max_busy = number(0, 64);
    } else if (a == "--poll-fixed") {
      poll_fixed = true;
    } else if (a == "--mac-aging") {
      aging = number(1, 86400);
    } else if (a == "--mac-table-size") {
      table = number(16, 1 << 20);
    } else if (a == "--stats-interval") {
      stats = number(0, 86400);
    } else if (a == "--takeover") {
      o.takeover_fd = static_cast<int>(number(3, 1 << 20));
    } else if (a == "--seccomp" || a.rfind("--seccomp=", 0) == 0) {
      seccomp = a == "--seccomp" ? value() : a.substr(std::strlen("--seccomp="));
      if (auto m = ParseSeccompMode(*seccomp); !m) Usage("--seccomp: " + m.error().message());
    } else if (a == "--user") {
      user = value();
      if (auto u = ParseRunAs(*user); !u) Usage("--user: " + u.error().message());
    } else if (a == "--log-level") {
      log_level = value();
      if (!ApplyLogLevel(*log_level)) Usage("--log-level " + *log_level + ": use debug, info, warning or error");
    } else {
      Usage("unknown argument '" + a + "'");
    }
  }
  const bool cli_socket_access = socket_group || socket_mode;
  if (config) {
    auto c = LoadConfig(*config);
    if (!c) {
      std::fprintf(stderr, "nicmuxd: %s\n", c.error().message().c_str());
      std::exit(2);
    }
    o.config_path = *config;
    o.config_ports = c->ports;
    if (c->dpdk_eal_args && !eal_args) SetDpdkEalArgs(*c->dpdk_eal_args);
    const DaemonSettings& d = c->daemon;
    if (d.forward && !forward) forward = d.forward;
    if (d.control && !control) control = d.control;
    if (d.metrics && !metrics) metrics = d.metrics;
    if (d.socket_group && !socket_group) socket_group = d.socket_group;
    if (d.socket_mode && !socket_mode) socket_mode = d.socket_mode;
    if (d.control_group && !control_group) control_group = d.control_group;
    if (d.seccomp && !seccomp) seccomp = d.seccomp;
    if (d.user && !user) user = d.user;
    if (d.log_level && !log_level && !ApplyLogLevel(*d.log_level)) Usage(*config + ": log_level " + *d.log_level);
    if (d.workers && !workers) workers = d.workers;
    if (d.cpus && !cpus) cpus = d.cpus;
    if (d.stats_interval_s && !stats) stats = d.stats_interval_s;
    if (d.mac_aging_s && !aging) aging = d.mac_aging_s;
    if (d.poll_us && !poll) poll = d.poll_us;
    if (d.busy_poll && !busy_poll) busy_poll = d.busy_poll;
    if (d.max_busy_workers && !max_busy) max_busy = d.max_busy_workers;
    if (d.poll_fixed && !poll_fixed) poll_fixed = d.poll_fixed;
    if (d.mac_table_size && !table) table = d.mac_table_size;
  }
  if (forward) o.forward = *forward;
  if (control) o.control_path = *control;
  if (metrics) o.metrics_address = *metrics;
  if (control_group) o.control_group = *control_group;
  if (seccomp) o.seccomp = *ParseSeccompMode(*seccomp);
  if (user) o.user = *user;
  o.socket_access_from_cli = cli_socket_access;
  if (socket_group || socket_mode) {
    auto sa = ParseSocketAccess(socket_group.value_or(""), socket_mode.value_or(""));
    if (!sa) Usage(sa.error().message());
    SetDefaultSocketAccess(*sa);
  }
  if (workers) o.workers = static_cast<uint32_t>(*workers);
  if (cpus) o.cpus = *cpus;
  if (stats) o.stats_interval_s = *stats;
  if (aging) o.mac_aging_s = static_cast<uint32_t>(*aging);
  if (poll) o.poll_us = static_cast<uint32_t>(*poll);
  if (busy_poll) o.busy_poll = *busy_poll;
  if (max_busy) o.max_busy_workers = static_cast<uint32_t>(*max_busy);
  if (poll_fixed) o.poll_fixed = *poll_fixed;
  if (table) o.mac_table_size = static_cast<uint32_t>(*table);
  if (!o.cpus.empty() && o.cpus.size() != o.workers) {
    Usage("--cpu lists " + std::to_string(o.cpus.size()) + " CPUs for " + std::to_string(o.workers) + " worker(s)");
  }
  if (eal_args) {  // split at spaces, as the config's
    std::vector<std::string> args;
    std::string cur;
    for (char ch : *eal_args + " ") {
      if (ch == ' ' || ch == '\t') {
        if (!cur.empty()) args.push_back(cur);
        cur.clear();
      } else {
        cur += ch;
      }
    }
    SetDpdkEalArgs(args);
  }
  if (o.ports.empty() && o.config_ports.empty() && o.forward == "xconnect") Usage("no --port given");
  return o;
}

int Main(int argc, char** argv) {
  DaemonOptions o = ParseArgs(argc, argv);
  // Every vhost-user port holds a connection, its regions' fds (up to 64) and three eventfds
  // per queue; a live upgrade holds each twice for a moment. The soft limit (1024 outside the
  // systemd unit) is raised to the hard one.
  if (rlimit rl; ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
  }
  // For a live upgrade: the same arguments again (without an earlier --takeover), and the
  // path this binary was started from.
  for (int i = 0; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--takeover" && i + 1 < argc) {
      ++i;
      continue;
    }
    o.argv.push_back(argv[i]);
  }
  {
    char buf[4096];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n > 0) {
      std::string exe(buf, static_cast<size_t>(n));
      // Replaced by a package upgrade: the new file at the same path is the one to start.
      const std::string deleted = " (deleted)";
      if (exe.size() > deleted.size() && exe.compare(exe.size() - deleted.size(), deleted.size(), deleted) == 0) {
        exe.resize(exe.size() - deleted.size());
      }
      o.exe = exe;
    }
  }

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigaddset(&mask, SIGUSR2);
  sigprocmask(SIG_BLOCK, &mask, nullptr);  // before any thread starts, so all inherit it
  signal(SIGPIPE, SIG_IGN);
  UniqueFd sfd(::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!sfd.valid()) {
    NICMUX_LOG(kError, "signalfd: %s", std::strerror(errno));
    return 1;
  }
  auto loop = EventLoop::Create();
  if (!loop) {
    NICMUX_LOG(kError, "%s", loop.error().message().c_str());
    return 1;
  }
  auto daemon = Daemon::Create(o, loop->get());
  if (!daemon) {
    NICMUX_LOG(kError, "%s", daemon.error().message().c_str());
    return 1;
  }
  EventLoop& el = **loop;
  // Setup is done (ports, sockets, workers): from here on an unprivileged user, and only the
  // calls nicmuxd makes at run time.
  if (!o.user.empty()) {
    auto who = ParseRunAs(o.user);
    if (!who) {
      NICMUX_LOG(kError, "--user: %s", who.error().message().c_str());
      return 1;
    }
    const bool already = ::getuid() == who->uid;
    if (auto dr = DropPrivileges(*who); !dr) {
      NICMUX_LOG(kError, "%s", dr.error().message().c_str());
      return 1;
    }
    NICMUX_LOG(kInfo, "%s as %s (uid %u, gid %u), capabilities %s", already ? "running" : "switched to run",
               o.user.c_str(), static_cast<unsigned>(who->uid), static_cast<unsigned>(who->gid),
               KeptCapabilityNames().c_str());
  }
  // A live upgrade's new process already runs under the old one's filter.
  if (o.seccomp != SeccompMode::kOff) {
    if (SeccompActive()) {
      NICMUX_LOG(kInfo, "seccomp: the filter inherited from the upgraded process stays");
    } else if (auto sr = InstallSeccomp(o.seccomp); !sr) {
      NICMUX_LOG(kError, "%s", sr.error().message().c_str());
      return 1;
    } else {
      NICMUX_LOG(kInfo, "seccomp: filter installed (%s, %zu calls allowed)", SeccompModeName(o.seccomp),
                 SeccompAllowedCalls().size());
    }
  }
  auto r = el.Watch(sfd.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo si;
    while (::read(sfd.get(), &si, sizeof si) == sizeof si) {
      if (si.ssi_signo == SIGHUP) {
        NICMUX_LOG(kInfo, "SIGHUP: reloading");
        (*daemon)->Reload();
        continue;
      }
      if (si.ssi_signo == SIGUSR2) {
        NICMUX_LOG(kInfo, "SIGUSR2: live upgrade");
        // The outcome is logged either way (Daemon::Cutover, FailUpgrade).
        if (auto e = (*daemon)->StartUpgrade("", nullptr)) {
          NICMUX_LOG(kError, "upgrade: %s", e->message.c_str());
        }
        continue;
      }
      NICMUX_LOG(kInfo, "%s: shutting down", strsignal(static_cast<int>(si.ssi_signo)));
      el.Stop();
    }
  });
  if (!r) {
    NICMUX_LOG(kError, "%s", r.error().message().c_str());
    return 1;
  }
  el.Run();
  daemon->reset();  // workers stopped, counters logged, sockets and devices removed
  return 0;
}

}  // namespace
}  // namespace nicmux

int main(int argc, char** argv) { return nicmux::Main(argc, argv); }
