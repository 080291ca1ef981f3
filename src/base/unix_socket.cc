#include "base/unix_socket.h"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <vector>

#include "base/log.h"

namespace nicmux {

namespace {

SocketAccess g_default_access;

std::string Octal(mode_t m) {
  char b[16];
  std::snprintf(b, sizeof b, "%04o", static_cast<unsigned>(m & 07777));
  return b;
}

std::string GroupName(gid_t g) {
  std::vector<char> buf(4096);
  group gr{};
  group* out = nullptr;
  if (::getgrgid_r(g, &gr, buf.data(), buf.size(), &out) == 0 && out != nullptr) return out->gr_name;
  return std::to_string(g);
}

std::string Parent(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

// Only the last component: a missing /run/nicmux is normal after boot, a missing /run is a
// mistake.
Result<void> MakeSocketDir(const std::string& path, const SocketAccess& a) {
  const std::string dir = Parent(path);
  struct stat st;
  if (::stat(dir.c_str(), &st) == 0) {
    if (!S_ISDIR(st.st_mode)) return Error("socket directory " + dir + " is not a directory");
    // Whoever may write it may replace a socket in it (and the frontend's memory goes to them
    // at its next connect): say so, unless it is sticky (/tmp) or nicmuxd's own.
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
      NICMUX_LOG_RATELIMITED(kWarning,
                             "socket directory %s is writable by %s (%s): they can replace nicmuxd's sockets; "
                             "chmod go-w it",
                             dir.c_str(), (st.st_mode & S_IWOTH) ? "everyone" : ("group " + GroupName(st.st_gid)).c_str(),
                             Octal(st.st_mode).c_str());
    }
    return Ok();
  }
  if (errno != ENOENT) return Error::FromErrno("socket directory " + dir);
  // nicmuxd's, searchable by all, writable by nobody else: the sockets' own group and mode say
  // who may connect (a group-writable directory would let one VM's QEMU replace another's
  // socket). Only a directory we made here is chmod'ed.
  (void)a;
  if (::mkdir(dir.c_str(), 0755) < 0) {
    if (errno == EEXIST) return MakeSocketDir(path, SocketAccess{});  // made meanwhile: checked as found
    return Error::FromErrno("making socket directory " + dir);
  }
  if (::chmod(dir.c_str(), 0755) < 0) return Error::FromErrno("socket directory " + dir + ": chmod 0755");
  NICMUX_LOG(kInfo, "made socket directory %s (0755)", dir.c_str());
  return Ok();
}

Result<SocketAccess> ParseSocketAccess(const std::string& group, const std::string& mode) {
  SocketAccess a;
  if (!group.empty()) {
    unsigned gid = 0;
    auto [end, ec] = std::from_chars(group.data(), group.data() + group.size(), gid);
    if (ec == std::errc() && end == group.data() + group.size()) {
      if (static_cast<gid_t>(gid) == static_cast<gid_t>(-1)) return Error("group " + group + " is not a group id");
      a.group = static_cast<gid_t>(gid);
    } else {
      std::vector<char> buf(16384);
      struct group gr {};
      struct group* out = nullptr;
      int e;
      while ((e = ::getgrnam_r(group.c_str(), &gr, buf.data(), buf.size(), &out)) == ERANGE && buf.size() < (1u << 24)) {
        buf.resize(buf.size() * 4);  // a large (directory-service) group
      }
      if (e != 0 && e != ENOENT) {
        return Error("looking up group '" + group + "': " + std::strerror(e));
      }
      if (out == nullptr) {
        return Error("no group '" + group + "' on this host (getent group " + group +
                     " finds none; with libvirt the group is usually libvirt-qemu, or kvm)");
      }
      a.group = out->gr_gid;
    }
    a.group_name = group;
  }
  if (!mode.empty()) {
    unsigned m = 0;
    auto [end, ec] = std::from_chars(mode.data(), mode.data() + mode.size(), m, 8);
    if (ec != std::errc() || end != mode.data() + mode.size() || m > 0777 || mode.size() > 4) {
      return Error("socket mode '" + mode + "' is not an octal mode 0000..0777 (e.g. 0660)");
    }
    if ((m & 0600) != 0600) return Error("socket mode '" + mode + "' takes nicmuxd's own access away (owner needs rw: 06x0)");
    a.mode = static_cast<mode_t>(m);
  } else if (a.group) {
    a.mode = 0660;
  }
  if (a.group && (*a.mode & 0060) != 0060) {
    return Error("socket mode " + Octal(*a.mode) + " gives group " + a.group_name +
                 " no read and write: it could not connect (use 0660)");
  }
  return a;
}

void SetDefaultSocketAccess(const SocketAccess& a) { g_default_access = a; }
const SocketAccess& DefaultSocketAccess() { return g_default_access; }

std::string SocketReachProblem(const std::string& path, const SocketAccess& a, const std::string& who) {
  if (!a.group) return {};
  std::string blocked;
  std::string dir = Parent(path);
  for (;;) {
    struct stat st;
    if (::stat(dir.c_str(), &st) == 0) {
      const bool ok = (st.st_mode & S_IXOTH) || (st.st_gid == *a.group && (st.st_mode & S_IXGRP));
      if (!ok) {
        blocked = dir + " (" + Octal(st.st_mode) + ", group " + GroupName(st.st_gid) + ")";
        break;
      }
    }
    if (dir == "/" || dir == ".") break;
    dir = Parent(dir);
  }
  if (blocked.empty()) return {};
  return "socket " + path + ": a process of group " + a.group_name + " (" + who + ") cannot reach it: " +
         blocked + " lets neither that group nor others through; chgrp " + a.group_name + " and chmod g+x it, " +
         "or chmod o+x it (nicmuxd makes a missing last directory 0755)";
}

Result<void> ApplySocketAccess(const std::string& path, const SocketAccess& a) {
  // Never through a symlink: only the socket file itself (lstat, lchown; chmod after checking
  // it is a socket, in a directory nobody else may write).
  struct stat st;
  if (::lstat(path.c_str(), &st) < 0) return Error::FromErrno("socket " + path);
  if (!S_ISSOCK(st.st_mode)) return Error("socket " + path + " is no longer a socket (replaced by someone)");
  if (a.group && ::lchown(path.c_str(), static_cast<uid_t>(-1), *a.group) < 0) {
    const int e = errno;
    return Error("socket " + path + ": cannot give it group " + a.group_name + " (" + std::strerror(e) + ")" +
                     (e == EPERM ? ": nicmuxd must run as root or as a member of " + a.group_name : ""),
                 e);
  }
  if (a.mode && ::chmod(path.c_str(), *a.mode) < 0) {
    return Error::FromErrno("socket " + path + ": chmod " + Octal(*a.mode));
  }
  return Ok();
}

std::string SocketOwnerOnlyNote(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) < 0 || !S_ISSOCK(st.st_mode)) return {};
  if (st.st_mode & (S_IWGRP | S_IWOTH)) return {};
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* out = nullptr;
  const std::string owner = ::getpwuid_r(st.st_uid, &pw, buf.data(), buf.size(), &out) == 0 && out != nullptr
                                ? std::string(out->pw_name)
                                : std::to_string(st.st_uid);
  std::string note = "only user " + owner + " may connect (" + Octal(st.st_mode) + " " + owner + ":" +
                     GroupName(st.st_gid) + ")";
  out = nullptr;
  if (::getpwnam_r("libvirt-qemu", &pw, buf.data(), buf.size(), &out) == 0 && out != nullptr) {
    return note + "; QEMU run by libvirt (user libvirt-qemu) gets \"Permission denied\", which only libvirt's "
                  "/var/log/libvirt/qemu/DOMAIN.log shows: --socket-group libvirt-qemu (or socket_group= on the port)";
  }
  return note + "; a frontend of another user gets \"Permission denied\": --socket-group GROUP (or socket_group= "
                "on the port)";
}

Result<sockaddr_un> UnixAddr(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a.sun_path) {
    return Error("socket path '" + path + "' is empty or longer than " + std::to_string(sizeof a.sun_path - 1) + " bytes");
  }
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

Result<UniqueFd> ListenUnix(const std::string& path, int backlog, const SocketAccess* access) {
  const SocketAccess& a = access ? *access : DefaultSocketAccess();
  auto addr = UnixAddr(path);
  if (!addr) return addr.error();
  NICMUX_TRY(MakeSocketDir(path, a));
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return Error("socket path " + path + " exists and is not a socket");
    // A socket file: in use if someone accepts on it, else stale from a crash.
    // Non-blocking: whoever listens there must not be able to hold us with a full backlog
    // (EAGAIN says someone listens, which is "in use" too).
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!probe.valid()) return Error::FromErrno("socket");
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) == 0 || errno == EAGAIN) {
      return Error("socket path " + path + " is in use by another process");
    }
    // Only a refused connection says nobody listens; anything else (EACCES) leaves it alone.
    if (errno != ECONNREFUSED) return Error::FromErrno("checking socket path " + path);
    ::unlink(path.c_str());
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Error::FromErrno("socket");
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&*addr), sizeof *addr) < 0) {
    return Error::FromErrno("bind " + path);
  }
  // Until the chmod the file has the umask's mode; it does not listen yet, so nobody gets in.
  if (!a.empty()) {
    if (auto r = ApplySocketAccess(path, a); !r) {
      ::unlink(path.c_str());
      return r.error();
    }
    if (std::string why = SocketReachProblem(path, a); !why.empty()) NICMUX_LOG(kWarning, "%s", why.c_str());
  }
  if (::listen(fd.get(), backlog) < 0) {
    Error e = Error::FromErrno("listen " + path);
    ::unlink(path.c_str());
    return e;
  }
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
