# Shared helpers of the integration tests (sourced). Every process a test starts is recorded
# and killed at exit; every wait is bounded. Tests run as root on this machine only: UNIX
# sockets in a private temporary directory, no network addresses.
set -euo pipefail

BIN=${NICMUX_BIN:?NICMUX_BIN must point at the tools directory of a build}
WORK=$(mktemp -d /tmp/nicmux-it.XXXXXX)
PIDS=()

# CLEANUP_HOOKS: functions a test adds (network namespaces, links) that cleanup runs after
# the processes are gone. (A test must not replace the EXIT trap: under `set -e` a trap that
# runs a failing command before cleanup exits there and leaves every process running.)
CLEANUP_HOOKS=()
cleanup() {
  local rc=$?
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for h in "${CLEANUP_HOOKS[@]}"; do "$h" || true; done
  # The runtime directories of the DPDK peers this test started (testpmd: --file-prefix
  # LETTERS$$...; DPDK leaves them behind; nicmuxd removes its own).
  # (A letter right before the pid: nicmuxd14321 is not this test's when $$ is 4321.)
  rm -rf /var/run/dpdk/[a-z]*[a-z]$$ /var/run/dpdk/[a-z]*[a-z]$$[!0-9]* 2>/dev/null
  if [ $rc -ne 0 ]; then
    echo "---- logs ($WORK) ----"
    for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "== $f"; tail -n 30 "$f"; }; done
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

# start NAME CMD...: runs CMD in the background, output in $WORK/NAME.log; sets LAST_PID.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# start_with_input NAME INPUT CMD...: as start, with stdin from INPUT (a background command's
# stdin is /dev/null unless redirected on that very command).
start_with_input() {
  local name=$1 input=$2; shift 2
  "$@" <"$input" >"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_for FILE SECONDS: until FILE exists.
wait_for() {
  local f=$1 t=$2 i
  for ((i = 0; i < t * 20; i++)); do [ -e "$f" ] && return 0; sleep 0.05; done
  fail "timed out waiting for $f"
}

# wait_log LOG PATTERN SECONDS [PID]: until LOG matches PATTERN; fails on timeout or when PID
# (the process writing LOG) has exited.
wait_log() {
  local log=$1 pat=$2 t=$3 pid=${4:-} deadline
  deadline=$(($(date +%s) + t))
  while [ "$(date +%s)" -le "$deadline" ]; do
    grep -q -- "$pat" "$log" 2>/dev/null && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      fail "$(basename "$log"): process exited before printing '$pat'"
    fi
    sleep 0.1
  done
  fail "$(basename "$log"): no '$pat' within ${t}s"
}

# wait_pid PID SECONDS: waits for PID to exit; returns its status (fails on timeout).
wait_pid() {
  local p=$1 t=$2 i
  for ((i = 0; i < t * 10; i++)); do
    if ! kill -0 "$p" 2>/dev/null; then wait "$p"; return $?; fi
    sleep 0.1
  done
  fail "process $p did not finish within ${t}s"
}

# wait_until SECONDS WHAT CMD...: until CMD succeeds (polled every 0.1 s); fails naming WHAT
# when SECONDS pass first.
wait_until() {
  local t=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + t))
  until "$@"; do
    [ "$(date +%s)" -le "$deadline" ] || fail "no $what within ${t}s"
    sleep 0.1
  done
}

# release PID...: starts the sending of nicmux-pktgens run with --hold (they wait, connected,
# for SIGUSR1). A test releases its senders once every receiver is attached, an event, rather
# than giving each a --delay and hoping the others are up by then on a busy machine.
release() { kill -USR1 "$@"; }

# summary_field LOG KEY: a key=value from the summary line of a pktgen log.
summary_field() { grep '^summary ' "$1" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# expect_summary LOG KEY VALUE
expect_summary() {
  local got
  got=$(summary_field "$1" "$2")
  [ "$got" = "$3" ] || fail "$(basename "$1"): $2=$got, expected $3"
}

# nicmuxd ARGS...: the daemon with its control socket in $WORK (CTL) unless ARGS name another.
# NICMUX_SECCOMP=on|log: every suite's nicmuxd runs under the system-call filter
# (docs/security.md).
CTL=$WORK/nicmuxd.ctl
nicmuxd() {
  start nicmuxd "$BIN/nicmuxd" --log-level info --control "$CTL" ${NICMUX_SECCOMP:+--seccomp=$NICMUX_SECCOMP} "$@"
  NICMUXD_PID=$LAST_PID
}
ctl() { "$BIN/nicmuxctl" --socket "$CTL" "$@"; }
# expect_refused SPEC PATTERN: `nicmuxctl port add SPEC` fails and its error matches PATTERN.
expect_refused() {
  local rc=0
  ctl port add "$1" 2>"$WORK/err.txt" || rc=$?
  [ $rc -ne 0 ] || fail "port add $1 was accepted"
  grep -q -- "$2" "$WORK/err.txt" || fail "port add $1: error does not say '$2': $(cat "$WORK/err.txt")"
  echo "ok: refused $1: $(cat "$WORK/err.txt")"
}

stop_nicmuxd() {
  kill -TERM "$NICMUXD_PID"
  if [ -n "${NICMUXD_ADOPTED:-}" ]; then
    # Not our child (a live upgrade started it): no exit status to wait for.
    wait_until 30 "exit of nicmuxd $NICMUXD_PID" bash -c "! kill -0 $NICMUXD_PID 2>/dev/null"
    NICMUXD_ADOPTED=
    return 0
  fi
  wait_pid "$NICMUXD_PID" 30 || fail "nicmuxd exited with an error"
}

# upgrade_nicmuxd [PATH]: a live upgrade (docs/upgrade.md); NICMUXD_PID becomes the new process
# (which logs to the same file), UPGRADE_PAUSED_US nicmuxd's pause. (Not in a $(...): it sets
# variables.)
upgrade_nicmuxd() {
  local out pid
  out=$(ctl --json upgrade "$@") || fail "nicmuxctl upgrade: $out"
  pid=$(python3 -c "import json,sys; print(json.load(sys.stdin)['pid'])" <<<"$out")
  wait_until 10 "exit of the old nicmuxd $NICMUXD_PID" bash -c "! kill -0 $NICMUXD_PID 2>/dev/null"
  PIDS+=("$pid")
  NICMUXD_PID=$pid
  NICMUXD_ADOPTED=1
  UPGRADE_PAUSED_US=$(python3 -c "import json,sys; print(json.load(sys.stdin)['paused_us'])" <<<"$out")
}

DPDK_EAL=(--no-huge -m 512 --no-shconf --no-pci --no-telemetry)

# ---- QEMU guests (tests/integration/guest): call guest_image first.
G=$(cd "$(dirname "${BASH_SOURCE[0]}")/guest" && pwd)
guest_image() { "$G/build-guest.sh" >/dev/null || fail "cannot build the guest image"; }
# guest NAME SOCKET IP [run-guest options]: a guest serving iperf3, commands over its console.
guest() {
  local name=$1 sock=$2 ip=$3; shift 3
  "$G/run-guest.sh" "$name" "$sock" --ip "$ip" --serve 'iperf3 -s' --background --timeout 600 \
    --console-socket "$WORK/$name.con" --log "$WORK/$name.console.log" --pidfile "$WORK/$name.pid" \
    "$@" >"$WORK/$name.qpid" || fail "guest $name did not start"
  PIDS+=("$(cat "$WORK/$name.qpid")")
}
wait_agent() { wait_log "$WORK/$1.console.log" '^NICMUX-AGENT' 300; }
gexec() { "$G/guest-exec.py" --timeout 180 "$WORK/$1.con" "$2"; }
# kill_guest NAME...: stops the guests' QEMUs and waits until they are gone.
kill_guest() {
  local g p i
  for g in "$@"; do
    p=$(cat "$WORK/$g.qpid")
    kill "$p" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}

# start_bidir_pair: the two verifying endpoints of the upgrade tests across two nicmuxd
# (upgrade_af_xdp.sh, upgrade_dpdk.sh): nicmux-pktgen --mode bidir on $WORK/a.sock and
# $WORK/b.sock, 2 queues, $COUNT frames at $RATE each way (streams 1 and 2, MACs
# 02:00:00:00:0a:01 and 02:00:00:00:0b:02), announced and then released together once both
# switches learned the far MAC; sets pa and pb to their pids.
start_bidir_pair() {
  local e mac peer s
  for e in a b; do
    if [ $e = a ]; then mac=02:00:00:00:0a:01 peer=02:00:00:00:0b:02 s=1; else mac=02:00:00:00:0b:02 peer=02:00:00:00:0a:01 s=2; fi
    start "pg_$e" "$BIN/nicmux-pktgen" --socket "$WORK/$e.sock" --mode bidir --verify --count "$COUNT" --rate "$RATE" \
      --queues 2 --ring 1024 --duration 30 --interval 0 --stream $s --mac $mac --peer-mac $peer --announce --hold --yield
    eval "p$e=\$LAST_PID"
  done
  wait_log "$WORK/pg_a.log" connected 60 "$pa"
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
  sleep 0.5  # the announcements through the link: each switch learns the far endpoint's MAC
  release "$pa" "$pb"
  sleep 1.5
}
