#!/usr/bin/env bash
# Flow rules on a pv device through DPDK's rte_flow: Debian's unmodified dpdk-testpmd with the
# PMD net_nicmux_pv (loaded with -d) on a pv device with two rx queues; nicmux-pktgen sends
# IPv4/UDP frames through nicmuxd, whose cross-connect hands every frame to the device's queue 0:
#
#   pktgen --udp PORT <-> vhost-user pga <-> [nicmuxd xconnect] <-> pv p0 (queues=2, flows=3)
#                                                                    <-> testpmd port 0, rxq 2
#
#   1. `flow create 0 ingress pattern eth / ipv4 / udp dst is 4789 / end actions queue index 1
#      / end`: the 3000 frames to port 4789 arrive on rx queue 1, the 2000 to port 53 on queue 0
#      (testpmd's per-queue xstats, exact); `nicmuxctl pv flows p0` lists the rule, its 3000
#      hits, "software";
#   2. `flow destroy`: 1000 frames to 4789 stay on queue 0;
#   3. a drop rule: 500 frames to 4789 dropped (nicmuxd's flow_drop: 500), 700 to 53 delivered;
#   4. mark + queue: each frame testpmd prints (verbose) carries "FDIR matched ID=0x4d";
#      rss over queues 0 and 1 (types ipv4-udp): 1024 frames from 256 source ports spread over
#      both queues (with only the addresses hashed, testpmd's default "ip", they would not), with
#      a hash;
#   5. refusals with their reasons: an sctp item, a count action, queue 5 (the PMD's), and a
#      fourth rule where the port takes three (nicmuxd's reason: flows=3).
# The PMD runs under the build's sanitizers (their runtimes preloaded into testpmd).
source "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

"$ROOT/scripts/install-deps" || fail "scripts/install-deps failed"
"$ROOT/scripts/dpdk-driver-sdk" >/dev/null || fail "scripts/dpdk-driver-sdk failed (DPDK's driver headers)"
PMD=${NICMUX_PV_PMD:?NICMUX_PV_PMD must name librte_net_nicmux_pv.so of this build}
BUILD=${NICMUX_BUILD_DIR:?NICMUX_BUILD_DIR must name the build directory}
cmake --build "$BUILD" --target rte_net_nicmux_pv >"$WORK/pmd-build.log" 2>&1 || {
  cmake "$BUILD" >"$WORK/pmd-configure.log" 2>&1 || fail "configuring $BUILD: $(tail -n 5 "$WORK/pmd-configure.log")"
  cmake --build "$BUILD" --target rte_net_nicmux_pv >"$WORK/pmd-build.log" 2>&1 ||
    fail "building rte_net_nicmux_pv: $(tail -n 20 "$WORK/pmd-build.log")"
}
[ -f "$PMD" ] || fail "$PMD was not built"
# DPDK loads a -d plugin only from a directory no one else may write to (see pv_testpmd.sh).
PMD_DIR=$(mktemp -d /run/nicmux-pmd.XXXXXX)
rm_pmd_dir() { rm -rf "$PMD_DIR"; }
CLEANUP_HOOKS+=(rm_pmd_dir)
cp "$PMD" "$PMD_DIR/" || fail "copying $PMD to $PMD_DIR"
PMD=$PMD_DIR/$(basename "$PMD")
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"
PRELOAD=${NICMUX_PV_PMD_PRELOAD:-}
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1

S=$WORK
nicmuxd --forward xconnect --port "vhost-user:pga:socket=$S/pga.sock" --port "pv:p0:socket=$S/p0.sock,queues=2,flows=3"
wait_for "$S/p0.sock" 60
wait_for "$S/pga.sock" 30

rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
exec 7<>"$WORK/tp.in"
start_with_input testpmd "$WORK/tp.in" env LD_PRELOAD="$PRELOAD" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" \
  --file-prefix="npf$$" --lcores 0@0,1@1 -d "$PMD" --vdev "net_nicmux_pv0,socket=$S/p0.sock" \
  -- -i --nb-cores=1 --rxq=2 --txq=2 --total-num-mbufs=16384
tp=$LAST_PID
TPLOG=$WORK/testpmd.log

# tp MARKER CMD...: the commands, then `show port summary all` as a sentinel; waits for it and
# MARKER in what testpmd printed since (in $WORK/tp.out).
tp() {
  local marker=$1 from deadline
  shift
  from=$(stat -c %s "$TPLOG")
  printf '%s\n' "$@" 'show port summary all' >&7
  deadline=$(($(date +%s) + 60))
  while :; do
    tail -c +$((from + 1)) "$TPLOG" >"$WORK/tp.out"
    if grep -aq "Number of available ports" "$WORK/tp.out" && grep -aqE -- "$marker" "$WORK/tp.out"; then return 0; fi
    kill -0 "$tp" 2>/dev/null || fail "testpmd exited: $(tail -n 20 "$TPLOG")"
    [ "$(date +%s)" -le "$deadline" ] || fail "testpmd printed no '$marker' after: $*: $(cat "$WORK/tp.out")"
    sleep 0.1
  done
}
expect_tp() { grep -aqE -- "$1" "$WORK/tp.out" || fail "testpmd's output lacks '$1': $(cat "$WORK/tp.out")"; }
# send PORT COUNT: pktgen sends COUNT IPv4/UDP frames to PORT through nicmuxd, all of them.
send() {
  start pg "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mode tx --udp "$1" --size 64 --count "$2" \
    --rate 20000 --duration 60 --interval 0
  wait_pid "$LAST_PID" 90 || fail "pktgen --udp $1: $(tail -n 3 "$WORK/pg.log")"
  expect_summary "$WORK/pg.log" tx_packets "$2"
}
# queues Q0 Q1: testpmd's rx queue counts (xstats, from nicmuxd's STATS_GET) become exactly
# Q0 and Q1 (waits for frames still on their way), then clears them.
queues() {
  local deadline=$(($(date +%s) + 30)) q0 q1
  while :; do
    tp "rx_q1_packets" 'show port xstats 0'
    q0=$(grep -ao "rx_q0_packets: [0-9]*" "$WORK/tp.out" | grep -o "[0-9]*$")
    q1=$(grep -ao "rx_q1_packets: [0-9]*" "$WORK/tp.out" | grep -o "[0-9]*$")
    [ "$q0" = "$1" ] && [ "$q1" = "$2" ] && break
    if [ "$(date +%s)" -gt "$deadline" ] || [ "$q0" -gt "$1" ] || [ "$q1" -gt "$2" ]; then
      fail "rx queues got $q0 and $q1 frames, not $1 and $2: $(grep -a 'rx_q\|imissed\|rx_missed' "$WORK/tp.out")"
    fi
    sleep 0.5
  done
  tp "NIC statistics for port 0 cleared|xstats" 'clear port xstats 0'
}

# create PATTERN-AND-ACTIONS: `flow create 0 ...` must succeed; the rule's number in RULE.
create() {
  tp "Flow rule #[0-9]+ created|Caught PMD error" "flow create 0 $*"
  RULE=$(grep -ao "Flow rule #[0-9]* created" "$WORK/tp.out" | grep -o "[0-9][0-9]*")
  [ -n "$RULE" ] || fail "flow create 0 $*: $(cat "$WORK/tp.out")"
}
destroy() {
  tp "Flow rule #$RULE destroyed|Caught PMD error" "flow destroy 0 rule $RULE"
  expect_tp "Flow rule #$RULE destroyed"
}

wait_log "$TPLOG" "testpmd> " 60 "$tp"
tp "Infos for port 0" 'show port info 0'
expect_tp "^Driver name: net_nicmux_pv\$"
expect_tp "^Current number of RX queues: 2\$"
tp "Receive only|rxonly" 'set fwd rxonly' 'start'

# ---- 1. queue 1 for UDP port 4789
create ingress pattern eth / ipv4 / udp dst is 4789 / end actions queue index 1 / end
ctl pv flows p0 >"$WORK/flows.txt" || fail "nicmuxctl pv flows p0 failed"
grep -qE "software +eth / ipv4 / udp dst is 4789 -> queue 1" "$WORK/flows.txt" || fail "nicmuxctl: $(cat "$WORK/flows.txt")"
send 4789 3000
send 53 2000
queues 2000 3000
ctl pv flows p0 >"$WORK/flows.txt"
grep -qE "^ +[0-9]+ +0 +3000 +software +eth / ipv4 / udp dst is 4789 -> queue 1$" "$WORK/flows.txt" ||
  fail "the rule's hits are not 3000: $(cat "$WORK/flows.txt")"
echo "ok: 3000 frames to udp 4789 on rx queue 1, 2000 to udp 53 on queue 0; nicmuxctl pv flows: $(tail -n 1 "$WORK/flows.txt" | tr -s ' ')"

# ---- 2. destroyed: the switch's queue again
destroy
send 4789 1000
queues 1000 0
ctl pv flows p0 | grep -q "0 flow rules" || fail "a rule left: $(ctl pv flows p0)"
echo "ok: flow destroy: 1000 frames to udp 4789 stay on queue 0"

# ---- 3. drop
create ingress pattern eth / ipv4 / udp dst is 4789 / end actions drop / end
send 4789 500
send 53 700
queues 700 0
ctl port show p0 >"$WORK/p0.txt"
grep -qE "flow_drop: +500$" "$WORK/p0.txt" || fail "nicmuxd did not count 500 flow drops: $(cat "$WORK/p0.txt")"
destroy
echo "ok: drop rule: 500 frames to udp 4789 dropped, nicmuxd counts $(grep flow_drop "$WORK/p0.txt" | tr -s ' ')"

# ---- 4. mark with queue, then rss over both queues
create ingress pattern eth / ipv4 / udp dst is 4789 / end actions mark id 77 / queue index 1 / end
tp "verbose" 'set verbose 1'
from=$(stat -c %s "$TPLOG")
send 4789 5
queues 0 5
tail -c +$((from + 1)) "$TPLOG" >"$WORK/verbose.out"
n=$(grep -ac "FDIR matched ID=0x4d" "$WORK/verbose.out")
[ "$n" = 5 ] || fail "$n frames carried the mark 77, not 5: $(grep -a -m3 -A2 "port 0/queue" "$WORK/verbose.out")"
tp "verbose" 'set verbose 0'
destroy
create ingress pattern eth / ipv4 / udp / end actions rss types ipv4-udp end queues 0 1 end / end
send 9 1024
deadline=$(($(date +%s) + 30))
while :; do
  tp "rx_q1_packets" 'show port xstats 0'
  q0=$(grep -ao "rx_q0_packets: [0-9]*" "$WORK/tp.out" | grep -o "[0-9]*$")
  q1=$(grep -ao "rx_q1_packets: [0-9]*" "$WORK/tp.out" | grep -o "[0-9]*$")
  [ $((q0 + q1)) = 1024 ] && break
  [ "$(date +%s)" -le "$deadline" ] || fail "rss: $q0 + $q1 frames, not 1024"
  sleep 0.5
done
[ "$q0" -gt 100 ] && [ "$q1" -gt 100 ] || fail "rss did not spread 256 flows over both queues: $q0 and $q1"
tp "xstats" 'clear port xstats 0'
destroy
echo "ok: mark 77 on each frame (FDIR matched ID=0x4d); rss over queues 0 and 1: $q0 + $q1 frames"

# ---- 5. refusals, each with its reason
tp "Caught PMD error|Flow rule" 'flow create 0 ingress pattern eth / ipv4 / sctp / end actions queue index 1 / end'
expect_tp "item sctp \(type [0-9]+\) is not offered: nicmuxd matches eth, vlan, ipv4, ipv6, tcp, udp"
tp "Caught PMD error|Flow rule" 'flow create 0 ingress pattern eth / ipv4 / udp / end actions count / end'
expect_tp "action type [0-9]+ is not offered: nicmuxd does queue, drop, mark, rss"
tp "Caught PMD error|Flow rule" 'flow validate 0 ingress pattern eth / ipv4 / udp dst is 4789 / end actions queue index 5 / end'
expect_tp "action queue 5: the port has 2 rx queues"
tp "Caught PMD error|Flow rule" 'flow create 0 ingress pattern eth / ipv4 / tcp / end actions queue index 1 / end' \
  'flow create 0 ingress pattern eth / ipv6 / end actions queue index 1 / end' \
  'flow create 0 ingress pattern eth / ipv4 / udp dst is 1 / end actions drop / end' \
  'flow create 0 ingress pattern eth / ipv4 / udp dst is 2 / end actions drop / end'
expect_tp "FLOW_CREATE refused by the host: FLOW_CREATE: the device has its 3 rules \(flows=3\)"
grep -a "not offered\|refused\|rx queues" "$TPLOG" | sed 's/^/  /' | sort -u
tp "Flow rule|flushed|testpmd" 'flow flush 0'
ctl pv flows p0 | grep -q "0 flow rules" || fail "flush left rules: $(ctl pv flows p0)"
echo "ok: refused with reasons: an sctp item, a count action, queue 5 (the PMD), a fourth rule (nicmuxd: flows=3); flow flush"

printf 'stop\nquit\n' >&7
exec 7>&-
wait_pid "$tp" 30 || fail "testpmd exited with an error: $(tail -n 20 "$TPLOG")"
grep -aq "ERROR: AddressSanitizer\|runtime error:" "$TPLOG" && fail "a sanitizer report in testpmd: $(grep -a -A20 'ERROR: AddressSanitizer\|runtime error:' "$TPLOG")"
echo "ok: testpmd quit cleanly (no sanitizer report)"
stop_nicmuxd
