// The nicmuxd config file (TOML, /etc/nicmux/nicmuxd.toml; docs/config.md): daemon settings
// and ports. Each [[port]] table becomes the same PortSpec that `--port KIND:NAME:k=v,...`
// gives, so port options are validated in one place (by the daemon, when it creates the
// port); this file only checks what the spec syntax itself needs. Parsing only: nothing is
// created here, and no exception escapes (toml++ is used with TOML_EXCEPTIONS=0).
//
//   [daemon]                      # every key optional: absent means "not in the file", so
//   forward = "switch"            #   command-line flags can override and merge.
//   workers = 1                   # "switch" | "xconnect"; worker threads 1..64
//   cpus = [1, 2]                 # pin worker i to cpus[i] (0..4095, no repeats); as many
//                                 #   entries as workers (workers absent counts as 1)
//   control = "/run/nicmux/nicmuxd.sock"   # control socket path, 1..107 bytes
//   log_level = "info"            # debug | info | warning | error
//   stats_interval = 0            # seconds, 0..86400
//   mac_aging = 300               # seconds, 1..86400
//   poll_us = 100                 # busy-poll after the last packet, 0..1000000
//   busy_poll = false             # true: workers never sleep (lowest latency, a core each)
//   max_busy_workers = 0          # with busy_poll: at most this many busy-poll (the busiest),
//                                 #   0..64, 0: no cap
//   poll_fixed = false            # true: always poll poll_us before sleeping (no adapting)
//   mac_table_size = 8192         # entries, 16..1048576
//   metrics = "127.0.0.1:9469"    # Prometheus endpoint ADDR:PORT, [IPV6]:PORT or :PORT
//                                 #   (docs/metrics.md); absent or "": none
//   socket_group = "libvirt-qemu" # group of the sockets nicmuxd serves (mode 0660 with it)
//   socket_mode = "0660"          # their mode, octal
//   control_group = "nicmux"      # group of the control socket
//   seccomp = "on"                # system-call filter after setup: on, off, log (docs/security.md)
//   user = "nicmux"               # after setup run as this USER[:GROUP] (docs/security.md)
//
//   [[port]]                      # one table per port, kept in file order
//   name = "vm1"                  # required, 1-32 of [A-Za-z0-9._-] (IsValidPortName), unique
//   kind = "vhost-user"           # required, non-empty, no ':'
//   socket = "/run/nicmux/vm1.sock"   # string  -> as is (no ',' or '=': see below)
//   client = true                 # boolean -> true: bare key (""), false: key absent
//   queues = 2                    # integer -> decimal string
//   trunk = [10, 20]              # non-empty array of integers -> "10/20"
//   allowed_macs = ["02:00:00:00:00:01", "02:00:00:00:00:02"]
//                                 # non-empty array of strings (no '/') -> joined with "/"
//   mac_limit = 256               # (switch options: docs/switch.md)
//
// Every other value type (float, date/time, table, nested array, array mixing integers and
// strings or holding anything else) is an error. Option keys and string values may not
// contain ',' or '=': they would not survive the round trip through the spec syntax
// (SpecToString + ParsePortSpec give back the same PortSpec for every port ParseConfig
// accepts).
//
// Errors name the file and line: "nicmuxd.toml:12: port 'vm1': 'queues' must be an integer,
// a string or a boolean"; TOML syntax errors also the column: "nicmuxd.toml:7:14: parse
// error: ...". The first error found is reported.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "port/port_spec.h"

namespace nicmux {

// [daemon]. std::nullopt: the key is not in the file. Values present are in range.
struct DaemonSettings {
  std::optional<std::string> forward, control, log_level, metrics, socket_group, socket_mode, control_group,
      seccomp, user;
  std::optional<uint32_t> workers;
  std::optional<uint32_t> poll_us, max_busy_workers;
  std::optional<bool> busy_poll, poll_fixed;
  std::optional<std::vector<int>> cpus;
  std::optional<uint64_t> stats_interval_s, mac_aging_s;
  std::optional<uint32_t> mac_table_size;
};

struct Config {
  DaemonSettings daemon;
  std::optional<std::vector<std::string>> dpdk_eal_args;  // [dpdk] eal_args, split at spaces
  std::vector<PortSpec> ports;  // in file order, names unique
};

// Reads and parses the file at path; errors start with path (or say it cannot be read).
Result<Config> LoadConfig(const std::string& path);

// Parses text; source_name is the file name used in errors.
Result<Config> ParseConfig(std::string_view text, const std::string& source_name);

// "KIND:NAME" or "KIND:NAME:k=v,k2" (options in map order, a "" value as a bare key): the
// canonical command-line form of s.
std::string SpecToString(const PortSpec& s);

// What a reload has to do, ports matched by name (names are unique in each list, as
// ParseConfig guarantees). added and changed follow new_ports' order, removed old_ports'.
// Order alone is never a change.
struct PortDiff {
  std::vector<PortSpec> added;    // in new, not in old
  std::vector<PortSpec> removed;  // in old, not in new
  std::vector<PortSpec> changed;  // in both with another kind or options: the new spec
};
PortDiff DiffPorts(const std::vector<PortSpec>& old_ports, const std::vector<PortSpec>& new_ports);

}  // namespace nicmux
