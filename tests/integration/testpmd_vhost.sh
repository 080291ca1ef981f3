#!/usr/bin/env bash
# nicmux's own frontend against DPDK's vhost backend (testpmd with two net_vhost ports, io
# forwarding), the other way round from testpmd_virtio_user.sh:
#
#   pktgen A (frontend) <-> testpmd vhost port 0 =io fwd= vhost port 1 <-> pktgen B (frontend)
#
# Exact counts both ways and every byte verified; split and packed, MRG_RXBUF on and off,
# 64/1518/9000-byte frames, one and four queue pairs.
#
# testpmd's plain io forwarding drops a burst the other port's ring cannot take at once, and
# here both rings are pktgens', which on this 2-CPU machine wait for a CPU now and then (under
# `stress-ng --cpu 2` a pktgen's 1024-deep ring overflowed: 256 frames dropped by testpmd).
# That is the peer's policy, not what this test checks: testpmd forwards with retry (20 us x
# 100000, up to 2 s per burst) and its TX-dropped must stay 0.
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"

printf 'set fwd io retry\nset burst tx delay 20 retry 100000\n' >"$WORK/testpmd.cmds"

run_case() {
  local packed=$1 mrg=$2 size=$3 queues=$4 count=$5
  local S=$WORK opts=() jumbo=()
  [ "$packed" = 1 ] && opts+=(--packed)
  [ "$mrg" = 0 ] && opts+=(--no-mrg)
  # Pace the senders well below what two shared cores sustain, jumbo frames more so, and give
  # the receivers deep rings: testpmd's retries then rarely wait at all.
  local rate=20000
  [ "$size" -gt 1518 ] && rate=5000
  opts+=(--ring 1024 --rate "$rate")
  [ "$size" -gt 1518 ] && jumbo=(--max-pkt-len=9100 --mbuf-size=10240)
  rm -f "$S"/*.sock
  start testpmd stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmv$$-$packed$mrg$size$queues" --lcores 0@0,1@1 \
    --vdev "net_vhost0,iface=$S/v0.sock,queues=$queues" --vdev "net_vhost1,iface=$S/v1.sock,queues=$queues" \
    -- --cmdline-file="$WORK/testpmd.cmds" --nb-cores=1 --rxq="$queues" --txq="$queues" --total-num-mbufs=16384 \
    "${jumbo[@]}" --stats-period 1
  local tp=$LAST_PID
  wait_log "$WORK/testpmd.log" "io packet forwarding" 60 "$tp"
  grep -q "Set io packet forwarding mode with retry" "$WORK/testpmd.log" || fail "testpmd did not take 'set fwd io retry'"
  # The vhost PMD drops what it cannot deliver, so nobody sends before both are up: both
  # pktgens are held (--hold) until testpmd says both devices are ready.
  start pg_a "$BIN/nicmux-pktgen" --socket "$S/v0.sock" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 120 --interval 0 --stream 1 --hold "${opts[@]}"
  local pa=$LAST_PID
  start pg_b "$BIN/nicmux-pktgen" --socket "$S/v1.sock" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 120 --interval 0 --stream 2 --hold "${opts[@]}"
  local pb=$LAST_PID
  wait_log "$WORK/pg_a.log" connected 60 "$pa"
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
  wait_log "$WORK/testpmd.log" "v0.sock) virtio is now ready" 60 "$tp"
  wait_log "$WORK/testpmd.log" "v1.sock) virtio is now ready" 60 "$tp"
  release "$pa" "$pb"
  local what="packed=$packed mrg=$mrg size=$size queues=$queues"
  wait_pid "$pa" 150 || fail "pktgen a: $what"
  wait_pid "$pb" 150 || fail "pktgen b: $what"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets "$count"
    expect_summary "$l" rx_packets "$count"
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
  done
  kill -INT "$tp"; wait_pid "$tp" 20 || { kill -9 "$tp"; wait "$tp" 2>/dev/null || true; }
  # Both of testpmd's ports forwarded every frame without a drop (its retries never ran out).
  [ "$(grep -c 'TX-dropped: 0 ' "$WORK/testpmd.log")" -ge 3 ] ||
    fail "testpmd dropped frames ($what): $(grep 'TX-dropped' "$WORK/testpmd.log" | tr -s ' ')"
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
