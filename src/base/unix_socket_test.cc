// Socket ownership (SocketAccess): the group and mode nicmuxd gives the sockets it serves, the
// directory it makes for them, and whether a process of another user gets in. Runs as root
// (the suite does): the connecting process is a child that drops to nobody with one group.
#include "base/unix_socket.h"

#include <grp.h>
#include <pwd.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace nicmux {
namespace {

constexpr gid_t kNogroup = 65534;

// Connects to path as uid 65534 with only group gid; 0 or the errno.
int ConnectAs(const std::string& path, gid_t gid) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(65534) != 0) ::_exit(100);
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    auto a = UnixAddr(path);
    if (fd < 0 || !a) ::_exit(101);
    ::_exit(::connect(fd, reinterpret_cast<const sockaddr*>(&*a), sizeof *a) == 0 ? 0 : errno);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 255;
}

class SocketAccessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (chgrp, and a child that becomes nobody)";
    char t[] = "/tmp/nmx-sock.XXXXXX";
    ASSERT_NE(::mkdtemp(t), nullptr);
    dir_ = t;
    ::chmod(dir_.c_str(), 0755);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::string dir_;
};

TEST(SocketAccessParse, GroupsByNameOrNumberModesInOctalAndWhatIsWrong) {
  auto none = ParseSocketAccess("", "");
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
  auto byname = ParseSocketAccess("nogroup", "");
  ASSERT_TRUE(byname.has_value());
  EXPECT_EQ(byname->group, kNogroup);
  EXPECT_EQ(byname->mode, mode_t{0660});  // the default with a group
  auto bynum = ParseSocketAccess("65534", "0664");
  ASSERT_TRUE(bynum.has_value());
  EXPECT_EQ(bynum->group, kNogroup);
  EXPECT_EQ(bynum->mode, mode_t{0664});
  auto mode_only = ParseSocketAccess("", "666");
  ASSERT_TRUE(mode_only.has_value());
  EXPECT_FALSE(mode_only->group);
  EXPECT_EQ(mode_only->mode, mode_t{0666});
  auto missing = ParseSocketAccess("libvirt-qmeu", "");
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message().find("no group 'libvirt-qmeu'"), std::string::npos);
  for (const char* bad : {"0999", "rw-rw----", "10660", "-1", "0060", "0"}) {
    auto r = ParseSocketAccess("", bad);
    EXPECT_FALSE(r.has_value()) << bad;
  }
  EXPECT_FALSE(ParseSocketAccess("4294967295", "").has_value());  // (gid_t)-1: chown would ignore it
  auto no_rw = ParseSocketAccess("nogroup", "0600");                // the group could not connect
  ASSERT_FALSE(no_rw.has_value());
  EXPECT_NE(no_rw.error().message().find("gives group nogroup no read and write"), std::string::npos);
}

TEST_F(SocketAccessTest, TheGroupGetsInOthersDoNotAndAMissingDirectoryIsMadeWritableByNoOneElse) {
  const std::string path = dir_ + "/sub/vm1.sock";  // sub does not exist yet
  auto a = ParseSocketAccess("nogroup", "");
  ASSERT_TRUE(a.has_value());
  auto fd = ListenUnix(path, 4, &*a);
  ASSERT_TRUE(fd.has_value()) << fd.error().message();
  struct stat st;
  ASSERT_EQ(::stat((dir_ + "/sub").c_str(), &st), 0);
  // Searchable by all, writable by nicmuxd only: one VM's QEMU cannot replace another's socket.
  EXPECT_EQ(st.st_mode & 07777, mode_t{0755});
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, mode_t{0660});
  EXPECT_EQ(st.st_gid, kNogroup);
  EXPECT_EQ(SocketReachProblem(path, *a), "");
  EXPECT_EQ(ConnectAs(path, kNogroup), 0);
  EXPECT_EQ(ConnectAs(path, 107), EACCES);  // another group: the socket's mode keeps it out
}

TEST_F(SocketAccessTest, WithoutAnAccessTheSocketKeepsTheUmasksModeAndAStrangerIsRefused) {
  const std::string path = dir_ + "/vm1.sock";
  const mode_t old = ::umask(022);
  auto fd = ListenUnix(path, 4, nullptr);  // the default: nothing set
  ::umask(old);
  ASSERT_TRUE(fd.has_value()) << fd.error().message();
  // srwxr-xr-x root root: QEMU as another user gets "Permission denied" (issue 18).
  EXPECT_EQ(ConnectAs(path, kNogroup), EACCES);
  // nicmuxd never sees that refusal: its "listening on" line says who is locked out and what to
  // change instead.
  const std::string note = SocketOwnerOnlyNote(path);
  EXPECT_NE(note.find("only user root may connect (0755 root:"), std::string::npos) << note;
  EXPECT_NE(note.find("Permission denied"), std::string::npos) << note;
  EXPECT_NE(note.find("--socket-group"), std::string::npos) << note;
  if (::getpwnam("libvirt-qemu") != nullptr) {
    EXPECT_NE(note.find("user libvirt-qemu"), std::string::npos) << note;
    EXPECT_NE(note.find("/var/log/libvirt/qemu/"), std::string::npos) << note;
  }
  // With a group that may write it, or a mode that lets others write, there is nothing to say.
  auto a = ParseSocketAccess("nogroup", "");
  ASSERT_TRUE(a.has_value());
  ASSERT_TRUE(ApplySocketAccess(path, *a).has_value());
  EXPECT_EQ(SocketOwnerOnlyNote(path), "");
  auto everyone = ParseSocketAccess("", "0666");
  ASSERT_TRUE(everyone.has_value());
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_NE(SocketOwnerOnlyNote(path), "");
  ASSERT_TRUE(ApplySocketAccess(path, *everyone).has_value());
  EXPECT_EQ(SocketOwnerOnlyNote(path), "");
  EXPECT_EQ(SocketOwnerOnlyNote(dir_ + "/missing.sock"), "");
}

TEST_F(SocketAccessTest, ADirectoryTheGroupCannotSearchIsNamedWithWhatToChange) {
  ASSERT_EQ(::mkdir((dir_ + "/closed").c_str(), 0700), 0);
  const std::string path = dir_ + "/closed/vm1.sock";
  auto a = ParseSocketAccess("nogroup", "");
  ASSERT_TRUE(a.has_value());
  auto fd = ListenUnix(path, 4, &*a);
  ASSERT_TRUE(fd.has_value()) << fd.error().message();
  const std::string why = SocketReachProblem(path, *a);
  EXPECT_NE(why.find(dir_ + "/closed (0700"), std::string::npos) << why;
  EXPECT_NE(why.find("chmod g+x"), std::string::npos) << why;
  EXPECT_EQ(ConnectAs(path, kNogroup), EACCES);
  // Mended as it says: the group gets in.
  ASSERT_EQ(::chown((dir_ + "/closed").c_str(), static_cast<uid_t>(-1), kNogroup), 0);
  ASSERT_EQ(::chmod((dir_ + "/closed").c_str(), 0710), 0);
  EXPECT_EQ(SocketReachProblem(path, *a), "");
  EXPECT_EQ(ConnectAs(path, kNogroup), 0);
}

TEST_F(SocketAccessTest, TheDefaultAppliesToEverySocketWithoutItsOwn) {
  auto a = ParseSocketAccess("nogroup", "0666");
  ASSERT_TRUE(a.has_value());
  SetDefaultSocketAccess(*a);

  auto fd = ListenUnix(dir_ + "/d.sock");
  SetDefaultSocketAccess(SocketAccess{});
  ASSERT_TRUE(fd.has_value()) << fd.error().message();
  struct stat st;
  ASSERT_EQ(::stat((dir_ + "/d.sock").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, mode_t{0666});
  EXPECT_EQ(st.st_gid, kNogroup);
}

TEST_F(SocketAccessTest, ASocketSwappedForASymlinkIsNeverFollowed) {
  // What a writer of the directory could do between bind and chmod: the file it points at keeps
  // its group and mode, and the error says the socket was replaced.
  const std::string victim = dir_ + "/victim";
  std::FILE* f = std::fopen(victim.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  ::chmod(victim.c_str(), 0600);
  ASSERT_EQ(::symlink(victim.c_str(), (dir_ + "/s.sock").c_str()), 0);
  auto a = ParseSocketAccess("nogroup", "0666");
  ASSERT_TRUE(a.has_value());
  auto r = ApplySocketAccess(dir_ + "/s.sock", *a);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("no longer a socket"), std::string::npos) << r.error().message();
  struct stat st;
  ASSERT_EQ(::stat(victim.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, mode_t{0600});
  EXPECT_EQ(st.st_gid, gid_t{0});
}

}  // namespace
}  // namespace nicmux
