#!/usr/bin/env bash
# nicmuxd attached to another vhost-user switch through a virtio-user port (nicmux as the
# frontend), here DPDK's vhost PMD in testpmd:
#
#   pktgen A <-> [nicmuxd: vhost-user a <-> virtio-user v] <-> testpmd vhost 0 =io= vhost 1 <-> pktgen B
#
# Exact counts both ways and every byte verified, split and packed, 64 and 1518 bytes.
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"

run_case() {
  local packed=$1 size=$2 count=$3 S=$WORK vopt="" popt=()
  [ "$packed" = 1 ] && { vopt=",packed"; popt=(--packed); }
  rm -f "$S"/*.sock
  start testpmd stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nvu$$-$packed$size" --lcores 0@0,1@1 \
    --vdev "net_vhost0,iface=$S/v0.sock,queues=1" --vdev "net_vhost1,iface=$S/v1.sock,queues=1" \
    -- --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 --stats-period 1
  local tp=$LAST_PID
  wait_for "$S/v1.sock" 30
  nicmuxd --forward xconnect --port "vhost-user:a:socket=$S/a.sock" --port "virtio-user:v:socket=$S/v0.sock$vopt"
  wait_log "$WORK/nicmuxd.log" "attached to the backend" 30 "$NICMUXD_PID"
  start pg_a "$BIN/nicmux-pktgen" --socket "$S/a.sock" --mode bidir --verify --size "$size" --count "$count" \
    --rate 20000 --ring 1024 --duration 60 --interval 0 --stream 1 --delay 2 "${popt[@]}"
  local pa=$LAST_PID
  wait_log "$WORK/pg_a.log" connected 30 "$pa"
  start pg_b "$BIN/nicmux-pktgen" --socket "$S/v1.sock" --mode bidir --verify --size "$size" --count "$count" \
    --rate 20000 --ring 1024 --duration 60 --interval 0 --stream 2 --delay 1 "${popt[@]}"
  local pb=$LAST_PID
  local what="packed=$packed size=$size"
  wait_pid "$pa" 90 || fail "pktgen a: $what"
  wait_pid "$pb" 90 || fail "pktgen b: $what"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets "$count"
    expect_summary "$l" rx_packets "$count"
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
  done
  stop_nicmuxd
  kill -INT "$tp"; wait_pid "$tp" 20 || { kill -9 "$tp"; wait "$tp" 2>/dev/null || true; }
  echo "ok: virtio-user port $what: $count packets each way through nicmuxd and DPDK's vhost PMD, verified"
}

for packed in 0 1; do
  for size in 64 1518; do
    run_case $packed $size 5000
  done
done
