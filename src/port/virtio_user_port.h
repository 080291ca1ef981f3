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
// makes PacketRefs over them and RxDone gives the buffers back to the backend at once. Tx
// copies into transmit buffers. The backend is not trusted: ids and lengths it returns are
// checked by the driver rings. The connection is made at start; when the backend goes away
// the port stops moving packets (reconnect: later).
//
// Counters: rx/tx packets and bytes; tx_dropped (no transmit buffer); rx_dropped (frames the
// destination could not take: a frontend cannot hand a used buffer back for later).
#pragma once

#include <array>
#include <memory>
#include <string>

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
  static Result<std::unique_ptr<VirtioUserPort>> Create(const VirtioUserPortOptions& options);

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

 private:
  VirtioUserPort(const VirtioUserPortOptions& o, std::unique_ptr<vhost::Frontend> fe)
      : Port(o.name), fe_(std::move(fe)) {}
  void Reclaim(vhost::FrontendQueue& tq);

  std::unique_ptr<vhost::Frontend> fe_;
  struct RxState {
    Segment segs[kBurst];
    uint16_t ids[kBurst];
    uint32_t n = 0;
  };
  std::array<RxState, 8> rx_;
  std::array<QueueCounters, 8> rxc_, txc_;
};

}  // namespace nicmux
