#!/usr/bin/env bash
# The scheduler (docs/scheduler.md) with real vhost-user frontends (nicmux-pktgen):
#   1. rebalancing: two heavy senders whose queues start on one of two workers end up on two
#      within a bounded time, and not one of their verified frames is lost meanwhile
#   2. isolation: kicks on one worker's queues do not wake the other worker
#   3. starvation: a flooding sender and a 1 kpps ping pinned to the same worker
#      (queue_affinity): every ping comes back; its p99 round trip is reported
#   4. idle: 64 idle frontends cost nicmuxd at most 1 % of a core
#   5. trickle: 32 senders at 200 packets/s each to 32 receivers (6.4 kpps): nicmuxd's CPU is
#      reported, and every frame arrives
#   6. wake-up: 100000 single-frame bursts at random (exponential) gaps, 20000/s on average,
#      into a worker that sleeps whenever it can: every one arrives, verified, none stuck
#   7. interrupt moderation (rx_usecs/tx_usecs of 5 ms on both ports): nothing is held: a 1 kpps ping and its
#      reflector, which sleeps on its receive interrupts between pings: every ping comes back
#      and the median round trip stays far below the 5 ms (a deferred signal is given when the
#      worker goes to sleep, not at its deadline); the interrupts given are counted
source "$(dirname "$0")/lib.sh"

pktgen() {  # pktgen NAME SOCKET MAC PEER_MAC [options]
  local name=$1 sock=$2 mac=$3 peer=$4; shift 4
  start "$name" "$BIN/nicmux-pktgen" --socket "$sock" --mac "$mac" --peer-mac "$peer" --interval 0 "$@"
}
sched_json() { ctl --json sched show; }
# worker_of PORT: the worker index polling PORT's queue 0.
worker_of() {
  sched_json | python3 -c "
import json,sys
d=json.load(sys.stdin)
for i,w in enumerate(d['workers']):
    for q in w['queues']:
        if q['port']=='$1' and q['queue']==0: print(i)"
}
kick_wakeups() { sched_json | python3 -c "import json,sys; print(json.load(sys.stdin)['workers'][$1]['kick_wakeups'])"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime, in clock ticks
HZ=$(getconf CLK_TCK)
mac() { printf '02:00:00:00:%02x:%02x' "$1" "$2"; }

# ---- 1. rebalancing under verified traffic
# Ports a, b, c, d: placement by fewest queues puts a and c on worker0, b and d on worker1.
nicmuxd --workers 2 --port "vhost-user:a:socket=$WORK/a.sock" --port "vhost-user:b:socket=$WORK/b.sock" \
  --port "vhost-user:c:socket=$WORK/c.sock" --port "vhost-user:d:socket=$WORK/d.sock"
wait_for "$CTL" 30
[ "$(worker_of a)" = 0 ] && [ "$(worker_of c)" = 0 ] || { ctl sched show; fail "a and c do not start on worker0"; }
N=300000
pktgen rb "$WORK/b.sock" "$(mac 1 2)" "$(mac 1 1)" --mode rx --verify --count $N --duration 120 --announce --ring 1024
RB=$LAST_PID
pktgen rd "$WORK/d.sock" "$(mac 1 4)" "$(mac 1 3)" --mode rx --verify --count $N --duration 120 --announce --ring 1024
RD=$LAST_PID
pktgen ta "$WORK/a.sock" "$(mac 1 1)" "$(mac 1 2)" --mode tx --count $N --duration 120 --rate 30000 --hold --announce
TA=$LAST_PID
pktgen tc "$WORK/c.sock" "$(mac 1 3)" "$(mac 1 4)" --mode tx --count $N --duration 120 --rate 30000 --hold --announce
TC=$LAST_PID
for p in rb rd ta tc; do wait_log "$WORK/$p.log" connected 60; done
fdb_has() { ctl fdb show | grep -q "$1"; }
for m in 1 2 3 4; do wait_until 60 "MAC $(mac 1 $m) learned" fdb_has "$(mac 1 $m)"; done
release "$TA" "$TC"
t0=$(date +%s)
moved() { [ "$(worker_of a)" != "$(worker_of c)" ]; }
wait_until 30 "a and c on two workers" moved
echo "ok: rebalanced within $(( $(date +%s) - t0 )) s: a on worker$(worker_of a), c on worker$(worker_of c)"
grep "scheduler: port" "$WORK/nicmuxd.log" | tail -n 2
ctl sched show
for p in "$TA" "$TC" "$RB" "$RD"; do wait_pid "$p" 150 || fail "a pktgen failed (see $WORK/*.log)"; done
for p in rb rd; do
  [ "$(summary_field "$WORK/$p.log" rx_packets)" = "$N" ] || fail "$p received $(summary_field "$WORK/$p.log" rx_packets) of $N"
done
echo "ok: $N verified frames each through the move, none lost"

# ---- 2. isolation: a trickle between two ports of one worker wakes only that worker
# a and c are on two workers now; b is on one of them: the sender is whichever shares it.
WB=$(worker_of b)
if [ "$(worker_of a)" = "$WB" ]; then X=a; else X=c; fi
OTHER=$((1 - WB))
k0=$(kick_wakeups "$OTHER") kx0=$(kick_wakeups "$WB")
pktgen rb2 "$WORK/b.sock" "$(mac 1 2)" "$(mac 1 1)" --mode rx --count 200 --duration 60 --announce
P1=$LAST_PID
pktgen tx2 "$WORK/$X.sock" "$(mac 1 1)" "$(mac 1 2)" --mode tx --count 200 --duration 60 --rate 100 --delay 1
P2=$LAST_PID
wait_pid "$P2" 90 && wait_pid "$P1" 90 || fail "the trickle did not arrive"
k1=$(kick_wakeups "$OTHER") kx1=$(kick_wakeups "$WB")
echo "ok: kick wake-ups during a 100 pps trickle $X->b: worker$WB (theirs) $((kx1 - kx0)), worker$OTHER $((k1 - k0))"
[ $((kx1 - kx0)) -ge 50 ] || fail "their worker was woken by kicks only $((kx1 - kx0)) times"
# The other worker's queues have no frontend sending now: nothing may kick it.
[ $((k1 - k0)) -eq 0 ] || fail "worker$OTHER, which polls neither $X nor b, was woken $((k1 - k0)) times by kicks"
stop_nicmuxd

# ---- 3. starvation: a flood and a 1 kpps ping on one worker (queue_affinity)
nicmuxd --workers 2 --port "vhost-user:a:socket=$WORK/a.sock,queue_affinity=0:0" \
  --port "vhost-user:b:socket=$WORK/b.sock,queue_affinity=0:1" \
  --port "vhost-user:c:socket=$WORK/c.sock,queue_affinity=0:0" \
  --port "vhost-user:d:socket=$WORK/d.sock,queue_affinity=0:1"
wait_for "$CTL" 30
ctl sched show | grep -q 'a/0\*' || fail "the pin is not shown"
pktgen fb "$WORK/b.sock" "$(mac 2 2)" "$(mac 2 1)" --mode rx --duration 60 --announce
FB=$LAST_PID
pktgen fa "$WORK/a.sock" "$(mac 2 1)" "$(mac 2 2)" --mode tx --duration 12 --hold --announce
FA=$LAST_PID
pktgen refl "$WORK/d.sock" "$(mac 2 4)" "$(mac 2 3)" --mode reflect --count 5000 --duration 60 --announce
RF=$LAST_PID
pktgen ping "$WORK/c.sock" "$(mac 2 3)" "$(mac 2 4)" --mode ping --rate 1000 --count 5000 --duration 30 --hold --announce
PG=$LAST_PID
for p in fb fa refl ping; do wait_log "$WORK/$p.log" connected 60; done
for m in 1 2 3 4; do wait_until 60 "MAC $(mac 2 $m) learned" fdb_has "$(mac 2 $m)"; done
release "$FA"
sleep 1
release "$PG"
wait_pid "$PG" 60 || fail "ping lost round trips behind a flood on its worker (see $WORK/ping.log)"
[ "$(summary_field "$WORK/ping.log" rx_packets)" = 5000 ] || fail "ping got $(summary_field "$WORK/ping.log" rx_packets) of 5000 back"
flood=$(ctl --json port show a | python3 -c "import json,sys; print(json.load(sys.stdin)['rx_packets'])")
echo "ok: 5000 of 5000 pings back behind a flood of $flood frames on the same worker: $(grep '^rtt' "$WORK/ping.log")"
kill "$FA" "$FB" "$RF" 2>/dev/null || true
stop_nicmuxd

# ---- 4. idle: 64 frontends attached, no traffic
ports=()
for i in $(seq 0 63); do ports+=(--port "vhost-user:p$i:socket=$WORK/p$i.sock"); done
nicmuxd "${ports[@]}"
wait_for "$CTL" 30
idle_pids=()
for i in $(seq 0 63); do
  pktgen "idle$i" "$WORK/p$i.sock" "$(mac 3 $i)" "$(mac 4 $i)" --mode rx --duration 60
  idle_pids+=("$LAST_PID")
done
for i in $(seq 0 63); do wait_log "$WORK/idle$i.log" connected 60; done
sleep 1
c0=$(cpu_ticks "$NICMUXD_PID")
sleep 10
c1=$(cpu_ticks "$NICMUXD_PID")
idle_pct=$(python3 -c "print(f'{100 * ($c1 - $c0) / $HZ / 10:.2f}')")
echo "ok: 64 idle frontends for 10 s: nicmuxd used $idle_pct % of a core"
# The target (1 % of a core) is for a release build (256 idle ports: docs/performance.md); ASan
# and the machine's slow state cost more: the bound here is 2 %.
python3 -c "import sys; sys.exit(0 if $idle_pct <= 2.0 else 1)" || fail "idle nicmuxd used $idle_pct % of a core (> 2 % under ASan)"
kill "${idle_pids[@]}" 2>/dev/null || true
for p in "${idle_pids[@]}"; do wait_pid "$p" 30 || true; done
sleep 1  # the ports see their frontends go

# ---- 5. trickle: 32 senders at 200 packets/s to 32 receivers
rx_pids=() tx_pids=()
for i in $(seq 0 31); do
  j=$((i + 32))
  pktgen "trx$i" "$WORK/p$j.sock" "$(mac 5 $j)" "$(mac 5 $i)" --mode rx --verify --count 2000 --duration 60 --announce --stream $j
  rx_pids+=("$LAST_PID")
done
for i in $(seq 0 31); do wait_log "$WORK/trx$i.log" connected 60; done
for i in $(seq 0 31); do wait_until 60 "MAC $(mac 5 $((i + 32))) learned" fdb_has "$(mac 5 $((i + 32)))"; done
for i in $(seq 0 31); do
  j=$((i + 32))
  pktgen "ttx$i" "$WORK/p$i.sock" "$(mac 5 $i)" "$(mac 5 $j)" --mode tx --rate 200 --count 2000 --duration 60 --stream $i
  tx_pids+=("$LAST_PID")
done
sleep 2
c0=$(cpu_ticks "$NICMUXD_PID")
sleep 5
c1=$(cpu_ticks "$NICMUXD_PID")
trickle_pct=$(python3 -c "print(f'{100 * ($c1 - $c0) / $HZ / 5:.2f}')")
for p in "${tx_pids[@]}" "${rx_pids[@]}"; do wait_pid "$p" 90 || fail "a trickle pktgen failed (see $WORK/ttx*.log, trx*.log)"; done
echo "ok: 32 x 200 packets/s (6.4 kpps), every frame verified: nicmuxd used $trickle_pct % of a core ($(sched_json | python3 -c "import json,sys; w=json.load(sys.stdin)['workers'][0]; print(w['wakeups'], 'wake-ups in all')"))"
# The target is 5 % for a release build (2.6-4.6 % measured, docs/performance.md); this ASan
# build costs about twice that, and the machine's slow state twice again: the bound is loose.
# A fixed 100 us poll window cost 12-13 % here.
python3 -c "import sys; sys.exit(0 if $trickle_pct <= 15.0 else 1)" || fail "the trickle cost nicmuxd $trickle_pct % of a core (> 15 % under ASan)"
stop_nicmuxd

# ---- 6. wake-up: single frames at random gaps (a Poisson process), none lost or stuck
nicmuxd --port "vhost-user:a:socket=$WORK/a.sock" --port "vhost-user:b:socket=$WORK/b.sock"
wait_for "$CTL" 30
pktgen wrx "$WORK/b.sock" "$(mac 6 2)" "$(mac 6 1)" --mode rx --verify --count 100000 --duration 90 --announce
WR=$LAST_PID
wait_log "$WORK/wrx.log" connected 60
wait_until 60 "MAC $(mac 6 2) learned" fdb_has "$(mac 6 2)"
pktgen wtx "$WORK/a.sock" "$(mac 6 1)" "$(mac 6 2)" --mode tx --poisson --rate 20000 --count 100000 --duration 90
WT=$LAST_PID
wait_pid "$WT" 120 && wait_pid "$WR" 120 || fail "single frames at random gaps: not all arrived (see $WORK/wrx.log)"
[ "$(summary_field "$WORK/wrx.log" rx_packets)" = 100000 ] || fail "received $(summary_field "$WORK/wrx.log" rx_packets) of 100000"
echo "ok: 100000 single frames at random gaps (20000/s on average) all arrived, verified; $(ctl --json sched show | python3 -c "import json,sys; w=json.load(sys.stdin)['workers'][0]; print(w['wakeups'], 'wake-ups')")"
stop_nicmuxd

# ---- 7. interrupt moderation: deferred signals are given before the worker sleeps
nicmuxd --port "vhost-user:c:socket=$WORK/c.sock,rx_usecs=5000,rx_frames=64,tx_usecs=5000" \
  --port "vhost-user:d:socket=$WORK/d.sock,rx_usecs=5000,rx_frames=64,tx_usecs=5000"
wait_for "$CTL" 30
pktgen refl "$WORK/d.sock" "$(mac 7 4)" "$(mac 7 3)" --mode reflect --count 3000 --duration 60 --announce
RF=$LAST_PID
pktgen ping "$WORK/c.sock" "$(mac 7 3)" "$(mac 7 4)" --mode ping --rate 1000 --count 3000 --duration 30 --hold --announce
PG=$LAST_PID
for p in refl ping; do wait_log "$WORK/$p.log" connected 60; done
for m in 3 4; do wait_until 60 "MAC $(mac 7 $m) learned" fdb_has "$(mac 7 $m)"; done
release "$PG"
wait_pid "$PG" 60 || fail "ping with moderated interrupts lost round trips (see $WORK/ping.log)"
[ "$(summary_field "$WORK/ping.log" rx_packets)" = 3000 ] || fail "ping got $(summary_field "$WORK/ping.log" rx_packets) of 3000 back"
p50=$(sed -n 's/^rtt .*rtt_p50_us=\([0-9.]*\).*/\1/p' "$WORK/ping.log")
irq=$(ctl --json port show d | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['rx_interrupts'], d['tx_interrupts'], d['interrupts_coalesced'])")
echo "ok: 3000 of 3000 pings back through ports with 5 ms interrupt moderation: $(grep '^rtt' "$WORK/ping.log"); reflector's port: rx/tx interrupts, coalesced: $irq"
# Deferred to their 5 ms deadline, or to the next ping's kick, the median would be >= 1 ms.
python3 -c "import sys; sys.exit(0 if float('$p50') < 1000 else 1)" || fail "moderated signals waited for their deadline: p50 $p50 us"
[ "$(echo "$irq" | cut -d' ' -f1)" -gt 0 ] || fail "the reflector's port gave no receive interrupt"
kill "$RF" 2>/dev/null || true
stop_nicmuxd
