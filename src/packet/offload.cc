#include "packet/offload.h"

namespace nicmux {

const char* GsoTypeName(GsoType t) {
  switch (t) {
    case GsoType::kNone: return "none";
    case GsoType::kTcp4: return "tcp4";
    case GsoType::kTcp6: return "tcp6";
    case GsoType::kUdp: return "udp";
    case GsoType::kUdpL4: return "udp_l4";
    case GsoType::kInvalid: break;
  }
  return "invalid";
}

}  // namespace nicmux
