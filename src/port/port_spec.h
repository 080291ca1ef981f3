// Port specifications as given on the command line: KIND:NAME:key=value,key,...
// (e.g. vhost-user:vm1:socket=/run/vm1.sock,client,queues=4). Parsing only: the error names
// the spec and the key, nothing is created here.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "base/result.h"

namespace nicmux {

struct PortSpec {
  std::string kind;
  std::string name;
  std::map<std::string, std::string> options;  // a bare key maps to ""

  bool Has(const std::string& k) const { return options.count(k) != 0; }
  // The value of k as an integer in [lo, hi], or dflt when absent.
  Result<uint64_t> UInt(const std::string& k, uint64_t lo, uint64_t hi, uint64_t dflt) const;
  // The value of k as a size in bytes in [lo, hi], or dflt when absent: decimal digits with an
  // optional suffix K, M, G or T (or k, m, g, t), 1024-based (16G = 16 * 2^30).
  Result<uint64_t> Size(const std::string& k, uint64_t lo, uint64_t hi, uint64_t dflt) const;
  // The value of k as "on" (true) or "off" (false), or dflt when absent.
  Result<bool> OnOff(const std::string& k, bool dflt) const;

  bool operator==(const PortSpec&) const = default;
};

// A size as Size() reads it: "16G" when a whole number of the largest unit that divides it
// (K, M, G or T), else the bytes ("1536", "0").
std::string SizeToString(uint64_t bytes);

// The rule for port names, shared with the config file: 1-32 characters of [A-Za-z0-9._-].
bool IsValidPortName(std::string_view name);

Result<PortSpec> ParsePortSpec(const std::string& text);

}  // namespace nicmux
