#!/usr/bin/env bash
# nicmux as the "CMD" backend of ../shared/anchors/vhost-loopback.sh: nicmuxd connecting
# $SOCK0 and $SOCK1 (the harness pins it to $BACKEND_CPU), exiting on SIGTERM.
# NICMUX_FORWARD picks the mode: xconnect (default: port 0 <-> port 1) or switch (the learning
# switch; testpmd's frames carry the other port's MAC, so once learned they are unicast).
# NICMUXD (default: this tree's release build) picks the binary.
#   ../shared/anchors/vhost-loopback.sh --backend "$PWD/bench/nicmux-backend.sh" --name nicmux-xconnect
#   NICMUX_FORWARD=switch ../shared/anchors/vhost-loopback.sh --backend "$PWD/bench/nicmux-backend.sh" --name nicmux-switch
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${NICMUXD:-$here/build/release/tools/nicmuxd}
client=""
[ "${VHOST_CLIENT:-0}" = 1 ] && client=",client"
exec "$bin" --forward "${NICMUX_FORWARD:-xconnect}" --control none --cpu "${BACKEND_CPU:-1}" --log-level warning \
  --port "vhost-user:p0:socket=$SOCK0$client" --port "vhost-user:p1:socket=$SOCK1$client"
