#!/usr/bin/env bash
# nicmux's software segmentation against the kernel's, on the same TCP stream:
#
#   pktgen --tso 1448 -> [nicmuxd] -+-> TAP tk (offloads=on: the TSO frame goes to the kernel whole)
#                                   |     -> bridge -> veth (TSO, GSO, tx checksum off: the kernel
#                                   |        segments and sums) -> tcpdump on the veth's peer
#                                   +-> TAP tn (offloads=off: nicmuxd segments and sums)
#                                         -> nicmuxctl capture tn (the pcap capture)
#
# The sender's frames are unknown unicast, so the switch floods each to both TAPs. The two
# captures must hold the same segments, identical field by field: Ethernet, IPv4 (total length,
# id, flags, header checksum), TCP (sequence number, flags, checksum), options and payload
# (tests/integration/seg_compare.py; it names any field that differs).
source "$(dirname "$0")/lib.sh"
command -v tcpdump >/dev/null || fail "tcpdump not installed (scripts/install-deps)"
command -v ethtool >/dev/null || fail "ethtool not installed (scripts/install-deps)"
NS=nmxseg$$
TK=nmxk$$
TN=nmxn$$
cleanup_ns() { ip netns del "$NS" 2>/dev/null || true; }
CLEANUP_HOOKS+=(cleanup_ns)

N=20  # TSO frames of 65000 bytes: 45 segments each
nicmuxd --port "vhost-user:a:socket=$WORK/a.sock" --port "tap:tk:ifname=$TK,offloads=on" \
  --port "tap:tn:ifname=$TN,offloads=off"
wait_for "$WORK/a.sock" 30
wait_until 30 "the TAP interfaces" sh -c "ip link show $TK && ip link show $TN" >/dev/null
ip netns add "$NS"
ip link set "$TK" netns "$NS"
ip link set "$TN" netns "$NS"
nsx() { ip netns exec "$NS" "$@"; }
nsx ip link add br0 type bridge
nsx ip link add v0 type veth peer name v1
nsx ip link set "$TK" master br0
nsx ip link set v0 master br0
# No TSO, GSO or checksum offload on the bridge's way out: the kernel cuts and sums in software.
nsx ethtool -K v0 tso off gso off tx off >/dev/null
for i in lo br0 v0 v1 "$TK" "$TN"; do nsx ip link set "$i" up; done
nsx sysctl -qw net.ipv6.conf.all.disable_ipv6=1 || true

start tcpdump ip netns exec "$NS" tcpdump -i v1 -s 0 -U -w "$WORK/kernel.pcap" tcp
td=$LAST_PID
start capture "$BIN/nicmuxctl" --socket "$CTL" capture tn -w "$WORK/nicmux.pcap" --duration 30
cp=$LAST_PID
sleep 2  # tcpdump and the capture attached
start pg_a "$BIN/nicmux-pktgen" --socket "$WORK/a.sock" --mac 02:00:00:00:00:01 --peer-mac 02:00:00:00:00:99 \
  --mode tx --tso 1448 --size 65000 --count "$N" --rate 20 --duration 60 --interval 0
pa=$LAST_PID
wait_pid "$pa" 90 || fail "sender: $(cat "$WORK/pg_a.log")"
sleep 1
kill -INT "$td" "$cp" 2>/dev/null || true  # tcpdump and the capture: flush and stop
wait_pid "$td" 20 || true
wait_pid "$cp" 20 || true
ctl --json stats >"$WORK/stats.json" || true
python3 "$(dirname "$0")/seg_compare.py" "$WORK/kernel.pcap" "$WORK/nicmux.pcap" | tee "$WORK/compare.log" ||
  fail "segmentation differs from the kernel's: $(head -5 "$WORK/compare.log")"
n=$(grep -o '^ok: [0-9]*' "$WORK/compare.log" | grep -o '[0-9]*')
[ "$n" = $((N * 45)) ] || fail "$n segments compared, not $((N * 45))"
stop_nicmuxd
echo "ok: $N TSO frames segmented by nicmux and by the kernel: $n segments, identical field by field"
