#include "base/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace nicmux {

Result<sockaddr_un> UnixAddr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) {
    return Error("socket path '" + path + "' is empty or longer than " + std::to_string(sizeof a.sun_path - 1) + " bytes");
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

Result<UniqueFd> ListenUnix(const std::string& path, int backlog) {
  auto addr = UnixAddr(path);
  if (!addr) return addr.error();
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Error("socket path " + path + " exists and is not a socket");
    // A socket file: in use if someone accepts on it, else stale from a crash.
    // Non-blocking: whoever listens there must not be able to hold us with a full backlog
    // (EAGAIN says someone listens, which is "in use" too).
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (probe.valid() && (::connect(probe.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) == 0 ||
                          errno == EAGAIN)) {
      return Error("socket path " + path + " is in use by another process");
    }
    ::unlink(path.c_str());
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Error::FromErrno("socket");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) < 0) {
    return Error::FromErrno("bind " + path);
  }
  if (::listen(fd.get(), backlog) < 0) return Error::FromErrno("listen " + path);
  return fd;
}

Result<void> SendWithFds(int sock, std::span<const std::byte> bytes, std::span<const int> fds) {
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  if (!fds.empty()) {
    mh.msg_control = control.data();
    mh.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    const ssize_t n = ::sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(bytes.size())) return Ok();
    if (n >= 0) return Error("sendmsg took " + std::to_string(n) + " of " + std::to_string(bytes.size()) + " bytes");
    if (errno == EINTR) continue;
    return Error::FromErrno("sendmsg");
  }
}

}  // namespace nicmux
