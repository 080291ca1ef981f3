#include "control/daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <tuple>
#include <variant>

#include "base/log.h"
#include "base/sd_notify.h"
#include "control/handover.h"
#include "base/unix_socket.h"
#include "control/metrics.h"
#include "port/dpdk_port.h"
#include "port/registry.h"

namespace nicmux {
namespace {

using nlohmann::json;

}  // namespace

Result<SwitchPortConfig> SwitchPortConfigFromSpec(const PortSpec& s) {
  SwitchPortConfig cfg;
  const std::string* vlan = s.Has("vlan") ? &s.options.at("vlan") : nullptr;
  const std::string* trunk = s.Has("trunk") ? &s.options.at("trunk") : nullptr;
  NICMUX_TRY_ASSIGN(v, ParseVlan(s.name, vlan, trunk));
  cfg.vlan = v;
  NICMUX_TRY_ASSIGN(mtu, s.UInt("mtu", 68, 65535, 0));
  cfg.mtu = static_cast<uint32_t>(mtu);
  NICMUX_TRY_ASSIGN(limit, s.UInt("mac_limit", 1, SwitchPortConfig::kMaxMacLimit, SwitchPortConfig::kDefaultMacLimit));
  cfg.mac_limit = static_cast<uint32_t>(limit);
  if (s.Has("allowed_macs")) {
    NICMUX_TRY_ASSIGN(macs, ParseAllowedMacs(s.name, s.options.at("allowed_macs")));
    cfg.allowed_macs = std::move(macs);
  }
  return cfg;
}

Daemon::Daemon(const DaemonOptions& o, EventLoop* loop) : opt_(o), loop_(loop) {}

Result<std::unique_ptr<Daemon>> Daemon::Create(const DaemonOptions& o, EventLoop* loop) {
  std::unique_ptr<Daemon> d(new Daemon(o, loop));
  NICMUX_TRY(d->Start());
  return d;
}

Result<void> Daemon::Start() {
  const bool sw = opt_.forward == "switch";
  SchedulerOptions sched;
  sched.workers = opt_.workers;
  sched.cpus = opt_.cpus;
  sched.idle_poll_us = opt_.poll_us;
  sched.busy_poll = opt_.busy_poll;
  sched.max_busy_workers = opt_.max_busy_workers;
  if (opt_.max_busy_workers != 0 && !opt_.busy_poll) {
    NICMUX_LOG(kWarning, "max_busy_workers=%u has no effect without busy_poll (--busy-poll): every worker polls adaptively",
               opt_.max_busy_workers);
  }
  sched.fixed_window = opt_.poll_fixed;
  sched.topology = NumaTopology::FromSysfs();
  sched_ = std::make_unique<Scheduler>(sched);
  if (sw) {
    SwitchOptions so;
    so.workers = opt_.workers;
    so.mac_aging_s = opt_.mac_aging_s;
    so.mac_table_size = opt_.mac_table_size;
    switch_ = std::make_unique<L2Switch>(so);
    for (uint32_t i = 0; i < opt_.workers; ++i) sched_->SetForwarder(i, switch_->worker(i));
  } else {
    xconnect_ = std::make_unique<Xconnect>(opt_.workers);
    for (uint32_t i = 0; i < opt_.workers; ++i) sched_->SetForwarder(i, xconnect_->worker(i));
  }
  if (opt_.takeover_fd >= 0) {
    NICMUX_TRY(sched_->Start());
    TakeOver();  // exits on failure
    Tick();
    if (opt_.stats_interval_s) stats_timer_ = loop_->After(opt_.stats_interval_s * 1000, [this] { StatsTick(); });
    started_ = true;
    NICMUX_LOG(kInfo, "nicmuxd running (handed over): %zu ports, forward %s, %u worker(s)", ports_.size(),
               opt_.forward.c_str(), opt_.workers);
    return Ok();
  }
  std::vector<PortSpec> all = opt_.config_ports;
  all.insert(all.end(), opt_.ports.begin(), opt_.ports.end());
  for (size_t i = 0; i < all.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (all[i].name == all[j].name) return Error("two ports are named " + all[i].name);
    }
  }
  for (size_t i = 0; i < all.size(); ++i) {
    if (auto e = AddPort(all[i], i < opt_.config_ports.size())) return Error(e->message);
  }
  if (!sw) NICMUX_TRY(PairCrossConnects());
  NICMUX_TRY(sched_->Start());
  if (!opt_.control_path.empty() && opt_.control_path != "none") {
    std::optional<SocketAccess> control_access;
    if (!opt_.control_group.empty()) {
      auto a = ParseSocketAccess(opt_.control_group, "0660");
      if (!a) return Error("control socket " + opt_.control_path + ": " + a.error().message());
      control_access = *a;
      NICMUX_TRY(MakeSocketDir(opt_.control_path, *a));  // the group's, before ControlServer makes one 0750
    }
    auto c = ControlServer::Create(opt_.control_path, loop_,
                                   [this](const std::string& cmd, const json& args,
                                          const std::shared_ptr<ControlClient>& client) {
                                     return Handle(cmd, args, client);
                                   });
    if (!c) return c.error();
    control_ = std::move(*c);
    if (control_access) {
      NICMUX_TRY(ApplySocketAccess(opt_.control_path, *control_access));
      if (std::string why = SocketReachProblem(opt_.control_path, *control_access, "nicmuxctl users");
          !why.empty()) {
        NICMUX_LOG(kWarning, "%s", why.c_str());
      }
    }
    NICMUX_LOG(kInfo, "control socket %s", opt_.control_path.c_str());
  }
  if (!opt_.metrics_address.empty()) {
    auto m = MetricsServer::Create(opt_.metrics_address, loop_, [this] { return MetricsPage(); });
    if (!m) return m.error();
    metrics_ = std::move(*m);
  }
  Tick();
  if (opt_.stats_interval_s) stats_timer_ = loop_->After(opt_.stats_interval_s * 1000, [this] { StatsTick(); });
  started_ = true;
  NICMUX_LOG(kInfo, "nicmuxd running: %zu ports, forward %s, %u worker(s)", ports_.size(),
             opt_.forward.c_str(), opt_.workers);
  SdNotify("READY=1");  // systemd's Type=notify: the ports and sockets are up
  return Ok();
}

Result<void> Daemon::PairCrossConnects() {
  if (ports_.size() % 2 != 0) {
    return Error("--forward xconnect pairs ports; " + std::to_string(ports_.size()) + " ports given");
  }
  for (size_t i = 0; i + 1 < ports_.size(); i += 2) {
    Entry& a = *ports_[i];
    Entry& b = *ports_[i + 1];
    const uint16_t id = xconnect_->AddPair(a.port.get(), b.port.get());
    for (Entry* e : {&a, &b}) {
      NICMUX_TRY_ASSIGN(pins, PinsOf(e->spec, *e->port));
      sched_->AddPort(e->port.get(), e == &a ? id : static_cast<uint16_t>(id + 1), pins);
      e->pause->set_port(e->port.get());
    }
    NICMUX_LOG(kInfo, "xconnect %s <-> %s", a.spec.name.c_str(), b.spec.name.c_str());
  }
  return Ok();
}

Daemon::~Daemon() {
  for (auto& e : ports_) StopCapture(*e);
  control_.reset();
  sched_->Stop();
  LogStats();
  if (tick_timer_) loop_->Cancel(tick_timer_);
  if (stats_timer_) loop_->Cancel(stats_timer_);
  if (capture_timer_) loop_->Cancel(capture_timer_);
  ports_.clear();  // closes connections, unmaps guest memory, removes sockets and TAP devices
}

void Daemon::StatsTick() {
  LogStats();
  stats_timer_ = loop_->After(opt_.stats_interval_s * 1000, [this] { StatsTick(); });
}

void Daemon::Tick() {
  if (switch_) switch_->Tick();
  sched_->Tick();
  UpdateFollowers();
  tick_timer_ = loop_->After(1000, [this] { Tick(); });
}

void Daemon::UpdateFollowers() {
  for (auto& e : ports_) {
    const std::string f = e->port->Follows();
    if (f.empty()) continue;
    Entry* up = Find(f);
    e->port->FollowedChanged(up && up != e.get() ? up->port.get() : nullptr);
  }
}

Daemon::Entry* Daemon::Find(const std::string& name) {
  for (auto& e : ports_) {
    if (e->spec.name == name) return e.get();
  }
  return nullptr;
}

Result<std::vector<int>> Daemon::PinsOf(const PortSpec& s, const Port& port) const {
  if (!s.Has("queue_affinity")) return std::vector<int>{};
  return ParseQueueAffinity(s.name, s.options.at("queue_affinity"), port.NumQueuePairs(), opt_.workers);
}

Result<std::unique_ptr<Port>> Daemon::MakePort(const PortSpec& s, SwitchPortConfig* cfg, std::string* code,
                                               Pausable* pause, HandoverRecord* handover) {
  *code = kCodeInvalid;
  for (const char* k : {"vlan", "trunk", "mac_limit", "allowed_macs"}) {
    if (s.Has(k) && !switch_) return Error("port " + s.name + ": " + k + "= needs --forward switch");
  }
  NICMUX_TRY_ASSIGN(kind, PortRegistry::Builtin().Check(s));
  NICMUX_TRY_ASSIGN(c, SwitchPortConfigFromSpec(s));
  *cfg = std::move(c);
  // What the port holds for itself (a socket, an interface) no other port may hold.
  if (kind->claims) {
    const std::string mine = kind->claims(s);
    for (auto& e : ports_) {
      const PortKind* other = PortRegistry::Builtin().Find(e->spec.kind);
      if (other && other->claims && other->claims(e->spec) == mine) {
        *code = kCodeExists;
        return Error("port " + s.name + ": " + mine + " is in use by port " + e->spec.name);
      }
    }
  }
  *code = kCodeFailed;
  if (handover && !kind->hands_over) return Error("port " + s.name + ": kind " + kind->name + " cannot be handed over");
  return kind->create(s, PortContext{loop_, pause, cfg->mtu, handover});
}

std::optional<ControlError> Daemon::AddPort(const PortSpec& spec, bool from_config, HandoverRecord* handover) {
  if (Find(spec.name)) return ControlError::Exists("a port named " + spec.name + " exists already");
  if (!switch_ && started_) {
    // Cross-connects are fixed at start; only the switch takes ports at run time.
    return ControlError::Invalid("ports can be added at run time only with --forward switch");
  }
  SwitchPortConfig cfg;
  std::string code;
  auto e = std::make_unique<Entry>();
  e->pause = sched_->MakePortPause();
  auto p = MakePort(spec, &cfg, &code, e->pause.get(), handover);
  if (!p) return ControlError{code, p.error().message()};
  e->spec = spec;
  e->port = std::move(*p);
  e->from_config = from_config;
  auto pins = PinsOf(spec, *e->port);
  if (!pins) return ControlError::Invalid(pins.error().message());
  if (switch_) {
    {
      PauseGuard pause(*sched_);
      auto id = switch_->AddPort(e->port.get(), cfg);
      if (!id) return ControlError::Failed(id.error());
      e->switch_id = *id;
    }
    sched_->AddPort(e->port.get(), static_cast<uint16_t>(e->switch_id), *pins);
    e->pause->set_port(e->port.get());
  }
  NICMUX_LOG(kInfo, "port %s added (%s)", spec.name.c_str(), SpecToString(spec).c_str());
  ports_.push_back(std::move(e));
  UpdateFollowers();
  return std::nullopt;
}

std::optional<ControlError> Daemon::DelPort(const std::string& name) {
  Entry* e = Find(name);
  if (!e) return ControlError::NotFound("no port named " + name);
  if (!switch_) return ControlError::Invalid("ports can be removed at run time only with --forward switch");
  StopCapture(*e);
  sched_->RemovePort(e->port.get());
  {
    PauseGuard pause(*sched_);
    switch_->RemovePort(static_cast<uint16_t>(e->switch_id));
  }
  e->pause->set_port(nullptr);  // no worker polls it or sends to it any more
  auto it = std::find_if(ports_.begin(), ports_.end(), [&](auto& p) { return p.get() == e; });
  ports_.erase(it);  // the port's destructor closes its socket or device
  NICMUX_LOG(kInfo, "port %s removed", name.c_str());
  UpdateFollowers();
  return std::nullopt;
}

void Daemon::Reload() {
  if (opt_.config_path.empty()) {
    NICMUX_LOG(kInfo, "SIGHUP: no --config to reload");
    return;
  }
  auto c = LoadConfig(opt_.config_path);
  if (!c) {
    NICMUX_LOG(kError, "reload: %s; keeping the running configuration", c.error().message().c_str());
    return;
  }
  std::vector<PortSpec> old_ports;
  for (auto& e : ports_) {
    if (e->from_config) old_ports.push_back(e->spec);
  }
  for (const PortSpec& s : c->ports) {
    Entry* e = Find(s.name);
    if (e && !e->from_config) {
      NICMUX_LOG(kError, "reload: port %s in %s exists already (not from the file); skipped",
                 s.name.c_str(), opt_.config_path.c_str());
    }
  }
  if (!switch_) {
    NICMUX_LOG(kError, "reload: ports can change at run time only with --forward switch");
    return;
  }
  // Socket ownership first: the ports this reload makes get the file's (unless the command
  // line set it, which wins as at start). Sockets already made keep theirs.
  if (!opt_.socket_access_from_cli) {
    auto a = ParseSocketAccess(c->daemon.socket_group.value_or(""), c->daemon.socket_mode.value_or(""));
    if (a) {
      SetDefaultSocketAccess(*a);
    } else {
      NICMUX_LOG(kError, "reload: %s; new sockets keep the previous ownership", a.error().message().c_str());
    }
  }
  PortDiff d = DiffPorts(old_ports, c->ports);
  for (const PortSpec& s : d.removed) DelPort(s.name);
  for (const PortSpec& s : d.changed) {
    DelPort(s.name);
    if (auto e = AddPort(s, true)) NICMUX_LOG(kError, "reload: %s", e->message.c_str());
  }
  for (const PortSpec& s : d.added) {
    Entry* e = Find(s.name);
    if (e && !e->from_config) continue;
    if (auto err = AddPort(s, true)) NICMUX_LOG(kError, "reload: %s", err->message.c_str());
  }
  const DaemonSettings& ds = c->daemon;
  if (ds.mac_aging_s) switch_->set_mac_aging_s(static_cast<uint32_t>(*ds.mac_aging_s));
  if (ds.stats_interval_s && *ds.stats_interval_s != opt_.stats_interval_s) {
    opt_.stats_interval_s = *ds.stats_interval_s;
    if (stats_timer_) loop_->Cancel(stats_timer_);
    stats_timer_ = 0;
    if (opt_.stats_interval_s) stats_timer_ = loop_->After(opt_.stats_interval_s * 1000, [this] { StatsTick(); });
  }
  std::string restart;
  if (ds.forward && *ds.forward != opt_.forward) restart += " forward";
  if (ds.workers && *ds.workers != opt_.workers) restart += " workers";
  if (ds.cpus && *ds.cpus != opt_.cpus) restart += " cpus";
  if (ds.max_busy_workers && *ds.max_busy_workers != opt_.max_busy_workers) restart += " max_busy_workers";
  if (ds.control && *ds.control != opt_.control_path) restart += " control";
  if (ds.metrics && *ds.metrics != opt_.metrics_address) restart += " metrics";
  if (ds.control_group && *ds.control_group != opt_.control_group) restart += " control_group";
  if (ds.mac_table_size && *ds.mac_table_size != opt_.mac_table_size) restart += " mac_table_size";
  if (ds.seccomp && *ds.seccomp != SeccompModeName(opt_.seccomp)) restart += " seccomp";
  if (ds.user && *ds.user != opt_.user) restart += " user";
  if (!restart.empty()) NICMUX_LOG(kWarning, "reload: changed settings need a restart, not applied:%s", restart.c_str());
  if (c->daemon.log_level) {
    const std::string& v = *c->daemon.log_level;
    SetLogLevel(v == "debug" ? LogLevel::kDebug : v == "warning" ? LogLevel::kWarning : v == "error" ? LogLevel::kError : LogLevel::kInfo);
  }
  NICMUX_LOG(kInfo, "reloaded %s: %zu added, %zu removed, %zu changed, %zu ports running",
             opt_.config_path.c_str(), d.added.size(), d.removed.size(), d.changed.size(), ports_.size());
}

PortStats Daemon::QueueStatsOf(const Entry& e, uint32_t q) const {
  PortStats s = e.port->QueueStats(q);
  if (q < e.carried_queues.size()) s += e.carried_queues[q];
  return s;
}

PortStats Daemon::StatsOf(const Entry& e) const {
  PortStats s = e.port->Stats();
  for (const PortStats& c : e.carried_queues) s += c;
  return s;
}

uint64_t Daemon::PortDropsOf(const Entry& e, DropReason r) const {
  const size_t i = static_cast<size_t>(r);
  return e.port->DropsFor(r) + (i < e.carried_drops.size() ? e.carried_drops[i] : 0);
}

uint64_t Daemon::SwitchDropsOf(const Entry& e, DropReason r) const {
  const size_t i = static_cast<size_t>(r);
  uint64_t n = i < e.carried_switch_drops.size() ? e.carried_switch_drops[i] : 0;
  if (switch_ && e.switch_id >= 0) n += switch_->DropsFor(static_cast<uint16_t>(e.switch_id), r);
  return n;
}

uint64_t Daemon::FloodedOf(const Entry& e) const {
  return e.carried_flooded + (switch_ && e.switch_id >= 0 ? switch_->Flooded(static_cast<uint16_t>(e.switch_id)) : 0);
}

uint64_t Daemon::UnlearnedOf(const Entry& e) const {
  return e.carried_unlearned + (switch_ && e.switch_id >= 0 ? switch_->Unlearned(static_cast<uint16_t>(e.switch_id)) : 0);
}

void Daemon::ExportCounters(const Entry& e, json* out) const {
  json queues = json::array();
  for (uint32_t q = 0; q < e.port->NumQueuePairs(); ++q) {
    const PortStats s = QueueStatsOf(e, q);
    queues.push_back({s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes, s.rx_dropped, s.tx_dropped});
  }
  json drops = json::object(), switch_drops = json::object();
  for (size_t r = 0; r < kNumDropReasons; ++r) {
    const std::string name(kDropReasonInfo[r].name);
    if (uint64_t n = PortDropsOf(e, static_cast<DropReason>(r))) drops[name] = n;
    if (uint64_t n = SwitchDropsOf(e, static_cast<DropReason>(r))) switch_drops[name] = n;
  }
  (*out)["counters"] = {{"queues", queues},
                        {"drops", drops},
                        {"switch_drops", switch_drops},
                        {"flooded", FloodedOf(e)},
                        {"mac_limit_hits", UnlearnedOf(e)}};
}

void Daemon::ImportCounters(const json& in, Entry* e) {
  // UNTRUSTED (another build): arrays of numbers; anything else is left out (counters are
  // not worth failing an upgrade for).
  if (!in.contains("counters") || !in["counters"].is_object()) return;
  const json& c = in["counters"];
  if (c.contains("queues") && c["queues"].is_array()) {
    for (const json& q : c["queues"]) {
      PortStats s;
      if (q.is_array() && q.size() == 6 && std::all_of(q.begin(), q.end(), [](const json& v) { return v.is_number_unsigned(); })) {
        s.rx_packets = q[0];
        s.rx_bytes = q[1];
        s.tx_packets = q[2];
        s.tx_bytes = q[3];
        s.rx_dropped = q[4];
        s.tx_dropped = q[5];
      }
      if (e->carried_queues.size() < e->port->NumQueuePairs()) e->carried_queues.push_back(s);
    }
  }
  for (auto [key, to] : {std::pair{"flooded", &e->carried_flooded}, std::pair{"mac_limit_hits", &e->carried_unlearned}}) {
    if (c.contains(key) && c[key].is_number_unsigned()) *to = c[key];
  }
  for (auto [key, to] : {std::pair{"drops", &e->carried_drops}, std::pair{"switch_drops", &e->carried_switch_drops}}) {
    to->assign(kNumDropReasons, 0);
    if (!c.contains(key) || !c[key].is_object()) continue;
    for (size_t r = 0; r < kNumDropReasons; ++r) {
      const std::string name(kDropReasonInfo[r].name);
      if (c[key].contains(name) && c[key][name].is_number_unsigned()) (*to)[r] = c[key][name];
    }
  }
}

json Daemon::PortJson(const Entry& e) const {
  const Port& p = *e.port;
  PortStats s = StatsOf(e);
  json drops = json::object();
  uint64_t switch_drops = 0;
  for (size_t r = 0; r < kNumDropReasons; ++r) {
    const auto reason = static_cast<DropReason>(r);
    const uint64_t k = SwitchDropsOf(e, reason);
    switch_drops += k;  // rx_dropped: the port's own (Stats()) and the switch's for its frames
    if (uint64_t n = PortDropsOf(e, reason) + k) drops[std::string(kDropReasonInfo[r].name)] = n;
  }
  json j = {{"name", e.spec.name},
            {"kind", e.spec.kind},
            {"state", p.State()},
            {"queues", p.NumQueuePairs()},
            {"spec", SpecToString(e.spec)},
            {"rx_packets", s.rx_packets},
            {"rx_bytes", s.rx_bytes},
            {"tx_packets", s.tx_packets},
            {"tx_bytes", s.tx_bytes},
            {"rx_dropped", s.rx_dropped + switch_drops},
            {"tx_dropped", s.tx_dropped},
            {"drops", drops},
            {"from_config", e.from_config},
            {"caps", p.Caps().ToString()}};
  if (std::string f = p.Features(); !f.empty()) j["features"] = f;
  if (switch_ && e.switch_id >= 0) {
    const auto id = static_cast<uint16_t>(e.switch_id);
    j["flooded"] = FloodedOf(e);
    j["id"] = e.switch_id;
    j["macs"] = switch_->MacsOf(id);
    j["mac_limit_hits"] = UnlearnedOf(e);
  }
  for (const auto& [key, value] : p.Details()) {
    if (const auto* n = std::get_if<uint64_t>(&value)) {
      j[key] = *n;
    } else {
      j[key] = std::get<std::string>(value);
    }
  }
  return j;
}

std::string Daemon::MetricsPage() const {
  MetricsText m;
  using L = MetricsText::Labels;
  m.Family("nicmux_build_info", "gauge", "nicmuxd's version (the value is always 1)");
  m.Sample({{"version", NICMUX_VERSION}}, uint64_t{1});
  m.Gauge("nicmux_ports", "ports configured", static_cast<double>(ports_.size()));

  // Per port: state, then per-queue counters, then drops by reason (the port's own and the
  // switch's for frames that came from it, as `nicmuxctl port show` adds them).
  m.Family("nicmux_port_up", "gauge", "1 when the port's peer or device is there (Port::Stats().connected), else 0");
  for (const auto& e : ports_) {
    m.Sample({{"port", e->spec.name}, {"kind", e->spec.kind}}, uint64_t{e->port->Stats().connected});
  }
  // The state's first word only ("quarantined (1234 ms left...)" -> quarantined, "link up, 10000
  // Mbit/s" -> up): a small fixed set, so a series does not split at every scrape.
  m.Family("nicmux_port_state", "gauge", "the port's state (nicmuxctl port list's, first word); the value is 1");
  for (const auto& e : ports_) {
    std::string st = e->port->State();
    if (st.rfind("link ", 0) == 0) st.erase(0, 5);
    st = st.substr(0, st.find_first_of(" ,("));
    m.Sample({{"port", e->spec.name}, {"state", st.empty() ? "unknown" : st}}, uint64_t{1});
  }
  m.Family("nicmux_port_queues", "gauge", "queue pairs the port has");
  for (const auto& e : ports_) m.Sample({{"port", e->spec.name}}, uint64_t{e->port->NumQueuePairs()});
  struct Col {
    const char* name;
    const char* help;
    uint64_t PortStats::*field;
  };
  static constexpr Col kCols[] = {
      {"nicmux_port_rx_packets_total", "packets received from the port's peer into the switch", &PortStats::rx_packets},
      {"nicmux_port_rx_bytes_total", "bytes received from the port's peer into the switch", &PortStats::rx_bytes},
      {"nicmux_port_tx_packets_total", "packets the port delivered to its peer", &PortStats::tx_packets},
      {"nicmux_port_tx_bytes_total", "bytes the port delivered to its peer", &PortStats::tx_bytes},
      {"nicmux_port_rx_dropped_total", "packets from the peer the port dropped (bad frames, lies)", &PortStats::rx_dropped},
      {"nicmux_port_tx_dropped_total", "packets for the peer the port dropped (no buffers, too big, down)", &PortStats::tx_dropped},
  };
  std::vector<std::vector<PortStats>> qs(ports_.size());
  for (size_t i = 0; i < ports_.size(); ++i) {
    const Port& p = *ports_[i]->port;
    for (uint32_t q = 0; q < p.NumQueuePairs(); ++q) qs[i].push_back(QueueStatsOf(*ports_[i], q));
  }
  for (const Col& c : kCols) {
    m.Family(c.name, "counter", c.help);
    for (size_t i = 0; i < ports_.size(); ++i) {
      for (size_t q = 0; q < qs[i].size(); ++q) {
        const std::string qn = std::to_string(q);
        m.Sample({{"port", ports_[i]->spec.name}, {"queue", qn}}, qs[i][q].*c.field);
      }
    }
  }
  m.Family("nicmux_port_drops_total", "counter",
           "packets dropped at or because of the port, by reason (src/base/drop_reason.h); the switch's drops "
           "of frames from the port included");
  for (const auto& e : ports_) {
    for (size_t r = 0; r < kNumDropReasons; ++r) {
      m.Sample({{"port", e->spec.name}, {"reason", kDropReasonInfo[r].name}}, DropsOf(*e, static_cast<DropReason>(r)));
    }
  }
  // Zero copy towards a device (dpdk ports with zerocopy_min, docs/dpdk.md): frames sent from
  // the source's memory and frames copied. Interrupts a vhost-user port gave its guest, and
  // the requests moderation merged (rx_usecs, tx_usecs: docs/vhost-user.md). Only for ports
  // that report them (Port::Details).
  std::vector<std::vector<Port::Detail>> details;  // each port's, built once per scrape
  for (const auto& e : ports_) details.push_back(e->port->Details());
  for (const auto& [family, key, help] :
       {std::tuple{"nicmux_port_tx_zerocopy_total", "tx_zerocopy", "frames the port sent zero copy (from the guest's memory)"},
        std::tuple{"nicmux_port_tx_copied_total", "tx_copied", "frames the port copied while zero copy is on"},
        std::tuple{"nicmux_port_rx_interrupts_total", "rx_interrupts",
                   "interrupts (vhost-user calls) the port gave its guest's receive queues"},
        std::tuple{"nicmux_port_tx_interrupts_total", "tx_interrupts",
                   "interrupts the port gave its guest's transmit queues (completions)"},
        std::tuple{"nicmux_port_interrupts_coalesced_total", "interrupts_coalesced",
                   "interrupts the guest asked for that moderation merged into a later one"}}) {
    bool any = false;
    for (size_t pi = 0; pi < ports_.size(); ++pi) {
      const auto& e = ports_[pi];
      for (const auto& [k, v] : details[pi]) {
        if (k != key || !std::holds_alternative<uint64_t>(v)) continue;
        if (!any) m.Family(family, "counter", help);
        any = true;
        m.Sample({{"port", e->spec.name}}, std::get<uint64_t>(v));
      }
    }
  }
  if (switch_) {
    m.Family("nicmux_port_flooded_total", "counter", "frames from the port flooded (unknown or broadcast destination)");
    for (const auto& e : ports_) {
      if (e->switch_id >= 0) m.Sample({{"port", e->spec.name}}, FloodedOf(*e));
    }
    const uint32_t size = switch_->macs().size(), cap = switch_->macs().max_entries();
    const uint64_t moves = switch_->macs().moves();
    m.Gauge("nicmux_mac_table_entries", "MAC addresses learned", size);
    m.Gauge("nicmux_mac_table_capacity", "MAC table size (--mac-table-size)", cap);
    m.Family("nicmux_mac_moves_total", "counter", "learned MACs seen moving to another port");
    m.Sample(L{}, moves);
  }

  // Workers: CPU time (busy polling included), time asleep, wake-ups, packets moved. Per-packet
  // cost over a window: rate(nicmux_worker_cpu_seconds_total[1m]) / rate(nicmux_worker_packets_total[1m]).
  m.Family("nicmux_worker_packets_total", "counter", "packets the worker moved (received from a port and forwarded)");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, sched_->worker(i).packets());
  m.Family("nicmux_worker_cpu_seconds_total", "counter", "CPU time of the worker thread (busy polling counts)");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, static_cast<double>(sched_->worker(i).cpu_ns()) / 1e9);
  m.Family("nicmux_worker_sleep_seconds_total", "counter", "time the worker slept waiting for a notification");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, static_cast<double>(sched_->worker(i).sleep_ns()) / 1e9);
  m.Family("nicmux_worker_wakeups_total", "counter", "times the worker went to sleep and was woken (kick, timeout, pause)");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, sched_->worker(i).sleeps());
  m.Family("nicmux_worker_kick_wakeups_total", "counter",
           "wake-ups by a notification of the worker's own queues (not a timeout or a pause)");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, sched_->worker(i).kick_wakeups());
  // The worker's own cost, apart from idle polling: rate(nicmux_worker_busy_cycles_total[1m]) /
  // rate(nicmux_worker_packets_total[1m]) is its cycles per packet (docs/metrics.md).
  m.Family("nicmux_worker_rounds_total", "counter", "polling rounds (one burst per queue each)");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, sched_->worker(i).rounds());
  m.Family("nicmux_worker_busy_rounds_total", "counter", "polling rounds that moved packets");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, sched_->worker(i).busy_rounds());
  m.Family("nicmux_worker_busy_cycles_total", "counter",
           "cycles (x86: TSC) spent in rounds that moved packets");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, sched_->worker(i).busy_cycles());
  m.Family("nicmux_worker_queues", "gauge", "source queues the worker polls");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) {
    m.Sample({{"worker", sched_->worker(i).name()}}, static_cast<double>(sched_->worker(i).queues().size()));
  }
  m.Family("nicmux_sched_rebalances_total", "counter", "times the scheduler moved queues between workers by load");
  m.Sample(L{}, sched_->rebalances());
  m.Family("nicmux_worker_cpu", "gauge", "the CPU the worker is pinned to (-1: not pinned)");
  for (uint32_t i = 0; i < sched_->num_workers(); ++i) m.Sample({{"worker", sched_->worker(i).name()}}, static_cast<double>(sched_->worker(i).cpu()));
  m.Family("nicmux_metrics_scrapes_total", "counter", "requests for /metrics served, this one included");
  m.Sample(L{}, metrics_ ? metrics_->scrapes() : uint64_t{0});
  return m.Take();
}

void Daemon::LogStats() const {
  for (const auto& e : ports_) {
    json j = PortJson(*e);
    NICMUX_LOG(kInfo, "port %s: %s rx %llu pkts %llu bytes, tx %llu pkts %llu bytes, rx_dropped %llu, tx_dropped %llu, drops %s",
               e->spec.name.c_str(), j["state"].get<std::string>().c_str(),
               (unsigned long long)j["rx_packets"].get<uint64_t>(), (unsigned long long)j["rx_bytes"].get<uint64_t>(),
               (unsigned long long)j["tx_packets"].get<uint64_t>(), (unsigned long long)j["tx_bytes"].get<uint64_t>(),
               (unsigned long long)j["rx_dropped"].get<uint64_t>(), (unsigned long long)j["tx_dropped"].get<uint64_t>(),
               j["drops"].dump().c_str());
  }
}

ControlServer::HandlerResult Daemon::Handle(const std::string& cmd, const json& args,
                                            const std::shared_ptr<ControlClient>& client) {
  auto str_arg = [&](const char* key, bool required) -> std::variant<std::string, ControlError> {
    if (!args.contains(key)) {
      if (required) return ControlError::BadRequest(cmd + ": \"" + key + "\" is required");
      return std::string();
    }
    if (!args[key].is_string()) return ControlError::BadRequest(cmd + ": \"" + key + "\" must be a string");
    return args[key].get<std::string>();
  };
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const uint64_t now_ns = uint64_t(ts.tv_sec) * 1'000'000'000 + uint64_t(ts.tv_nsec);

  if (cmd == "port.list" || cmd == "stats") {
    auto name = str_arg("port", false);
    if (auto* e = std::get_if<ControlError>(&name)) return *e;
    const std::string& want = std::get<std::string>(name);
    json list = json::array();
    for (auto& e : ports_) {
      if (!want.empty() && e->spec.name != want) continue;
      list.push_back(PortJson(*e));
    }
    if (!want.empty() && list.empty()) return ControlError::NotFound("no port named " + want);
    return json{{"time_ns", now_ns}, {"ports", list}};
  }
  if (cmd == "port.show") {
    auto name = str_arg("name", true);
    if (auto* e = std::get_if<ControlError>(&name)) return *e;
    Entry* e = Find(std::get<std::string>(name));
    if (!e) return ControlError::NotFound("no port named " + std::get<std::string>(name));
    json j = PortJson(*e);
    j["time_ns"] = now_ns;
    if (switch_) {
      // What the switch was told (defaults included): VLAN, MAC limit, port security.
      if (auto c = SwitchPortConfigFromSpec(e->spec)) {
        j["vlan"] = c->vlan.ToString();
        j["mac_limit"] = c->mac_limit;
        std::string allowed;
        for (uint64_t m : c->allowed_macs) allowed += (allowed.empty() ? "" : " ") + MacToString(m);
        j["allowed_macs"] = c->allowed_macs.empty() ? "any" : allowed;
      }
    }
    json opts = json::object();
    for (const auto& [k, v] : e->spec.options) opts[k] = v;
    j["options"] = opts;
    return j;
  }
  if (cmd == "port.caps") {
    // What the port takes on transmit (the switch does the rest in software), what its peer
    // negotiated, and what the device behind it can do: the information pvdev will expose.
    auto name = str_arg("name", true);
    if (auto* e = std::get_if<ControlError>(&name)) return *e;
    Entry* e = Find(std::get<std::string>(name));
    if (!e) return ControlError::NotFound("no port named " + std::get<std::string>(name));
    const Port& p = *e->port;
    const PortCaps caps = p.Caps();
    const PortKind* kind = PortRegistry::Builtin().Find(e->spec.kind);
    json j = {{"name", e->spec.name},
              {"kind", e->spec.kind},
              {"queues", p.NumQueuePairs()},
              {"max_queues", kind ? kind->max_queues : p.NumQueuePairs()},
              {"tx_offloads", caps.Names()},
              {"mtu", caps.mtu},
              {"max_frame", caps.max_frame}};
    if (std::string f = p.Features(); !f.empty()) j["peer_features"] = f;
    json dev = json::object();
    for (const auto& [key, value] : p.DeviceCaps()) {
      if (const auto* n = std::get_if<uint64_t>(&value)) {
        dev[key] = *n;
      } else {
        dev[key] = std::get<std::string>(value);
      }
    }
    if (!dev.empty()) j["device"] = dev;
    return j;
  }
  if (cmd == "port.flows") {
    // The flow rules a port applies (a pv device's), with their hits and where each runs.
    auto name = str_arg("name", true);
    if (auto* e = std::get_if<ControlError>(&name)) return *e;
    Entry* e = Find(std::get<std::string>(name));
    if (!e) return ControlError::NotFound("no port named " + std::get<std::string>(name));
    json rules = json::array();
    for (const auto& row : e->port->FlowRules()) {
      json r = json::object();
      for (const auto& [key, value] : row) {
        if (const auto* n = std::get_if<uint64_t>(&value)) {
          r[key] = *n;
        } else {
          r[key] = std::get<std::string>(value);
        }
      }
      rules.push_back(r);
    }
    return json{{"name", e->spec.name}, {"kind", e->spec.kind}, {"flows", rules}};
  }
  if (cmd == "port.kinds") {
    // The port registry: every kind with its option table (what nicmuxd --help prints).
    auto opts = [](const std::vector<PortOption>& list) {
      static const char* kTypes[] = {"flag", "string", "uint", "size", "on|off"};
      json a = json::array();
      for (const PortOption& o : list) {
        json j{{"name", o.name}, {"type", kTypes[static_cast<int>(o.type)]}, {"help", o.help},
               {"required", o.required}};
        if (o.type != OptionType::kFlag) j["value"] = o.value;
        if (*o.dflt) j["default"] = o.dflt;
        if (o.type == OptionType::kUInt || o.type == OptionType::kSize) {
          j["min"] = o.lo;
          j["max"] = o.hi;
        }
        a.push_back(j);
      }
      return a;
    };
    json kinds = json::array();
    for (const PortKind& k : PortRegistry::Builtin().kinds()) {
      kinds.push_back({{"name", k.name}, {"summary", k.summary}, {"max_queues", k.max_queues},
                       {"synopsis", OptionSynopsis(k)}, {"options", opts(k.options)}});
    }
    return json{{"kinds", kinds}, {"every_kind", opts(PortRegistry::SwitchOptions())}};
  }
  if (cmd == "port.add") {
    auto text = str_arg("spec", true);
    if (auto* e = std::get_if<ControlError>(&text)) return *e;
    auto spec = ParsePortSpec(std::get<std::string>(text));
    if (!spec) return ControlError::Invalid(spec.error().message());
    const PortKind* kind = PortRegistry::Builtin().Find(spec->kind);
    if (kind && kind->privileged && client && client->uid() != 0 && client->uid() != ::geteuid()) {
      return ControlError{kCodeDenied, "port " + spec->name + ": port kind " + kind->name +
                                           " reaches the host's devices; only root or nicmuxd's own user may add it (uid " +
                                           std::to_string(client->uid()) + ")"};
    }
    if (auto e = AddPort(*spec, false)) return *e;
    return PortJson(*Find(spec->name));
  }
  if (cmd == "port.del") {
    auto name = str_arg("name", true);
    if (auto* e = std::get_if<ControlError>(&name)) return *e;
    if (auto e = DelPort(std::get<std::string>(name))) return *e;
    return json::object();
  }
  if (cmd == "fdb.show") {
    if (!switch_) return ControlError::Invalid("no MAC table: --forward xconnect");
    const std::vector<MacTable::Entry> entries = switch_->macs().Dump(switch_->now_s());
    const uint32_t size = switch_->macs().size(), cap = switch_->macs().max_entries();
    std::map<int, std::string> names;
    for (auto& e : ports_) names[e->switch_id] = e->spec.name;
    json list = json::array();
    for (const auto& m : entries) {
      list.push_back({{"mac", MacToString(m.mac)}, {"vlan", m.vid}, {"port", names.count(m.port) ? names[m.port] : "?"}, {"age_s", m.age_s}});
    }
    return json{{"entries", list},
                {"size", size},
                {"capacity", cap},
                {"aging_s", switch_->macs().aging_s()},
                {"moves", switch_->macs().moves()},
                {"full_drops", switch_->macs().full_drops()}};
  }
  if (cmd == "fdb.flush") {
    if (!switch_) return ControlError::Invalid("no MAC table: --forward xconnect");
    auto name = str_arg("port", false);
    if (auto* e = std::get_if<ControlError>(&name)) return *e;
    const std::string& want = std::get<std::string>(name);
    size_t n;
    if (!want.empty()) {
      Entry* e = Find(want);
      if (!e) return ControlError::NotFound("no port named " + want);
      n = switch_->macs().FlushPort(static_cast<uint16_t>(e->switch_id));
    } else {
      n = switch_->macs().Flush();
    }
    return json{{"flushed", n}};
  }
  if (cmd == "capture") return StartCapture(args, client);
  if (cmd == "upgrade") {
    auto bin = str_arg("binary", false);
    if (auto* e = std::get_if<ControlError>(&bin)) return *e;
    if (client && client->uid() != 0 && client->uid() != ::geteuid()) {
      return ControlError{kCodeDenied, "upgrade starts a binary with nicmuxd's rights: only root or nicmuxd's own user (uid " +
                                           std::to_string(client->uid()) + ")"};
    }
    std::weak_ptr<ControlClient> weak = client;
    auto e = StartUpgrade(std::get<std::string>(bin), [weak](const json& outcome) {
      auto c = weak.lock();
      if (!c) return;
      const json line{{"end", outcome}};
      // Success: this process exits right after; its loop will not run to write the line.
      if (outcome.value("ok", false)) {
        c->WriteNow(line, 500);
      } else {
        c->Finish(line);
      }
    });
    if (e) return *e;
    if (client) client->BeginStream();
    return json{{"started", true}, {"pid", upgrade_ ? upgrade_->pid : -1}, {"binary", upgrade_ ? upgrade_->binary : ""}};
  }
  if (cmd == "sched.show") {
    json workers = json::array();
    for (const Scheduler::WorkerView& v : sched_->Show()) {
      const Worker& w = sched_->worker(static_cast<uint32_t>(workers.size()));
      json qs = json::array();
      for (const Scheduler::QueueView& q : v.queues) {
        qs.push_back({{"port", q.port}, {"queue", q.q}, {"pinned", q.pinned}, {"packets_per_s", q.load}, {"node", q.node}});
      }
      workers.push_back({{"worker", v.name},
                         {"cpu", v.cpu},
                         {"node", v.node},
                         {"busy_poll", v.busy_poll},
                         {"window_us", w.busy_poll() ? -1.0 : static_cast<double>(w.window_ns()) / 1000},
                         {"packets_per_s", v.load},
                         {"cpu_pct", v.cpu_pct},
                         {"sleep_pct", v.sleep_pct},
                         {"wakeups_per_s", v.wakeups},
                         {"ns_per_packet", v.ns_per_packet},
                         {"busy_pct", v.busy_pct},
                         {"busy_rounds_pct", v.busy_rounds_pct},
                         {"cycles_per_packet", v.cycles_per_packet},
                         {"rounds", w.rounds()},
                         {"busy_rounds", w.busy_rounds()},
                         {"busy_cycles", w.busy_cycles()},
                         {"packets", w.packets()},
                         {"cpu_ns", w.cpu_ns()},
                         {"sleep_ns", w.sleep_ns()},
                         {"wakeups", w.sleeps()},
                         {"kick_wakeups", w.kick_wakeups()},
                         {"queues", qs}});
    }
    return json{{"workers", workers},
                {"rebalances", sched_->rebalances()},
                {"queues_moved", sched_->queues_moved()},
                {"numa_moves", sched_->numa_moves()},
                {"busy_swaps", sched_->busy_swaps()},
                {"max_busy_workers", sched_->max_busy_workers()}};
  }
  return ControlError::BadRequest("unknown command '" + cmd + "'");
}

ControlServer::HandlerResult Daemon::StartCapture(const json& args, const std::shared_ptr<ControlClient>& client) {
  if (!switch_) return ControlError::Invalid("capture needs --forward switch");
  if (!args.contains("port") || !args["port"].is_string()) {
    return ControlError::BadRequest("capture: \"port\" (a string) is required");
  }
  uint64_t count = 0;
  if (args.contains("count")) {
    if (!args["count"].is_number_unsigned()) return ControlError::BadRequest("capture: \"count\" must be a positive integer");
    count = args["count"].get<uint64_t>();
  }
  const std::string name = args["port"].get<std::string>();
  Entry* e = Find(name);
  if (!e) return ControlError::NotFound("no port named " + name);
  if (!e->capture_clients.empty()) return ControlError::Exists("port " + name + " is being captured already");
  e->capture = std::make_unique<Capture>();
  e->captured = 0;
  e->capture_limit = count;
  e->capture_clients.push_back(client);
  switch_->SetCapture(static_cast<uint16_t>(e->switch_id), e->capture.get());
  client->BeginStream();
  client->SetOnClose([this, name] {
    if (Entry* p = Find(name)) StopCapture(*p);
  });
  if (!capture_timer_) capture_timer_ = loop_->After(20, [this] { PumpCaptures(); });
  NICMUX_LOG(kInfo, "capture on port %s started", name.c_str());
  return json{{"port", name}};
}

void Daemon::StopCapture(Entry& e) {
  if (!e.capture) return;
  {
    PauseGuard pause(*sched_);  // no worker is inside Capture::Add after this
    switch_->SetCapture(static_cast<uint16_t>(e.switch_id), nullptr);
  }
  auto clients = std::move(e.capture_clients);
  e.capture_clients.clear();
  for (auto& c : clients) {
    if (c->closed()) continue;
    for (auto& p : e.capture->Drain()) {
      if (e.capture_limit && e.captured >= e.capture_limit) break;
      c->Send(CapturePacketLine(p.ts_ns, p.tx, p.orig_len, p.data));
      ++e.captured;
    }
    c->Finish(CaptureEndLine(e.captured, e.capture->dropped() + c->dropped()));
  }
  NICMUX_LOG(kInfo, "capture on port %s ended: %llu packets", e.spec.name.c_str(), (unsigned long long)e.captured);
  e.capture.reset();
}

void Daemon::PumpCaptures() {
  capture_timer_ = 0;
  bool any = false;
  for (auto& ep : ports_) {
    Entry& e = *ep;
    if (!e.capture) continue;
    any = true;
    auto pkts = e.capture->Drain();
    for (auto& c : e.capture_clients) {
      for (auto& p : pkts) {
        if (e.capture_limit && e.captured >= e.capture_limit) break;
        c->Send(CapturePacketLine(p.ts_ns, p.tx, p.orig_len, p.data));
        ++e.captured;
      }
    }
    if (e.capture_limit && e.captured >= e.capture_limit) StopCapture(e);
  }
  if (any) capture_timer_ = loop_->After(20, [this] { PumpCaptures(); });
}

// ---- Live upgrade (docs/upgrade.md) ----

namespace {

constexpr int kHelloTimeoutMs = 10000;  // the new binary starts (EAL, workers) and says hello
constexpr int kReadyTimeoutMs = 5000;   // it maps and checks everything, workers paused here
constexpr int kSendTimeoutMs = 2000;

uint64_t NowUs() { return MonotonicNowNs() / 1000; }

// A port's record in a handover document: {"values", "fd_base", "fd_count"} added to `port`,
// its fds appended to `fds` (they go with the message).
void PutRecord(const HandoverRecord& r, json* port, std::vector<int>* fds) {
  json values = json::object();
  for (const auto& [k, v] : r.values()) values[k] = v;
  (*port)["values"] = std::move(values);
  (*port)["fd_base"] = fds->size();
  (*port)["fd_count"] = r.fds().size();
  for (const UniqueFd& f : r.fds()) fds->push_back(f.get());
}

// UNTRUSTED (another build): the record back, its fds taken out of the message's `fds` (each
// at most once: an fd two ports claim is an error). Errors name `who`.
Result<void> TakeRecord(const json& port, std::vector<UniqueFd>& fds, const std::string& who, HandoverRecord* rec) {
  if (!port.contains("values") || !port["values"].is_object() || !port.contains("fd_base") ||
      !port["fd_base"].is_number_unsigned() || !port.contains("fd_count") || !port["fd_count"].is_number_unsigned()) {
    return Error(who + ": malformed");
  }
  for (const auto& [k, v] : port["values"].items()) {
    if (!v.is_string()) return Error(who + ": value " + k + " is not text");
    rec->SetText(k, v.get<std::string>());
  }
  const uint64_t base = port["fd_base"], count = port["fd_count"];
  if (base > fds.size() || count > fds.size() - base) return Error(who + ": fds out of range");
  for (uint64_t f = base; f < base + count; ++f) {
    if (!fds[f].valid()) return Error(who + ": an fd is another port's too");
    rec->AddOwnedFd(std::move(fds[f]));
  }
  return Ok();
}

}  // namespace

std::string Daemon::NotHandedOver() const {
  for (const auto& e : ports_) {
    if (!e->port->CanHandOver()) return "port " + e->spec.name + " (" + e->spec.kind + ") cannot be handed over to a new nicmuxd";
  }
  return {};
}

std::optional<ControlError> Daemon::StartUpgrade(const std::string& binary_in, UpgradeDone done) {
  if (upgrade_) return ControlError{kCodeExists, "an upgrade to " + upgrade_->binary + " is already under way"};
  if (opt_.argv.empty()) return ControlError::Failed("upgrade: this nicmuxd does not know its command line");
  if (std::string no = NotHandedOver(); !no.empty()) {
    return ControlError::Invalid(no + " yet; remove it first, or restart nicmuxd");
  }
  const std::string binary = binary_in.empty() ? opt_.exe : binary_in;
  if (binary.empty() || ::access(binary.c_str(), X_OK) != 0) {
    return ControlError::Invalid("upgrade: " + (binary.empty() ? std::string("no binary") : binary) + ": " +
                                 std::strerror(errno));
  }
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    return ControlError::Failed(std::string("upgrade: socketpair: ") + std::strerror(errno));
  }
  UniqueFd mine(sv[0]), theirs(sv[1]);
  // Everything the child needs is built before fork: between fork and exec only
  // async-signal-safe calls.
  std::vector<std::string> args = opt_.argv;
  args[0] = binary;
  args.push_back("--takeover");
  args.push_back(std::to_string(theirs.get()));
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const int child_fd = theirs.get();
  const pid_t pid = ::fork();
  if (pid < 0) return ControlError::Failed(std::string("upgrade: fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::fcntl(child_fd, F_SETFD, 0);  // the one fd the new process inherits on purpose
    ::execv(binary.c_str(), cargv.data());
    _exit(127);
  }
  theirs.Reset();
  Upgrade u;
  u.pid = pid;
  u.sock = std::move(mine);
  u.binary = binary;
  u.done = std::move(done);
  const int fd = u.sock.get();
  upgrade_ = std::move(u);
  if (auto r = loop_->Watch(fd, EPOLLIN, [this](uint32_t) { OnUpgradeMessage(); }); !r) {
    FailUpgrade(r.error().message());
    return std::nullopt;
  }
  upgrade_->timer = loop_->After(kHelloTimeoutMs, [this] {
    if (upgrade_) upgrade_->timer = 0;
    FailUpgrade("the new nicmuxd did not say hello within " + std::to_string(kHelloTimeoutMs / 1000) + " s");
  });
  NICMUX_LOG(kInfo, "upgrade: started %s (pid %d)", binary.c_str(), static_cast<int>(pid));
  return std::nullopt;
}

void Daemon::ReapLater(pid_t pid, int tries) {
  // Killed: it exits at once, unless it sits in an uninterruptible wait (an exec from a hung
  // file system); the control thread never waits for that.
  if (::waitpid(pid, nullptr, WNOHANG) != 0 || tries == 0) return;
  loop_->After(100, [this, pid, tries] { ReapLater(pid, tries - 1); });
}

void Daemon::FailUpgrade(const std::string& why) {
  if (!upgrade_) return;
  Upgrade u = std::move(*upgrade_);
  upgrade_.reset();
  if (u.timer) loop_->Cancel(u.timer);
  loop_->Unwatch(u.sock.get());
  // The new process must not go on with anything it was given: it stops here, and is reaped
  // (unless it was already: pid -1, which kill(2) would take for every process).
  if (u.pid > 0) {
    ::kill(u.pid, SIGKILL);
    ReapLater(u.pid, 100);
  }
  NICMUX_LOG(kError, "upgrade to %s failed: %s; this nicmuxd (pid %d) goes on serving", u.binary.c_str(),
             why.c_str(), static_cast<int>(::getpid()));
  if (u.done) u.done(json{{"ok", false}, {"error", why}, {"pid", ::getpid()}});
}

void Daemon::OnUpgradeMessage() {
  // A document of another build that trips an accessor fails the upgrade; this process goes
  // on serving (any pause taken inside has been undone by then).
  try {
    OnUpgradeMessageSteps();
  } catch (const std::exception& e) {
    FailUpgrade(std::string("unexpected message from the new nicmuxd: ") + e.what());
  }
}

void Daemon::OnUpgradeMessageSteps() {
  if (!upgrade_) return;
  auto m = handover::Receive(upgrade_->sock.get(), kSendTimeoutMs);
  if (!m) {
    int status = 0;
    std::string how;
    // A process that closed the socket is exiting: give the kernel a moment to make it
    // reapable, for its status (500 ms at most: one that closed it and lives on is killed).
    pid_t got = 0;
    for (int i = 0; i < 50 && (got = ::waitpid(upgrade_->pid, &status, WNOHANG)) == 0; ++i) ::usleep(10000);
    if (got == upgrade_->pid) {
      how = WIFEXITED(status) ? " (it exited with status " + std::to_string(WEXITSTATUS(status)) + ")"
                              : " (it was killed by signal " + std::to_string(WTERMSIG(status)) + ")";
      upgrade_->pid = -1;  // reaped
    }
    FailUpgrade(m.error().message() + how);
    return;
  }
  const json& doc = m->doc;
  if (handover::Str(doc, "msg") == "fail") {
    FailUpgrade("the new nicmuxd refused: " + handover::Str(doc, "error"));
    return;
  }
  if (handover::Str(doc, "msg") != "hello") {
    FailUpgrade("the new nicmuxd said '" + handover::Str(doc, "msg") + "', not hello");
    return;
  }
  Cutover(doc);
}

void Daemon::Cutover(const json& hello) {
  if (upgrade_->timer) loop_->Cancel(std::exchange(upgrade_->timer, 0));
  loop_->Unwatch(upgrade_->sock.get());
  const int sock = upgrade_->sock.get();
  // UNTRUSTED (another build): its version, a number we compare.
  const int version = hello.contains("version") && hello["version"].is_number_integer() ? hello["version"].get<int>() : -1;
  if (version != handover::kVersion) {
    const std::string why = "the new binary speaks handover version " + std::to_string(version) + ", this one " +
                            std::to_string(handover::kVersion);
    (void)handover::Send(sock, json{{"msg", "abort"}, {"error", why}}, {}, kSendTimeoutMs);
    FailUpgrade(why);
    return;
  }
  // From here to the end this thread waits for the new process: no frontend message, accept
  // or disconnect is handled, so the only state that moves is what the workers move (ring
  // positions), which the second step hands over.
  std::string why;
  // A port added since the upgrade was asked for (the control socket serves on until the new
  // process says hello) is checked as the others were.
  if (why = NotHandedOver(); !why.empty()) {
    (void)handover::Send(sock, json{{"msg", "abort"}, {"error", why}}, {}, kSendTimeoutMs);
    FailUpgrade(why);
    return;
  }
  // Step 1: everything, taken with the workers paused only for the export itself; the new
  // process maps and checks it while they forward on.
  const uint64_t t_export = NowUs();
  std::vector<HandoverRecord> records(ports_.size());
  json doc{{"msg", "state"}, {"version", handover::kVersion}, {"from_pid", ::getpid()}};
  std::vector<int> fds;
  {
    PauseGuard pause(*sched_);
    json ports = json::array();
    for (size_t i = 0; i < ports_.size(); ++i) {
      Entry& e = *ports_[i];
      if (auto r = e.port->Export(&records[i]); !r) {
        why = r.error().message();
        break;
      }
      json port{{"name", e.spec.name}, {"spec", SpecToString(e.spec)}, {"from_config", e.from_config}};
      PutRecord(records[i], &port, &fds);
      ports.push_back(std::move(port));
    }
    doc["ports"] = ports;
  }
  const uint64_t export_us = NowUs() - t_export;
  if (!why.empty()) {
    (void)handover::Send(sock, json{{"msg", "abort"}, {"error", why}}, {}, kSendTimeoutMs);
    FailUpgrade(why);
    return;
  }
  if (control_) {
    doc["control_fd"] = fds.size();
    doc["control_path"] = control_->path();
    fds.push_back(control_->listen_fd());
  }
  if (metrics_) {
    doc["metrics_fd"] = fds.size();
    fds.push_back(metrics_->listen_fd());
  }
  if (switch_) {
    // Compact (a full table of 2^20 stations stays far below the document's bound): the
    // port as its index in "ports", and the age, so that stations age out on time.
    std::map<int, size_t> index;
    for (size_t i = 0; i < ports_.size(); ++i) index[ports_[i]->switch_id] = i;
    json macs = json::array();
    for (const auto& m : switch_->macs().Dump(switch_->now_s())) {
      if (index.count(m.port)) macs.push_back(json::array({m.mac, m.vid, index[m.port], m.age_s}));
    }
    doc["macs"] = macs;
  }
  if (auto r = handover::Send(sock, doc, fds, kSendTimeoutMs); !r) return FailUpgrade(r.error().message());
  records.clear();  // our duplicates of the fds: the new process has its own now
  auto prepared = handover::Receive(sock, kReadyTimeoutMs);
  if (!prepared) return FailUpgrade(prepared.error().message());
  if (handover::Str(prepared->doc, "msg") != "prepared") {
    return FailUpgrade("the new nicmuxd could not take over: " + handover::Str(prepared->doc, "error"));
  }
  // Step 2: the precise point. Every worker between rounds, every batch completed and
  // published; what moved since step 1 goes over, and the new process resumes from there.
  const uint64_t t0 = NowUs();
  {
    PauseGuard pause(*sched_);
    json moved = json::array();
    std::vector<HandoverRecord> positions(ports_.size());
    std::vector<int> pos_fds;
    size_t exported = 0;  // ports whose ExportPositions ran (a dpdk port closed its device there)
    for (size_t i = 0; i < ports_.size(); ++i) {
      HandoverRecord& pos = positions[i];
      if (auto r = ports_[i]->port->ExportPositions(&pos); !r) {
        why = r.error().message();
        break;
      }
      ++exported;
      json port{{"name", ports_[i]->spec.name}};
      PutRecord(pos, &port, &pos_fds);
      ExportCounters(*ports_[i], &port);  // where the workers stopped: none counted twice
      moved.push_back(std::move(port));
    }
    if (why.empty()) {
      if (auto r = handover::Send(sock, json{{"msg", "cutover"}, {"ports", moved}}, pos_fds, kSendTimeoutMs); !r) {
        why = r.error().message();
      }
    } else {
      (void)handover::Send(sock, json{{"msg", "abort"}, {"error", why}}, {}, kSendTimeoutMs);
    }
    json warnings = json::array();
    if (why.empty()) {
      auto reply = handover::Receive(sock, kReadyTimeoutMs);
      if (!reply) {
        why = reply.error().message();
      } else if (handover::Str(reply->doc, "msg") != "ready") {
        why = "the new nicmuxd could not take over: " + handover::Str(reply->doc, "error");
      } else if (reply->doc.contains("warnings") && reply->doc["warnings"].is_array()) {
        for (const json& w : reply->doc["warnings"]) {
          if (w.is_string()) warnings.push_back(w);
        }
      }
    }
    if (why.empty()) {
      if (auto r = handover::Send(sock, json{{"msg", "commit"}}, {}, kSendTimeoutMs); !r) {
        why = r.error().message();
      } else {
        // Committed: the new process resumes where the workers stopped; this one must not run a
        // single round more, nor answer a frontend, nor remove a socket file. It says so and
        // exits without running a destructor (the workers stay paused).
        const uint64_t paused_us = NowUs() - t0;
        const pid_t pid = upgrade_->pid;
        NICMUX_LOG(kInfo,
                   "upgrade: handed %zu port(s) over to %s (pid %d); workers paused %llu us (and %llu us for the "
                   "first export); exiting",
                   ports_.size(), upgrade_->binary.c_str(), static_cast<int>(pid),
                   static_cast<unsigned long long>(paused_us), static_cast<unsigned long long>(export_us));
        if (upgrade_->done) {
          upgrade_->done(json{{"ok", true},
                              {"pid", pid},
                              {"from_pid", ::getpid()},
                              {"paused_us", paused_us},
                              {"export_paused_us", export_us},
                              {"ports", ports_.size()},
                              {"warnings", warnings},
                              {"binary", upgrade_->binary}});
        }
        // The new process resumed its workers on "commit"; it says "running" once it told
        // systemd it is the service's main process (ours paused meanwhile: no gap added).
        (void)handover::Receive(sock, kSendTimeoutMs);
        RemoveDpdkLeftovers();  // _exit runs no atexit: the EAL's runtime directory
        std::fflush(nullptr);
        _exit(0);
      }
    }
    // Failed: what the ports let go of comes back before the workers resume — once the new
    // process is gone, which may have opened it already (a dpdk device: a second open would
    // fail while it holds it).
    if (!why.empty() && exported > 0 && upgrade_->pid > 0) {
      ::kill(upgrade_->pid, SIGKILL);
      while (::waitpid(upgrade_->pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      upgrade_->pid = -1;  // (reaped: FailUpgrade must not signal the number again)
      SweepDpdkLeftovers();  // the killed process's EAL runtime directory, if it made one
    }
    for (size_t i = 0; i < exported; ++i) ports_[i]->port->HandoverAborted();
  }  // the workers resume: this process goes on serving
  FailUpgrade(why);
}

namespace {

// The new process gives up: it tells the old one (which goes on serving) and exits without a
// destructor — the sockets and devices are the old process's, which goes on with them.
[[noreturn]] void AbandonTakeover(int sock, const std::string& why) {
  NICMUX_LOG(kError, "takeover failed: %s; the old nicmuxd goes on serving", why.c_str());
  (void)handover::Send(sock, json{{"msg", "fail"}, {"error", why}}, {}, kSendTimeoutMs);
  RemoveDpdkLeftovers();
  std::fflush(nullptr);
  _exit(1);
}

}  // namespace

void Daemon::TakeOver() {
  // A document of another build that trips an accessor is a failed takeover, not a crash.
  try {
    TakeOverSteps();
  } catch (const std::exception& e) {
    AbandonTakeover(opt_.takeover_fd, std::string("unexpected state: ") + e.what());
  }
}

void Daemon::TakeOverSteps() {
  const int sock = opt_.takeover_fd;
  auto fail = [&](const std::string& why) { AbandonTakeover(sock, why); };
  if (auto r = handover::Send(sock, json{{"msg", "hello"}, {"version", handover::kVersion}, {"pid", ::getpid()}}, {},
                              kSendTimeoutMs);
      !r) {
    fail(r.error().message());
  }
  auto m = handover::Receive(sock, kHelloTimeoutMs);
  if (!m) fail(m.error().message());
  const json& doc = m->doc;
  // UNTRUSTED (another build): every field's type checked before use.
  if (handover::Str(doc, "msg") != "state") fail("the old nicmuxd said: " + handover::Str(doc, "msg") + " " + handover::Str(doc, "error"));
  if (!doc.contains("version") || doc["version"] != handover::kVersion) fail("handover version mismatch");
  const uint64_t t0 = NowUs();
  PauseGuard pause(*sched_);  // nothing is polled before the old process commits
  if (!doc.contains("ports") || !doc["ports"].is_array()) fail("the state has no port list");
  std::vector<HandoverRecord> records(doc["ports"].size());
  size_t i = 0;
  for (const json& p : doc["ports"]) {
    HandoverRecord& rec = records[i++];
    if (!p.is_object() || !p.contains("spec") || !p["spec"].is_string()) fail("a port of the state is malformed");
    auto spec = ParsePortSpec(p["spec"].get<std::string>());
    if (!spec) fail(spec.error().message());
    if (auto r = TakeRecord(p, m->fds, "port " + spec->name, &rec); !r) fail(r.error().message());
    const bool from_config = p.contains("from_config") && p["from_config"].is_boolean() && p["from_config"].get<bool>();
    if (auto e = AddPort(*spec, from_config, &rec)) fail(e->message);
  }
  if (xconnect_) {
    if (auto r = PairCrossConnects(); !r) fail(r.error().message());
  }
  auto take_fd = [&](const char* key) -> UniqueFd {
    if (!doc.contains(key)) return UniqueFd();
    if (!doc[key].is_number_unsigned() || doc[key].get<uint64_t>() >= m->fds.size() ||
        !m->fds[doc[key].get<size_t>()].valid()) {
      fail(std::string(key) + " is out of range or another's fd");
    }
    return std::move(m->fds[doc[key].get<size_t>()]);
  };
  if (UniqueFd c = take_fd("control_fd"); c.valid()) {
    std::string path = handover::Str(doc, "control_path");
    if (path.empty()) path = opt_.control_path;
    auto s = ControlServer::Adopt(path, std::move(c), loop_,
                                  [this](const std::string& cmd, const json& args, const std::shared_ptr<ControlClient>& client) {
                                    return Handle(cmd, args, client);
                                  });
    if (!s) fail(s.error().message());
    control_ = std::move(*s);
  }
  if (UniqueFd f = take_fd("metrics_fd"); f.valid()) {
    auto s = MetricsServer::Adopt(std::move(f), loop_, [this] { return MetricsPage(); });
    if (!s) fail(s.error().message());
    metrics_ = std::move(*s);
  }
  if (switch_ && doc.contains("macs") && doc["macs"].is_array()) {
    // [mac, vlan, port index, age]; a station that does not fit is left out (it is learned
    // again from its next frame).
    const uint32_t now = switch_->now_s();
    for (const json& mac : doc["macs"]) {
      if (!mac.is_array() || mac.size() != 4 ||
          !std::all_of(mac.begin(), mac.end(), [](const json& v) { return v.is_number_unsigned(); }) ||
          mac[1].get<uint64_t>() > 4095 || mac[2].get<uint64_t>() >= ports_.size()) {
        continue;
      }
      const Entry& e = *ports_[mac[2].get<size_t>()];
      if (e.switch_id < 0) continue;
      const uint64_t age = std::min<uint64_t>(mac[3].get<uint64_t>(), now > 1 ? now - 1 : 0);
      switch_->macs().Learn(mac[0].get<uint64_t>() & 0xffffffffffffull, static_cast<uint16_t>(mac[1].get<uint64_t>()),
                            static_cast<uint16_t>(e.switch_id), static_cast<uint32_t>(now - age));
    }
  }
  const uint64_t import_us = NowUs() - t0;
  if (auto r = handover::Send(sock, json{{"msg", "prepared"}}, {}, kSendTimeoutMs); !r) fail(r.error().message());
  // Step 2: what the old workers moved since (they are paused again now).
  auto cut = handover::Receive(sock, kReadyTimeoutMs);
  if (!cut) fail(cut.error().message());
  if (handover::Str(cut->doc, "msg") != "cutover" || !cut->doc.contains("ports") || !cut->doc["ports"].is_array()) {
    fail("the old nicmuxd said: " + handover::Str(cut->doc, "msg") + " " + handover::Str(cut->doc, "error"));
  }
  const uint64_t t1 = NowUs();
  // UNTRUSTED (another build): every port of the state exactly once, or a port would start
  // from nowhere (its queues never started, its held frames lost) or twice.
  std::set<std::string> positioned;
  for (const json& p : cut->doc["ports"]) {
    if (!p.is_object() || handover::Str(p, "name").empty() || !positioned.insert(handover::Str(p, "name")).second) {
      fail("the cutover names a port twice, or none");
    }
  }
  if (positioned.size() != ports_.size()) fail("the cutover has " + std::to_string(positioned.size()) + " ports, the state " + std::to_string(ports_.size()));
  for (const json& p : cut->doc["ports"]) {
    Entry* e = Find(p["name"].get<std::string>());
    if (!e) fail("the cutover names port " + p["name"].get<std::string>() + ", which the state did not");
    HandoverRecord pos;
    if (auto r = TakeRecord(p, cut->fds, "port " + e->spec.name, &pos); !r) fail(r.error().message());
    if (auto r = e->port->ImportPositions(pos); !r) fail(r.error().message());
    ImportCounters(p, e);
  }
  json warnings = json::array();
  for (auto& e : ports_) {
    if (std::string w = e->port->HandoverWarning(); !w.empty()) warnings.push_back(w);
  }
  if (auto r = handover::Send(sock, json{{"msg", "ready"}, {"warnings", warnings}}, {}, kSendTimeoutMs); !r) {
    fail(r.error().message());
  }
  auto commit = handover::Receive(sock, kReadyTimeoutMs);
  if (!commit || handover::Str(commit->doc, "msg") != "commit") {
    fail(commit ? "the old nicmuxd did not commit" : commit.error().message());
  }
  for (auto& e : ports_) e->port->HandoverCommitted();
  // Ours now. systemd (Type=notify, NotifyAccess=all) must follow the service to this process
  // before the old one exits, or it would take the old one's exit for the service's and stop
  // it; the old one waits for "running" to exit.
  SdNotify("MAINPID=" + std::to_string(::getpid()) + "\nREADY=1");
  (void)handover::Send(sock, json{{"msg", "running"}}, {}, kSendTimeoutMs);
  ::close(sock);
  opt_.takeover_fd = -1;
  NICMUX_LOG(kInfo, "takeover: %zu port(s) from pid %lld; built in %llu us, positions applied in %llu us", ports_.size(),
             static_cast<long long>(doc.contains("from_pid") && doc["from_pid"].is_number_integer() ? doc["from_pid"].get<int64_t>() : 0),
             static_cast<unsigned long long>(import_us),
             static_cast<unsigned long long>(NowUs() - t1));
}
}  // namespace nicmux
