#!/usr/bin/env bash
# DPDK's own offload path through nicmuxd: testpmd's `csum` forwarding engine with `tso set
# 1000` on a virtio-user port (DPDK's virtio PMD turns its mbufs' TCP_SEG requests into
# virtio-net GSO headers), between two nicmux-pktgen "containers":
#
#   pktgen A --tso 1448 --> [nicmuxd] --> testpmd port 0 (LRO + TCP checksum: takes the 65000-byte
#   frames whole) =csum fwd, TSO 1000=> testpmd port 1 (TCP_TSO) --> [nicmuxd] --> pktgen B
#
#   1. pktgen B without offloads: nicmuxd cuts each of testpmd's TSO frames into 65 segments of
#      1000 payload bytes (testpmd's MSS, not the sender's); every segment arrives with its
#      length, sequence number and IPv4/TCP checksums right and every byte verified;
#   2. pktgen B with offloads (GUEST_CSUM, GUEST_TSO4): each frame arrives whole, one packet.
# testpmd must have received each 65000-byte frame whole as well (its port 0 counts 100).
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"

N=100  # TSO frames per case, paced at 100 per second
S=$WORK
nicmuxd --forward xconnect --port "vhost-user:pga:socket=$S/pga.sock" --port "vhost-user:tp0:socket=$S/tp0.sock" \
  --port "vhost-user:tp1:socket=$S/tp1.sock" --port "vhost-user:pgb:socket=$S/pgb.sock"
wait_for "$S/pgb.sock" 30
vu="queue_size=1024,mrg_rxbuf=1"
rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
exec 7<>"$WORK/tp.in"
# Port 0: LRO and TCP checksum offload, so the PMD negotiates GUEST_TSO4/GUEST_CSUM and
# receives 64 KiB frames as mbuf chains; port 1: TCP checksum and TSO (HOST_TSO4, CSUM).
start_with_input testpmd "$WORK/tp.in" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmo$$" --lcores 0@0,1@1 \
  --vdev "net_virtio_user0,path=$S/tp0.sock,$vu,mac=02:00:00:00:00:02" \
  --vdev "net_virtio_user1,path=$S/tp1.sock,$vu,mac=02:00:00:00:00:01" \
  -- -i --nb-cores=1 --rxd=1024 --txd=1024 --total-num-mbufs=16384 --enable-lro --enable-scatter --max-pkt-len=9000 \
  --eth-peer=1,02:00:00:00:00:02 --eth-peer=0,02:00:00:00:00:01
tp=$LAST_PID
printf '%s\n' 'port stop all' 'port config 0 rx_offload tcp_cksum on' 'csum set tcp hw 1' 'csum set ip sw 1' \
  'tso set 1000 1' 'port config 1 tx_offload tcp_tso on' 'port start all' 'set fwd csum' 'start' >&7
wait_log "$WORK/testpmd.log" "csum packet forwarding - ports=2" 60 "$tp"
grep -aq "TSO segment size for non-tunneled packets is 1000" "$WORK/testpmd.log" ||
  fail "testpmd did not take 'tso set 1000 1': $(grep -a -i tso "$WORK/testpmd.log")"
wait_until 30 "testpmd's ports negotiated offloads" sh -c \
  "'$BIN/nicmuxctl' --socket '$CTL' port show tp0 | grep -q 'guest_tso4' && '$BIN/nicmuxctl' --socket '$CTL' port show tp1 | grep -q 'host_tso4'"

run_case() {  # run_case LABEL RECEIVER_OPTS EXPECTED_RX
  local label=$1 ropts=$2 expect=$3
  # shellcheck disable=SC2086
  start pg_b "$BIN/nicmux-pktgen" --socket "$S/pgb.sock" --mac 02:00:00:00:00:02 --peer-mac 02:00:00:00:00:01 \
    --mode rx --verify --count "$expect" --duration 120 --interval 0 --ring 1024 $ropts
  local pb=$LAST_PID
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
  start pg_a "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mac 02:00:00:00:00:01 --peer-mac 02:00:00:00:00:02 \
    --mode tx --tso 1448 --size 65000 --count "$N" --rate 100 --duration 120 --interval 0
  local pa=$LAST_PID
  wait_pid "$pa" 150 || fail "$label: sender failed: $(cat "$WORK/pg_a.log")"
  wait_pid "$pb" 150 || fail "$label: receiver failed: $(grep summary "$WORK/pg_b.log")"
  local s
  s=$(grep '^summary' "$WORK/pg_b.log")
  grep -q "rx_packets=$expect " <<<"$s" || fail "$label: expected $expect frames: $s"
  grep -q "rx_bad=0 rx_lost=0 rx_reordered=0" <<<"$s" || fail "$label: $s"
  echo "ok: $label: $N TSO frames through testpmd csum/tso -> $expect frames, every byte and checksum verified"
}
run_case "receiver without offloads (nicmuxd segments testpmd's TSO at MSS 1000)" "" $((N * 65))
run_case "receiver with offloads (testpmd's TSO passes through)" "--offloads" "$N"

printf 'show port stats all\n' >&7
wait_log "$WORK/testpmd.log" "NIC statistics for port 1" 20 "$tp"
sleep 0.5
rx0=$(grep -a -m1 -A1 "NIC statistics for port 0" "$WORK/testpmd.log" | grep -ao "RX-packets: *[0-9]*" | grep -o "[0-9]*$")
[ "$rx0" = $((2 * N)) ] || fail "testpmd port 0 received $rx0 frames, not $((2 * N)) whole ones: $(grep -a -A3 'NIC statistics' "$WORK/testpmd.log")"
printf 'stop\nquit\n' >&7
exec 7>&-
wait_pid "$tp" 20 || { kill -9 "$tp"; wait "$tp" 2>/dev/null || true; }
stop_nicmuxd
echo "ok: testpmd received every 65000-byte frame whole (LRO) and sent it as TSO"
