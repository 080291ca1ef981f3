#!/usr/bin/env bash
# nicmux's software segmentation against the kernel's, on the same TCP stream:
#
#   pktgen --tso 1448 -> [nicmuxd] -+-> TAP tk (offloads=on: the TSO frame goes to the kernel whole)
#                                   |     -> bridge -> veth (TSO, GSO, tx checksum off: the kernel
#                                   |        segments and sums) -> tcpdump on the veth's peer
#                                   +-> TAP tn (offloads=off: nicmuxd segments and sums)
#                                         -> nicmuxctl capture tn (the pcap capture)
#
#                                   +-> dpdk dt (net_tap: no TSO offered, so nicmuxd segments; the
#                                   |     PMD sums each segment: device checksum offload)
#                                   |     -> tcpdump on the tap interface
#                                   +-> dpdk dv (net_virtio_user: device TSO, the frame crosses
#                                         whole, flags set by rte_eth_tx_prepare's fix-ups)
#                                         -> a second nicmuxd's vhost-user port -> its TAP tb
#                                         (offloads=off: it segments) -> tcpdump on tb
#
# The sender's frames are unknown unicast, so the switch floods each to every port. The
# captures must hold the same segments as the kernel's, identical field by field: Ethernet,
# IPv4 (total length, id, flags, header checksum), TCP (sequence number, flags, checksum),
# options and payload (tests/integration/seg_compare.py; it names any field that differs).
source "$(dirname "$0")/lib.sh"
command -v tcpdump >/dev/null || fail "tcpdump not installed (scripts/install-deps)"
command -v ethtool >/dev/null || fail "ethtool not installed (scripts/install-deps)"
NS=nmxseg$$
TK=nmxk$$
TN=nmxn$$
cleanup_ns() { ip netns del "$NS" 2>/dev/null || true; }
CLEANUP_HOOKS+=(cleanup_ns)

N=20  # TSO frames of 65000 bytes: 45 segments each
DT=nmxdt$$
TB=nmxb$$
# The far end of the virtio-user device: a second nicmuxd, up before the device connects.
start nicmuxd_b "$BIN/nicmuxd" --log-level info --control "$WORK/b.ctl" \
  --port "vhost-user:vb:socket=$WORK/b.sock" --port "tap:tb:ifname=$TB,offloads=off"
nb=$LAST_PID
wait_for "$WORK/b.sock" 30
nicmuxd --port "vhost-user:a:socket=$WORK/a.sock" --port "tap:tk:ifname=$TK,offloads=on" \
  --port "tap:tn:ifname=$TN,offloads=off" --port "dpdk:dt:devargs=net_tap0;iface=$DT" \
  --port "dpdk:dv:devargs=net_virtio_user0;path=$WORK/b.sock;queue_size=1024"
wait_for "$WORK/a.sock" 60
wait_until 30 "the TAP interfaces" sh -c "ip link show $TK && ip link show $TN && ip link show $DT && ip link show $TB" >/dev/null
wait_until 30 "the dpdk ports" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port show dv >/dev/null 2>&1"
ctl port caps dt >"$WORK/caps_dt.txt"
ctl port caps dv >"$WORK/caps_dv.txt"
grep -q "^tx offloads: *csum sum_on_copy$" "$WORK/caps_dt.txt" || fail "net_tap port caps: $(cat "$WORK/caps_dt.txt")"
grep -q "^tx offloads: *csum tso4 tso6 sum_on_copy$" "$WORK/caps_dv.txt" || fail "virtio-user port caps: $(cat "$WORK/caps_dv.txt")"
echo "ok: port caps: dt (net_tap) $(grep '^tx offloads' "$WORK/caps_dt.txt"); dv (net_virtio_user) $(grep '^tx offloads' "$WORK/caps_dv.txt")"
ip netns add "$NS"
ip link set "$TK" netns "$NS"
ip link set "$TN" netns "$NS"
ip link set "$TB" netns "$NS"
sysctl -qw "net.ipv6.conf.$DT.disable_ipv6=1" || true
ip link set "$DT" up
nsx() { ip netns exec "$NS" "$@"; }
nsx ip link add br0 type bridge
nsx ip link add v0 type veth peer name v1
nsx ip link set "$TK" master br0
nsx ip link set v0 master br0
# No TSO, GSO or checksum offload on the bridge's way out: the kernel cuts and sums in software.
nsx ethtool -K v0 tso off gso off tx off >/dev/null
for i in lo br0 v0 v1 "$TK" "$TN" "$TB"; do nsx ip link set "$i" up; done
nsx sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true

start tcpdump ip netns exec "$NS" tcpdump -i v1 -s 0 -U -w "$WORK/kernel.pcap" tcp
td=$LAST_PID
start capture "$BIN/nicmuxctl" --socket "$CTL" capture tn -w "$WORK/nicmux.pcap" --duration 30
cp=$LAST_PID
start tcpdump_dt tcpdump -i "$DT" -s 0 -U -w "$WORK/dt.pcap" tcp
tt=$LAST_PID
start tcpdump_tb ip netns exec "$NS" tcpdump -i "$TB" -s 0 -U -w "$WORK/tb.pcap" tcp
tb=$LAST_PID
sleep 2  # tcpdump and the capture attached
start pg_a "$BIN/nicmux-pktgen" --socket "$WORK/a.sock" --mac 02:00:00:00:00:01 --peer-mac 02:00:00:00:00:99 \
  --mode tx --tso 1448 --size 65000 --count "$N" --rate 20 --duration 60 --interval 0
pa=$LAST_PID
wait_pid "$pa" 90 || fail "sender: $(cat "$WORK/pg_a.log")"
sleep 1
kill -INT "$td" "$cp" "$tt" "$tb" 2>/dev/null || true  # tcpdump and the capture: flush and stop
for p in "$td" "$cp" "$tt" "$tb"; do wait_pid "$p" 20 || true; done
ctl --json stats >"$WORK/stats.json" || true
python3 "$(dirname "$0")/seg_compare.py" "$WORK/kernel.pcap" "$WORK/nicmux.pcap" | tee "$WORK/compare.log" ||
  fail "segmentation differs from the kernel's: $(head -5 "$WORK/compare.log")"
n=$(grep -o '^ok: [0-9]*' "$WORK/compare.log" | grep -o '[0-9]*')
[ "$n" = $((N * 45)) ] || fail "$n segments compared, not $((N * 45))"
echo "ok: $N TSO frames segmented by nicmux and by the kernel: $n segments, identical field by field"

# The dpdk ports: net_tap got the segments and summed them; net_virtio_user took the TSO frames
# whole (its tx_packets: N and a few of the kernel's, not N * 45) and the far nicmuxd cut them.
for d in dt tb; do
  python3 "$(dirname "$0")/seg_compare.py" "$WORK/kernel.pcap" "$WORK/$d.pcap" | tee "$WORK/compare_$d.log" ||
    fail "$d: segments differ from the kernel's: $(head -5 "$WORK/compare_$d.log")"
  n=$(grep -o '^ok: [0-9]*' "$WORK/compare_$d.log" | grep -o '[0-9]*')
  [ "$n" = $((N * 45)) ] || fail "$d: $n segments compared, not $((N * 45))"
done
tx() { ctl --json port show "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['tx_packets'])"; }
# (dv also carries what the kernel sends on the other ports: router solicitations, ARP.)
ndv=$(tx dv)
[ "$ndv" -ge "$N" ] && [ "$ndv" -lt $((N * 45 / 2)) ] ||
  fail "dv (net_virtio_user) sent $ndv frames: not the $N TSO frames whole (cut, they are $((N * 45)))"
[ "$(tx dt)" -ge $((N * 45)) ] || fail "dt (net_tap) sent $(tx dt) frames, fewer than $((N * 45)) segments"
echo "ok: dpdk net_tap (device checksums): $((N * 45)) segments as the kernel's; dpdk net_virtio_user (device TSO): $N frames whole, cut by the far nicmuxd as the kernel did"
stop_nicmuxd
kill -TERM "$nb"
wait_pid "$nb" 30 || fail "the second nicmuxd exited with an error"
