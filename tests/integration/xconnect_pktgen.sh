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
  wait_for "$a" 30; wait_for "$b" 30
  # Neither sends before both are attached (--hold, released once both say "connected": by
  # then nicmuxd has started their queues, it acknowledged every setup message).
  start pg_a "$BIN/nicmux-pktgen" --socket "$a" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 120 --interval 0 --stream 1 --hold "${opts[@]}"
  local pa=$LAST_PID
  start pg_b "$BIN/nicmux-pktgen" --socket "$b" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 120 --interval 0 --stream 2 --hold "${opts[@]}"
  local pb=$LAST_PID
  wait_log "$WORK/pg_a.log" connected 60 "$pa"
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
  release "$pa" "$pb"
  wait_pid "$pa" 150 || fail "pktgen a failed ($ring mrg=$mrg size=$size queues=$queues)"
  wait_pid "$pb" 150 || fail "pktgen b failed ($ring mrg=$mrg size=$size queues=$queues)"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets "$count"
    expect_summary "$l" rx_packets "$count"
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
  done
  stop_nicmuxd
  # Both ports' final counter lines (an xconnect holds its source, it never drops).
  [ "$(grep -c "tx_dropped" "$WORK/nicmuxd.log")" -eq 2 ] && ! grep -qE "_dropped [1-9]" "$WORK/nicmuxd.log" ||
    fail "nicmuxd dropped packets: $(grep "tx_dropped" "$WORK/nicmuxd.log")"
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
