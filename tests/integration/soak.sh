#!/usr/bin/env bash
# Soak (the suite's long mode only: NICMUX_LONG=1, e.g. `scripts/test --long`; skipped
# otherwise, exit status 77): nicmuxd under mixed traffic for SOAK_SECS (default 600) while
# ports come and go every second and a live upgrade happens once a minute.
#   - two QEMU guests (stock virtio_net; a: QEMU server=on, b: QEMU connects) ping each other
#     every 10 ms, and the host pings guest b through a TAP port every 10 ms;
#   - two nicmux-pktgen endpoints (split and packed rings, two queue pairs each) send each
#     other verified frames (sequence numbers, every payload byte) at 20 kpps each way;
#   - every second a vhost-user port and a TAP port are added and the previous pair removed;
#     once a minute, instead, `nicmuxctl upgrade` hands everything to a new process.
# At the end every packet is accounted for: each endpoint received every frame the other sent,
# once and in order, except those nicmuxd counted as dropped at their ingress port (a receiver
# starved of CPU for long runs out of hold credit: docs/switch.md "Backpressure"; on an idle
# machine there are none); the pings got through in every round (their losses are reported:
# a TCG guest starved of CPU drops in its own stack, which nicmuxd cannot count); nicmuxd's
# open fds are what they were after the first minute and its RSS grew by less than 16 MiB; no
# sanitizer report in any log.
source "$(dirname "$0")/lib.sh"
if [ "${NICMUX_LONG:-0}" != 1 ]; then
  echo "SKIP: the soak runs in the suite's long mode only (NICMUX_LONG=1)"
  exit 77
fi
SECS=${SOAK_SECS:-600}
ROUNDS=$(((SECS + 59) / 60))
RATE=20000
COUNT=$((RATE * ROUNDS * 60))
guest_image

tap=nmxs$$
tap=${tap:0:15}
del_links() {
  ip link del "$tap" 2>/dev/null || true
  for l in $(ip -o link show | grep -o "nmk$$x[0-9]*" | sort -u); do ip link del "$l" 2>/dev/null || true; done
}
CLEANUP_HOOKS+=(del_links)

guest a "$WORK/qa.sock" 10.0.0.1/24 --socket-mode server --timeout $((SECS + 600))
wait_for "$WORK/qa.sock" 60
nicmuxd --port "vhost-user:a:socket=$WORK/qa.sock,client" --port "vhost-user:b:socket=$WORK/b.sock" \
  --port "vhost-user:p1:socket=$WORK/p1.sock,queues=2" --port "vhost-user:p2:socket=$WORK/p2.sock,queues=2" \
  --port "tap:t0:ifname=$tap,address=10.0.0.100/24"
wait_for "$WORK/b.sock" 30
guest b "$WORK/b.sock" 10.0.0.2/24 --reconnect 1 --timeout $((SECS + 600))
wait_agent a; wait_agent b
gexec a 'ping -c 3 -W 5 10.0.0.2' >/dev/null || fail "ping a -> b"
ping -c 3 -W 5 -I "$tap" 10.0.0.2 >/dev/null || fail "ping host -> b through $tap"
echo "ok: two guests up, the host on $tap; ${ROUNDS} round(s) of 60 s"

start pg1 "$BIN/nicmux-pktgen" --socket "$WORK/p1.sock" --mode bidir --verify --count "$COUNT" --rate "$RATE" \
  --queues 2 --duration $((SECS + 60)) --interval 0 --stream 1 --mac 02:00:00:00:0a:01 --peer-mac 02:00:00:00:0b:02 \
  --announce --hold
p1=$LAST_PID
start pg2 "$BIN/nicmux-pktgen" --socket "$WORK/p2.sock" --mode bidir --verify --count "$COUNT" --rate "$RATE" \
  --queues 2 --packed --duration $((SECS + 60)) --interval 0 --stream 2 --mac 02:00:00:00:0b:02 --peer-mac 02:00:00:00:0a:01 \
  --announce --hold
p2=$LAST_PID
wait_log "$WORK/pg1.log" connected 60 "$p1"
wait_log "$WORK/pg2.log" connected 60 "$p2"
release "$p1" "$p2"

fds() { ls "/proc/$NICMUXD_PID/fd" | wc -l; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$NICMUXD_PID/status"; }
# counted_drops: every drop nicmuxd counted on the ports the pings cross.
counted_drops() {
  local n=0 p d
  for p in a b t0; do
    d=$(ctl --json port show $p | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['rx_dropped'] + d['tx_dropped'])")
    n=$((n + d))
  done
  echo $n
}
ping_sent=0 ping_got=0 upgrades=0 churned=0 fd0= rss0=
drops0=$(counted_drops)
for ((r = 1; r <= ROUNDS; r++)); do
  # 5000 pings at 10 ms: 50 s of each round (gexec's own limit is 180 s).
  gexec a 'ping -c 5000 -i 0.01 -W 2 10.0.0.2' >"$WORK/ping_a$r.log" 2>&1 &
  pa=$!
  ping -c 5000 -i 0.01 -W 2 -I "$tap" 10.0.0.2 >"$WORK/ping_h$r.log" 2>&1 &
  ph=$!
  PIDS+=("$pa" "$ph")
  for ((s = 0; s < 60; s++)); do
    t0=$(date +%s.%N)
    if [ $s = 30 ]; then
      upgrade_nicmuxd
      upgrades=$((upgrades + 1))
      echo "ok: round $r: upgrade $upgrades: pid $NICMUXD_PID, forwarding paused $UPGRADE_PAUSED_US us"
    else
      n=${r}x$s k=nmk$$x$((churned % 10))
      ctl port add "vhost-user:c$n:socket=$WORK/c$n.sock" >/dev/null || fail "round $r: port add c$n"
      ctl port add "tap:k$n:ifname=$k" >/dev/null || fail "round $r: port add tap $k"
      if [ -n "${prev:-}" ]; then
        ctl port del "c$prev" >/dev/null || fail "round $r: port del c$prev"
        ctl port del "k$prev" >/dev/null || fail "round $r: port del k$prev"
      fi
      prev=$n
      churned=$((churned + 1))
    fi
    sleep "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { d = 1 - (b - a); print (d > 0 ? d : 0) }')"
  done
  wait "$pa" || true
  wait "$ph" || true
  for l in "$WORK/ping_a$r.log" "$WORK/ping_h$r.log"; do
    s=$(grep -oE '[0-9]+ packets transmitted' "$l" | grep -oE '^[0-9]+' || echo 0)
    g=$(grep -oE '[0-9]+ (packets )?received' "$l" | grep -oE '^[0-9]+' || echo 0)
    [ "${g:-0}" -gt 0 ] || fail "round $r: no ping answered ($l): $(tail -n 3 "$l")"
    ping_sent=$((ping_sent + s)) ping_got=$((ping_got + g))
  done
  kill -0 "$NICMUXD_PID" || fail "round $r: nicmuxd $NICMUXD_PID is gone"
  if [ $r = 1 ]; then fd0=$(fds) rss0=$(rss_kib); fi
  echo "ok: round $r: pings $ping_got of $ping_sent answered so far; $churned port pairs added and removed;" \
    "nicmuxd fds $(fds), RSS $(($(rss_kib) / 1024)) MiB"
done
[ -z "${prev:-}" ] || { ctl port del "c$prev" >/dev/null; ctl port del "k$prev" >/dev/null; }

# (An endpoint that lost frames exits with status 1: the accounting below decides.)
wait_pid "$p1" $((SECS + 300)) || grep -q '^summary' "$WORK/pg1.log" || fail "pktgen 1: $(tail -n 3 "$WORK/pg1.log")"
wait_pid "$p2" $((SECS + 300)) || grep -q '^summary' "$WORK/pg2.log" || fail "pktgen 2: $(tail -n 3 "$WORK/pg2.log")"
# pg1 sends into p1 and receives from p2; what it lost, p2 counted as dropped (and the other way).
rxd() { ctl --json port show "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['rx_dropped'])"; }
d1=$(rxd p1) d2=$(rxd p2)
for e in pg1:$d2 pg2:$d1; do
  l=$WORK/${e%%:*}.log
  expect_summary "$l" tx_packets "$COUNT"
  expect_summary "$l" rx_bad 0
  expect_summary "$l" rx_reordered 0
  got=$(summary_field "$l" rx_packets) lost=$(summary_field "$l" rx_lost)
  [ $((got + lost)) -eq "$COUNT" ] && [ "$lost" -eq "${e#*:}" ] ||
    fail "${e%%:*}: received $got and lost $lost of $COUNT; nicmuxd counted ${e#*:} dropped at the sender's port"
done
lost=$((ping_sent - ping_got)) drops=$(($(counted_drops) - drops0))
[ "$ping_sent" -gt 0 ] || fail "no ping was sent"
fd1=$(fds) rss1=$(rss_kib)
[ "$fd1" -le "$fd0" ] || fail "nicmuxd's fds grew from $fd0 (after round 1) to $fd1"
[ $((rss1 - rss0)) -lt 16384 ] || fail "nicmuxd's RSS grew by $(((rss1 - rss0) / 1024)) MiB (from $((rss0 / 1024)))"
if grep -l "AddressSanitizer\|LeakSanitizer\|ThreadSanitizer\|runtime error:" "$WORK"/*.log; then
  fail "a sanitizer report (the files above)"
fi
echo "ok: soak ${SECS} s: $COUNT frames each way between the pktgens, none duplicated or reordered, every one" \
  "received or counted dropped (dropped $d1 / $d2, a starved receiver); pings $ping_got of $ping_sent answered" \
  "($lost unanswered; nicmuxd counted $drops drops on a, b, t0); $upgrades upgrades;" \
  "$churned vhost-user + TAP port pairs added and removed; fds $fd0 -> $fd1, RSS $((rss0 / 1024)) -> $((rss1 / 1024)) MiB"
stop_nicmuxd
echo PASS
