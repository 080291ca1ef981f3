// Every port kind of this build, in the order --help lists them. A new kind: its file pair
// (the Port and its PortKind function) and one line here.
#include "port/af_xdp_port.h"
#include "port/dpdk_port.h"
#include "port/registry.h"
#include "port/tap_port.h"
#include "port/vhost_user_port.h"
#include "port/virtio_user_port.h"
#include "pv/pv_port.h"

namespace nicmux {

const PortRegistry& PortRegistry::Builtin() {
  static const PortRegistry r = [] {
    PortRegistry k;
    k.Add(VhostUserPortKind());
    k.Add(VirtioUserPortKind());
    k.Add(TapPortKind());
    k.Add(AfXdpPortKind());
    k.Add(DpdkPortKind());
    k.Add(PvPortKind());
    return k;
  }();
  return r;
}

}  // namespace nicmux
