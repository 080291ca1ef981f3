// Pausable: the pause/ack/resume handshake of DESIGN.md ("Every change to a queue that a
// worker polls goes through a pause/ack/resume handshake"), seen from the control plane. A
// worker implements it; code below the scheduler layer (vhost sessions) only needs this face.
// Pause() returns once the worker has stopped touching queues; nothing it polls may change
// outside a Pause()/Resume() pair.
#pragma once

namespace nicmux {

class Pausable {
 public:
  virtual ~Pausable() = default;
  virtual void Pause() = 0;
  virtual void Resume() = 0;
};

// For code with no worker (tests, fuzz targets, a session before its port is attached).
class NoWorker final : public Pausable {
 public:
  void Pause() override {}
  void Resume() override {}
};

class PauseGuard {
 public:
  explicit PauseGuard(Pausable& p) : p_(p) { p_.Pause(); }
  ~PauseGuard() { p_.Resume(); }
  PauseGuard(const PauseGuard&) = delete;
  PauseGuard& operator=(const PauseGuard&) = delete;

 private:
  Pausable& p_;
};

}  // namespace nicmux
