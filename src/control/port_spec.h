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

  bool operator==(const PortSpec&) const = default;
};

// The rule for port names, shared with the config file: 1-32 characters of [A-Za-z0-9._-].
bool IsValidPortName(std::string_view name);

Result<PortSpec> ParsePortSpec(const std::string& text);

}  // namespace nicmux
