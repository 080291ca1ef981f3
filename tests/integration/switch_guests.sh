#!/usr/bin/env bash
# Linux guests (QEMU 7.2, stock virtio_net) and the host kernel through nicmuxd's learning
# switch:
#   1. three guests: the first ping floods (ARP broadcast, unknown unicast) and reaches the
#      third guest; after learning, 300 unicast frames a <-> b and iperf3 leave the third
#      guest's port counters still (no flooding of learned unicast)
#   2. a guest <-> the host kernel through a TAP port: ping from a network namespace the test
#      creates (the TAP interface nicmuxd made, moved into it), iperf3 both ways with TSO
#      frames crossing whole, no TCP checksum errors in the namespace
#   2a. a live upgrade while a guest pings another every 10 ms: no reply lost, no reconnect
#   2b. a guest <-> a network namespace behind a veth, through an af_xdp port added at run
#      time: ping and iperf3 both ways, no TCP checksum errors in the namespace
#   2c. the same through a dpdk port on DPDK's net_af_packet (no TSO: the switch cuts the
#      guest's TSO frames, the port's copy sums them)
#   3. VLANs: a, c and the TAP in VLAN 10, b in VLAN 20 (access ports): a <-> c and the
#      namespace <-> a work, nothing crosses to b. The TAP has offloads=off here: iperf3 both
#      ways with the switch segmenting a's TSO frames and completing checksums. (Trunk tagging is covered by the switch's unit
#      tests: this host kernel has no 802.1Q module to make a tagged peer with.)
source "$(dirname "$0")/lib.sh"
guest_image
NS=nmxtest$$
TAPIF=nmxt$$
NS2=nmxtx$$
XV0=nmxx$$a
XV1=nmxx$$b
cleanup_ns() {
  ip netns del "$NS" 2>/dev/null || true
  ip netns del "$NS2" 2>/dev/null || true
  ip link del "$XV0" 2>/dev/null || true
}
CLEANUP_HOOKS+=(cleanup_ns)

tx_of() { ctl --json port show "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['tx_packets'])"; }

# ---- 1. three guests, flooding then learned unicast
nicmuxd --port "vhost-user:a:socket=$WORK/a.sock" --port "vhost-user:b:socket=$WORK/b.sock" \
  --port "vhost-user:c:socket=$WORK/c.sock" --port "tap:host:ifname=$TAPIF" --stats-interval 10
wait_for "$WORK/c.sock" 30
guest a "$WORK/a.sock" 10.0.0.1/24
guest b "$WORK/b.sock" 10.0.0.2/24
guest c "$WORK/c.sock" 10.0.0.3/24
wait_agent a; wait_agent b; wait_agent c
c0=$(tx_of c)
gexec a 'ping -c 2 -W 5 10.0.0.2' >"$WORK/ping_ab.log" || fail "first ping a -> b"
c1=$(tx_of c)
[ "$c1" -gt "$c0" ] || fail "guest c saw nothing of a's first ping (ARP broadcast not flooded?)"
gexec a 'ping -c 300 -i 0.01 -W 5 10.0.0.2' >"$WORK/ping_flood.log" || fail "300 pings a -> b"
gexec b 'iperf3 -c 10.0.0.1 -t 3' >"$WORK/iperf.log" || fail "iperf3 b -> a"
c2=$(tx_of c)
# 600 ICMP frames and a TCP stream between a and b; c may get a stray broadcast or multicast
# (IPv6 neighbour discovery, ARP refresh), never the unicast.
[ $((c2 - c1)) -lt 20 ] || fail "guest c's port sent $((c2 - c1)) frames during a <-> b unicast: flooding after learning"
echo "ok: 3 guests: first ping flooded to c ($((c1 - c0)) frames), then 600 pings + iperf3 ($(grep receiver "$WORK/iperf.log" | awk '{print $7, $8}')) a <-> b with $((c2 - c1)) frames to c"

# ---- 2. guest <-> host kernel through TAP, from a network namespace
ip netns add "$NS"
ip link set "$TAPIF" netns "$NS" || fail "cannot move $TAPIF into $NS"
ip -n "$NS" addr add 10.0.0.9/24 dev "$TAPIF"
ip -n "$NS" link set "$TAPIF" up
ip netns exec "$NS" ping -c 3 -W 5 10.0.0.1 >"$WORK/ping_tap.log" || fail "ping namespace -> guest a through TAP"
gexec a 'ping -c 3 -W 5 10.0.0.9' >>"$WORK/ping_tap.log" || fail "ping guest a -> namespace through TAP"
echo "ok: host kernel (namespace $NS, TAP $TAPIF) <-> guest a: ping both ways ($(grep -m1 -o 'rtt.*\|round-trip.*' "$WORK/ping_tap.log"))"
# TCP both ways between the guest and the kernel behind the TAP, both with TSO and checksum
# offload: TSO frames cross the switch whole both ways (the TAP port's frames average more than
# an MTU), and the namespace's stack counts no checksum error.
iperf_tap() {  # iperf_tap LABEL
  ip netns exec "$NS" nstat -n >/dev/null 2>&1 || true
  # (The guest's iperf3 server, under TCG, sometimes refuses the next client for a moment
  # after a test ends: up to 3 tries, 3 s apart, each attempt's output kept.)
  tap_iperf() {  # tap_iperf LOG [ARGS]
    local log=$1 i
    shift
    for i in 1 2 3; do
      ip netns exec "$NS" iperf3 -c 10.0.0.1 -t 3 "$@" >"$log" 2>&1 && return 0
      cat "$log" >>"$log.tries"
      sleep 3
    done
    return 1
  }
  tap_iperf "$WORK/iperf_tap.log" || fail "iperf3 namespace -> guest a through TAP ($1): $(cat "$WORK/iperf_tap.log.tries")"
  tap_iperf "$WORK/iperf_tap_r.log" -R || fail "iperf3 guest a -> namespace through TAP ($1): $(cat "$WORK/iperf_tap_r.log.tries")"
  csum_err=$(ip netns exec "$NS" nstat -az TcpInCsumErrors 2>/dev/null | awk '/TcpInCsumErrors/ {print $2}')
  [ "${csum_err:-0}" -eq 0 ] || fail "the namespace counted $csum_err TCP checksum errors ($1)"
  echo "ok: TAP <-> guest a ($1): iperf3 both ways ($(grep receiver "$WORK/iperf_tap.log" | awk '{print $7, $8}') in, $(grep receiver "$WORK/iperf_tap_r.log" | awk '{print $7, $8}') out), TcpInCsumErrors ${csum_err:-0}"
}
avg_of() { ctl --json port show "$1" | python3 -c "import json,sys; j=json.load(sys.stdin); print(j['$2_bytes'] // max(1, j['$2_packets']))"; }
iperf_tap "TAP offloads on"
tx_avg=$(avg_of host tx) rx_avg=$(avg_of host rx)
[ "$tx_avg" -gt 1514 ] && [ "$rx_avg" -gt 1514 ] || fail "TAP port frames average tx $tx_avg, rx $rx_avg bytes: TSO frames did not cross whole"
echo "ok: TSO frames cross the switch whole both ways (TAP port frames average tx $tx_avg, rx $rx_avg bytes)"

# ---- 2a. a live upgrade while guest a pings b every 10 ms (docs/upgrade.md): no reply lost,
# the guests' NICs never go down, and the TAP interface (in the namespace) still carries pings.
gexec a 'ping -c 400 -i 0.01 -W 5 10.0.0.2' >"$WORK/ping_upgrade.log" &
ping_pid=$!
sleep 1.5
upgrade_nicmuxd
wait "$ping_pid" || fail "ping a -> b across the upgrade: $(tail -n 3 "$WORK/ping_upgrade.log")"
grep -q " 0% packet loss" "$WORK/ping_upgrade.log" || fail "ping across the upgrade: $(grep loss "$WORK/ping_upgrade.log")"
for g in a b; do
  [ "$(ctl --json port show $g | python3 -c "import json,sys; print(json.load(sys.stdin)['connections'])")" = 1 ] ||
    fail "guest $g's port reconnected across the upgrade"
done
ip netns exec "$NS" ping -c 3 -W 5 10.0.0.1 >>"$WORK/ping_tap.log" || fail "ping namespace -> guest a through TAP after the upgrade"
echo "ok: live upgrade (nicmuxd paused $UPGRADE_PAUSED_US us): guest ping every 10 ms, $(grep -o '[0-9]* packets received' "$WORK/ping_upgrade.log") of 400, $(grep -o 'round-trip.*' "$WORK/ping_upgrade.log"); no reconnect; TAP still carries pings"

# ---- 2b. guest <-> a namespace behind a veth, through an af_xdp port added at run time
# (docs/af_xdp.md): guest a's TSO frames are cut by the switch and summed in the port's copy;
# the veth's other end sends whole, summed frames (tx off, gso off: what XDP can take).
ip netns add "$NS2"
ip link add "$XV0" type veth peer name "$XV1"
ip link set "$XV1" netns "$NS2"
ip link set "$XV0" up
ip -n "$NS2" addr add 10.0.0.8/24 dev "$XV1"
ip -n "$NS2" link set "$XV1" up
ip netns exec "$NS2" ethtool -K "$XV1" tx off gso off >/dev/null
ctl port add "af_xdp:up0:iface=$XV0" >/dev/null || fail "port add af_xdp on $XV0"
ip netns exec "$NS2" ping -c 3 -W 5 10.0.0.1 >"$WORK/ping_xdp.log" || fail "ping namespace -> guest a through af_xdp"
gexec a 'ping -c 3 -W 5 10.0.0.8' >>"$WORK/ping_xdp.log" || fail "ping guest a -> namespace through af_xdp"
ip netns exec "$NS2" nstat -n >/dev/null 2>&1 || true
xdp_iperf() {  # xdp_iperf LOG [ARGS]: up to 3 tries (see tap_iperf)
  local log=$1 i
  shift
  for i in 1 2 3; do
    ip netns exec "$NS2" iperf3 -c 10.0.0.1 -t 3 "$@" >"$log" 2>&1 && return 0
    cat "$log" >>"$log.tries"
    sleep 3
  done
  return 1
}
xdp_iperf "$WORK/iperf_xdp.log" || fail "iperf3 namespace -> guest a through af_xdp: $(cat "$WORK/iperf_xdp.log.tries")"
xdp_iperf "$WORK/iperf_xdp_r.log" -R || fail "iperf3 guest a -> namespace through af_xdp: $(cat "$WORK/iperf_xdp_r.log.tries")"
csum_err=$(ip netns exec "$NS2" nstat -az TcpInCsumErrors 2>/dev/null | awk '/TcpInCsumErrors/ {print $2}')
[ "${csum_err:-0}" -eq 0 ] || fail "the af_xdp namespace counted $csum_err TCP checksum errors"
echo "ok: af_xdp ($(ctl --json port show up0 | python3 -c "import json,sys; print(json.load(sys.stdin)['xdp_mode'])")) <-> guest a: ping both ways, iperf3 both ways ($(grep receiver "$WORK/iperf_xdp.log" | awk '{print $7, $8}') in, $(grep receiver "$WORK/iperf_xdp_r.log" | awk '{print $7, $8}') out, guest TSO frames cut by the switch), TcpInCsumErrors ${csum_err:-0}"
ctl port del up0 >/dev/null || fail "port del up0"

# ---- 2c. the same namespace through a dpdk port on net_af_packet (docs/dpdk.md), added at run
# time: nicmuxd starts DPDK's EAL here. The device has no TSO and no checksum offload.
ctl port add "dpdk:dp0:devargs=net_af_packet0;iface=$XV0" >/dev/null || fail "port add dpdk net_af_packet on $XV0"
ctl port caps dp0 >"$WORK/caps_dp0.txt"
grep -q "^tx offloads: *sum_on_copy$" "$WORK/caps_dp0.txt" || fail "dp0 caps: $(cat "$WORK/caps_dp0.txt")"
wait_until 30 "dp0's link" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port show dp0 | grep -q 'link up'"
ip netns exec "$NS2" ping -c 3 -W 5 10.0.0.1 >"$WORK/ping_dpdk.log" || fail "ping namespace -> guest a through dpdk"
gexec a 'ping -c 3 -W 5 10.0.0.8' >>"$WORK/ping_dpdk.log" || fail "ping guest a -> namespace through dpdk"
ip netns exec "$NS2" nstat -n >/dev/null 2>&1 || true
xdp_iperf "$WORK/iperf_dpdk.log" || fail "iperf3 namespace -> guest a through dpdk: $(cat "$WORK/iperf_dpdk.log.tries")"
xdp_iperf "$WORK/iperf_dpdk_r.log" -R || fail "iperf3 guest a -> namespace through dpdk: $(cat "$WORK/iperf_dpdk_r.log.tries")"
csum_err=$(ip netns exec "$NS2" nstat -az TcpInCsumErrors 2>/dev/null | awk '/TcpInCsumErrors/ {print $2}')
[ "${csum_err:-0}" -eq 0 ] || fail "the dpdk namespace counted $csum_err TCP checksum errors"
dp_tx=$(tx_of dp0)
echo "ok: dpdk net_af_packet <-> guest a: ping both ways, iperf3 both ways ($(grep receiver "$WORK/iperf_dpdk.log" | awk '{print $7, $8}') in, $(grep receiver "$WORK/iperf_dpdk_r.log" | awk '{print $7, $8}') out; $dp_tx frames out of dp0, the guest's TSO frames cut by the switch), TcpInCsumErrors ${csum_err:-0}"
ctl port del dp0 >/dev/null || fail "port del dp0"
kill_guest a b c
stop_nicmuxd
cleanup_ns

# ---- 3. VLAN isolation
rm -f "$WORK"/*.con "$WORK"/*.console.log
nicmuxd --port "vhost-user:a:socket=$WORK/a.sock,vlan=10" --port "vhost-user:b:socket=$WORK/b.sock,vlan=20" \
  --port "vhost-user:c:socket=$WORK/c.sock,vlan=10" --port "tap:host:ifname=$TAPIF,vlan=10,offloads=off"
wait_for "$WORK/c.sock" 30
guest a "$WORK/a.sock" 10.0.0.1/24
guest b "$WORK/b.sock" 10.0.0.2/24
guest c "$WORK/c.sock" 10.0.0.3/24
ip netns add "$NS"
ip link set "$TAPIF" netns "$NS"
ip -n "$NS" addr add 10.0.0.9/24 dev "$TAPIF"
ip -n "$NS" link set "$TAPIF" up
wait_agent a; wait_agent b; wait_agent c
gexec a 'ping -c 2 -W 5 10.0.0.3' >/dev/null || fail "VLAN 10: a -> c"
ip netns exec "$NS" ping -c 2 -W 5 10.0.0.1 >/dev/null || fail "VLAN 10: namespace (TAP) -> a"
b0=$(tx_of b)
if gexec a 'ping -c 2 -W 2 10.0.0.2' >/dev/null 2>&1; then fail "VLAN 10 reached VLAN 20 (a -> b)"; fi
if gexec b 'ping -c 2 -W 2 10.0.0.3' >/dev/null 2>&1; then fail "VLAN 20 reached VLAN 10 (b -> c)"; fi
b1=$(tx_of b)
[ "$b1" -eq "$b0" ] || fail "port b (VLAN 20) was sent $((b1 - b0)) frames from VLAN 10"
echo "ok: VLANs: 10 <-> 10 (guests and TAP) pass, 10 <-> 20 isolated (b got 0 frames)"
# The TAP without offloads: the switch cuts guest a's TSO frames and completes their checksums
# (in software, for a kernel that verifies them).
iperf_tap "TAP offloads off: the switch segments"
tx_avg=$(avg_of host tx)
[ "$tx_avg" -le 1514 ] || fail "TAP port without offloads was sent frames averaging $tx_avg bytes"
kill_guest a b c
stop_nicmuxd
