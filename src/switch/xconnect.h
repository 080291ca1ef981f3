// Xconnect: port A <-> port B, every packet from one to the other, queue pair q to queue pair
// q (mod the other side's count). The single-copy path of DESIGN.md: A's transmit chains become
// PacketRefs, B copies them into its receive chains, A completes the chains it sent and gives
// back the ones B had no room for (backpressure instead of loss).
#pragma once

#include "port/port.h"
#include "switch/forwarder.h"

namespace nicmux {

class Xconnect final : public Forwarder {
 public:
  Xconnect(Port* a, Port* b) : a_(a), b_(b) {}

  WorkDone Poll() override {
    WorkDone w;
    const uint32_t qa = a_->NumQueuePairs(), qb = b_->NumQueuePairs();
    for (uint32_t q = 0; q < qa; ++q) Move(a_, q, b_, q % qb, &w);
    for (uint32_t q = 0; q < qb; ++q) Move(b_, q, a_, q % qa, &w);
    return w;
  }
  bool ArmNotify(std::vector<NotifyFd>* fds) override {
    bool pending = a_->ArmNotify(fds);
    pending |= b_->ArmNotify(fds);
    return pending;
  }
  void DisarmNotify() override {
    a_->DisarmNotify();
    b_->DisarmNotify();
  }
  bool CanSleep() const override { return a_->CanSleep() && b_->CanSleep(); }

 private:
  void Move(Port* src, uint32_t sq, Port* dst, uint32_t dq, WorkDone* w) {
    const size_t room = dst->TxRoom(dq);
    if (room == 0) return;
    batch_.Clear();
    if (src->Rx(sq, batch_, room) == 0) {
      src->RxDone(sq, batch_, 0);
      return;
    }
    const PacketRef* ptrs[kBurst];
    for (uint32_t k = 0; k < batch_.size(); ++k) ptrs[k] = &batch_[k];
    const size_t sent = dst->Tx(dq, {ptrs, batch_.size()});
    for (size_t k = 0; k < sent; ++k) w->bytes += batch_[static_cast<uint32_t>(k)].len;
    w->packets += sent;
    src->RxDone(sq, batch_, sent);
  }

  Port* a_;
  Port* b_;
  Batch batch_;
};

}  // namespace nicmux
