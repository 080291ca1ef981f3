#!/usr/bin/env bash
# DPDK testpmd with two net_virtio_user ports (DPDK's own frontend, as a container runs it)
# against nicmuxd cross-connects:
#
#   pktgen A <-> [nicmuxd] <-> testpmd port 0 =io fwd= testpmd port 1 <-> [nicmuxd] <-> pktgen B
#
# Both pktgens send a counted, paced stream and verify every byte of the other's: exact
# counts both ways, split and packed rings, MRG_RXBUF on and off, 64/1518/9000-byte frames,
# one and four queue pairs.
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"

run_case() {
  local packed=$1 mrg=$2 size=$3 queues=$4 count=$5
  local S=$WORK opts=() mbuf=()
  [ "$packed" = 1 ] && opts+=(--packed)
  [ "$mrg" = 0 ] && opts+=(--no-mrg)
  # DPDK drops what a full ring cannot take: pace the senders well below what two shared
  # cores sustain, jumbo frames more so, and give the receivers deep rings.
  local rate=20000
  [ "$size" -gt 1518 ] && rate=5000
  opts+=(--ring 1024 --rate "$rate")
  # Jumbo frames: chained mbufs with MRG_RXBUF, else one receive buffer must hold a frame.
  if [ "$size" -gt 1518 ]; then
    mbuf=(--max-pkt-len=9100)
    if [ "$mrg" = 1 ]; then mbuf+=(--enable-scatter); else mbuf+=(--mbuf-size=10240); fi
  fi
  rm -f "$S"/*.sock
  nicmuxd --forward xconnect --port "vhost-user:pga:socket=$S/pga.sock,queues=$queues" --port "vhost-user:tp0:socket=$S/tp0.sock,queues=$queues" \
          --port "vhost-user:tp1:socket=$S/tp1.sock,queues=$queues" --port "vhost-user:pgb:socket=$S/pgb.sock,queues=$queues"
  wait_for "$S/tp1.sock" 30
  local vu="queues=$queues,queue_size=1024,packed_vq=$packed,mrg_rxbuf=$mrg"
  # Interactive, fed through a FIFO: io forwarding *with retry*, so testpmd waits for ring
  # space instead of dropping when two shared cores schedule nicmuxd late.
  rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
  exec 7<>"$WORK/tp.in"  # read-write: opening does not wait for the reader
  start_with_input testpmd "$WORK/tp.in" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmx$$-$packed$mrg$size$queues" --lcores 0@0,1@1 \
    --vdev "net_virtio_user0,path=$S/tp0.sock,$vu" --vdev "net_virtio_user1,path=$S/tp1.sock,$vu" \
    -- -i --nb-cores=1 --rxq="$queues" --txq="$queues" --rxd=1024 --txd=1024 \
    --total-num-mbufs=16384 "${mbuf[@]}"
  local tp=$LAST_PID
  printf 'set fwd io retry\nset burst tx delay 20 retry 100000\nstart\nshow config fwd\n' >&7
  wait_log "$WORK/testpmd.log" "io packet forwarding" 60 "$tp"
  # Both pktgens are held (--hold) until both are attached (a frame for a port with no
  # frontend yet may be dropped), instead of A waiting a fixed 2 s for B.
  start pg_a "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 120 --interval 0 --stream 1 --hold "${opts[@]}"
  local pa=$LAST_PID
  start pg_b "$BIN/nicmux-pktgen" --socket "$S/pgb.sock" --mode bidir --verify --size "$size" --count "$count" \
    --queues "$queues" --duration 120 --interval 0 --stream 2 --hold "${opts[@]}"
  local pb=$LAST_PID
  wait_log "$WORK/pg_a.log" connected 60 "$pa"
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
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
  printf 'stop\nquit\n' >&7
  exec 7>&-
  wait_pid "$tp" 20 || { kill -9 "$tp"; wait "$tp" 2>/dev/null || true; }
  stop_nicmuxd
  echo "ok: testpmd virtio_user $what: $count packets each way through testpmd, verified"
}

for packed in 0 1; do
  for mrg in 1 0; do
    for size in 64 1518 9000; do
      run_case $packed $mrg $size 1 5000
    done
  done
  run_case $packed 1 1518 4 5000
done
