// libFuzzer target: the packed ring's device-side chain walk (see vring_fuzz.h for the input).
#include "fuzz/vring_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return nicmux::fuzz::RunVringFuzz<nicmux::testing::PackedLayout>(data, size);
}
