// --user: the spec's parsing, and the switch itself in a child process (it cannot be undone).
#include "base/privileges.h"

#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace nicmux {
namespace {

TEST(Privileges, ParseRunAs) {
  auto n = ParseRunAs("nobody");
  ASSERT_TRUE(n) << n.error().message();
  EXPECT_EQ(n->uid, 65534u);
  EXPECT_TRUE(n->user_groups);
  auto g = ParseRunAs("nobody:100");
  ASSERT_TRUE(g);
  EXPECT_EQ(g->gid, 100u);
  EXPECT_FALSE(g->user_groups);
  auto num = ParseRunAs("12345");
  ASSERT_TRUE(num);
  EXPECT_EQ(num->uid, 12345u);
  EXPECT_EQ(num->gid, 12345u);
  EXPECT_EQ(ParseRunAs("root").error().message(), "user 'root' is root: --user names the unprivileged user to run as");
  EXPECT_EQ(ParseRunAs("no-such-user-nmx").error().message(),
            "user 'no-such-user-nmx': no such user on this host (getent passwd no-such-user-nmx)");
  EXPECT_FALSE(ParseRunAs("nobody:"));
  EXPECT_FALSE(ParseRunAs(":users"));
}

std::string StatusField(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      size_t p = line.find_first_not_of(" \t", key.size() + 1);
      return p == std::string::npos ? "" : line.substr(p);
    }
  }
  return "";
}

// As root only: becomes nobody with the four capabilities, and cannot become root again.
TEST(Privileges, DropKeepsOnlyTheListedCapabilities) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  const pid_t pid = ::fork();
  if (pid == 0) {
    auto who = ParseRunAs("nobody");
    if (!who || !DropPrivileges(*who)) ::_exit(100);
    int failed = 0;
    auto check = [&](bool ok, const char* what) {
      if (!ok) {
        std::fprintf(stderr, "%s\n", what);
        ++failed;
      }
    };
    // NET_ADMIN 12, NET_RAW 13, IPC_LOCK 14, BPF 39.
    const std::string want = "0000008000007000";
    check(StatusField("CapEff") == want, "CapEff");
    check(StatusField("CapPrm") == want, "CapPrm");
    check(StatusField("CapBnd") == want, "CapBnd");
    check(StatusField("CapAmb") == want, "CapAmb");
    check(::getuid() == 65534 && ::geteuid() == 65534, "uid");
    check(::setuid(0) == -1, "setuid(0)");
    check(::prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN, 0, 0, 0) == 0, "CAP_SYS_ADMIN in the bounding set");
    // Again as that user: nothing to do (a live upgrade's new process).
    check(static_cast<bool>(DropPrivileges(*who)), "second DropPrivileges");
    ::_exit(failed);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace
}  // namespace nicmux
