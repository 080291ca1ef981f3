#!/usr/bin/env bash
# TSO through the switch between nicmux-pktgen "containers" (virtio-user frontends):
#   1. a sender of 65000-byte TSO frames (--tso 1448: partial checksum, CSUM + HOST_TSO4) to a
#      receiver without offloads: the switch cuts each frame into 45 segments; every segment
#      arrives with its length, sequence number, IPv4 and TCP checksums right and every payload
#      byte checked (pktgen --verify), none lost;
#   2. the same to a receiver with offloads (GUEST_CSUM, GUEST_TSO4): each frame arrives whole,
#      as one packet with its TSO request and partial checksum, every byte checked;
# (Records that do not match their frames are the unit tests' and offload_fuzz's.)
source "$(dirname "$0")/lib.sh"

N=300  # TSO frames per case, paced at 300 per second (150 Mbit/s: no receiver falls behind)
run_case() {  # run_case LABEL RECEIVER_OPTS EXPECTED_RX
  local label=$1 ropts=$2 expect=$3
  nicmuxd --port "vhost-user:a:socket=$WORK/a.sock" --port "vhost-user:b:socket=$WORK/b.sock"
  wait_for "$WORK/b.sock" 30
  # shellcheck disable=SC2086
  start pg_b "$BIN/nicmux-pktgen" --socket "$WORK/b.sock" --mac 02:00:00:00:00:02 --peer-mac 02:00:00:00:00:01 \
    --mode rx --verify --count "$expect" --duration 120 --interval 0 --announce --ring 1024 $ropts
  local pb=$LAST_PID
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
  wait_until 60 "b's MAC in the table" sh -c "'$BIN/nicmuxctl' --socket '$CTL' fdb show | grep -q 02:00:00:00:00:02"
  start pg_a "$BIN/nicmux-pktgen" --socket "$WORK/a.sock" --mac 02:00:00:00:00:01 --peer-mac 02:00:00:00:00:02 \
    --mode tx --tso 1448 --size 65000 --count "$N" --rate 300 --duration 120 --interval 0
  local pa=$LAST_PID
  wait_pid "$pa" 150 || fail "$label: sender failed: $(cat "$WORK/pg_a.log")"
  wait_pid "$pb" 150 || fail "$label: receiver failed: $(grep summary "$WORK/pg_b.log")"
  local s
  s=$(grep '^summary' "$WORK/pg_b.log")
  grep -q "rx_packets=$expect " <<<"$s" || fail "$label: expected $expect frames: $s"
  grep -q "rx_bad=0 rx_lost=0 rx_reordered=0" <<<"$s" || fail "$label: $s"
  ctl --json port show b >"$WORK/b.json"
  stop_nicmuxd
  echo "ok: $label: $N TSO frames of 65000 B -> $expect frames, every byte and the checksums a frame has verified ($(grep -o 'rx_tcp_payload_gbps=[0-9.]*' <<<"$s"))"
}
run_case "receiver without offloads (the switch segments)" "" $((N * 45))
run_case "receiver with offloads (TSO passes through)" "--offloads" "$N"
