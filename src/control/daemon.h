// Daemon: nicmuxd's wiring — ports made from specs, the switch (or cross-connects), the worker
// threads, the control socket's commands, config reload by diff, captures. Runs on the control
// thread (the EventLoop); workers only ever see the port table under the pause handshake.
//
// Port specs (command line, config file, `nicmuxctl port add`) share one syntax and one
// validation: KIND:NAME:key=value,... Options every kind takes in switch mode: vlan=N (access
// port), trunk=A/B/C-D (trunk port), mtu=N (largest payload sent to the port; also offered to
// a vhost-user guest and set on a TAP interface), mac_limit=N (source MACs learned on the
// port, 1..1048576, default 1024), allowed_macs=M1/M2/... (port security: frames from any
// other source MAC are dropped; at most 64).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/event_loop.h"
#include "base/seccomp.h"
#include "control/config.h"
#include "control/control_server.h"
#include "control/metrics.h"
#include "port/port_spec.h"
#include "port/port.h"
#include "sched/scheduler.h"
#include "switch/l2_switch.h"
#include "switch/xconnect.h"

namespace nicmux {

struct DaemonOptions {
  std::string forward = "switch";
  uint32_t workers = 1;
  std::vector<int> cpus;  // empty: not pinned; else one per worker
  std::string control_path = "/run/nicmux/nicmuxd.sock";  // "" or "none": no control socket
  std::string metrics_address;                            // "": no Prometheus endpoint
  std::string control_group;                              // "": the control socket keeps nicmuxd's group
  bool socket_access_from_cli = false;  // --socket-group/--socket-mode given: a reload keeps them
  uint64_t stats_interval_s = 0;
  uint32_t mac_aging_s = 300;
  uint32_t poll_us = Worker::kDefaultIdlePollUs;
  bool busy_poll = false;   // workers never sleep
  uint32_t max_busy_workers = 0;  // with busy_poll: at most this many busy-poll (the busiest); 0: all
  bool poll_fixed = false;  // the idle window is always poll_us (no adapting)
  uint32_t mac_table_size = 8192;
  // --seccomp: applied by nicmuxd's main once the daemon is set up (docs/security.md).
  SeccompMode seccomp = SeccompMode::kOff;
  // --user USER[:GROUP]: likewise, before the filter (base/privileges.h); "": stay as started.
  std::string user;
  std::vector<PortSpec> ports;         // from the command line
  std::string config_path;             // "" if none
  std::vector<PortSpec> config_ports;  // from the config file
  // Live upgrade (docs/upgrade.md). argv: this process's command line, given again to the new
  // binary; exe: the path this binary was started from (the default new binary: whatever
  // file is there now). takeover_fd: >= 0 in the new process (--takeover FD), the socket to
  // the old one; the ports, sockets and MAC table then come from it, not from the options.
  std::vector<std::string> argv;
  std::string exe;
  int takeover_fd = -1;
};

// The switch's view of a port spec: vlan, trunk, mtu, mac_limit, allowed_macs (the options
// every kind takes; errors name the port and the option).
Result<SwitchPortConfig> SwitchPortConfigFromSpec(const PortSpec& s);

class Daemon {
 public:
  static Result<std::unique_ptr<Daemon>> Create(const DaemonOptions& o, EventLoop* loop);
  ~Daemon();

  // SIGHUP: re-reads the config file; ports diffed by name (only changed ones are touched).
  void Reload();
  void LogStats() const;

  // Control-plane operations (also behind the control socket).
  std::optional<ControlError> AddPort(const PortSpec& spec, bool from_config, HandoverRecord* handover = nullptr);

  // Live upgrade (docs/upgrade.md): starts `binary` (empty: opt.exe) with this process's
  // arguments and --takeover, and once it says hello hands it every port (with the workers
  // paused), the control and metrics sockets and the MAC table. `done` gets the outcome once:
  // {"ok":true,...} just before this process exits (the new one serves from then on), or
  // {"ok":false,"error":...} with this process still serving. An error now when the upgrade
  // cannot start (one is running, a port's kind cannot be handed over, no such binary).
  using UpgradeDone = std::function<void(const nlohmann::json&)>;
  std::optional<ControlError> StartUpgrade(const std::string& binary, UpgradeDone done);
  std::optional<ControlError> DelPort(const std::string& name);

 private:
  struct Entry {
    // First: it outlives the port (whose destructor may still pause).
    std::unique_ptr<Scheduler::PortPause> pause;
    PortSpec spec;
    std::unique_ptr<Port> port;
    int switch_id = -1;
    bool from_config = false;
    // Counters a live upgrade carried over from the old process (docs/upgrade.md): added to
    // the port's own wherever they are shown, so they keep growing across upgrades.
    std::vector<PortStats> carried_queues;
    std::vector<uint64_t> carried_drops;         // the port's, by DropReason
    std::vector<uint64_t> carried_switch_drops;  // the switch's for frames from the port
    uint64_t carried_flooded = 0, carried_unlearned = 0;  // the switch's floods and mac_limit hits
    std::unique_ptr<Capture> capture;
    std::vector<std::shared_ptr<ControlClient>> capture_clients;
    uint64_t captured = 0, capture_limit = 0;
  };

  Daemon(const DaemonOptions& o, EventLoop* loop);
  Result<void> Start();
  Result<std::unique_ptr<Port>> MakePort(const PortSpec& spec, SwitchPortConfig* cfg, std::string* code,
                                         Pausable* pause, HandoverRecord* handover);
  // --forward xconnect: ports 2k and 2k+1 become a pair, their queues given to the scheduler.
  Result<void> PairCrossConnects();
  // The new process's side of a live upgrade; on any failure it tells the old one and exits.
  void TakeOver();
  void TakeOverSteps();
  // The old process's side: the new one said something (or the wait ran out).
  void OnUpgradeMessage();
  void OnUpgradeMessageSteps();
  void Cutover(const nlohmann::json& hello);
  void FailUpgrade(const std::string& why);
  // Reaps a killed child without waiting: tries every 100 ms, `tries` times.
  void ReapLater(pid_t pid, int tries);
  // The port's queue_affinity= as a worker per queue pair (-1: any).
  Result<std::vector<int>> PinsOf(const PortSpec& spec, const Port& port) const;
  Entry* Find(const std::string& name);
  // "port NAME (KIND) cannot be handed over to a new nicmuxd" for the first port that cannot
  // (a live upgrade is refused then); "" when every port can.
  std::string NotHandedOver() const;
  // The port's counters, with what a live upgrade carried over (Entry::carried_*): per queue
  // pair, in all, and dropped for a reason (the switch's drops of frames from it included).
  PortStats QueueStatsOf(const Entry& e, uint32_t q) const;
  PortStats StatsOf(const Entry& e) const;
  uint64_t PortDropsOf(const Entry& e, DropReason r) const;
  uint64_t SwitchDropsOf(const Entry& e, DropReason r) const;
  uint64_t DropsOf(const Entry& e, DropReason r) const { return PortDropsOf(e, r) + SwitchDropsOf(e, r); }
  // The switch's floods of frames from the port, and its frames whose source the port's
  // mac_limit kept from being learned (0 without a learning switch).
  uint64_t FloodedOf(const Entry& e) const;
  uint64_t UnlearnedOf(const Entry& e) const;
  // The same as values of a HandoverRecord (for the handover's state) and back.
  void ExportCounters(const Entry& e, nlohmann::json* out) const;
  static void ImportCounters(const nlohmann::json& in, Entry* e);
  nlohmann::json PortJson(const Entry& e) const;
  ControlServer::HandlerResult Handle(const std::string& cmd, const nlohmann::json& args,
                                      const std::shared_ptr<ControlClient>& client);
  ControlServer::HandlerResult StartCapture(const nlohmann::json& args,
                                            const std::shared_ptr<ControlClient>& client);
  void StopCapture(Entry& e);
  void PumpCaptures();
  void Tick();
  // Tells each port that follows another (Port::Follows) how that one is now.
  void UpdateFollowers();
  void StatsTick();
  // The Prometheus page (docs/metrics.md), rendered on the control thread for each scrape.
  std::string MetricsPage() const;

  DaemonOptions opt_;
  EventLoop* loop_;
  std::unique_ptr<Scheduler> sched_;
  std::unique_ptr<L2Switch> switch_;
  std::unique_ptr<Xconnect> xconnect_;
  std::vector<std::unique_ptr<Entry>> ports_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<MetricsServer> metrics_;
  bool started_ = false;
  struct Upgrade {
    pid_t pid = -1;
    UniqueFd sock;
    EventLoop::TimerId timer = 0;
    std::string binary;
    UpgradeDone done;
  };
  std::optional<Upgrade> upgrade_;
  EventLoop::TimerId tick_timer_ = 0, stats_timer_ = 0, capture_timer_ = 0;
};

}  // namespace nicmux
