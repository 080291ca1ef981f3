// TestWorker: the worker's side of the pause handshake, played by a test thread. The test holds
// mutex() around its data-path calls (Rx, RxDone, Tx), and the control thread's Pause() waits
// for it, as a real worker's pause waits for the end of its round. With no worker at all
// (NoWorker), a connection closed on the control thread would unmap the memory under a
// data-path call still running. Recursive: a data-path call made while the test already holds
// it (a helper inside a locked block) does not deadlock. Never wait for the control thread while
// holding it: that thread may be waiting in Pause().
#pragma once

#include <mutex>

#include "base/pausable.h"

namespace nicmux::testing {

class TestWorker final : public Pausable {
 public:
  void Pause() override { m_.lock(); }
  void Resume() override { m_.unlock(); }
  std::recursive_mutex& mutex() { return m_; }

 private:
  std::recursive_mutex m_;
};

}  // namespace nicmux::testing
