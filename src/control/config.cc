// The nicmuxd config file: TOML -> DaemonSettings + PortSpecs (format in config.h and
// docs/config.md). toml++ is header-only here and built without exceptions (DESIGN.md: no
// exceptions in src/); its source regions give every error a line.
#include "control/config.h"

#include "base/privileges.h"

#include "base/unix_socket.h"
#include "control/metrics.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <set>
#include <string_view>

#include "base/unique_fd.h"

#define TOML_EXCEPTIONS 0
#define TOML_ENABLE_FORMATTERS 0  // parse only: keeps this translation unit smaller
#include <toml++/toml.h>

namespace nicmux {
namespace {

// A config file is a few kilobytes; the cap only stops a wrong path (a device, a log) from
// being read into memory whole.
constexpr size_t kMaxConfigBytes = 1 << 20;

// sockaddr_un::sun_path holds 108 bytes including the terminating NUL.
constexpr size_t kMaxSocketPathBytes = 107;

// The highest CPU number --cpu accepts (tools/nicmuxd.cc).
constexpr int64_t kMaxCpu = 4095;

// "source:line: message".
Error At(const std::string& source, const toml::source_region& where, const std::string& msg) {
  return Error(source + ":" + std::to_string(where.begin.line) + ": " + msg);
}

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// ',' and '=' separate options in the spec syntax; keys and string values may not hold them,
// nor NUL (TOML allows "\u0000"), which no command line can carry and which would cut a path
// short at c_str().
bool SpecSafe(std::string_view s) {
  return s.find_first_of(std::string_view(",=\0", 3)) == std::string_view::npos;
}

bool HasNul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

// [daemon]: each key once (TOML forbids repeats), each value checked for type and range.
class DaemonParser {
 public:
  DaemonParser(const std::string& source, DaemonSettings* out) : source_(source), out_(out) {}

  Result<void> Parse(const toml::table& t) {
    const toml::node* cpus_node = nullptr;
    for (auto&& [key, node] : t) {
      const std::string_view k = key.str();
      if (k == "forward") {
        auto v = OneOf(node, k, {"switch", "xconnect"});
        if (!v) return v.error();
        out_->forward = *v;
      } else if (k == "seccomp") {
        auto v = OneOf(node, k, {"on", "off", "log"});
        if (!v) return v.error();
        out_->seccomp = *v;
      } else if (k == "user") {
        const auto* s = node.as_string();
        if (s == nullptr) return Bad(node, k, "must be a string, USER or USER:GROUP");
        if (auto u = ParseRunAs(s->get()); !u) return At(source_, node.source(), "[daemon] 'user': " + u.error().message());
        out_->user = s->get();
      } else if (k == "log_level") {
        auto v = OneOf(node, k, {"debug", "info", "warning", "error"});
        if (!v) return v.error();
        out_->log_level = *v;
      } else if (k == "control") {
        const auto* s = node.as_string();
        if (s == nullptr || s->get().empty() || s->get().size() > kMaxSocketPathBytes ||
            HasNul(s->get())) {
          return Bad(
              node, k,
              "must be a socket path of 1.." + std::to_string(kMaxSocketPathBytes) + " bytes");
        }
        out_->control = s->get();
      } else if (k == "metrics") {
        const auto* s = node.as_string();
        if (s == nullptr) return Bad(node, k, "must be a string, ADDR:PORT (\"127.0.0.1:9469\") or \"\"");
        if (!s->get().empty()) {
          if (auto a = ParseMetricsAddress(s->get()); !a) {
            return At(source_, node.source(), "[daemon] 'metrics': " + a.error().message());
          }
        }
        out_->metrics = s->get();
      } else if (k == "socket_group" || k == "socket_mode" || k == "control_group") {
        const auto* s = node.as_string();
        if (s == nullptr) return Bad(node, k, "must be a string");
        // Checked here so that the file names the line; applied by nicmuxd.
        const bool mode = k == "socket_mode";
        if (!s->get().empty()) {
          if (auto a = ParseSocketAccess(mode ? "" : s->get(), mode ? s->get() : ""); !a) {
            return At(source_, node.source(), "[daemon] " + Quoted(k) + ": " + a.error().message());
          }
        }
        (k == "socket_group" ? out_->socket_group : mode ? out_->socket_mode : out_->control_group) = s->get();
      } else if (k == "workers") {
        auto v = Int(node, k, 1, 64);
        if (!v) return v.error();
        out_->workers = static_cast<uint32_t>(*v);
      } else if (k == "stats_interval") {
        auto v = Int(node, k, 0, 86400);
        if (!v) return v.error();
        out_->stats_interval_s = static_cast<uint64_t>(*v);
      } else if (k == "mac_aging") {
        auto v = Int(node, k, 1, 86400);
        if (!v) return v.error();
        out_->mac_aging_s = static_cast<uint64_t>(*v);
      } else if (k == "poll_us") {
        auto v = Int(node, k, 0, 1000000);
        if (!v) return v.error();
        out_->poll_us = static_cast<uint32_t>(*v);
      } else if (k == "max_busy_workers") {
        auto v = Int(node, k, 0, 64);
        if (!v) return v.error();
        out_->max_busy_workers = static_cast<uint32_t>(*v);
      } else if (k == "busy_poll" || k == "poll_fixed") {
        const auto* b = node.as_boolean();
        if (b == nullptr) return Bad(node, k, "must be true or false");
        (k == "busy_poll" ? out_->busy_poll : out_->poll_fixed) = b->get();
      } else if (k == "mac_table_size") {
        auto v = Int(node, k, 16, 1048576);
        if (!v) return v.error();
        out_->mac_table_size = static_cast<uint32_t>(*v);
      } else if (k == "cpus") {
        auto v = Cpus(node);
        if (!v) return v.error();
        out_->cpus = std::move(*v);
        cpus_node = &node;
      } else {
        return At(source_, key.source(), "unknown key " + Quoted(k) + " in [daemon]");
      }
    }
    // Checked after the loop: the table is ordered by key, not by line, so workers may come
    // after cpus. An absent workers is the default, 1.
    if (cpus_node != nullptr) {
      const uint32_t workers = out_->workers.value_or(1);
      if (out_->cpus->size() != workers) {
        return Bad(*cpus_node, "cpus",
                   "has " + std::to_string(out_->cpus->size()) + " entries but workers is " +
                       std::to_string(workers) + (out_->workers ? "" : " (the default)"));
      }
    }
    return Ok();
  }

 private:
  Error Bad(const toml::node& node, std::string_view key, const std::string& what) const {
    return At(source_, node.source(), "[daemon] " + Quoted(key) + " " + what);
  }

  Result<std::string> OneOf(const toml::node& node, std::string_view key,
                            std::initializer_list<std::string_view> allowed) const {
    const auto* s = node.as_string();
    if (s != nullptr) {
      for (std::string_view a : allowed) {
        if (s->get() == a) return std::string(a);
      }
    }
    std::string list;
    for (std::string_view a : allowed) {
      list += (list.empty() ? "\"" : ", \"") + std::string(a) + "\"";
    }
    return Bad(node, key, "must be one of " + list);
  }

  Result<int64_t> Int(const toml::node& node, std::string_view key, int64_t lo, int64_t hi) const {
    const auto* i = node.as_integer();
    if (i == nullptr || i->get() < lo || i->get() > hi) {
      return Bad(node, key,
                 "must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
    }
    return i->get();
  }

  Result<std::vector<int>> Cpus(const toml::node& node) const {
    const auto* a = node.as_array();
    const std::string what =
        "must be an array of CPU numbers (integers 0.." + std::to_string(kMaxCpu) + ")";
    if (a == nullptr) return Bad(node, "cpus", what);
    std::vector<int> cpus;
    std::set<int> seen;
    for (const toml::node& e : *a) {
      const auto* i = e.as_integer();
      if (i == nullptr || i->get() < 0 || i->get() > kMaxCpu) return Bad(e, "cpus", what);
      const int cpu = static_cast<int>(i->get());
      if (!seen.insert(cpu).second) {
        return Bad(e, "cpus", "lists CPU " + std::to_string(cpu) + " twice");
      }
      cpus.push_back(cpu);
    }
    return cpus;
  }

  const std::string& source_;
  DaemonSettings* out_;
};

// One [[port]] table -> PortSpec.
Result<PortSpec> ParsePort(const toml::table& t, const std::string& source) {
  PortSpec spec;
  const toml::node* name = t.get("name");
  if (name == nullptr) return At(source, t.source(), "port has no 'name'");
  if (!name->is_string()) return At(source, name->source(), "port 'name' must be a string");
  spec.name = name->as_string()->get();
  if (!IsValidPortName(spec.name)) {
    return At(source, name->source(),
              "port name " + Quoted(spec.name) + " must be 1-32 characters of [A-Za-z0-9._-]");
  }
  const std::string port = "port " + Quoted(spec.name);

  const toml::node* kind = t.get("kind");
  if (kind == nullptr) return At(source, t.source(), port + " has no 'kind'");
  if (!kind->is_string() || kind->as_string()->get().empty() ||
      kind->as_string()->get().find(':') != std::string::npos || HasNul(kind->as_string()->get())) {
    return At(source, kind->source(), port + ": 'kind' must be a non-empty string without ':'");
  }
  spec.kind = kind->as_string()->get();

  for (auto&& [key, node] : t) {
    const std::string_view k = key.str();
    if (k == "name" || k == "kind") continue;
    if (k.empty() || !SpecSafe(k)) {
      return At(source, key.source(),
                port + ": option key " + Quoted(k) + " must be non-empty, without ',', '=' or NUL");
    }
    const std::string opt = port + ": " + Quoted(k);
    std::string value;
    if (const auto* s = node.as_string()) {
      // ('=' is fine in a value: a spec's option splits at its first '='; a dpdk port's
      // devargs holds them.)
      if (s->get().find_first_of(std::string_view(",\0", 2)) != std::string::npos) {
        return At(source, node.source(),
                  opt + " may not contain ',' or NUL (ports are KIND:NAME:key=value,... specs)");
      }
      value = s->get();
    } else if (const auto* i = node.as_integer()) {
      value = std::to_string(i->get());
    } else if (const auto* b = node.as_boolean()) {
      if (!b->get()) continue;  // false: the key is absent
    } else if (const auto* a = node.as_array()) {
      // Integers (trunk = [10, 20]) or strings (allowed_macs = ["02:..:01", "02:..:02"]), not
      // mixed, joined with '/'.
      const std::string what = opt + " must be a non-empty array of integers or of strings";
      if (a->empty()) return At(source, node.source(), what);
      const bool strings = (*a)[0].is_string();
      for (const toml::node& e : *a) {
        std::string item;
        if (const auto* i = e.as_integer(); i != nullptr && !strings) {
          item = std::to_string(i->get());
        } else if (const auto* es = e.as_string(); es != nullptr && strings) {
          if (es->get().empty() || !SpecSafe(es->get()) || es->get().find('/') != std::string::npos) {
            return At(source, e.source(),
                      opt + " strings must be non-empty, without ',', '=', '/' or NUL");
          }
          item = es->get();
        } else {
          return At(source, e.source(), what);
        }
        value += (value.empty() ? "" : "/") + item;
      }
    } else {
      return At(source, node.source(), opt + " must be an integer, a string or a boolean");
    }
    spec.options.emplace(std::string(k), std::move(value));
  }

  // The checks above are meant to make this hold; if one is missing, say so rather than hand
  // the daemon a port the command line could not express.
  auto back = ParsePortSpec(SpecToString(spec));
  if (!back || !(*back == spec)) {
    return At(
        source, t.source(),
        port + " cannot be written as a port spec" + (back ? "" : ": " + back.error().message()));
  }
  return spec;
}

}  // namespace

// toml++ 3.3.0 asserts (aborts; without assertions: undefined behaviour) on a table header
// whose brackets are followed by anything but a key, e.g. "[[[port]]" (found by config_fuzz).
// Such lines are refused here, before the parser sees them.
Result<void> CheckTableHeaders(std::string_view text, const std::string& source_name) {
  size_t line = 1;
  for (size_t pos = 0; pos < text.size(); ++line) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view l = text.substr(pos, end - pos);
    pos = end + 1;
    size_t i = l.find_first_not_of(" \t");
    if (i == std::string_view::npos || l[i] != '[') continue;
    ++i;
    if (i < l.size() && l[i] == '[') ++i;
    while (i < l.size() && (l[i] == ' ' || l[i] == '\t')) ++i;
    const unsigned char c = i < l.size() ? static_cast<unsigned char>(l[i]) : 0;  // 0: line ends
    if (std::isalnum(c) || c == '_' || c == '-' || c == '"' || c == '\'' || c == ']') continue;
    return Error(source_name + ":" + std::to_string(line) + ": bad table header: '" +
                 std::string(l.substr(0, 40)) + "' (a key must follow '[' or '[[')");
  }
  return Ok();
}

// toml++ 3.3.0 also reaches an "unreachable" point on some non-ASCII characters outside
// strings (config_fuzz: U+03E9 in an array). Keys and values of this format are ASCII, so a
// non-ASCII byte is accepted only inside a quoted string or a comment.
Result<void> CheckNonAscii(std::string_view text, const std::string& source_name) {
  size_t line = 1;
  char quote = 0;       // the open string's delimiter
  bool comment = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      comment = false;  // (a string left open stays open: multi-line strings, approximated)
      continue;
    }
    if (comment) continue;
    if (quote) {
      if (c == '\\' && quote == '"') {
        ++i;
      } else if (c == quote) {
        quote = 0;
      }
      continue;
    }
    if (c == '#') {
      comment = true;
    } else if (c == '"' || c == '\'') {
      quote = c;
    } else if (static_cast<unsigned char>(c) >= 0x80) {
      return Error(source_name + ":" + std::to_string(line) +
                   ": a non-ASCII character outside a string or comment");
    }
  }
  return Ok();
}

namespace {
Result<Config> ParseConfigInProcess(std::string_view text, const std::string& source_name);
}  // namespace

// toml++ 3.3.0 (Debian 12) has assertion failures that input can reach (config_fuzz found
// three: "[[[", "[[" at a line's end, "[ }" in an array, a non-ASCII character in an array).
// A config file is the operator's, but a typo must not kill a running daemon on SIGHUP: the
// file is first parsed in a forked child, and only a file the child survived is parsed here.
Result<Config> ParseConfig(std::string_view text, const std::string& source_name) {
  NICMUX_TRY(CheckTableHeaders(text, source_name));
  NICMUX_TRY(CheckNonAscii(text, source_name));
  const pid_t pid = ::fork();
  if (pid < 0) return Error::FromErrno("fork (to check " + source_name + ")");
  if (pid == 0) {
    (void)ParseConfigInProcess(text, source_name);
    ::_exit(0);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Error::FromErrno("waitpid (checking " + source_name + ")");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return Error(source_name + ": the TOML parser (toml++ 3.3) crashed on this file; check its syntax "
                 "(brackets of table headers and arrays, characters outside strings)");
  }
  return ParseConfigInProcess(text, source_name);
}

namespace {
Result<Config> ParseConfigInProcess(std::string_view text, const std::string& source_name) {
  NICMUX_TRY(CheckNonAscii(text, source_name));
  toml::parse_result parsed = toml::parse(text, std::string_view(source_name));
  if (!parsed) {
    const toml::parse_error& e = parsed.error();
    return Error(source_name + ":" + std::to_string(e.source().begin.line) + ":" +
                 std::to_string(e.source().begin.column) +
                 ": parse error: " + std::string(e.description()));
  }
  const toml::table& root = parsed.table();

  Config config;
  for (auto&& [key, node] : root) {
    const std::string_view k = key.str();
    if (k == "daemon") {
      const auto* t = node.as_table();
      if (t == nullptr) {
        return At(source_name, node.source(), "'daemon' must be a table ([daemon])");
      }
      NICMUX_TRY(DaemonParser(source_name, &config.daemon).Parse(*t));
    } else if (k == "dpdk") {
      // [dpdk] eal_args = "...": DPDK's EAL arguments, split at spaces (docs/dpdk.md).
      const auto* t = node.as_table();
      if (t == nullptr) return At(source_name, node.source(), "'dpdk' must be a table ([dpdk])");
      for (auto&& [dk, dn] : *t) {
        if (dk.str() != "eal_args") {
          return At(source_name, dk.source(), "unknown key " + Quoted(dk.str()) + " in [dpdk] (eal_args)");
        }
        const auto* s = dn.as_string();
        if (s == nullptr || HasNul(s->get())) return At(source_name, dn.source(), "'eal_args' must be a string");
        std::vector<std::string> args;
        std::string cur;
        for (char c : s->get() + " ") {
          if (c == ' ' || c == '\t') {
            if (!cur.empty()) args.push_back(std::move(cur));
            cur.clear();
          } else {
            cur += c;
          }
        }
        config.dpdk_eal_args = std::move(args);
      }
    } else if (k == "port") {
      if (!node.is_array_of_tables()) {
        return At(source_name, node.source(), "'port' must be an array of tables ([[port]])");
      }
      std::map<std::string, toml::source_index> first_line;  // name -> line of its 'name'
      for (const toml::node& p : *node.as_array()) {
        auto spec = ParsePort(*p.as_table(), source_name);
        if (!spec) return spec.error();
        const toml::source_region& where = p.as_table()->get("name")->source();
        auto [it, fresh] = first_line.emplace(spec->name, where.begin.line);
        if (!fresh) {
          return At(source_name, where,
                    "port name " + Quoted(spec->name) + " is used twice (first at line " +
                        std::to_string(it->second) + ")");
        }
        config.ports.push_back(std::move(*spec));
      }
    } else if (node.is_table() || node.is_array_of_tables()) {
      return At(source_name, key.source(),
                "unknown table [" + std::string(k) + "] (expected [daemon], [dpdk] or [[port]])");
    } else {
      return At(source_name, key.source(),
                "unknown top-level key " + Quoted(k) + " (expected [daemon], [dpdk] or [[port]])");
    }
  }
  return config;
}

}  // namespace

Result<Config> LoadConfig(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::FromErrno("cannot read " + path);
  std::string text;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::FromErrno("cannot read " + path);
    if (n == 0) break;
    if (text.size() + static_cast<size_t>(n) > kMaxConfigBytes) {
      return Error("cannot read " + path + ": larger than " + std::to_string(kMaxConfigBytes) +
                   " bytes");
    }
    text.append(buf, static_cast<size_t>(n));
  }
  return ParseConfig(text, path);
}

std::string SpecToString(const PortSpec& s) {
  std::string out = s.kind + ":" + s.name;
  char sep = ':';
  for (const auto& [k, v] : s.options) {
    out += sep;
    out += k;
    if (!v.empty()) out += "=" + v;
    sep = ',';
  }
  return out;
}

PortDiff DiffPorts(const std::vector<PortSpec>& old_ports, const std::vector<PortSpec>& new_ports) {
  std::map<std::string_view, const PortSpec*> old_by_name, new_by_name;
  for (const PortSpec& p : old_ports) old_by_name.emplace(p.name, &p);
  for (const PortSpec& p : new_ports) new_by_name.emplace(p.name, &p);

  PortDiff d;
  for (const PortSpec& p : new_ports) {
    auto it = old_by_name.find(p.name);
    if (it == old_by_name.end()) {
      d.added.push_back(p);
    } else if (it->second->kind != p.kind || it->second->options != p.options) {
      d.changed.push_back(p);
    }
  }
  for (const PortSpec& p : old_ports) {
    if (new_by_name.count(p.name) == 0) d.removed.push_back(p);
  }
  return d;
}

}  // namespace nicmux
