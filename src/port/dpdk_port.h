// DpdkPort: any DPDK ethdev as a switch port (docs/dpdk.md): a NIC by PCI address, or a virtual
// device by its devargs (net_memif, net_af_packet, net_tap, ...). nicmuxd becomes an EAL
// application when the first dpdk port is made (DpdkEalArgs: `[dpdk] eal_args` in the config,
// default "--no-huge -m 256 --no-shconf --no-telemetry --no-pci": no hugepages, no hugetlbfs
// mount, and no PCI scan that could take a NIC; for a PCI NIC give eal_args with `-a ADDR`).
//
// Options (--port dpdk:NAME:key=value,...): devargs=STR (required; commas inside it are
// written as ';', on the command line and in the config), queues=N (1..8: RSS
// spreads the device's receive over them), ring=N (descriptors per queue, 64..4096, default
// 1024), offloads=on|off (default on: the device's checksum and TSO offloads where it has them).
//
// Data path (worker thread; Tx under the switch's per-queue lock):
//   Rx: rte_eth_rx_burst; each mbuf chain becomes a PacketRef over its segments (no copy
//     before the switch's one copy); mbufs the switch left unsent are held for the next Rx.
//   RxDone: the sent mbufs are freed.
//   Tx: each packet is copied once into mbufs from the port's pool (chained for frames longer
//     than one mbuf). Offload requests go to the device as mbuf flags where it has the offload
//     (TCP/UDP checksum; TSO; PortCaps kCsum, kTso4/6), else the partial checksum is completed
//     in that copy (kCsumOnCopy) and GSO frames arrive cut by the switch; rte_eth_tx_prepare,
//     then rte_eth_tx_burst; what the device does not take is freed and left to the source.
//     Frames above the device's MTU (+ Ethernet header and one VLAN tag) are dropped (mtu);
//     everything while the device's link is down (port_down).
// The port cannot wake a sleeping worker (no Rx interrupts are used): its worker polls.
//
// Counters: rx/tx packets and bytes; rx_dropped: bad_frame (a chain of more segments than a
// PacketRef names); tx_dropped: too_big_for_buffers (no mbufs for the frame), mtu, bad_offload
// (refused by rte_eth_tx_prepare), port_down (the link is down). The device's own
// (rte_eth_stats: imissed, ierrors, oerrors, rx_nombuf) and its link are in `port show`, its
// capabilities (rte_eth_dev_info, and which offloads are used) in `nicmuxctl port caps`.
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

// What the EAL leaves of a process (docs/dpdk.md "Files"): its runtime directory
// (/var/run/dpdk/nicmuxd<pid> for root) and, without --huge-unlink, its hugetlbfs files
// (nicmuxd<pid>map_*), neither removed by DPDK when the process ends. This removes this
// process's own: registered with atexit when the EAL starts, and called by the paths that end
// with _exit (a live upgrade's old nicmuxd, a new one that gives up). No-op without an EAL.
void RemoveDpdkLeftovers();
// Removes those of nicmuxd processes that are gone (no process with the pid in the name; done
// when the EAL starts: a process killed, or one that ended before this code existed); the
// number of processes whose leftovers went.
size_t SweepDpdkLeftovers();

struct DpdkPortOptions {
  std::string name;
  std::string devargs;
  uint32_t queues = 1;
  uint32_t ring = 1024;
  bool offloads = true;  // the device's checksum and TSO offloads used where it has them
  // Zero copy towards the device for frames of at least this many bytes (0: off).
  uint32_t zerocopy_min = 0;
};

// zerocopy_min='s default ("off": on net_memif it does not pay, docs/dpdk.md "Zero copy") and
// its smallest value (a frame must have bytes past the head the switch copies anyway).
inline constexpr const char* kDefaultZeroCopyMin = "off";
inline constexpr uint32_t kMinZeroCopyBytes = 128;
// "off", "0" or a size in kMinZeroCopyBytes..65535.
Result<uint32_t> ParseZeroCopyMin(const std::string& v);

// The dpdk kind for the port registry (port/kinds.cc).
PortKind DpdkPortKind();

// handover: a live upgrade's record of the old process's port (nullptr: a new port).
Result<std::unique_ptr<Port>> CreateDpdkPort(const DpdkPortOptions& options, HandoverRecord* handover = nullptr);

}  // namespace nicmux
