// EventFd: the kick and call doorbells of virtio (vhost-user SET_VRING_KICK/CALL). Non-blocking;
// Signal() never blocks and Drain() returns how many signals were pending.
#pragma once

#include <cstdint>

#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {

class EventFd {
 public:
  EventFd() = default;
  explicit EventFd(UniqueFd fd) : fd_(std::move(fd)) {}

  static Result<EventFd> Create();

  int fd() const { return fd_.get(); }
  bool valid() const { return fd_.valid(); }

  // Adds 1. A full counter (2^64-2) is as good as signalled, so EAGAIN is not an error.
  void Signal() const;
  // Reads and clears the counter; 0 when nothing was pending.
  uint64_t Drain() const;

 private:
  UniqueFd fd_;
};

}  // namespace nicmux
