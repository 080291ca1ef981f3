// nicmuxd: the nicmux daemon. Runs in the foreground, logs to stderr, exits cleanly on SIGTERM
// or SIGINT (its sockets removed). See --help.
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "base/event_loop.h"
#include "base/log.h"
#include "control/port_spec.h"
#include "port/vhost_user_port.h"
#include "port/virtio_user_port.h"
#include "sched/worker.h"
#include "switch/xconnect.h"

namespace nicmux {
namespace {

constexpr const char* kUsage = R"(usage: nicmuxd [options] --port SPEC --port SPEC ...

Connects VMs and containers (virtio-net over vhost-user) to each other.

options:
  --port SPEC          a port, KIND:NAME[:key=value,...]; repeat for each port
  --forward MODE       xconnect: ports are cross-connected in pairs, in the order given
                       (1st <-> 2nd, 3rd <-> 4th, ...). The learning switch ("switch") is
                       not built yet. Default: xconnect.
  --cpu N              pin the worker thread to CPU N (default: not pinned)
  --stats-interval S   log per-port counters every S seconds (default 0: only at exit)
  --log-level LEVEL    debug, info, warning or error (default info)
  -h, --help           this text
  --version            the version

port kinds:
  vhost-user:NAME:socket=PATH[,client][,queues=N][,mtu=N]
      a virtio-net device for a QEMU guest or a virtio-user container. nicmuxd listens on
      PATH (one frontend at a time) or, with `client`, connects to PATH (QEMU's
      `server=on`) and reconnects after the frontend restarts. queues: queue pairs, 1..8
      (default 1). mtu: offered to the guest (VIRTIO_NET_F_MTU), 68..65535.
  virtio-user:NAME:socket=PATH[,server][,queues=N][,packed]
      nicmuxd as the frontend of another vhost-user backend (DPDK vhost, OVS, another
      nicmuxd): connects to PATH (or, with `server`, listens and waits for the backend) at
      start. queues: 1..8; packed: packed virtqueues.

example:
  nicmuxd --port vhost-user:vm1:socket=/tmp/vm1.sock --port vhost-user:vm2:socket=/tmp/vm2.sock

exit status: 0 after SIGTERM/SIGINT, 2 for a bad command line, 1 when a port cannot be set up.
)";

struct Options {
  std::vector<PortSpec> ports;
  std::string forward = "xconnect";
  int cpu = -1;
  uint64_t stats_interval_s = 0;
};

[[noreturn]] void Usage(const std::string& error) {
  std::fprintf(stderr, "nicmuxd: %s\n(see nicmuxd --help)\n", error.c_str());
  std::exit(2);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (a == "--version") {
      std::puts("nicmuxd 0.1.0");
      std::exit(0);
    } else if (a == "--port") {
      auto s = ParsePortSpec(value());
      if (!s) Usage(s.error().message());
      o.ports.push_back(*s);
    } else if (a == "--forward") {
      o.forward = value();
      if (o.forward == "switch") Usage("--forward switch: the learning switch is not built yet; use xconnect");
      if (o.forward != "xconnect") Usage("--forward " + o.forward + ": unknown mode (xconnect)");
    } else if (a == "--cpu") {
      std::string v = value();
      char* end;
      long c = std::strtol(v.c_str(), &end, 10);
      if (*end || c < 0 || c > 4095) Usage("--cpu " + v + ": not a CPU number");
      o.cpu = static_cast<int>(c);
    } else if (a == "--stats-interval") {
      std::string v = value();
      char* end;
      long s = std::strtol(v.c_str(), &end, 10);
      if (*end || s < 0 || s > 86400) Usage("--stats-interval " + v + ": not a number of seconds");
      o.stats_interval_s = static_cast<uint64_t>(s);
    } else if (a == "--log-level") {
      std::string v = value();
      if (v == "debug") SetLogLevel(LogLevel::kDebug);
      else if (v == "info") SetLogLevel(LogLevel::kInfo);
      else if (v == "warning") SetLogLevel(LogLevel::kWarning);
      else if (v == "error") SetLogLevel(LogLevel::kError);
      else Usage("--log-level " + v + ": use debug, info, warning or error");
    } else {
      Usage("unknown argument '" + a + "'");
    }
  }
  if (o.ports.empty()) Usage("no --port given");
  if (o.forward == "xconnect" && o.ports.size() % 2 != 0) {
    Usage("--forward xconnect pairs ports; " + std::to_string(o.ports.size()) + " ports given");
  }
  for (size_t i = 0; i < o.ports.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (o.ports[i].name == o.ports[j].name) Usage("two ports are named " + o.ports[i].name);
    }
  }
  return o;
}

Result<VhostUserPortOptions> VhostUserOptions(const PortSpec& s) {
  VhostUserPortOptions v;
  v.name = s.name;
  for (const auto& [k, val] : s.options) {
    if (k != "socket" && k != "client" && k != "queues" && k != "mtu") {
      return Error("port " + s.name + ": unknown option '" + k + "' for vhost-user (socket, client, queues, mtu)");
    }
  }
  if (!s.Has("socket") || s.options.at("socket").empty()) return Error("port " + s.name + ": socket=PATH is required");
  v.socket_path = s.options.at("socket");
  if (s.Has("client") && !s.options.at("client").empty()) return Error("port " + s.name + ": 'client' takes no value");
  v.client = s.Has("client");
  auto q = s.UInt("queues", 1, vhost::kMaxQueuePairs, 1);
  if (!q) return q.error();
  v.queue_pairs = static_cast<uint32_t>(*q);
  auto mtu = s.UInt("mtu", 68, 65535, 0);
  if (!mtu) return mtu.error();
  v.mtu = static_cast<uint16_t>(*mtu);
  return v;
}

Result<VirtioUserPortOptions> VirtioUserOptions(const PortSpec& s) {
  VirtioUserPortOptions v;
  v.name = s.name;
  for (const auto& [k, val] : s.options) {
    if (k != "socket" && k != "server" && k != "queues" && k != "packed") {
      return Error("port " + s.name + ": unknown option '" + k + "' for virtio-user (socket, server, queues, packed)");
    }
    if ((k == "server" || k == "packed") && !val.empty()) return Error("port " + s.name + ": '" + k + "' takes no value");
  }
  if (!s.Has("socket") || s.options.at("socket").empty()) return Error("port " + s.name + ": socket=PATH is required");
  v.socket_path = s.options.at("socket");
  v.server = s.Has("server");
  v.packed = s.Has("packed");
  auto q = s.UInt("queues", 1, 8, 1);
  if (!q) return q.error();
  v.queue_pairs = static_cast<uint32_t>(*q);
  return v;
}

void LogStats(const std::vector<std::unique_ptr<Port>>& ports) {
  for (const auto& port : ports) {
    const Port* p = port.get();
    auto* vu = dynamic_cast<const VhostUserPort*>(p);
    PortStats s = p->Stats();
    NICMUX_LOG(kInfo,
               "port %s: %s rx %llu pkts %llu bytes, tx %llu pkts %llu bytes, tx_dropped %llu, "
               "rx_dropped %llu, connections %llu",
               p->name().c_str(), s.connected ? "connected" : "not connected",
               (unsigned long long)s.rx_packets, (unsigned long long)s.rx_bytes,
               (unsigned long long)s.tx_packets, (unsigned long long)s.tx_bytes,
               (unsigned long long)s.tx_dropped, (unsigned long long)s.rx_dropped,
               (unsigned long long)(vu ? vu->connections() : 1));
    if (!vu) continue;
    std::string reasons;
    for (size_t r = 0; r < kNumDropReasons; ++r) {
      uint64_t n = vu->DropsFor(static_cast<DropReason>(r));
      if (n) reasons += " " + std::string(kDropReasonInfo[r].name) + "=" + std::to_string(n);
    }
    if (!reasons.empty()) NICMUX_LOG(kInfo, "port %s: drops:%s", p->name().c_str(), reasons.c_str());
  }
}

int Main(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
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
  Worker worker("worker0", o.cpu);
  std::vector<std::unique_ptr<Port>> ports;
  for (const PortSpec& s : o.ports) {
    if (s.kind == "virtio-user") {
      auto vo = VirtioUserOptions(s);
      if (!vo) {
        std::fprintf(stderr, "nicmuxd: %s\n", vo.error().message().c_str());
        return 2;
      }
      auto p = VirtioUserPort::Create(*vo);
      if (!p) {
        NICMUX_LOG(kError, "%s", p.error().message().c_str());
        return 1;
      }
      NICMUX_LOG(kInfo, "port %s: attached to the backend at %s", s.name.c_str(), vo->socket_path.c_str());
      ports.push_back(std::move(*p));
      continue;
    }
    if (s.kind != "vhost-user") {
      std::fprintf(stderr, "nicmuxd: port %s: unknown kind '%s' (vhost-user, virtio-user)\n", s.name.c_str(), s.kind.c_str());
      return 2;
    }
    auto vo = VhostUserOptions(s);
    if (!vo) {
      std::fprintf(stderr, "nicmuxd: %s\n", vo.error().message().c_str());
      return 2;
    }
    auto p = VhostUserPort::Create(*vo, loop->get(), &worker);
    if (!p) {
      NICMUX_LOG(kError, "%s", p.error().message().c_str());
      return 1;
    }
    ports.push_back(std::move(*p));
  }
  std::vector<std::unique_ptr<Xconnect>> xcs;
  for (size_t i = 0; i + 1 < ports.size(); i += 2) {
    xcs.push_back(std::make_unique<Xconnect>(ports[i].get(), ports[i + 1].get()));
    worker.Add(xcs.back().get());
    NICMUX_LOG(kInfo, "xconnect %s <-> %s", ports[i]->name().c_str(), ports[i + 1]->name().c_str());
  }
  if (auto r = worker.Start(); !r) {
    NICMUX_LOG(kError, "%s", r.error().message().c_str());
    return 1;
  }

  EventLoop& el = **loop;
  auto r = el.Watch(sfd.get(), EPOLLIN, [&](uint32_t) {
    signalfd_siginfo si;
    while (::read(sfd.get(), &si, sizeof si) == sizeof si) {
      if (si.ssi_signo == SIGHUP) {
        NICMUX_LOG(kInfo, "SIGHUP: nothing to reload (no --config yet)");
        LogStats(ports);
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
  std::function<void()> tick = [&] {
    LogStats(ports);
    el.After(o.stats_interval_s * 1000, tick);
  };
  if (o.stats_interval_s) el.After(o.stats_interval_s * 1000, tick);
  NICMUX_LOG(kInfo, "nicmuxd running: %zu ports, forward %s", ports.size(), o.forward.c_str());
  el.Run();

  worker.Stop();
  LogStats(ports);
  xcs.clear();
  ports.clear();  // closes connections, unmaps guest memory, removes our sockets
  return 0;
}

}  // namespace
}  // namespace nicmux

int main(int argc, char** argv) { return nicmux::Main(argc, argv); }
