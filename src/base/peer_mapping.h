// Peer mappings: memory a peer can take away under us, made safe to touch.
//
// A vhost-user frontend hands us a file descriptor for its memory. If it shrinks the file after
// we mapped it (ftruncate; QEMU's memfd backend seals its files against that, DPDK's
// virtio-user and QEMU's file backends do not), our next access past the new end raises SIGBUS,
// which would kill the daemon and every port with it (issue 17, item 4). Refusing unsealed
// files is not enough: DPDK never seals, and hugetlbfs files are shared by path.
//
// So every peer mapping is registered here, and a SIGBUS handler recovers: a fault inside a
// registered mapping replaces the whole mapping with private anonymous memory (zeros; what the
// worker writes there goes nowhere), marks the mapping poisoned and signals the owner's notify
// eventfd; the faulting access then completes on the new memory. The owner (the port, on its
// control thread) sees the notice and closes the connection: a peer that pulled its memory
// away has lost it. Wayland compositors protect client shm pools the same way.
// A SIGBUS outside every registered mapping goes to the handler that was there before (ASan's,
// or the default action: the process dies as it would have).
#pragma once

#include <cstddef>
#include <cstdint>

namespace nicmux {

// Registers [addr, addr + len); notify_fd (an eventfd of ours, or -1) is signalled when the
// mapping faults. Returns a handle for the calls below, or -1 when the table is full (then
// the mapping is unprotected and an error is logged).
int RegisterPeerMapping(void* addr, size_t len, int notify_fd);
// Before the mapping is unmapped.
void UnregisterPeerMapping(int handle);
// The mapping faulted and now holds anonymous memory.
bool PeerMappingPoisoned(int handle);
// Faults recovered since the process started.
uint64_t PeerMappingFaults();

}  // namespace nicmux
