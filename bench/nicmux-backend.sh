#!/usr/bin/env bash
# nicmux as the "CMD" backend of ../shared/anchors/vhost-loopback.sh: nicmuxd cross-connecting
# $SOCK0 <-> $SOCK1 (the harness pins it to $BACKEND_CPU), logging to $RUN_DIR/backend.log,
# exiting on SIGTERM. NICMUXD (default: this tree's release build) picks the binary.
#   ../shared/anchors/vhost-loopback.sh --backend "$PWD/bench/nicmux-backend.sh" --name nicmux-xconnect
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${NICMUXD:-$here/build/release/tools/nicmuxd}
client=""
[ "${VHOST_CLIENT:-0}" = 1 ] && client=",client"
exec "$bin" --forward xconnect --cpu "${BACKEND_CPU:-1}" --log-level warning \
  --port "vhost-user:p0:socket=$SOCK0$client" --port "vhost-user:p1:socket=$SOCK1$client"
