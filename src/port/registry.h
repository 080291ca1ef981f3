// The port registry: every port kind nicmuxd knows, each with its option table (name, type,
// default, help line), its queue limit, what it claims for itself, and its constructor. The
// daemon has no list of kinds: it checks a spec against the table (Check), builds the port
// (PortKind::create), and `nicmuxd --help`, `nicmuxctl port kinds` and the errors for a bad
// spec are all made from the tables. A new kind is a file pair (its Port, and a PortKind
// function beside it) and one line in port/kinds.cc (docs/architecture.md "Port kinds").
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/result.h"
#include "port/port.h"
#include "port/port_spec.h"

namespace nicmux {

class EventLoop;
class Pausable;

enum class OptionType {
  kFlag,    // a bare key: `client`
  kString,  // key=TEXT (non-empty)
  kUInt,    // key=N within [lo, hi]
  kSize,    // key=SIZE: bytes or with a K, M, G or T suffix (1024-based), within [lo, hi]
  kOnOff,   // key=on|off
};

struct PortOption {
  const char* name;
  OptionType type;
  const char* value;  // how --help writes the value: "PATH", "N"; unused for a flag
  const char* dflt;   // the default as --help shows it ("" for none)
  const char* help;   // what it does, a sentence or two (wrapped by --help)
  uint64_t lo = 0, hi = 0;  // kUInt and kSize
  bool required = false;
};

// What a kind's constructor gets besides its spec.
struct PortContext {
  EventLoop* loop = nullptr;     // the control thread's loop (sockets, timers)
  Pausable* workers = nullptr;   // paused around changes the workers must not see half-done
  uint32_t mtu = 0;              // the port's mtu= (0: none given), also the switch's
  // Live upgrade: the state the old nicmuxd's port exported (Port::Export), to go on from
  // instead of starting afresh; nullptr otherwise. A kind whose ports say CanHandOver() takes
  // it (its fds are moved out); any other kind never sees one.
  HandoverRecord* handover = nullptr;
};

struct PortKind {
  std::string name;     // the KIND of KIND:NAME:options
  std::string summary;  // what the port is, for --help
  std::vector<PortOption> options;  // its own; the switch's (SwitchOptions()) come on top
  uint32_t max_queues = 1;          // the bound of its queues= option, if it has one
  // The kind reaches the host's devices or files beyond nicmuxd's own (a NIC, an XDP program,
  // a DPDK vdev that writes files): at run time only root or nicmuxd's own user may add it,
  // not every member of the control socket's group.
  bool privileged = false;
  // What the port holds for itself and no other port may ("socket /run/vm1.sock"); empty or
  // unset: nothing.
  std::function<std::string(const PortSpec&)> claims;
  // create() takes PortContext::handover (a live upgrade, docs/upgrade.md): its ports go on
  // in a new nicmuxd where the old one's stopped.
  bool hands_over = false;
  // Builds the port from a spec that Check() passed.
  std::function<Result<std::unique_ptr<Port>>(const PortSpec&, const PortContext&)> create;
};

class PortRegistry {
 public:
  // Every kind this build has (port/kinds.cc).
  static const PortRegistry& Builtin();

  void Add(PortKind k);
  const PortKind* Find(std::string_view name) const;
  const std::vector<PortKind>& kinds() const { return kinds_; }
  // "vhost-user, virtio-user, tap"
  std::string Names() const;

  // The options every kind takes (the switch's: vlan, trunk, mtu, mac_limit, allowed_macs);
  // their values are checked by the switch's own parser.
  static const std::vector<PortOption>& SwitchOptions();

  // Checks s against its kind's table: a known kind; only known options (the error names the
  // option and lists the known ones); flags without a value, values where one is needed;
  // numbers, sizes and on/off in range; required options present. Returns the kind.
  Result<const PortKind*> Check(const PortSpec& s) const;

  // The "port kinds" section of nicmuxd --help: each kind's spec line, summary and options,
  // wrapped at `width` columns.
  std::string Help(size_t width = 92) const;

 private:
  std::vector<PortKind> kinds_;
};

// "socket=PATH[,client][,queues=N]": how a kind's options are written in a spec.
std::string OptionSynopsis(const PortKind& k);

}  // namespace nicmux
