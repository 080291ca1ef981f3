#!/usr/bin/env bash
# bench/ir_per_packet.sh TOOLS_DIR [RING] [SIZE] [SECONDS] [FORWARD]: the instructions nicmuxd
# executes per forwarded packet, counted by valgrind's callgrind while testpmd's virtio-user
# frontends (bench/run's loopback: two ports, io forwarding, 1024 frames circulating per port,
# mrg_rxbuf=1, in_order=1) keep it saturated. RING split|packed (default packed), SIZE bytes
# (default 64), SECONDS of traffic (default 15), FORWARD switch|xconnect (default switch).
#
# Why: this VM has no hardware counters (perf stat says "not supported") and the host moves
# its two vCPUs between a shared cache and far apart, which changes every timing by up to 2x
# for minutes (bench/xcore_probe). The instruction count per packet does not depend on that:
# under callgrind nicmuxd is ~50x slower than its frontend, so every round is a full burst, and
# a change that removes work shows as a smaller number, run after run (+-1 %). It is not a
# speed: memory stalls are not counted. Prints the count, the packets and the callgrind file
# (callgrind_annotate FILE for the functions; --auto=yes for the lines).
set -euo pipefail
T=${1:?TOOLS_DIR}; RING=${2:-packed}; SIZE=${3:-64}; SECS=${4:-15}; FWD=${5:-switch}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }
command -v dpdk-testpmd >/dev/null || { echo "needs dpdk-testpmd (apt-get install dpdk)" >&2; exit 2; }
W=$(mktemp -d /tmp/nicmux-ir.XXXXXX)
P=0; [ "$RING" = packed ] && P=1
taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" "$T/nicmuxd" --forward "$FWD" \
  --control none --cpu 1 --log-level warning \
  --port "vhost-user:p0:socket=$W/p0.sock" --port "vhost-user:p1:socket=$W/p1.sock" >"$W/d.log" 2>&1 &
DP=$!
for _ in $(seq 600); do [ -S "$W/p1.sock" ] && break; sleep 0.05; done
[ -S "$W/p1.sock" ] || { echo "nicmuxd under valgrind did not start (see $W/d.log)" >&2; exit 1; }
VA="queues=1,queue_size=1024,mrg_rxbuf=1,in_order=1,packed_vq=$P"
(sleep 3; echo "start tx_first 32"; sleep "$((SECS + 3))"; echo stop; echo quit) |
  taskset -c 0 dpdk-testpmd --lcores 0@0,1@0 --file-prefix="nmxir$$" --no-pci --no-telemetry --in-memory \
    --socket-mem=1024 --single-file-segments \
    --vdev "net_virtio_user0,path=$W/p0.sock,mac=02:00:00:00:00:01,$VA" \
    --vdev "net_virtio_user1,path=$W/p1.sock,mac=02:00:00:00:00:02,$VA" \
    -- -i --nb-cores=1 --forward-mode=io --rxd=1024 --txd=1024 --total-num-mbufs=16384 --txpkts="$SIZE" \
    --eth-peer=0,02:00:00:00:00:02 --eth-peer=1,02:00:00:00:00:01 >"$W/t.log" 2>&1
kill -TERM "$DP"; wait "$DP" || true
# What the frontend received on both ports = what nicmuxd forwarded.
PK=$(grep -A1 "Accumulated forward" "$W/t.log" | grep -o "RX-packets: *[0-9]*" | grep -o "[0-9]*$" || true)
IR=$(callgrind_annotate "$W/cg.out" 2>/dev/null | grep "PROGRAM TOTALS" | tr -d , | awk '{print $1}')
[ -n "$PK" ] && [ "$PK" -gt 0 ] || { echo "no traffic (see $W/t.log)" >&2; exit 1; }
echo "ring=$RING size=$SIZE forward=$FWD instructions=$IR packets=$PK per_packet=$((IR / PK)) file=$W/cg.out"
