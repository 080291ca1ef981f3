// Forwarder: one unit of forwarding work a worker polls — a cross-connect today, the L2
// switch later. Poll() moves at most a burst per queue and says how much it moved; the idle
// calls let the worker sleep on the ports' notifications when there is nothing to do.
#pragma once

#include <cstdint>
#include <vector>

#include "port/port.h"

namespace nicmux {

struct WorkDone {
  uint64_t packets = 0;
  uint64_t bytes = 0;
};

class Forwarder {
 public:
  virtual ~Forwarder() = default;
  virtual WorkDone Poll() = 0;
  virtual bool ArmNotify(std::vector<NotifyFd>* fds) = 0;
  virtual void DisarmNotify() = 0;
  virtual bool CanSleep() const = 0;
};

}  // namespace nicmux
