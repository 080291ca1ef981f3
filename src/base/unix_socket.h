// UNIX stream sockets that ports serve (vhost-user, pv): the address check and the listening
// socket that refuses a path someone else serves and clears one left by a crash.
#pragma once

#include <sys/types.h>
#include <sys/un.h>

#include <optional>
#include <span>
#include <string>

#include "base/result.h"
#include "base/unique_fd.h"

namespace nicmux {

// The address of a socket path; an error naming the path when it is empty or too long.
Result<sockaddr_un> UnixAddr(const std::string& path);

// Who may connect to a socket nicmuxd serves (docs/config.md "Socket ownership"): the socket
// file's group and mode. QEMU under libvirt runs as libvirt-qemu, so a socket left
// root:root 0755 by the umask refuses it ("Permission denied").
struct SocketAccess {
  std::optional<gid_t> group;  // chgrp the socket (and a directory made for it) to this
  std::string group_name;      // as given, for messages
  std::optional<mode_t> mode;  // chmod the socket to this; 0660 when only a group is given
  bool empty() const { return !group && !mode; }
};

// GROUP (a name or a number; "" for none) and MODE (octal, "0660"; "" for the default): an error
// naming what is wrong ("no group 'libvirt-qmeu'").
Result<SocketAccess> ParseSocketAccess(const std::string& group, const std::string& mode);

// What every socket nicmuxd serves gets unless its port says otherwise (--socket-group,
// --socket-mode); set once at start, before any port.
void SetDefaultSocketAccess(const SocketAccess& a);
const SocketAccess& DefaultSocketAccess();

// The directories on path's way that a's group cannot search (o+x, or g+x with that group), as
// a sentence for a warning; "" when there is none or a has no group. Root's view differs: QEMU
// runs as another user, which only the group (or "other") lets in.
// who: the process that would connect, for the message.
std::string SocketReachProblem(const std::string& path, const SocketAccess& a,
                               const std::string& who = "QEMU under libvirt, user libvirt-qemu");

// When only the socket's owner may connect to path (its mode gives neither group nor others
// write): who is locked out and what to change, as a clause for the "listening on" line; ""
// otherwise. A frontend refused this way (QEMU under libvirt, user libvirt-qemu: "Permission
// denied") never reaches nicmuxd, so this line is the only place nicmuxd can say so.
std::string SocketOwnerOnlyNote(const std::string& path);

// Makes path's parent directory if it is missing (the last component only), 0755: nicmuxd's,
// writable by nobody else whatever a says; warns about an existing one others may write.
Result<void> MakeSocketDir(const std::string& path, const SocketAccess& a);

// Applies a to the socket file at path (chgrp, chmod); errors name the path and what to change.
Result<void> ApplySocketAccess(const std::string& path, const SocketAccess& a);

// A non-blocking listening socket at path. A socket file already there is "in use" when
// someone accepts on it (or its backlog is full), else stale from a crash and replaced; any
// other kind of file is refused. A missing parent directory (the last component only) is made
// (MakeSocketDir). access (the default: DefaultSocketAccess()) is applied to the socket before
// it listens.
Result<UniqueFd> ListenUnix(const std::string& path, int backlog = 4, const SocketAccess* access = nullptr);

// Sends bytes with fds (SCM_RIGHTS) in one sendmsg, without blocking: an error when the
// socket does not take all of it at once (the first message on a fresh connection fits).
Result<void> SendWithFds(int sock, std::span<const std::byte> bytes, std::span<const int> fds);

}  // namespace nicmux
