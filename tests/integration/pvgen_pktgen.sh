#!/usr/bin/env bash
# nicmux-pvgen on a pv port <-> nicmuxd <-> nicmux-pktgen on a vhost-user port: the pv driver
# library (src/pv/guest/) against the real host side, and the two tools' common frame format
# (tools/pktgen_frames.h) verified in both directions.
#   1. cross-connect, both sending at once: exact counts and every byte verified, 64 / 1518 /
#      9000-byte frames (buf_size=9216), one and four queue pairs;
#   2. each tool reflecting the other's frames (the sender verifies its own frames back);
#   3. TSO: pvgen's 65000-byte TSO frames (the pv port offers tcp_tso because its uplink, the
#      vhost-user port, takes TSO) arrive whole at a pktgen with offloads; pktgen's TSO frames
#      arrive at pvgen cut into 45 segments with their checksums right (pv takes no TSO);
#   4. ping through a reflector, each way;
#   5. what pvgen refuses before starting the device (queues, size, TSO not offered), and a
#      host that goes away mid-run.
source "$(dirname "$0")/lib.sh"

PV=$WORK/pv.sock
VU=$WORK/vu.sock

# pair PV_OPTS VU_OPTS: a cross-connect between a pv port and a vhost-user port.
pair() {
  nicmuxd --forward xconnect --port "pv:p:socket=$PV${1:+,$1}" --port "vhost-user:v:socket=$VU${2:+,$2}"
  wait_for "$PV" 30
  wait_for "$VU" 30
}

# run_both LABEL PVGEN_ARGS -- PKTGEN_ARGS: both held until both are connected, then released;
# both must exit 0. With STOP_PKTGEN=1 pktgen runs until pvgen is done and is then stopped
# (SIGTERM). (A pktgen reflector given --count once closed its connection as soon as it had
# queued its last frame, before nicmuxd took it; it now waits for its rings to drain, and the
# reflect test below gives it --count.)
STOP_PKTGEN=0
run_both() {
  local label=$1; shift
  local pv_args=() pg_args=()
  while [ "$1" != -- ]; do pv_args+=("$1"); shift; done
  shift
  pg_args=("$@")
  start pvgen "$BIN/nicmux-pvgen" --socket "$PV" --duration 120 --interval 0 --hold "${pv_args[@]}"
  local pv=$LAST_PID
  start pktgen "$BIN/nicmux-pktgen" --socket "$VU" --duration 120 --interval 0 --hold "${pg_args[@]}"
  local pg=$LAST_PID
  wait_log "$WORK/pvgen.log" connected 60 "$pv"
  wait_log "$WORK/pktgen.log" connected 60 "$pg"
  release "$pv" "$pg"
  wait_pid "$pv" 150 || fail "$label: pvgen failed: $(tail -n 5 "$WORK/pvgen.log")"
  [ "$STOP_PKTGEN" = 1 ] && kill -TERM "$pg"
  wait_pid "$pg" 150 || fail "$label: pktgen failed: $(tail -n 5 "$WORK/pktgen.log")"
}

# 1. Both ways at once, exact counts.
xconnect_case() {
  local size=$1 queues=$2 count=$3 pv_opts=${4:-}
  pair "queues=$queues${pv_opts:+,$pv_opts}" "queues=$queues"
  run_both "bidir size=$size queues=$queues" --mode bidir --verify --size "$size" --count "$count" --queues "$queues" \
    --stream 1 -- --mode bidir --verify --size "$size" --count "$count" --queues "$queues" --stream 2
  for l in "$WORK/pvgen.log" "$WORK/pktgen.log"; do
    expect_summary "$l" tx_packets "$count"
    expect_summary "$l" rx_packets "$count"
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
    expect_summary "$l" rx_reordered 0
    expect_summary "$l" result ok
  done
  expect_summary "$WORK/pvgen.log" ring pv
  grep -q "pvgen: device on .*queues $queues rx / $queues tx" "$WORK/pvgen.log" || fail "pvgen printed no device info"
  grep -q "pvgen: device stats: rx_packets=$count .* tx_packets=$count " "$WORK/pvgen.log" ||
    fail "the device's counters differ: $(grep 'device stats' "$WORK/pvgen.log")"
  stop_nicmuxd
  ! grep -E "p: .*(rx|tx)_dropped [1-9]" "$WORK/nicmuxd.log" || fail "nicmuxd dropped frames"
  echo "ok: bidir size=$size queues=$queues: $count frames each way, every byte verified by the other tool"
}
xconnect_case 64 1 20000
xconnect_case 1518 1 20000
xconnect_case 9000 1 5000 "buf_size=9216,mtu=9000"
xconnect_case 1518 4 20000

# 2. Reflectors: the sender checks its own frames on their way back.
pair "" ""
run_both "pvgen reflects" --mode reflect --count 20000 -- --mode bidir --verify --size 300 --count 20000 --stream 3
expect_summary "$WORK/pvgen.log" tx_packets 20000
expect_summary "$WORK/pktgen.log" rx_packets 20000
expect_summary "$WORK/pktgen.log" rx_bad 0
expect_summary "$WORK/pktgen.log" rx_lost 0
stop_nicmuxd
echo "ok: pvgen reflected 20000 frames of pktgen's, verified on their return"
pair "" ""
run_both "pktgen reflects" --mode bidir --verify --size 300 --count 20000 --stream 4 -- --mode reflect --count 20000
expect_summary "$WORK/pktgen.log" tx_packets 20000
expect_summary "$WORK/pvgen.log" rx_packets 20000
expect_summary "$WORK/pvgen.log" rx_bad 0
expect_summary "$WORK/pvgen.log" rx_lost 0
stop_nicmuxd
echo "ok: pktgen reflected 20000 frames of pvgen's, verified on their return"

# 3. TSO. The pv port's capabilities follow its uplink: pktgen (with --offloads: GUEST_TSO4/6)
#    must be connected before pvgen asks GET_INFO.
N=200
tso_case() {  # tso_case LABEL: pvgen sends TSO frames, pktgen receives them whole
  pair "buf_size=66560,uplink=v" ""
  start pktgen "$BIN/nicmux-pktgen" --socket "$VU" --mode rx --verify --offloads --count "$N" --duration 120 \
    --interval 0 --ring 1024
  local pg=$LAST_PID
  wait_log "$WORK/pktgen.log" connected 60 "$pg"
  wait_until 30 "the pv port to offer tcp_tso" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port caps p | grep -q tcp_tso"
  start pvgen "$BIN/nicmux-pvgen" --socket "$PV" --mode tx --tso 1448 --size 65000 --count "$N" --rate 300 \
    --duration 120 --interval 0
  local pv=$LAST_PID
  wait_pid "$pv" 150 || fail "TSO sender failed: $(tail -n 5 "$WORK/pvgen.log")"
  wait_pid "$pg" 150 || fail "TSO receiver failed: $(tail -n 5 "$WORK/pktgen.log")"
  grep -q "offloads tx: .*tcp_tso.*uplink: v" "$WORK/pvgen.log" || fail "pvgen did not see tcp_tso: $(grep offloads "$WORK/pvgen.log")"
  expect_summary "$WORK/pktgen.log" rx_packets "$N"
  expect_summary "$WORK/pktgen.log" rx_bad 0
  expect_summary "$WORK/pktgen.log" rx_lost 0
  stop_nicmuxd
  echo "ok: $N TSO frames of 65000 B from pvgen arrived whole at pktgen, every byte verified"

  # The switch drops the segments a full ring has no room for (a GSO frame is never held in
  # part), so the receiver must keep up: a 4096-slot ring holds 91 frames' segments, 0.9 s at
  # 100 frames/s (a 1024-slot ring at 300/s, 75 ms, lost segments to a TSan build's pvgen on a
  # busy machine).
  pair "ring=4096" ""
  start pvgen "$BIN/nicmux-pvgen" --socket "$PV" --mode rx --verify --count $((N * 45)) --duration 120 --interval 0
  local pv=$LAST_PID
  wait_log "$WORK/pvgen.log" connected 60 "$pv"
  start pktgen "$BIN/nicmux-pktgen" --socket "$VU" --mode tx --tso 1448 --size 65000 --count "$N" --rate 100 \
    --duration 120 --interval 0 --ring 1024
  local pg=$LAST_PID
  wait_pid "$pg" 150 || fail "TSO sender failed: $(tail -n 5 "$WORK/pktgen.log")"
  wait_pid "$pv" 150 || fail "segment receiver failed: $(tail -n 5 "$WORK/pvgen.log")"
  expect_summary "$WORK/pvgen.log" rx_packets $((N * 45))
  expect_summary "$WORK/pvgen.log" rx_bad 0
  expect_summary "$WORK/pvgen.log" rx_lost 0
  stop_nicmuxd
  echo "ok: $N TSO frames of 65000 B from pktgen arrived at pvgen as $((N * 45)) segments, checksums and bytes verified"
}
tso_case

# 4. Round trips.
pair "" ""
STOP_PKTGEN=1 run_both "pvgen pings" --mode ping --rate 2000 --count 2000 -- --mode reflect
expect_summary "$WORK/pvgen.log" rx_packets 2000
grep -q "^rtt samples=2000 " "$WORK/pvgen.log" || fail "pvgen ping: $(grep rtt "$WORK/pvgen.log")"
stop_nicmuxd
echo "ok: pvgen ping through pktgen reflect: $(grep -o 'rtt_p50_us=[0-9.]*' "$WORK/pvgen.log")"
pair "" ""
run_both "pktgen pings" --mode reflect --count 2000 -- --mode ping --rate 2000 --count 2000
expect_summary "$WORK/pktgen.log" rx_packets 2000
stop_nicmuxd
echo "ok: pktgen ping through pvgen reflect: $(grep -o 'rtt_p50_us=[0-9.]*' "$WORK/pktgen.log")"

# 5. Refusals, each naming what is wrong, and a host that goes away.
pair "" ""
expect_pvgen_refuses() {  # expect_pvgen_refuses PATTERN ARGS...
  local pat=$1; shift
  local rc=0
  "$BIN/nicmux-pvgen" --socket "$PV" --interval 0 "$@" >"$WORK/refused.log" 2>&1 || rc=$?
  [ $rc -eq 1 ] || fail "pvgen $* exited $rc: $(cat "$WORK/refused.log")"
  grep -q -- "$pat" "$WORK/refused.log" || fail "pvgen $*: no '$pat' in: $(cat "$WORK/refused.log")"
  echo "ok: refused: $(grep nicmux-pvgen: "$WORK/refused.log")"
}
expect_pvgen_refuses "queue pair(s) (the port's queues=)" --mode rx --queues 2
expect_pvgen_refuses "buffers hold 2048 bytes" --mode tx --size 4000
expect_pvgen_refuses "does not offer tcp_tso" --mode tx --tso 1448 --size 2000 --count 1
expect_pvgen_refuses "MAC_SET refused by the host" --mode rx --mac 00:00:00:00:00:00
rc=0
"$BIN/nicmux-pvgen" --socket "$WORK/nobody.sock" --mode rx >"$WORK/refused.log" 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q "connect $WORK/nobody.sock" "$WORK/refused.log" || fail "no host: $(cat "$WORK/refused.log")"
rc=0
"$BIN/nicmux-pvgen" --socket "$PV" --mode sideways >"$WORK/refused.log" 2>&1 || rc=$?
[ $rc -eq 2 ] || fail "a bad mode exited $rc"
# (Through a file: grep -q stops reading at its match, and a usage text longer than stdio's
# buffer then dies of SIGPIPE, which pipefail reports.)
"$BIN/nicmux-pvgen" --help >"$WORK/help.txt" && grep -q "^usage: nicmux-pvgen" "$WORK/help.txt" || fail "--help"
start pvgen "$BIN/nicmux-pvgen" --socket "$PV" --mode rx --duration 60 --interval 0
pv=$LAST_PID
wait_log "$WORK/pvgen.log" connected 60 "$pv"
stop_nicmuxd
rc=0
wait_pid "$pv" 30 || rc=$?
[ $rc -eq 1 ] || fail "pvgen exited $rc when the host went away"
grep -q "the host closed the connection" "$WORK/pvgen.log" || fail "pvgen: $(tail -n 3 "$WORK/pvgen.log")"
echo "ok: pvgen stops with an error when nicmuxd goes away"
