// PvPort: a pvdev device (docs/pv-protocol.md) as a switch port — the host side of the shared
// region of src/pv/pv_abi.h, served over a UNIX socket (the process transport): one driver at
// a time (an application with src/pv/guest/'s library or the DPDK PMD) gets a fresh sealed
// region and its doorbells, asks the device's capabilities through the control mailbox and
// moves frames over the rings.
//
// Options (--port pv:NAME:key=value,...): socket=PATH (required), transport=socket|ivshmem (below),
// queues=N (1..8), ring=N
// (descriptors per ring, a power of two 64..4096, default 1024), buf_size=N (the buffer size
// the driver is told, 256..65536, default 2048), mtu (every kind's), mac=xx:..:xx (the
// device's address; default: a local one from the port's name), uplink=PORT (the port whose
// capabilities the device reports: TSO offered when that port takes TSO), max_memory=SIZE (the
// most memory of its own a driver may register, all regions together; default 64G), flows=N
// (flow rules per device, 0..4096, default 256; 0: none offered).
//
// Threads. The control thread (the daemon's EventLoop) accepts the driver, answers the
// mailbox (a kick on doorbell 0) and the memory requests on the socket (MEM_ADD, MEM_DEL: only
// while the device is stopped, so no worker translates its descriptors meanwhile), and swaps
// regions with the workers paused. Workers run the
// data path: Rx drains pair q's tx ring, Tx fills its rx ring, each keeping its own copy of
// the indexes it owns and reading the driver's once per burst (clamped: a driver that posts
// more than a ring holds, or names a buffer outside the buffer area, breaks the device).
//
// Counters (the switch's view): rx = frames from the driver's tx rings, tx = frames put in its
// rx rings. rx_dropped: bad_frame (shorter than an Ethernet header or longer than a frame can
// be), bad_offload (a request the driver did not configure or that does not fit the frame);
// tx_dropped: too_big_for_buffers, port_down (the queue not started), no_route (a unicast
// frame for another MAC while promiscuous mode is off), flow_drop (a DROP rule), queue_full (with
// flow rules: the chosen ring had no buffer). A broken driver: the device stops,
// the header says why (status, broken_reason), the log names the field; reconnecting clears
// it.
//
// transport=ivshmem (the VM transport): socket_path is an ivshmem server socket for QEMU's
// `-device ivshmem-doorbell,chardev=...`: on connect nicmuxd sends the protocol version, the
// guest's peer id, the region (padded to a power of two: BAR2), then its own peer's eventfds
// (the guest's doorbell writes kick them) and the guest's (nicmuxd's irqs). The client sends
// nothing in this protocol: any byte or fd from it closes the connection. Closing marks the
// region NMX_PV_STATUS_GONE (QEMU keeps it mapped, and cannot take a new one on reconnect).
//
// Live upgrade (both transports): Export and Adopt carry the sockets, the region, the
// doorbells, the registered memory and the device state to a new nicmuxd, ExportPositions and
// ImportPositions the host's ring indexes; the driver notices nothing (docs/pv-protocol.md
// "Live upgrade").
#pragma once

#include <memory>
#include <string>

#include "base/event_loop.h"
#include "base/pausable.h"
#include "base/result.h"
#include "port/port.h"
#include "port/registry.h"

namespace nicmux {

inline constexpr uint64_t kPvDefaultMaxMemory = 64ull << 30;
inline constexpr uint64_t kPvMinMaxMemory = 1ull << 20, kPvMaxMaxMemory = 4ull << 40;

struct PvPortOptions {
  std::string name;
  std::string socket_path;
  uint32_t queues = 1;
  uint32_t ring = 1024;
  uint32_t buf_size = 2048;
  uint32_t mtu = 1500;
  uint8_t mac[6] = {};
  std::string uplink;  // empty: none
  uint64_t max_memory = kPvDefaultMaxMemory;  // registered memory, all regions together
  // transport=ivshmem: socket_path is served as an ivshmem server for one QEMU
  // ivshmem-doorbell device (docs/pv-protocol.md, "The VM transport") instead of the process
  // transport's hello; no registered memory there.
  bool ivshmem = false;
  uint32_t max_flows = 256;  // flow rules per device (FLOW_CREATE); 0: no flow rules
};

// The pv kind for the port registry (port/kinds.cc).
PortKind PvPortKind();

// handover: a live upgrade's record of the old process's port (Port::Export), to go on from
// instead of listening afresh (docs/pv-protocol.md "Live upgrade").
Result<std::unique_ptr<Port>> CreatePvPort(const PvPortOptions& o, EventLoop* loop, Pausable* workers,
                                           HandoverRecord* handover = nullptr);

}  // namespace nicmux
