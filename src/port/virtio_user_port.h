// VirtioUserPort: nicmux as the frontend (driver) of another vhost-user backend — how nicmux
// attaches to another switch (DPDK vhost, OVS, another nicmuxd). Built on vhost::Frontend.
//
// Options (--port virtio-user:NAME:key=value,...):
//   socket=PATH   the backend's socket (required)
//   server        listen on PATH and wait for the backend instead of connecting
//   queues=N      queue pairs, 1..8 (default 1)
//   packed        packed virtqueues (default split)
//
// Data path: rings of 1024 (the receive ring is all our slack against a backend that drops
// when it finds no buffer; kQueueSize in the .cc) and receive buffers of 10 KiB (no MRG_RXBUF:
// a frame up to 10 KiB fits one), so a received frame is one segment of our own memory; Rx
// makes PacketRefs over them and RxDone gives the buffers the switch sent back to the backend
// at once. A frame the switch did not take (a full destination) keeps its buffer, out of the
// ring, and is returned first by the next Rx: receive buffers are a pool, each added to the
// ring under whatever id is free (buf_of_id), so a held one is never written again until it
// was sent. Tx copies into transmit buffers. The backend is not trusted: ids and lengths it
// returns are checked by the driver rings. The connection is made at start; when the backend
// goes away
// the port stops moving packets (reconnect: later).
//
// Live upgrade (docs/virtio-user.md "Live upgrade"): the connection, the memory file, the
// eventfds and, at the precise point, the driver rings' shadows go to the new nicmuxd; the
// backend sees nothing (no message, no reconnect) and the rings go on from where they were.
//
// Counters: rx/tx packets and bytes; tx_dropped (a frame too big for a buffer); rx_dropped
// (a used buffer shorter than the virtio-net header).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "port/port.h"
#include "port/registry.h"
#include "vhost/frontend.h"

namespace nicmux {

struct VirtioUserPortOptions {
  std::string name;
  std::string socket_path;
  bool server = false;
  uint32_t queue_pairs = 1;
  bool packed = false;
};

// The virtio-user kind for the port registry (port/kinds.cc).
PortKind VirtioUserPortKind();

class VirtioUserPort final : public Port {
 public:
  // With `handover`: the old process's port, from its Export (a live upgrade).
  static Result<std::unique_ptr<VirtioUserPort>> Create(const VirtioUserPortOptions& options,
                                                        HandoverRecord* handover = nullptr);

  uint32_t NumQueuePairs() const override { return fe_->queue_pairs(); }
  size_t Rx(uint32_t q, Batch& out, size_t max) override;
  void RxDone(uint32_t q, Batch& batch, size_t sent) override;
  size_t Tx(uint32_t q, std::span<const PacketRef* const> in) override;
  size_t TxRoom(uint32_t q) override;
  bool ArmNotify(uint32_t q, std::vector<NotifyFd>* fds) override;
  void DisarmNotify(uint32_t q) override;
  bool CanSleep(uint32_t) const override { return true; }
  PortStats Stats() const override;
  PortStats QueueStats(uint32_t q) const override {
    PortStats s;
    if (q >= rxc_.size()) return s;
    s.rx_packets = rxc_[q].packets.Get();
    s.rx_bytes = rxc_[q].bytes.Get();
    s.rx_dropped = rxc_[q].dropped.Get();
    s.tx_packets = txc_[q].packets.Get();
    s.tx_bytes = txc_[q].bytes.Get();
    s.tx_dropped = txc_[q].dropped.Get();
    return s;
  }
  uint64_t DropsFor(DropReason r) const override;
  // "connected", or why the port no longer kicks its backend.
  std::string State() const override;
  bool CanHandOver() const override { return true; }
  Result<void> Export(HandoverRecord* out) override;
  Result<void> ExportPositions(HandoverRecord* out) override;
  Result<void> ImportPositions(HandoverRecord& in) override;

 private:
  VirtioUserPort(const VirtioUserPortOptions& o, std::unique_ptr<vhost::Frontend> fe);
  void Reclaim(vhost::FrontendQueue& tq);

  std::unique_ptr<vhost::Frontend> fe_;
  struct RxState {
    Segment segs[kBurst];
    // The batch's packets: their receive buffers and used lengths, in batch order.
    uint16_t bufs[kBurst];
    uint32_t lens[kBurst];
    uint32_t n = 0;
    // Buffers of frames dropped in Rx (bad), given back in RxDone.
    uint16_t bad[kBurst];
    uint32_t nbad = 0;
    // Frames the switch did not take, in order, returned first by the next Rx.
    uint16_t held_bufs[kBurst];
    uint32_t held_lens[kBurst];
    uint32_t nheld = 0;
    std::atomic<uint32_t> nheld_seen{0};  // nheld, for ArmNotify
    // The receive buffer each ring id carries while in flight (ids and buffers start equal).
    std::vector<uint16_t> buf_of_id;
  };
  // Adds packet (buffer, used length) to the batch.
  void Emit(uint32_t q, uint16_t buf, uint32_t len, Batch& out);
  std::array<RxState, 8> rx_;
  std::array<QueueCounters, 8> rxc_, txc_;
};

}  // namespace nicmux
