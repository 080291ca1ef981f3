// The filter in a child process (it cannot be removed once installed): calls nicmuxd never
// makes fail with EPERM, the ones it makes still work, on every thread.
#include "base/seccomp.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <linux/kexec.h>
#include <sys/eventfd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <thread>

#include <gtest/gtest.h>

namespace nicmux {
namespace {

// Runs body in a forked child; the child's exit code is the number of failed checks (or 100 +
// a step when the filter could not be installed).
int InChild(SeccompMode mode, int (*body)()) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (auto r = InstallSeccomp(mode); !r) {
      std::fprintf(stderr, "%s\n", r.error().message().c_str());
      ::_exit(100);
    }
    ::_exit(body());
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

#define CHILD_EXPECT(cond)                                              \
  do {                                                                  \
    if (!(cond)) {                                                      \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #cond);  \
      ++failed;                                                         \
    }                                                                   \
  } while (0)

// Each call is one nicmuxd never makes; without the filter (we are root) most would not fail
// with EPERM (mount: EINVAL or ENOENT for these arguments; open_by_handle_at: EBADF).
int ForbiddenRefused() {
  int failed = 0;
  errno = 0;
  CHILD_EXPECT(::mount("none", "/nonexistent-nicmux", "tmpfs", 0, nullptr) == -1 && errno == EPERM);
  errno = 0;
  CHILD_EXPECT(::syscall(SYS_kexec_load, 0, 0, nullptr, 0) == -1 && errno == EPERM);
  errno = 0;
  CHILD_EXPECT(::syscall(SYS_open_by_handle_at, -1, nullptr, 0) == -1 && errno == EPERM);
  errno = 0;
  CHILD_EXPECT(::syscall(SYS_init_module, nullptr, 0, "") == -1 && errno == EPERM);
  errno = 0;
  CHILD_EXPECT(::unshare(0) == -1 && errno == EPERM);
  errno = 0;
  CHILD_EXPECT(::setuid(0) == -1 && errno == EPERM);  // credentials never change after setup
  errno = 0;
  // A socket family nicmuxd does not use.
  CHILD_EXPECT(::socket(AF_BLUETOOTH, SOCK_STREAM, 0) == -1 && errno == EPERM);
  // No new namespaces through clone (a new user namespace would give back capabilities), and
  // clone3, whose flags a filter cannot read, is "not implemented" (glibc then uses clone).
  errno = 0;
  CHILD_EXPECT(::syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, 0) == -1 && errno == EPERM);
  errno = 0;
  CHILD_EXPECT(::syscall(SYS_clone3, nullptr, 0) == -1 && errno == ENOSYS);
  // A fork (clone without namespace flags) works.
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  int st = -1;
  CHILD_EXPECT(child > 0 && ::waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  // Allowed ones work.
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  CHILD_EXPECT(efd >= 0);
  uint64_t one = 1, got = 0;
  CHILD_EXPECT(::write(efd, &one, sizeof one) == sizeof one);
  CHILD_EXPECT(::read(efd, &got, sizeof got) == sizeof got && got == 1);
  ::close(efd);
  const int us = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHILD_EXPECT(us >= 0);
  ::close(us);
  const int nl = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0);
  CHILD_EXPECT(nl >= 0);
  ::close(nl);
  const int fd = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
  CHILD_EXPECT(fd >= 0);
  ::close(fd);
  CHILD_EXPECT(SeccompActive());
  return failed;
}

TEST(Seccomp, ForbiddenCallsFailWithEpermAllowedOnesWork) {
  EXPECT_EQ(InChild(SeccompMode::kOn, ForbiddenRefused), 0);
}

// Threads started after the filter went on inherit it.
int LaterThreadFiltered() {
  int failed = 0;
  int seen = 0;
  std::thread late([&] {
    errno = 0;
    ::syscall(SYS_kexec_load, 0, 0, nullptr, 0);
    seen = errno;
  });
  late.join();
  CHILD_EXPECT(seen == EPERM);
  return failed;
}

TEST(Seccomp, ThreadsStartedLaterInheritTheFilter) {
  EXPECT_EQ(InChild(SeccompMode::kOn, LaterThreadFiltered), 0);
}

// A thread that already runs when the filter goes on gets it too (TSYNC).
TEST(Seccomp, TsyncCoversThreadsThatAlreadyRun) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::atomic<int> stage{0};
    int seen = 0;
    std::thread t([&] {
      while (stage.load() == 0) std::this_thread::yield();
      errno = 0;
      ::syscall(SYS_kexec_load, 0, 0, nullptr, 0);
      seen = errno;
      stage = 2;
    });
    if (!InstallSeccomp(SeccompMode::kOn)) ::_exit(100);
    stage = 1;
    t.join();
    ::_exit(seen == EPERM ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// log: nothing is refused (the kernel logs what the list lacks).
int NothingRefused() {
  int failed = 0;
  errno = 0;
  // We are root: the kernel's own answer (no such mount point), not EPERM.
  CHILD_EXPECT(::mount("none", "/nonexistent-nicmux", "tmpfs", 0, nullptr) == -1 && errno == ENOENT);
  errno = 0;
  CHILD_EXPECT(::syscall(SYS_open_by_handle_at, -1, nullptr, 0) == -1 && errno != EPERM);
  return failed;
}

TEST(Seccomp, LogModeRefusesNothing) { EXPECT_EQ(InChild(SeccompMode::kLog, NothingRefused), 0); }

TEST(Seccomp, OffInstallsNothing) {
  ASSERT_TRUE(InstallSeccomp(SeccompMode::kOff));
  EXPECT_FALSE(SeccompActive());
}

TEST(Seccomp, ModesAndList) {
  EXPECT_EQ(*ParseSeccompMode("on"), SeccompMode::kOn);
  EXPECT_EQ(*ParseSeccompMode("off"), SeccompMode::kOff);
  EXPECT_EQ(*ParseSeccompMode("log"), SeccompMode::kLog);
  EXPECT_FALSE(ParseSeccompMode("yes"));
  auto calls = SeccompAllowedCalls();
  for (const char* needed : {"eventfd2", "epoll_wait", "futex", "bpf", "sendmsg", "recvmsg", "execve", "wait4",
                             "memfd_create", "ioctl", "socket", "clone"}) {
    EXPECT_NE(std::find(calls.begin(), calls.end(), needed), calls.end()) << needed;
  }
  for (const char* never : {"mount", "kexec_load", "open_by_handle_at", "init_module", "setuid", "unshare", "clone3",
                            "setns"}) {
    EXPECT_EQ(std::find(calls.begin(), calls.end(), never), calls.end()) << never;
  }
}

}  // namespace
}  // namespace nicmux
