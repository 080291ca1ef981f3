// nicmuxd's system-call filter (seccomp, through libseccomp): once the daemon is set up, only
// the system calls it makes at run time are allowed, on every thread (docs/security.md).
//
// Why an allowlist and why EPERM. nicmuxd parses what guests, frontends and the control socket
// send it; a bug there must not become "the attacker may do anything root may". The filter
// allows the calls listed in seccomp.cc, each with its reason, and nothing else.
//
// A call outside the list fails with EPERM (SCMP_ACT_ERRNO), it does not kill the process:
// the list was made by tracing the integration tests (`strace -f -c`), and a path they do not
// take may still need a call it lacks. With EPERM the operation fails with an error that names
// it ("cannot create TAP device: Operation not permitted") and the switch keeps forwarding for
// every other port; killing would turn a missing entry into an outage for every guest. Every
// denial is also logged by the kernel (SECCOMP_FILTER_FLAG_LOG: an audit record, type=1326,
// in dmesg or the journal, with comm="nicmuxd" and the call's number), so a missing entry is
// found, not guessed. `--seccomp=log` allows everything and logs each call the list lacks
// (SCMP_ACT_LOG): run it once with an unusual setup to find what to add.
//
// Scope. The filter is installed after setup (ports, sockets, workers exist) with
// SECCOMP_FILTER_FLAG_TSYNC, so every thread has it, and threads made later inherit it. It is
// inherited across fork and execve: a live upgrade's new process runs under its parent's
// filter from its first instruction (so the list covers the dynamic loader and the start of
// nicmuxd too) and does not install a second one (SeccompActive()). A new binary that needs a
// call the old filter lacks therefore needs a restart, not an upgrade, to get it.
//
// Sanitizer builds (ASan/LSan) also allow ptrace and getdents: LeakSanitizer's exit-time check
// lists the threads and stops them with these. Release builds do not.
#pragma once

#include <string>
#include <vector>

#include "base/result.h"

namespace nicmux {

enum class SeccompMode { kOff, kOn, kLog };

// "on", "off" or "log".
Result<SeccompMode> ParseSeccompMode(const std::string& s);
const char* SeccompModeName(SeccompMode m);

// The allowed calls by name (those this architecture has), in the order of seccomp.cc.
std::vector<std::string> SeccompAllowedCalls();

// Installs the filter on every thread of this process. kOff: nothing. Errors name the step.
Result<void> InstallSeccomp(SeccompMode mode);

// True when this process already runs under a seccomp filter (/proc/self/status: Seccomp: 2).
bool SeccompActive();

}  // namespace nicmux
