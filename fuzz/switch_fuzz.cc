// libFuzzer target: the learning switch's classification and delivery over hostile frames.
// Input: [0] VLAN setup of 4 ports (2 bits each: none, access 10, access 20, trunk 0/10/20),
// [1] MTU choice; then frames: port (1 byte, mod 4), length (2 bytes, mod 2048), the bytes.
// Frames are switched until every port's input is consumed. Checks: no crash or sanitizer
// report (the head copy, tag removal and insertion, offsets), no frame grows by more than a
// VLAN tag, every port reaches its input's end (nothing is held forever).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "switch/l2_switch.h"
#include "tests/support/mem_port.h"

using nicmux::L2Switch;
using nicmux::SwitchPortConfig;
using nicmux::testing::Frame;
using nicmux::testing::MemPort;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  nicmux::SwitchOptions o;
  o.mac_table_size = 16;
  L2Switch sw(o);
  std::vector<std::unique_ptr<MemPort>> ports;
  std::string ten = "10", twenty = "20", trunk = "0/10/20";
  for (int p = 0; p < 4; ++p) {
    SwitchPortConfig c;
    switch ((data[0] >> (2 * p)) & 3) {
      case 1: c.vlan = *nicmux::ParseVlan("p", &ten, nullptr); break;
      case 2: c.vlan = *nicmux::ParseVlan("p", &twenty, nullptr); break;
      case 3: c.vlan = *nicmux::ParseVlan("p", nullptr, &trunk); break;
      default: break;
    }
    c.mtu = (data[1] & 3) == 1 ? 100 : 0;
    ports.push_back(std::make_unique<MemPort>("p" + std::to_string(p)));
    if (!sw.AddPort(ports.back().get(), c)) abort();
  }
  std::vector<size_t> max_len(4, 0);
  size_t i = 2;
  while (i + 3 <= size) {
    const int p = data[i] % 4;
    size_t len = (data[i + 1] | data[i + 2] << 8) % 2048;
    i += 3;
    if (len > size - i) len = size - i;
    Frame f(reinterpret_cast<const std::byte*>(data + i), reinterpret_cast<const std::byte*>(data + i + len));
    i += len;
    for (size_t q = 0; q < 4; ++q) max_len[q] = std::max(max_len[q], len);
    ports[p]->Inject(std::move(f));
  }
  for (int round = 0; round < 1000; ++round) {
    size_t left = 0;
    for (auto& p : ports) left += p->pending();
    if (left == 0) break;
    sw.worker(0)->ForwardAll();
    sw.Tick();
  }
  for (int p = 0; p < 4; ++p) {
    if (ports[p]->pending() != 0) abort();  // held forever
    for (const Frame& f : ports[p]->sent()) {
      if (f.size() > max_len[p] + 4) abort();
    }
  }
  return 0;
}
