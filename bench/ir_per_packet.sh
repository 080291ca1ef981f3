#!/usr/bin/env bash
# bench/ir_per_packet.sh TOOLS_DIR [RING] [SIZE] [SECONDS] [BACKEND]: the instructions a backend
# executes per forwarded packet, counted by valgrind's callgrind while testpmd's virtio-user
# frontends (bench/run's loopback: two ports, io forwarding, mrg_rxbuf=1, in_order=1) keep it
# saturated. RING split|packed (default packed), SIZE bytes (default 64), SECONDS of traffic
# (default 15), BACKEND switch|xconnect (nicmuxd's --forward) or testpmd (DPDK's vhost PMD,
# net_vhost with io forwarding, as bench/run starts it, but --no-huge: callgrind cannot map
# hugetlbfs). Default switch.
#
# Why: this VM has no hardware counters (perf stat says "not supported") and the host moves
# its two vCPUs between a shared cache and far apart, which changes every timing by up to 2x
# for minutes (bench/xcore_probe). The instruction count per packet does not depend on that:
# under callgrind the backend is ~50x slower than its frontend, so every round is a full burst,
# and a change that removes work shows as a smaller number, run after run (+-1 %). It is not a
# speed: memory stalls are not counted.
#
# The backend runs twice, with SECONDS and 2 x SECONDS of traffic, and the count is the
# difference of the two runs' instructions over the difference of their packets: start-up,
# the idle polling before the traffic and shutdown cancel out (testpmd polls busily from its
# start; nicmuxd mostly sleeps). Prints both runs and the marginal count, and the callgrind
# file of the longer run (callgrind_annotate FILE for the functions; --auto=yes for the lines;
# Debian's DPDK has no symbols).
set -euo pipefail
T=${1:?TOOLS_DIR}; RING=${2:-packed}; SIZE=${3:-64}; SECS=${4:-15}; FWD=${5:-switch}
case "$FWD" in switch|xconnect|testpmd) ;; *) echo "BACKEND must be switch, xconnect or testpmd" >&2; exit 2;; esac
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
command -v dpdk-testpmd >/dev/null || { echo "needs dpdk-testpmd (apt-get install dpdk)" >&2; exit 2; }
W=$(mktemp -d /tmp/nicmux-ir.XXXXXX)
P=0; [ "$RING" = packed ] && P=1

# one_run TRAFFIC_SECONDS TAG: prints "instructions packets"
one_run() {
  local secs=$1 tag=$2 dp
  rm -f "$W"/p0.sock "$W"/p1.sock
  if [ "$FWD" = testpmd ]; then
    # Non-interactive testpmd ends at EOF on stdin: hold it open until the traffic is over.
    (sleep "$((secs + 12))") | taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$W/cg.$tag" \
      dpdk-testpmd --lcores 0@1,1@1 --file-prefix="nmxirb$$" --no-pci --no-telemetry --no-huge -m 1024 \
      --vdev "net_vhost0,iface=$W/p0.sock,queues=1,tso=1" --vdev "net_vhost1,iface=$W/p1.sock,queues=1,tso=1" \
      -- --nb-cores=1 --forward-mode=io --total-num-mbufs=16384 --auto-start >"$W/d.$tag.log" 2>&1 &
  else
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$W/cg.$tag" "$T/nicmuxd" --forward "$FWD" \
      --control none --cpu 1 --log-level warning \
      --port "vhost-user:p0:socket=$W/p0.sock" --port "vhost-user:p1:socket=$W/p1.sock" >"$W/d.$tag.log" 2>&1 &
  fi
  dp=$!
  for _ in $(seq 600); do [ -S "$W/p1.sock" ] && break; sleep 0.05; done
  [ -S "$W/p1.sock" ] || { echo "the backend under valgrind did not start (see $W/d.$tag.log)" >&2; exit 1; }
  local va="queues=1,queue_size=1024,mrg_rxbuf=1,in_order=1,packed_vq=$P"
  (sleep 3; echo "start tx_first 32"; sleep "$((secs + 3))"; echo stop; echo quit) |
    taskset -c 0 dpdk-testpmd --lcores 0@0,1@0 --file-prefix="nmxir$$" --no-pci --no-telemetry --in-memory \
      --socket-mem=1024 --single-file-segments \
      --vdev "net_virtio_user0,path=$W/p0.sock,mac=02:00:00:00:00:01,$va" \
      --vdev "net_virtio_user1,path=$W/p1.sock,mac=02:00:00:00:00:02,$va" \
      -- -i --nb-cores=1 --forward-mode=io --rxd=1024 --txd=1024 --total-num-mbufs=16384 --txpkts="$SIZE" \
      --eth-peer=0,02:00:00:00:00:02 --eth-peer=1,02:00:00:00:00:01 >"$W/t.$tag.log" 2>&1
  if [ "$FWD" = testpmd ]; then pkill -TERM -f "file-prefix=nmxirb$$" || true; else kill -TERM "$dp"; fi
  wait "$dp" || true
  # What the frontend received on both ports = what the backend forwarded.
  local pk ir
  pk=$(grep -A1 "Accumulated forward" "$W/t.$tag.log" | grep -o "RX-packets: *[0-9]*" | grep -o "[0-9]*$" || true)
  ir=$(callgrind_annotate "$W/cg.$tag" 2>/dev/null | grep "PROGRAM TOTALS" | tr -d , | awk '{print $1}')
  [ -n "$pk" ] && [ "$pk" -gt 0 ] || { echo "no traffic (see $W/t.$tag.log)" >&2; exit 1; }
  echo "$ir $pk"
}
read -r IR1 PK1 < <(one_run "$SECS" short)
read -r IR2 PK2 < <(one_run "$((2 * SECS))" long)
[ "$PK2" -gt "$PK1" ] || { echo "the longer run forwarded no more packets ($PK1, $PK2)" >&2; exit 1; }
echo "ring=$RING size=$SIZE backend=$FWD short: instructions=$IR1 packets=$PK1 per_packet=$((IR1 / PK1))" \
  "long: instructions=$IR2 packets=$PK2 per_packet=$((IR2 / PK2))" \
  "marginal_per_packet=$(( (IR2 - IR1) / (PK2 - PK1) )) file=$W/cg.long"
