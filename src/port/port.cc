#include "port/port.h"

#include <utility>

namespace nicmux {

std::vector<std::string> PortCaps::Names() const {
  static constexpr std::pair<uint8_t, const char*> kNames[] = {
      {kCsum, "csum"}, {kCsumValid, "csum_valid"}, {kTso4, "tso4"}, {kTso6, "tso6"},
      {kEcn, "ecn"},   {kUso, "uso"},              {kUfo, "ufo"},   {kCsumOnCopy, "sum_on_copy"}};
  std::vector<std::string> v;
  for (const auto& [bit, name] : kNames) {
    if (offloads & bit) v.emplace_back(name);
  }
  return v;
}

std::string PortCaps::ToString() const {
  std::string s;
  for (const std::string& n : Names()) s += (s.empty() ? "" : " ") + n;
  if (s.empty()) s = "none";
  if (mtu) s += ", mtu " + std::to_string(mtu);
  if (max_frame) s += ", max_frame " + std::to_string(max_frame);
  return s;
}

}  // namespace nicmux
