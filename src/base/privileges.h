// nicmuxd's unprivileged user (--user USER[:GROUP], docs/security.md): set up as root, then
// the process becomes USER (its groups, or GROUP) and keeps only the capabilities it needs at
// run time, in its permitted, effective, inheritable and ambient sets; every other one also
// leaves the bounding set, so nothing (not an execve either) brings it back.
//
//   CAP_NET_ADMIN  TAP devices (TUNSETIFF, address, link up over netlink), attaching and
//                  detaching XDP programs, interface settings (ethtool ioctls)
//   CAP_NET_RAW    AF_XDP sockets
//   CAP_BPF        loading the XDP program and creating the XSKMAP (libbpf)
//   CAP_IPC_LOCK   mlock of packet buffers, UMEMs and guest memory; hugepages
// Tested on Linux 6.18: without CAP_BPF the XSKMAP is refused, without CAP_NET_RAW the AF_XDP
// socket; CAP_PERFMON and CAP_SYS_ADMIN are not needed (the program is six instructions, no
// pointer arithmetic the verifier reserves for CAP_PERFMON).
//
// The ambient set is what lets a live upgrade's new process (fork + execve of a file without
// file capabilities) start with the same set; it finds itself already USER and does nothing.
//
// Threads: set*id() changes every thread (glibc), capabilities only the calling thread's. The
// control thread (the caller) keeps the set; threads that already run (workers) keep none,
// which they do not need: the data path makes no privileged call. Threads started later
// inherit the caller's set.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "base/result.h"

namespace nicmux {

struct RunAs {
  std::string user;  // as given
  uid_t uid = 0;
  gid_t gid = 0;
  bool user_groups = true;  // no :GROUP given: USER's groups from the group database
};

// USER[:GROUP], each a name or a number. Errors name what is unknown.
Result<RunAs> ParseRunAs(const std::string& spec);

// The capabilities kept (CAP_* numbers), and their names for logs and docs.
const std::vector<int>& KeptCapabilities();
std::string KeptCapabilityNames();

// Becomes `who` keeping KeptCapabilities(). Already running as who.uid (a live upgrade's new
// process): nothing to do. Needs root otherwise.
Result<void> DropPrivileges(const RunAs& who);

}  // namespace nicmux
