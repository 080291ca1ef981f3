#include "base/seccomp.h"

#include <seccomp.h>
#include <sched.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>

#include "base/log.h"

#ifndef AF_XDP
#define AF_XDP 44
#endif

namespace nicmux {
namespace {

// Every call nicmuxd makes at run time, grouped by why. Checked with `strace -f -c` attached
// to nicmuxd in tests/integration/sandbox.sh (SANDBOX_STRACE=1: 65 distinct calls after setup,
// upgrade included) and with --seccomp=log runs of it (SANDBOX_SECCOMP=log) and of the other
// suites (NICMUX_SECCOMP=log in lib.sh); the rest are the same operations' variants (libc
// may pick either) and the dynamic loader's. A name this architecture lacks is skipped.
constexpr const char* kAllowed[] = {
    // Process start: a live upgrade's new process runs the dynamic loader and nicmuxd's
    // start under the inherited filter.
    "execve", "brk", "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list", "rseq",
    "prlimit64", "getrlimit", "setrlimit", "getrandom", "uname", "sysinfo", "getcwd",
    // Files: the config, /proc and /sys (NUMA, pids' groups, interfaces), /dev/net/tun,
    // socket files and their directories (made, chmod/chown'ed, removed), logging.
    "open", "openat", "openat2", "close", "close_range", "read", "readv", "pread64", "preadv",
    "preadv2", "write", "writev", "pwrite64", "pwritev", "lseek", "fstat", "stat", "lstat",
    "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2", "readlink",
    "readlinkat", "getdents64", "fcntl", "dup", "dup2", "dup3", "flock", "fsync", "fdatasync",
    "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2",
    "symlink", "chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "lchown", "umask",
    "ftruncate", "fallocate", "ioctl",
    // Memory: guest regions mapped from their fds, packet buffers and UMEMs (locked), memfds
    // of virtio-user and pv regions, NUMA probes and placement; the allocator.
    "mmap", "munmap", "mremap", "mprotect", "madvise", "mlock", "mlock2", "munlock", "mlockall",
    "munlockall", "mincore", "msync", "memfd_create", "get_mempolicy", "set_mempolicy", "mbind",
    "move_pages", "membarrier",
    // Events and the data path: epoll (control thread), poll (sleeping workers), eventfd
    // kicks and calls (read/write above), timers, signalfd.
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "poll", "ppoll", "select", "pselect6", "eventfd", "eventfd2", "timerfd_create",
    "timerfd_settime", "timerfd_gettime", "signalfd", "signalfd4", "pipe", "pipe2",
    // Time, threads and scheduling: workers (started and stopped at run time), pinning,
    // futexes, the clock.
    "clock_gettime", "clock_getres", "gettimeofday", "time", "nanosleep", "clock_nanosleep",
    "sched_yield", "sched_setaffinity", "sched_getaffinity", "sched_getparam",
    "sched_getscheduler", "getcpu", "futex", "futex_waitv", "exit",
    "exit_group", "gettid", "getpid", "getppid", "getpgrp", "getpriority", "setpriority",
    "prctl", "getrusage", "times", "restart_syscall",
    // Signals: SIGTERM/HUP/USR2 through a signalfd, SIGPIPE ignored; the live upgrade kills a
    // failed child.
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack", "kill",
    "tgkill", "tkill",
    // Sockets (socket() itself only for the families below): the control socket and
    // vhost-user/pv sockets (SCM_RIGHTS fds), the metrics HTTP server, netlink (TAP and
    // AF_XDP links, libbpf), AF_XDP wakeups (sendto/recvfrom), sd_notify.
    "socketpair", "bind", "listen", "accept", "accept4", "connect", "getsockname",
    "getpeername", "setsockopt", "getsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "sendmmsg", "recvmmsg", "shutdown",
    // AF_XDP: the XDP program and XSKMAP (libbpf, libxdp).
    "bpf",
    // Live upgrade: fork (clone, below), exec (above), wait for or reap the child.
    "wait4", "waitid", "vfork", "fork",
    // Credentials: reading only (peer checks, socket groups); nothing may change them.
    "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "capget",
};

// socket(): these families only.
constexpr int kFamilies[] = {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET, AF_XDP};

// clone() (threads, the upgrade's fork) only without a new namespace: a new user namespace
// would give back capabilities inside it. clone3() passes its flags in memory a filter cannot
// read, so it gets ENOSYS, and glibc falls back to clone().
constexpr scmp_datum_t kCloneNewNamespaces = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC |
                                             CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET;

#if defined(__SANITIZE_ADDRESS__)
#define NICMUX_SECCOMP_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(leak_sanitizer)
#define NICMUX_SECCOMP_SANITIZED 1
#endif
#endif

#ifdef NICMUX_SECCOMP_SANITIZED
// LeakSanitizer's exit-time check: a tracer thread lists /proc/PID/task with the old getdents
// and stops every thread with ptrace. Sanitizer builds only.
constexpr const char* kSanitizerOnly[] = {"ptrace", "getdents"};
#endif

struct CtxDeleter {
  void operator()(scmp_filter_ctx c) const { seccomp_release(c); }
};

}  // namespace

Result<SeccompMode> ParseSeccompMode(const std::string& s) {
  if (s == "on") return SeccompMode::kOn;
  if (s == "off") return SeccompMode::kOff;
  if (s == "log") return SeccompMode::kLog;
  return Error("seccomp mode '" + s + "': use on, off or log");
}

const char* SeccompModeName(SeccompMode m) {
  switch (m) {
    case SeccompMode::kOn: return "on";
    case SeccompMode::kLog: return "log";
    case SeccompMode::kOff: break;
  }
  return "off";
}

std::vector<std::string> SeccompAllowedCalls() {
  std::vector<std::string> out;
  for (const char* name : kAllowed) {
    if (seccomp_syscall_resolve_name(name) != __NR_SCMP_ERROR) out.emplace_back(name);
  }
  out.emplace_back("socket");
  out.emplace_back("clone");
#ifdef NICMUX_SECCOMP_SANITIZED
  for (const char* name : kSanitizerOnly) out.emplace_back(name);
#endif
  return out;
}

bool SeccompActive() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Seccomp:", 0) == 0) return line.find('2') != std::string::npos;
  }
  return false;
}

Result<void> InstallSeccomp(SeccompMode mode) {
  if (mode == SeccompMode::kOff) return {};
  // kOn: refused calls fail with EPERM and are logged (SCMP_FLTATR_CTL_LOG); kLog: allowed
  // and logged.
  const uint32_t deny = mode == SeccompMode::kLog ? SCMP_ACT_LOG : SCMP_ACT_ERRNO(EPERM);
  std::unique_ptr<void, CtxDeleter> ctx(seccomp_init(deny));
  if (!ctx) return Error("seccomp: seccomp_init failed");
  auto fail = [](const std::string& what, int rc) { return Error("seccomp: " + what + ": " + std::strerror(-rc), -rc); };
  // Every thread (the workers exist already), atomically.
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_TSYNC, 1); rc < 0) return fail("TSYNC", rc);
  if (mode == SeccompMode::kOn && seccomp_api_get() >= 3) {
    if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_LOG, 1); rc < 0) return fail("logging denials", rc);
  }
  for (const char* name : kAllowed) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0); rc < 0) return fail(name, rc);
  }
  for (int family : kFamilies) {
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                                  scmp_arg_cmp{0, SCMP_CMP_EQ, static_cast<scmp_datum_t>(family), 0});
        rc < 0) {
      return fail("socket", rc);
    }
  }
  if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                                scmp_arg_cmp{0, SCMP_CMP_MASKED_EQ, kCloneNewNamespaces, 0});
      rc < 0) {
    return fail("clone", rc);
  }
  if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0); rc < 0) {
    return fail("clone3", rc);
  }
#ifdef NICMUX_SECCOMP_SANITIZED
  for (const char* name : kSanitizerOnly) {
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, seccomp_syscall_resolve_name(name), 0); rc < 0) {
      return fail(name, rc);
    }
  }
#endif
  // Sets no_new_privs too (SCMP_FLTATR_CTL_NNP, on by default): needed without CAP_SYS_ADMIN.
  if (int rc = seccomp_load(ctx.get()); rc != 0) {
    return rc > 0 ? Error("seccomp: thread " + std::to_string(rc) + " could not be synchronized")
                  : fail("loading the filter", rc);
  }
  return {};
}

}  // namespace nicmux
