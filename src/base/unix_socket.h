// UNIX stream sockets that ports serve (vhost-user, pv): the address check and the listening
// socket that refuses a path someone else serves and clears one left by a crash.
#pragma once

#include <sys/un.h>

#include <span>
#include <string>

#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {

// The address of a socket path; an error naming the path when it is empty or too long.
Result<sockaddr_un> UnixAddr(const std::string& path);

// A non-blocking listening socket at path. A socket file already there is "in use" when
// someone accepts on it (or its backlog is full), else stale from a crash and replaced; any
// other kind of file is refused.
Result<UniqueFd> ListenUnix(const std::string& path, int backlog = 4);

// Sends bytes with fds (SCM_RIGHTS) in one sendmsg, without blocking: an error when the
// socket does not take all of it at once (the first message on a fresh connection fits).
Result<void> SendWithFds(int sock, std::span<const std::byte> bytes, std::span<const int> fds);

}  // namespace nicmux
