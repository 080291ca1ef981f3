#include "base/privileges.h"

#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

namespace nicmux {
namespace {

bool AllDigits(const std::string& s) {
  if (s.empty() || s.size() > 9) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

int LastCap() {
  std::ifstream in("/proc/sys/kernel/cap_last_cap");
  int n = CAP_LAST_CAP;
  if (!(in >> n)) n = CAP_LAST_CAP;
  return n;
}

struct CapSets {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
};

Result<void> SetCaps(uint64_t effective, uint64_t permitted, uint64_t inheritable) {
  CapSets c;
  c.data[0].effective = static_cast<uint32_t>(effective);
  c.data[1].effective = static_cast<uint32_t>(effective >> 32);
  c.data[0].permitted = static_cast<uint32_t>(permitted);
  c.data[1].permitted = static_cast<uint32_t>(permitted >> 32);
  c.data[0].inheritable = static_cast<uint32_t>(inheritable);
  c.data[1].inheritable = static_cast<uint32_t>(inheritable >> 32);
  if (::syscall(SYS_capset, &c.hdr, c.data) != 0) return Error::FromErrno("capset");
  return {};
}

Result<uint64_t> PermittedCaps() {
  CapSets c;
  if (::syscall(SYS_capget, &c.hdr, c.data) != 0) return Error::FromErrno("capget");
  return uint64_t{c.data[0].permitted} | (uint64_t{c.data[1].permitted} << 32);
}

}  // namespace

Result<RunAs> ParseRunAs(const std::string& spec) {
  RunAs r;
  r.user = spec;
  const size_t colon = spec.find(':');
  const std::string user = spec.substr(0, colon);
  const std::string group = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (user.empty() || (colon != std::string::npos && group.empty())) {
    return Error("user '" + spec + "': expected USER or USER:GROUP (names or numbers)");
  }
  std::string buf(16384, '\0');
  passwd pw{};
  passwd* pwp = nullptr;
  ::getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &pwp);
  if (pwp != nullptr) {
    r.uid = pw.pw_uid;
    r.gid = pw.pw_gid;
  } else if (AllDigits(user)) {
    r.uid = static_cast<uid_t>(std::strtoul(user.c_str(), nullptr, 10));
    r.gid = static_cast<gid_t>(r.uid);
    r.user_groups = false;  // no entry: no group list to read
  } else {
    return Error("user '" + user + "': no such user on this host (getent passwd " + user + ")");
  }
  if (r.uid == 0) return Error("user '" + user + "' is root: --user names the unprivileged user to run as");
  if (!group.empty()) {
    r.user_groups = false;
    struct group gr{};
    struct group* grp = nullptr;
    ::getgrnam_r(group.c_str(), &gr, buf.data(), buf.size(), &grp);
    if (grp != nullptr) {
      r.gid = gr.gr_gid;
    } else if (AllDigits(group)) {
      r.gid = static_cast<gid_t>(std::strtoul(group.c_str(), nullptr, 10));
    } else {
      return Error("group '" + group + "': no such group on this host (getent group " + group + ")");
    }
  }
  return r;
}

const std::vector<int>& KeptCapabilities() {
  static const std::vector<int> caps = {CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_IPC_LOCK};
  return caps;
}

std::string KeptCapabilityNames() { return "CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_IPC_LOCK"; }

Result<void> DropPrivileges(const RunAs& who) {
  if (::getuid() == who.uid && ::geteuid() == who.uid) return {};  // a live upgrade's new process
  if (::geteuid() != 0) {
    return Error("--user " + who.user + ": nicmuxd runs as uid " + std::to_string(::geteuid()) +
                 ", not root: it cannot switch users");
  }
  const int last = LastCap();
  uint64_t keep = 0;
  for (int c : KeptCapabilities()) {
    if (c <= last) keep |= uint64_t{1} << c;
  }
  if (::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return Error::FromErrno("prctl(PR_SET_KEEPCAPS)");
  // Groups first (it needs the uid still 0). glibc changes every thread's ids.
  if (who.user_groups) {
    std::string buf(16384, '\0');
    passwd pw{};
    passwd* pwp = nullptr;
    ::getpwuid_r(who.uid, &pw, buf.data(), buf.size(), &pwp);
    if (pwp == nullptr || ::initgroups(pw.pw_name, who.gid) != 0) {
      return Error::FromErrno("--user " + who.user + ": setting its groups");
    }
  } else if (::setgroups(1, &who.gid) != 0) {
    return Error::FromErrno("--user " + who.user + ": setgroups");
  }
  if (::setresgid(who.gid, who.gid, who.gid) != 0) return Error::FromErrno("--user " + who.user + ": setresgid");
  if (::setresuid(who.uid, who.uid, who.uid) != 0) return Error::FromErrno("--user " + who.user + ": setresuid");
  // KEEPCAPS kept the permitted set, not the effective one: raise it again to drop the others
  // from the bounding set (CAP_SETPCAP), then keep only ours.
  auto permitted = PermittedCaps();
  if (!permitted) return permitted.error();
  NICMUX_TRY(SetCaps(*permitted, *permitted, 0));
  for (int c = 0; c <= last; ++c) {
    if ((keep >> c & 1) == 0 && ::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL) {
      return Error::FromErrno("prctl(PR_CAPBSET_DROP, " + std::to_string(c) + ")");
    }
  }
  NICMUX_TRY(SetCaps(keep, keep, keep));
  for (int c = 0; c <= last; ++c) {
    if ((keep >> c & 1) && ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, c, 0, 0) != 0) {
      return Error::FromErrno("prctl(PR_CAP_AMBIENT_RAISE, " + std::to_string(c) + ")");
    }
  }
  if (::prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) return Error::FromErrno("prctl(PR_SET_KEEPCAPS, 0)");
  // Check: no way back.
  if (::setuid(0) == 0) return Error("--user " + who.user + ": setuid(0) still works after the switch");
  return {};
}

}  // namespace nicmux
