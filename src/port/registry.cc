#include "port/registry.h"

#include <algorithm>

namespace nicmux {

void PortRegistry::Add(PortKind k) { kinds_.push_back(std::move(k)); }

const PortKind* PortRegistry::Find(std::string_view name) const {
  for (const PortKind& k : kinds_) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

std::string PortRegistry::Names() const {
  std::string s;
  for (const PortKind& k : kinds_) s += (s.empty() ? "" : ", ") + k.name;
  return s;
}

const std::vector<PortOption>& PortRegistry::SwitchOptions() {
  static const std::vector<PortOption> kOptions = {
      {"vlan", OptionType::kString, "N", "",
       "an access port of VLAN N (1..4094): untagged frames join it, tags are added and removed at the port "
       "(switch mode)"},
      {"trunk", OptionType::kString, "A/B/C-D", "",
       "a trunk carrying those VLANs tagged; 0 in the list: untagged frames too (switch mode)"},
      {"mtu", OptionType::kUInt, "N", "",
       "the largest payload sent to the port, 68..65535; larger frames are dropped (drop reason mtu); "
       "vhost-user also offers it to the guest", 68, 65535},
      {"mac_limit", OptionType::kUInt, "N", "1024",
       "source MACs learned on the port, 1..1048576; past it new sources are forwarded, not learned "
       "(switch mode)", 1, 1048576},
      {"allowed_macs", OptionType::kString, "M1/M2/...", "any",
       "port security: frames from other source MACs are dropped (up to 64, xx:xx:xx:xx:xx:xx; switch mode)"},
      {"queue_affinity", OptionType::kString, "Q:W/Q:W/...", "",
       "pins queue pair Q of the port to worker W (0..--workers-1): the scheduler never moves it; "
       "queues not listed are placed and rebalanced by load (docs/scheduler.md)"},
  };
  return kOptions;
}

namespace {

const PortOption* FindOption(const PortKind& k, const std::string& name) {
  for (const PortOption& o : k.options) {
    if (name == o.name) return &o;
  }
  for (const PortOption& o : PortRegistry::SwitchOptions()) {
    if (name == o.name) return &o;
  }
  return nullptr;
}

std::string KnownOptions(const PortKind& k) {
  std::string s;
  for (const PortOption& o : k.options) s += (s.empty() ? "" : ", ") + std::string(o.name);
  for (const PortOption& o : PortRegistry::SwitchOptions()) s += (s.empty() ? "" : ", ") + std::string(o.name);
  return s;
}

// Appends text to out, wrapped at width, every line indented by `indent` (the first line
// continues at column `col`).
void Wrap(std::string& out, const std::string& text, size_t indent, size_t col, size_t width) {
  size_t at = 0;
  while (at < text.size()) {
    while (at < text.size() && text[at] == ' ') ++at;
    size_t end = text.find(' ', at);
    if (end == std::string::npos) end = text.size();
    const size_t word = end - at;
    if (col > indent && col + 1 + word > width) {
      out += '\n';
      out.append(indent, ' ');
      col = indent;
    } else if (col > indent) {
      out += ' ';
      ++col;
    }
    out.append(text, at, word);
    col += word;
    at = end;
  }
  out += '\n';
}

std::string OptionText(const PortOption& o) {
  return o.type == OptionType::kFlag ? std::string(o.name) : std::string(o.name) + "=" + o.value;
}

}  // namespace

std::string OptionSynopsis(const PortKind& k) {
  std::string s;
  for (const PortOption& o : k.options) {
    if (o.required) s += (s.empty() ? "" : ",") + OptionText(o);
  }
  for (const PortOption& o : k.options) {
    if (!o.required) s += "[" + std::string(s.empty() ? "" : ",") + OptionText(o) + "]";
  }
  return s;
}

Result<const PortKind*> PortRegistry::Check(const PortSpec& s) const {
  const PortKind* k = Find(s.kind);
  if (!k) return Error("port " + s.name + ": unknown kind '" + s.kind + "'; known: " + Names());
  for (const auto& [key, value] : s.options) {
    const PortOption* o = FindOption(*k, key);
    if (!o) {
      return Error("port " + s.name + ": unknown option '" + key + "' for port kind " + k->name +
                   "; known: " + KnownOptions(*k));
    }
    switch (o->type) {
      case OptionType::kFlag:
        if (!value.empty()) return Error("port " + s.name + ": '" + key + "' takes no value");
        break;
      case OptionType::kString:
        if (value.empty()) return Error("port " + s.name + ": " + key + "=" + o->value + " needs a value");
        break;
      case OptionType::kUInt:
        if (auto r = s.UInt(key, o->lo, o->hi, 0); !r) return r.error();
        break;
      case OptionType::kSize:
        if (auto r = s.Size(key, o->lo, o->hi, 0); !r) return r.error();
        break;
      case OptionType::kOnOff:
        if (auto r = s.OnOff(key, false); !r) return r.error();
        break;
    }
  }
  for (const PortOption& o : k->options) {
    if (o.required && !s.Has(o.name)) {
      return Error("port " + s.name + ": " + o.name + "=" + o.value + " is required for port kind " + k->name);
    }
  }
  return k;
}

std::string PortRegistry::Help(size_t width) const {
  std::string out;
  constexpr size_t kIndent = 6, kCol = 24;
  auto option_lines = [&](const std::vector<PortOption>& opts) {
    for (const PortOption& o : opts) {
      std::string head(kIndent, ' ');
      head += OptionText(o);
      std::string text = o.help;
      if (o.required) text += " (required)";
      else if (*o.dflt) text += std::string(" (default ") + o.dflt + ")";
      out += head;
      size_t col = head.size();
      if (col + 2 > kCol) {
        out += '\n';
        out.append(kCol, ' ');
        col = kCol;
      } else {
        out.append(kCol - col, ' ');
        col = kCol;
      }
      // (Wrap puts a space before the first word when col > indent; start the text here.)
      std::string line;
      Wrap(line, text, kCol, kCol, width);
      out += line;
    }
  };
  for (const PortKind& k : kinds_) {
    const std::string syn = OptionSynopsis(k);
    // tap:NAME[:ifname=IF][,queues=N] when no option is required.
    out += "  " + k.name + ":NAME" + (syn.empty() ? "" : syn[0] == '[' ? "[:" + syn.substr(1) : ":" + syn) + "\n";
    out.append(kIndent, ' ');
    std::string summary;
    Wrap(summary, k.summary, kIndent, kIndent, width);
    out += summary;
    option_lines(k.options);
  }
  out += "  every kind, as well:\n";
  option_lines(SwitchOptions());
  return out;
}

}  // namespace nicmux
