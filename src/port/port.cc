#include "port/port.h"

#include <utility>

namespace nicmux {

std::string PortCaps::ToString() const {
  static constexpr std::pair<uint8_t, const char*> kNames[] = {
      {kCsum, "csum"}, {kCsumValid, "csum_valid"}, {kTso4, "tso4"}, {kTso6, "tso6"},
      {kEcn, "ecn"},   {kUso, "uso"},              {kUfo, "ufo"},   {kCsumOnCopy, "sum_on_copy"}};
  std::string s;
  for (const auto& [bit, name] : kNames) {
    if (!(offloads & bit)) continue;
    if (!s.empty()) s += ' ';
    s += name;
  }
  if (s.empty()) s = "none";
  if (mtu) s += ", mtu " + std::to_string(mtu);
  if (max_frame) s += ", max_frame " + std::to_string(max_frame);
  return s;
}

}  // namespace nicmux
