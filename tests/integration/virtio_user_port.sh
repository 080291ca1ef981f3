#!/usr/bin/env bash
# nicmuxd attached to another vhost-user switch through a virtio-user port (nicmux as the
# frontend), here DPDK's vhost PMD in testpmd:
#
#   pktgen A <-> [nicmuxd: vhost-user a <-> virtio-user v] <-> testpmd vhost 0 =io= vhost 1 <-> pktgen B
#
# Exact counts both ways and every byte verified, split and packed, 64 and 1518 bytes.
#
# Who may drop: nobody. nicmuxd's xconnect holds a source while its destination is full, and
# nicmux-pktgen waits for ring space. testpmd's plain io forwarding drops a burst the other
# port's ring cannot take at once, which on this 2-CPU machine happens whenever nicmuxd's
# worker (or pktgen B) waits for a CPU longer than its receive ring lasts. Under
# `stress-ng --cpu 2`, without retry: with nicmuxd's receive ring 256 deep, 6 of 12 cases lost
# 5..2766 of 5000 frames, every one counted by testpmd as TX-dropped on port 0 (nicmuxd's
# ring), none by nicmuxd; once, 256 were dropped on port 1 (towards pktgen B). With
# the port's ring 1024 deep, 0 of 12 lost. So:
#   - the port's receive ring is 1024 deep and refilled after every batch (the port's part:
#     51 ms of slack at this rate, src/port/virtio_user_port.cc);
#   - testpmd forwards with retry (`set fwd io retry`, 20 us x 100000 = up to 2 s per burst):
#     a descheduled reader costs time, not frames. A port that stopped refilling its ring
#     would still fail here (testpmd's retries run out: TX-dropped, frames lost).
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"

printf 'set fwd io retry\nset burst tx delay 20 retry 100000\n' >"$WORK/testpmd.cmds"

run_case() {
  local packed=$1 size=$2 count=$3 S=$WORK vopt="" popt=()
  [ "$packed" = 1 ] && { vopt=",packed"; popt=(--packed); }
  rm -f "$S"/*.sock
  start testpmd stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nvu$$-$packed$size" --lcores 0@0,1@1 \
    --vdev "net_vhost0,iface=$S/v0.sock,queues=1" --vdev "net_vhost1,iface=$S/v1.sock,queues=1" \
    -- --cmdline-file="$WORK/testpmd.cmds" --nb-cores=1 --total-num-mbufs=16384 --stats-period 1
  local tp=$LAST_PID
  wait_log "$WORK/testpmd.log" "io packet forwarding" 60 "$tp"
  grep -q "Set io packet forwarding mode with retry" "$WORK/testpmd.log" || fail "testpmd did not take 'set fwd io retry'"
  nicmuxd --forward xconnect --port "vhost-user:a:socket=$S/a.sock" --port "virtio-user:v:socket=$S/v0.sock$vopt"
  wait_log "$WORK/nicmuxd.log" "attached to the backend" 30 "$NICMUXD_PID"
  # Senders are held (--hold) until both ends are attached: pktgen A to nicmuxd's port a,
  # pktgen B to testpmd's vhost 1, which forwards only once it says the device is ready.
  start pg_a "$BIN/nicmux-pktgen" --socket "$S/a.sock" --mode bidir --verify --size "$size" --count "$count" \
    --rate 20000 --ring 1024 --duration 120 --interval 0 --stream 1 --hold "${popt[@]}"
  local pa=$LAST_PID
  start pg_b "$BIN/nicmux-pktgen" --socket "$S/v1.sock" --mode bidir --verify --size "$size" --count "$count" \
    --rate 20000 --ring 1024 --duration 120 --interval 0 --stream 2 --hold "${popt[@]}"
  local pb=$LAST_PID
  wait_log "$WORK/pg_a.log" connected 60 "$pa"
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
  wait_log "$WORK/testpmd.log" "v0.sock) virtio is now ready" 60 "$tp"
  wait_log "$WORK/testpmd.log" "v1.sock) virtio is now ready" 60 "$tp"
  release "$pa" "$pb"
  local what="packed=$packed size=$size"
  wait_pid "$pa" 150 || fail "pktgen a: $what"
  wait_pid "$pb" 150 || fail "pktgen b: $what"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets "$count"
    expect_summary "$l" rx_packets "$count"
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
  done
  stop_nicmuxd
  kill -INT "$tp"; wait_pid "$tp" 20 || { kill -9 "$tp"; wait "$tp" 2>/dev/null || true; }
  # Both of testpmd's ports forwarded every frame without a drop (its retries never ran out).
  [ "$(grep -c 'TX-dropped: 0 ' "$WORK/testpmd.log")" -ge 3 ] ||
    fail "testpmd dropped frames ($what): $(grep 'TX-dropped' "$WORK/testpmd.log" | tr -s ' ')"
  echo "ok: virtio-user port $what: $count packets each way through nicmuxd and DPDK's vhost PMD, verified"
}

for packed in 0 1; do
  for size in 64 1518; do
    run_case $packed $size 5000
  done
done
