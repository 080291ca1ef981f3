#include "base/event_fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

namespace nicmux {

Result<EventFd> EventFd::Create() {
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return Error::FromErrno("eventfd");
  return EventFd(UniqueFd(fd));
}

void EventFd::Signal() const {
  uint64_t one = 1;
  // A short write is impossible for eventfd; EAGAIN means the counter is saturated.
  ssize_t n = ::write(fd_.get(), &one, sizeof one);
  (void)n;
}

uint64_t EventFd::Drain() const {
  uint64_t v = 0;
  if (::read(fd_.get(), &v, sizeof v) != sizeof v) return 0;
  return v;
}

}  // namespace nicmux
