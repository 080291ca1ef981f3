// CloseInBackground: closes an fd a peer handed us on a thread of its own.
//
// close() is not always quick: the last close of a TCP socket whose owner set SO_LINGER waits
// for the linger time, and of a file on a FUSE mount for the FUSE daemon's answer — both the
// peer's to choose. nicmux keeps only eventfds and memory files (memfd, tmpfs, hugetlbfs) a
// peer sends, whose close cannot wait on anyone; anything else is refused and closed here, so
// that neither the control thread nor a worker can be held by it (review of issue 17). A close
// that hangs holds only this thread; the fds queued behind it wait (and are counted).
#pragma once

#include <cstdint>

namespace nicmux {

void CloseInBackground(int fd);
// Fds handed over and not closed yet (tests, stats).
uint64_t FdsWaitingToClose();

// An fd a peer may give us to keep: an eventfd, or a file whose memory is the kernel's own
// (shmem or hugetlbfs: F_GET_SEALS works on them and on nothing else). Neither check calls
// into the fd's filesystem.
bool IsEventFd(int fd);
bool IsMemoryFile(int fd);

}  // namespace nicmux
