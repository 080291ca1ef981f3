#!/usr/bin/env bash
# nicmux's own frontend against DPDK's vhost backend (testpmd with two net_vhost ports, io
# forwarding), the other way round from testpmd_virtio_user.sh:
#
#   pktgen A (frontend) <-> testpmd vhost port 0 =io fwd= vhost port 1 <-> pktgen B (frontend)
#
# Exact counts both ways and every byte verified; split and packed, MRG_RXBUF on and off,
# 64/1518/9000-byte frames, one and four queue pairs.
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"

run_case() {
  local packed=$1 mrg=$2 size=$3 queues=$4 count=$5
  local S=$WORK opts=() jumbo=()
  [ "$packed" = 1 ] && opts+=(--packed)
  [ "$mrg" = 0 ] && opts+=(--no-mrg)
  # DPDK drops what a full ring cannot take: pace the senders well below what two shared
  # cores sustain, jumbo frames more so, and give the receivers deep rings.
  local rate=20000
  [ "$size" -gt 1518 ] && rate=5000
  opts+=(--ring 1024 --rate "$rate")
  [ "$size" -gt 1518 ] && jumbo=(--max-pkt-len=9100 --mbuf-size=10240)
  rm -f "$S"/*.sock
  start testpmd stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmv$$-$packed$mrg$size$queues" --lcores 0@0,1@1 \
    --vdev "net_vhost0,iface=$S/v0.sock,queues=$queues" --vdev "net_vhost1,iface=$S/v1.sock,queues=$queues" \
    -- --forward-mode=io --nb-cores=1 --rxq="$queues" --txq="$queues" --total-num-mbufs=16384 \
    "${jumbo[@]}" --stats-period 1
  local tp=$LAST_PID
  wait_for "$S/v1.sock" 30
  start pg_a "$BIN/nicmux-pktgen" --socket "$S/v0.sock" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 60 --interval 0 --stream 1 --delay 2 "${opts[@]}"
  local pa=$LAST_PID
  # The vhost PMD drops what it cannot deliver, so nobody sends before both are up: B waits
  # 1 s after connecting, A 2 s (and A connects first).
  wait_log "$WORK/pg_a.log" connected 30 "$pa"
  start pg_b "$BIN/nicmux-pktgen" --socket "$S/v1.sock" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 60 --interval 0 --stream 2 --delay 1 "${opts[@]}"
  local pb=$LAST_PID
  local what="packed=$packed mrg=$mrg size=$size queues=$queues"
  wait_pid "$pa" 90 || fail "pktgen a: $what"
  wait_pid "$pb" 90 || fail "pktgen b: $what"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets "$count"
    expect_summary "$l" rx_packets "$count"
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
  done
  kill -INT "$tp"; wait_pid "$tp" 20 || { kill -9 "$tp"; wait "$tp" 2>/dev/null || true; }
  echo "ok: testpmd vhost $what: $count packets each way through DPDK's vhost PMD, verified"
}

for packed in 0 1; do
  for mrg in 1 0; do
    for size in 64 1518 9000; do
      run_case $packed $mrg $size 1 5000
    done
  done
  run_case $packed 1 1518 4 5000
done
