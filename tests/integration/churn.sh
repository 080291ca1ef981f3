#!/usr/bin/env bash
# Frontend churn (issue "crash recovery ... frontend restarts"): while two nicmux-pktgen
# endpoints pass verified traffic through nicmuxd, frontends on two other ports come and go:
#   - 100 nicmux-pktgen runs on a port nicmuxd listens on (connect, set up, send 200 frames,
#     exit),
#   - 5 nicmux-pktgen --server runs behind a `client` port (nicmuxd reconnects to each, after
#     its back-off: about 1.5 s a run),
#   - 5 dpdk-testpmd runs with DPDK's virtio-user on the listening port (a DPDK application
#     restarted).
# Every one is cleaned up and the next accepted; nicmuxd's open fds are the same before and
# after and its RSS grows by less than 8 MiB; the healthy flow loses nothing.
source "$(dirname "$0")/lib.sh"

command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"
x=$WORK/x.sock y=$WORK/y.sock a=$WORK/a.sock c=$WORK/c.sock
nicmuxd --port "vhost-user:x:socket=$x" --port "vhost-user:y:socket=$y" --port "vhost-user:a:socket=$a" \
  --port "vhost-user:c:socket=$c,client"
wait_for "$a" 30
fds() { ls "/proc/$NICMUXD_PID/fd" | wc -l; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$NICMUXD_PID/status"; }
connections() { ctl --json port show "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['connections'])"; }

# The healthy flow, for the whole test. (The churning frontends send to x's MAC, which x's
# pktgen counts and drops, and testpmd only receives: nothing floods y's ring. 5 kpps into a
# ring of 1024: 200 ms of slack for a receiver the busy 2-core machine leaves unscheduled
# while a testpmd starts, beyond the switch's 50 ms of holding back.)
start pg_y "$BIN/nicmux-pktgen" --socket "$y" --mode rx --verify --ring 1024 --duration 600 --interval 0 \
  --mac 02:00:00:00:00:02 --announce
py=$LAST_PID
start pg_x "$BIN/nicmux-pktgen" --socket "$x" --mode tx --rate 5000 --ring 1024 --duration 600 --interval 0 \
  --mac 02:00:00:00:00:01 --peer-mac 02:00:00:00:00:02 --stream 5 --hold
px=$LAST_PID
wait_log "$WORK/pg_y.log" connected 60 "$py"
wait_log "$WORK/pg_x.log" connected 60 "$px"
release "$px"

one_pktgen() {  # a short-lived frontend on port a
  "$BIN/nicmux-pktgen" --socket "$a" --mode tx --count 200 --duration 20 --interval 0 \
    --mac 02:00:00:00:00:0a --peer-mac 02:00:00:00:00:01 >"$WORK/churn_a.log" 2>&1 ||
    fail "churn pktgen on port a: $(tail -n 2 "$WORK/churn_a.log")"
}
one_server() {  # a short-lived backend-facing server behind port c: nicmuxd connects to it
  local before
  before=$(connections c)
  "$BIN/nicmux-pktgen" --socket "$c" --server --mode tx --count 200 --duration 30 --interval 0 \
    --mac 02:00:00:00:00:0c --peer-mac 02:00:00:00:00:01 >"$WORK/churn_c.log" 2>&1 ||
    fail "churn pktgen --server on port c: $(tail -n 2 "$WORK/churn_c.log")"
  [ "$(connections c)" -gt "$before" ] || fail "port c did not reconnect"
  rm -f "$c"
}
# Warm up (first connections allocate what is then reused), then measure.
for i in 1 2 3 4 5; do one_pktgen; done
one_server
sleep 0.5
fds0=$(fds) rss0=$(rss_kb) conn0=$(connections a)
for i in $(seq 100); do one_pktgen; done
[ "$(($(connections a) - conn0))" -eq 100 ] || fail "port a took $(($(connections a) - conn0)) of 100 frontends"
echo "ok: 100 pktgen frontends came and went on port a (${SECONDS} s into the test)"
for i in $(seq 5); do one_server; done
echo "ok: 5 pktgen --server frontends behind client port c, each reconnected to (${SECONDS} s)"
for i in 1 2 3 4 5; do
  # (Not interactive: with --stats-period testpmd forwards until a signal, stdin unread.)
  start "testpmd.$i" timeout 60 dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmxchurn$$-$i" \
    --lcores 0@0,1@1 --vdev "net_virtio_user0,path=$a,queues=1" -- --nb-cores=1 --forward-mode=rxonly \
    --stats-period 5
  tp=$LAST_PID
  wait_until 60 "testpmd $i attached" bash -c "[ \"\$($BIN/nicmuxctl --socket $CTL --json port show a | python3 -c \"import json,sys; print(json.load(sys.stdin)['state'])\")\" = connected ]"
  sleep 1
  pkill -KILL -f "nmxchurn$$-$i" || true
  wait "$tp" 2>/dev/null || true
  wait_until 30 "port a free again after testpmd $i" bash -c "[ \"\$($BIN/nicmuxctl --socket $CTL --json port show a | python3 -c \"import json,sys; print(json.load(sys.stdin)['state'])\")\" != connected ]"
done
echo "ok: 5 dpdk-testpmd (virtio-user) runs on port a, killed with SIGKILL each (${SECONDS} s)"
sleep 1
fds1=$(fds) rss1=$(rss_kb)
[ "$fds1" -eq "$fds0" ] || fail "nicmuxd's open fds: $fds0 before, $fds1 after 110 frontends"
[ $((rss1 - rss0)) -lt 8192 ] || fail "nicmuxd's RSS grew from $rss0 to $rss1 KiB over 110 frontends"
echo "ok: nicmuxd's open fds $fds0 -> $fds1, RSS $rss0 -> $rss1 KiB over 110 frontends"
kill -INT "$px" "$py"
wait_pid "$px" 30 || true
wait_pid "$py" 30 || true
sent=$(summary_field "$WORK/pg_x.log" tx_packets)
expect_summary "$WORK/pg_y.log" rx_lost 0
expect_summary "$WORK/pg_y.log" rx_reordered 0
expect_summary "$WORK/pg_y.log" rx_bad 0
got=$(summary_field "$WORK/pg_y.log" rx_packets)
[ "$((sent - got))" -le 64 ] || fail "the healthy flow: $sent sent, $got received"
echo "ok: the healthy flow meanwhile: $got of $sent frames, none lost or reordered"
stop_nicmuxd
