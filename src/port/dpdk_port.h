// DpdkPort: any DPDK ethdev as a switch port (docs/dpdk.md): a NIC by PCI address, or a virtual
// device by its devargs (net_memif, net_af_packet, net_tap, ...). nicmuxd becomes an EAL
// application when the first dpdk port is made (DpdkEalArgs: `[dpdk] eal_args` in the config,
// default "--no-huge -m 256 --no-shconf --no-telemetry --no-pci": no hugepages, no hugetlbfs
// mount, and no PCI scan that could take a NIC; for a PCI NIC give eal_args with `-a ADDR`).
//
// Options (--port dpdk:NAME:key=value,...): devargs=STR (required; commas inside it are
// written as ';', on the command line and in the config), queues=N (1..8: RSS
// spreads the device's receive over them), ring=N (descriptors per queue, 64..4096, default
// 1024).
//
// Data path (worker thread; Tx under the switch's per-queue lock):
//   Rx: rte_eth_rx_burst; each mbuf chain becomes a PacketRef over its segments (no copy
//     before the switch's one copy); mbufs the switch left unsent are held for the next Rx.
//   RxDone: the sent mbufs are freed.
//   Tx: each packet is copied once into mbufs from the port's pool (chained for frames longer
//     than one mbuf), partial checksums completed in that copy (PortCaps kCsumOnCopy), then
//     rte_eth_tx_burst; what the device does not take is freed and left to the source.
// The port cannot wake a sleeping worker (no Rx interrupts are used): its worker polls.
//
// Counters: rx/tx packets and bytes; rx_dropped: bad_frame (a chain of more segments than a
// PacketRef names); tx_dropped: too_big_for_buffers (no mbufs for the frame). The device's own
// (rte_eth_stats: imissed, ierrors, oerrors, rx_nombuf) and its link are in `port show`, its
// capabilities in `nicmuxctl port show` (device_rx_offloads, device_tx_offloads).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/result.h"
#include "port/port.h"
#include "port/registry.h"

namespace nicmux {

// The EAL arguments used when the first dpdk port is made (after that: fixed for the process).
void SetDpdkEalArgs(std::vector<std::string> args);
std::vector<std::string> DpdkEalArgs();

struct DpdkPortOptions {
  std::string name;
  std::string devargs;
  uint32_t queues = 1;
  uint32_t ring = 1024;
};

// The dpdk kind for the port registry (port/kinds.cc).
PortKind DpdkPortKind();

Result<std::unique_ptr<Port>> CreateDpdkPort(const DpdkPortOptions& options);

}  // namespace nicmux
