// PeerIo: syscalls on eventfds a peer shares with us (vhost-user kick, call and error fds),
// made so that no peer can hold the thread that makes them — a worker that polls every port.
//
// Why this is needed: O_NONBLOCK lives in the open file description, and the peer shares it.
// A frontend can clear the flag on its call eventfd and set the counter to 2^64-2, and our
// next write() blocks; or drain its kick eventfd between our poll() and our read(), and the
// read() blocks until the next kick (issue 17, items 2 and 3). A private description of an
// eventfd cannot be had (open("/proc/self/fd/N") fails with ENXIO on anonymous inodes), and
// setting O_NONBLOCK again before each call still leaves a window.
//
// How it holds, whatever the peer does to the fd:
//  - Reads (DrainPeerEventFd) use preadv2(RWF_NOWAIT), non-blocking per call regardless of the
//    description's flags (eventfd supports it since Linux 5.12; Debian 12 has 6.1). Where the
//    kernel refuses the flag, the read falls back to a watched read (below).
//  - Writes (SignalPeerEventFd) cannot be made non-blocking per call (pwritev2 RWF_NOWAIT gives
//    EOPNOTSUPP for eventfds), so each is made inside a watched section: a watchdog thread
//    that finds a thread in the same watched section on two ticks in a row (20 to 40 ms)
//    interrupts it with SIGURG, whose handler is installed without SA_RESTART, so the write
//    returns EINTR. The caller then treats the peer as hostile and closes its connection.
//    The cost on the fast path is two relaxed increments of a thread-local counter.
// A section that did not block costs the watchdog nothing; the watchdog itself wakes 50 times a
// second once the first watched call was made, and never touches the fds.
#pragma once

#include <cstdint>

namespace nicmux {

enum class PeerIoStatus : uint8_t {
  kOk,           // done (or, for a drain, nothing was pending)
  kFull,         // the counter is saturated: as good as signalled
  kInterrupted,  // the peer made it block and the watchdog broke it off: the peer is hostile
  kFailed,       // any other error (a closed fd)
};

// Adds 1 to a peer's eventfd; never blocks for longer than the watchdog allows.
PeerIoStatus SignalPeerEventFd(int fd);
// Reads and clears a peer's eventfd without ever blocking; *value (if given) gets the count.
PeerIoStatus DrainPeerEventFd(int fd, uint64_t* value = nullptr);

// Watched sections broken off by the watchdog since the process started (tests, stats).
uint64_t PeerIoInterrupts();
// The watchdog's tick; a blocked section is broken off after one to two ticks.
inline constexpr uint32_t kPeerIoTickMs = 20;

}  // namespace nicmux
