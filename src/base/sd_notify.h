// systemd's readiness protocol (sd_notify(3)), without libsystemd: when $NOTIFY_SOCKET names a
// socket (a unit with Type=notify), one datagram of "KEY=VALUE" lines goes to it. nicmuxd says
// READY=1 once its ports and sockets are up, and a live upgrade's new process says
// MAINPID=<its pid> before the old one exits (NotifyAccess=all), so that systemd follows the
// service to the new process instead of stopping it (docs/upgrade.md).
#pragma once

#include <string>

namespace nicmux {

// Sends state to $NOTIFY_SOCKET; false (and nothing done) when it is unset or unreachable.
bool SdNotify(const std::string& state);

}  // namespace nicmux
