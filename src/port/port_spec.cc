#include "port/port_spec.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>

namespace nicmux {

Result<bool> PortSpec::OnOff(const std::string& k, bool dflt) const {
  auto it = options.find(k);
  if (it == options.end()) return dflt;
  if (it->second != "on" && it->second != "off") {
    return Error("port " + name + ": " + k + "=" + it->second + ": expected on or off");
  }
  return it->second == "on";
}

Result<uint64_t> PortSpec::UInt(const std::string& k, uint64_t lo, uint64_t hi, uint64_t dflt) const {
  auto it = options.find(k);
  if (it == options.end()) return dflt;
  const std::string& v = it->second;
  if (v.empty() || v.size() > 19 || !std::all_of(v.begin(), v.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
    return Error("port " + name + ": " + k + "='" + v + "' is not a number");
  }
  uint64_t n = std::strtoull(v.c_str(), nullptr, 10);
  if (n < lo || n > hi) {
    return Error("port " + name + ": " + k + "=" + v + " is outside " + std::to_string(lo) + ".." + std::to_string(hi));
  }
  return n;
}

Result<uint64_t> PortSpec::Size(const std::string& k, uint64_t lo, uint64_t hi, uint64_t dflt) const {
  auto it = options.find(k);
  if (it == options.end()) return dflt;
  const std::string& v = it->second;
  auto bad = [&](const std::string& why) { return Error("port " + name + ": " + k + "=" + v + ": " + why); };
  const std::string what = "not a size (bytes, or a whole number with K, M, G or T: 1024-based, e.g. 16G)";
  size_t digits = 0;
  while (digits < v.size() && std::isdigit(static_cast<unsigned char>(v[digits]))) ++digits;
  if (digits == 0) return bad(what);
  int shift = 0;
  if (digits + 1 == v.size()) {
    static constexpr std::string_view kSuffixes = "KMGT";
    const size_t u = kSuffixes.find(static_cast<char>(std::toupper(static_cast<unsigned char>(v[digits]))));
    if (u == std::string_view::npos) return bad(what);
    shift = 10 * static_cast<int>(u + 1);
  } else if (digits != v.size()) {
    return bad(what);
  }
  const std::string range = "outside " + SizeToString(lo) + ".." + SizeToString(hi);
  // Digits beyond what fits, or a product that does not, are out of range (not wrapped).
  uint64_t n = 0;
  for (size_t i = 0; i < digits; ++i) {
    const uint64_t d = static_cast<uint64_t>(v[i] - '0');
    if (n > (UINT64_MAX - d) / 10) return bad(range);
    n = n * 10 + d;
  }
  if (n > (UINT64_MAX >> shift)) return bad(range);
  n <<= shift;
  if (n < lo || n > hi) return bad(range);
  return n;
}

std::string SizeToString(uint64_t bytes) {
  static constexpr char kUnits[] = "KMGT";
  for (int u = 3; u >= 0; --u) {
    const uint64_t unit = uint64_t{1} << (10 * (u + 1));
    if (bytes != 0 && bytes % unit == 0) return std::to_string(bytes / unit) + kUnits[u];
  }
  return std::to_string(bytes);
}

bool IsValidPortName(std::string_view name) {
  return !name.empty() && name.size() <= 32 && std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

Result<PortSpec> ParsePortSpec(const std::string& text) {
  PortSpec s;
  size_t a = text.find(':');
  if (a == std::string::npos) return Error("port spec '" + text + "': expected KIND:NAME[:key=value,...]");
  s.kind = text.substr(0, a);
  size_t b = text.find(':', a + 1);
  s.name = text.substr(a + 1, b == std::string::npos ? std::string::npos : b - a - 1);
  if (s.kind.empty()) return Error("port spec '" + text + "': empty kind");
  if (!IsValidPortName(s.name)) {
    return Error("port spec '" + text + "': name must be 1-32 characters of [A-Za-z0-9._-]");
  }
  if (b == std::string::npos) return s;
  std::string rest = text.substr(b + 1);
  size_t pos = 0;
  while (pos <= rest.size()) {
    size_t comma = rest.find(',', pos);
    std::string item = rest.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (item.empty()) return Error("port " + s.name + ": empty option in '" + rest + "'");
    size_t eq = item.find('=');
    std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
    if (key.empty()) return Error("port " + s.name + ": option '" + item + "' has no key");
    if (s.options.count(key)) return Error("port " + s.name + ": option '" + key + "' given twice");
    s.options[key] = value;
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return s;
}

}  // namespace nicmux
