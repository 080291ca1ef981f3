// libFuzzer target: the TOML config parser (a file an operator wrote, possibly wrong).
// Checks: no crash or sanitizer report; an accepted file's ports survive the round trip
// through their spec syntax (SpecToString -> ParsePortSpec) unchanged; DiffPorts of a config
// against itself is empty.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "control/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto c = nicmux::ParseConfig(text, "fuzz.toml");
  if (!c) {
    if (c.error().message().rfind("fuzz.toml", 0) != 0) abort();  // errors name the file
    return 0;
  }
  for (const auto& s : c->ports) {
    auto back = nicmux::ParsePortSpec(nicmux::SpecToString(s));
    if (!back || !(*back == s)) abort();
  }
  auto d = nicmux::DiffPorts(c->ports, c->ports);
  if (!d.added.empty() || !d.removed.empty() || !d.changed.empty()) abort();
  return 0;
}
