#!/usr/bin/env bash
# Live upgrade of virtio-user ports (docs/virtio-user.md "Live upgrade"): nicmuxd 1 is the
# frontend of nicmuxd 2 through a virtio-user port; each has a vhost-user port with a
# nicmux-pktgen endpoint, and verified frames pass both ways:
#   pktgen a <-> nicmuxd 1 [a, vu: virtio-user] <-> [up: vhost-user, b] nicmuxd 2 <-> pktgen b
# With split rings: nicmuxd 1 (the frontend side) upgraded twice, with a failed attempt
# between, then nicmuxd 2 (the backend side) once; with packed rings: nicmuxd 1 twice. The
# backend never sees a message or a reconnect (its port keeps one connection), no frame is
# dropped across an upgrade (the counted drops of both switches do not move), and every frame
# arrives once and in order, or is one a switch counted dropped. Prints the pauses and gaps.
source "$(dirname "$0")/lib.sh"

CTL2=$WORK/n2.ctl
RATE=${RATE:-2000} COUNT=${COUNT:-24000}  # 12 s each way per phase (a rate the rings absorb a slow ASan upgrade at, on a busy machine)
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
# drops CTL: every frame the switch counted dropped (all ports, all reasons but port_down:
# the announcements sent before the far endpoint is attached).
drops() {
  "$BIN/nicmuxctl" --socket "$1" --json port list | python3 -c '
import json, sys
d = json.load(sys.stdin)
ports = d if isinstance(d, list) else d.get("ports", [])
print(sum(sum(v for k, v in p.get("drops", {}).items() if k != "port_down") for p in ports))'
}
pauses=()
# up N CTL: a live upgrade of nicmuxd N; the drops of both switches must not move across it.
up() {
  local n=$1 c=$2 d0 d1 out pid old
  d0=$(($(drops "$CTL") + $(drops "$CTL2")))
  old=$(cat "$WORK/pid$n")
  out=$("$BIN/nicmuxctl" --socket "$c" --json upgrade) || fail "upgrade of nicmuxd $n: $out"
  pid=$(json_field "['pid']" <<<"$out")
  wait_until 10 "exit of nicmuxd $n's old process $old" bash -c "! kill -0 $old 2>/dev/null"
  PIDS+=("$pid")
  echo "$pid" >"$WORK/pid$n"
  d1=$(($(drops "$CTL") + $(drops "$CTL2")))
  pauses+=("$(json_field "['paused_us']" <<<"$out")")
  [ "$d1" = "$d0" ] || fail "upgrade of nicmuxd $n ($old -> $pid): the switches dropped $((d1 - d0)) frame(s)"
  echo "ok: nicmuxd $n upgraded $old -> $pid, forwarding paused ${pauses[-1]} us, no drop"
}

phase() {
  local ring=$1; shift
  local packed=
  [ "$ring" = packed ] && packed=",packed"
  local pk=
  [ "$ring" = packed ] && pk=--packed
  start "n2.$ring" "$BIN/nicmuxd" --log-level info --control "$CTL2" ${NICMUX_SECCOMP:+--seccomp=$NICMUX_SECCOMP} --port "vhost-user:up:socket=$WORK/up.sock,queues=2" \
    --port "vhost-user:b:socket=$WORK/b.sock,queues=2"
  echo "$LAST_PID" >"$WORK/pid2"
  wait_for "$WORK/up.sock" 30
  start "n1.$ring" "$BIN/nicmuxd" --log-level info --control "$CTL" ${NICMUX_SECCOMP:+--seccomp=$NICMUX_SECCOMP} --port "vhost-user:a:socket=$WORK/a.sock,queues=2" \
    --port "virtio-user:vu:socket=$WORK/up.sock,queues=2$packed"
  echo "$LAST_PID" >"$WORK/pid1"
  wait_for "$WORK/a.sock" 30
  for e in a b; do
    if [ $e = a ]; then mac=02:00:00:00:0a:01 peer=02:00:00:00:0b:02 s=1; else mac=02:00:00:00:0b:02 peer=02:00:00:00:0a:01 s=2; fi
    start "pg_$e.$ring" "$BIN/nicmux-pktgen" --socket "$WORK/$e.sock" --mode bidir --verify --count "$COUNT" --rate "$RATE" \
      --queues 2 $pk --ring 1024 --duration 25 --interval 0 --stream $s --mac $mac --peer-mac $peer --announce --hold --yield
    eval "p$e=\$LAST_PID"
  done
  wait_log "$WORK/pg_a.$ring.log" connected 60 "$pa"
  wait_log "$WORK/pg_b.$ring.log" connected 60 "$pb"
  sleep 0.5
  release "$pa" "$pb"
  sleep 1.5
  local step
  for step in "$@"; do
    case $step in
      1) up 1 "$CTL" ;;
      2) up 2 "$CTL2" ;;
      false)
        local rc=0
        "$BIN/nicmuxctl" --socket "$CTL" upgrade /bin/false >"$WORK/false.txt" 2>&1 || rc=$?
        [ $rc -eq 1 ] && grep -q "goes on serving" "$WORK/false.txt" || fail "upgrade /bin/false: status $rc: $(cat "$WORK/false.txt")"
        echo "ok: refused: $(tail -n 1 "$WORK/false.txt")" ;;
    esac
    sleep 1
  done
  # (An endpoint that lost frames exits with status 1: the accounting below decides.)
  wait_pid "$pa" 60 || grep -q '^summary' "$WORK/pg_a.$ring.log" || fail "$ring: pktgen a: $(tail -n 3 "$WORK/pg_a.$ring.log")"
  wait_pid "$pb" 60 || grep -q '^summary' "$WORK/pg_b.$ring.log" || fail "$ring: pktgen b: $(tail -n 3 "$WORK/pg_b.$ring.log")"
  local d lost=0 l
  d=$(($(drops "$CTL") + $(drops "$CTL2")))
  for l in "$WORK/pg_a.$ring.log" "$WORK/pg_b.$ring.log"; do
    expect_summary "$l" tx_packets "$COUNT"
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_reordered 0
    lost=$((lost + $(summary_field "$l" rx_lost)))
    [ $(($(summary_field "$l" rx_packets) + $(summary_field "$l" rx_lost))) -eq "$COUNT" ] || fail "$ring: $l: $(grep '^summary' "$l")"
  done
  [ "$lost" -eq "$d" ] || fail "$ring: the endpoints lost $lost frame(s), the switches counted $d dropped"
  local conns
  conns=$("$BIN/nicmuxctl" --socket "$CTL2" --json port show up | json_field "['connections']")
  [ "$conns" = 1 ] || fail "$ring: nicmuxd 2's port up had $conns connections: the frontend reconnected"
  echo "ok: virtio-user ($ring rings): $COUNT frames each way through upgrades $*: none lost in an upgrade," \
    "duplicated or reordered ($lost dropped outside them, counted); one connection throughout; longest gap" \
    "a: $(summary_field "$WORK/pg_a.$ring.log" rx_max_gap_us) us, b: $(summary_field "$WORK/pg_b.$ring.log" rx_max_gap_us) us"
  for n in 1 2; do
    kill -TERM "$(cat "$WORK/pid$n")"
    wait_until 30 "exit of nicmuxd $n" bash -c "! kill -0 $(cat "$WORK/pid$n") 2>/dev/null"
  done
}

phase split 1 false 1 2
phase packed 1 1
echo "ok: pauses ${pauses[*]} us"
echo PASS
