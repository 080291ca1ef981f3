#!/usr/bin/env bash
# nicmux-pktgen -> nicmuxd cross-connect -> nicmux-pktgen: exact counts both ways and every
# byte verified, split and packed rings, MRG_RXBUF on and off, 64/1518/9000-byte frames, one
# and four queue pairs.
source "$(dirname "$0")/lib.sh"

run_case() {
  local ring=$1 mrg=$2 size=$3 queues=$4 count=$5
  local a=$WORK/a.sock b=$WORK/b.sock opts=()
  [ "$ring" = packed ] && opts+=(--packed)
  [ "$mrg" = off ] && opts+=(--no-mrg)
  nicmuxd --forward xconnect --port "vhost-user:a:socket=$a,queues=$queues" --port "vhost-user:b:socket=$b,queues=$queues"
  wait_for "$a" 10; wait_for "$b" 10
  start pg_a "$BIN/nicmux-pktgen" --socket "$a" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 60 --interval 0 --stream 1 --delay 2 "${opts[@]}"
  local pa=$LAST_PID
  # b sends at once: a must be up by then; a waits 2 s for b.
  wait_log "$WORK/pg_a.log" connected 30 "$pa"
  start pg_b "$BIN/nicmux-pktgen" --socket "$b" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 60 --interval 0 --stream 2 "${opts[@]}"
  local pb=$LAST_PID
  wait_pid "$pa" 90 || fail "pktgen a failed ($ring mrg=$mrg size=$size queues=$queues)"
  wait_pid "$pb" 90 || fail "pktgen b failed ($ring mrg=$mrg size=$size queues=$queues)"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets "$count"
    expect_summary "$l" rx_packets "$count"
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
  done
  stop_nicmuxd
  grep -q "tx_dropped 0" "$WORK/nicmuxd.log" || fail "nicmuxd dropped packets"
  echo "ok: $ring mrg=$mrg size=$size queues=$queues: $count packets each way, verified"
}

for ring in split packed; do
  for mrg in on off; do
    for size in 64 1518 9000; do
      run_case "$ring" "$mrg" "$size" 1 20000
    done
  done
  run_case "$ring" on 1518 4 20000
done
