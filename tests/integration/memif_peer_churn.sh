#!/usr/bin/env bash
# A memif peer that goes away while nicmuxd polls its device under traffic (docs/dpdk.md
# "A peer that goes away"): DPDK 22.11's memif PMD unmaps the peer's regions in its interrupt
# thread while the poller may be inside rte_eth_rx_burst/tx_burst on them; nicmuxd must hold
# the unmapping until its workers have left the device (src/port/dpdk_unmap_guard.cc).
#
#   pktgen A -> [nicmuxd, xconnect] -> dpdk port d0 (net_memif0, server) <-> testpmd macswap
#
# ROUNDS times: testpmd connects, frames flow both ways for a moment, testpmd is killed
# (SIGKILL: its socket closes under the traffic) or quits; nicmuxd must serve on each time,
# d0's link must come back with the next testpmd, and frames must flow again. Two busy loops
# (nice 5) share the CPUs: a worker preempted inside a burst is what the race needs. Without
# the hold, nicmuxd died within 12 rounds (SIGSEGV in the memif PMD's tx burst).
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"
ROUNDS=${ROUNDS:-12}
S=$WORK
for i in 1 2; do start "hog$i" nice -n 5 sh -c 'while :; do :; done'; done
nicmuxd --forward xconnect --port "vhost-user:pga:socket=$S/pga.sock" \
  --port "dpdk:d0:devargs=net_memif0;role=server;socket=$S/m0.sock;socket-abstract=no"
wait_for "$S/pga.sock" 60
wait_for "$S/m0.sock" 30
start pg "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mode tx --size 64 --duration 600 \
  --interval 0 --rate 200000 --ring 1024
pg=$LAST_PID
wait_log "$WORK/pg.log" connected 60 "$pg"
rx_of() { ctl --json port show d0 | python3 -c "import json,sys; print(json.load(sys.stdin)['rx_packets'])"; }
for ((r = 1; r <= ROUNDS; r++)); do
  rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
  exec 7<>"$WORK/tp.in"
  start_with_input "testpmd$r" "$WORK/tp.in" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmc$$r$r" \
    --lcores 0@0,1@1 --vdev "net_memif0,role=client,socket=$S/m0.sock,socket-abstract=no" \
    -- -i --nb-cores=1 --total-num-mbufs=16384
  tp=$LAST_PID
  printf 'set fwd macswap\nstart\n' >&7
  wait_log "$WORK/testpmd$r.log" "macswap packet forwarding" 60 "$tp"
  wait_until 30 "d0 linked to testpmd (round $r)" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port list | grep -q '^d0 .*link up'"
  rx0=$(rx_of)
  wait_until 20 "frames back from testpmd on d0 (round $r)" sh -c "[ \$('$BIN/nicmuxctl' --socket '$CTL' --json port show d0 | python3 -c \"import json,sys; print(json.load(sys.stdin)['rx_packets'])\") -gt $((rx0 + 2000)) ]"
  if ((r % 2)); then
    kill -9 "$tp"; how=killed
  else
    printf 'quit\n' >&7; how=quit
  fi
  wait_pid "$tp" 20 || true
  exec 7>&-
  wait_until 20 "d0's link down after testpmd $how (round $r)" sh -c \
    "! kill -0 $NICMUXD_PID 2>/dev/null || '$BIN/nicmuxctl' --socket '$CTL' port list | grep -q '^d0 .*link down'"
  sleep 0.2  # (a dying nicmuxd's report takes a moment)
  kill -0 "$NICMUXD_PID" 2>/dev/null || fail "nicmuxd died when testpmd $how under traffic (round $r)"
done
kill -0 "$pg" 2>/dev/null || fail "pktgen stopped: $(tail -2 "$WORK/pg.log")"
held=$( (grep -o "unmapping waited for .* ([0-9]* so far)" "$WORK/nicmuxd.log" || true) | tail -1 | sed 's/.*(\([0-9]*\) so far)/\1/')
echo "ok: $ROUNDS memif peers killed or quit while frames flowed through d0 (CPUs shared with two busy loops): nicmuxd served on, d0 linked again each time; ${held:-0} unmapping(s) held for a burst in progress"
stop_nicmuxd
