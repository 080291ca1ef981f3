#!/usr/bin/env bash
# The af_xdp port on a veth pair, against the kernel: nicmuxd switches between a TAP (the
# host's stack, 10.9.0.1) and an af_xdp port on veth end v0; the other end, v1, is in a network
# namespace (10.9.0.2).
#   1. ping both ways; iperf3 TCP both ways, with v0's GRO on and with it off; the namespace's
#      TcpInCsumErrors stays 0 (frames towards the veth leave nicmuxd whole and summed: the
#      TAP's TSO frames are cut and summed by the switch). v1 sends with tx checksum offload and
#      GSO off: a veth hands XDP a partial checksum it cannot tell, and no frame over a page.
#   2. bad configuration, each refused with an error naming it while the daemon serves on: no
#      such interface, an MTU the UMEM frame cannot hold, a second port on the same interface,
#      another XDP program already on the interface, mode=bogus, ring=1000.
#   3. 100 add/remove cycles of the af_xdp port: fds and RSS flat, no XDP program left behind.
#   4. nicmuxd killed with SIGKILL leaves its program; a new nicmuxd replaces it and works; a
#      SIGTERM'd one detaches it.
#   5. checksums through AF_XDP TX metadata (tx_csum=): nicmux-pktgen sends TSO frames with a
#      partial checksum into a vhost-user port; the switch cuts them into 45 segments each for
#      the af_xdp port, each segment's checksum still partial; the namespace receives them
#      (no socket: each good segment is answered with a RST, a bad one counted TcpInCsumErrors)
#      and tcpdump -vv in it reads every segment's checksum. The netdev netlink family's answer
#      for the veth (xdp-features, xsk-features none) is in `port caps`. Cases:
#        a. tx_csum=auto, v0 with tx-checksum-ip-generic (a veth's default), native and generic
#           XDP: tx_metadata "checksum", caps csum; the segments reach the namespace as
#           CHECKSUM_PARTIAL skbs: every one's checksum field still holds the pseudo-header
#           seed (the port did not sum them), and the stack takes every one (RSTs, 0 errors);
#        b. the same port after `ethtool -K v0 tx off`: the kernel now sums each frame from the
#           request (skb_checksum_help): every checksum correct on the wire, 0 errors;
#        c. v0 with tx off before the port is made: tx_metadata "none (copy mode, ...)", the
#           port sums in its copy: every checksum correct;
#        d. tx_csum=off: tx_metadata "none (tx_csum=off)", caps without csum: every checksum
#           correct.
#   (Section 1's iperf3 runs with the default, tx_csum=auto: its TCP from the host reaches the
#   namespace through TX metadata, TcpInCsumErrors 0.)
source "$(dirname "$0")/lib.sh"
command -v iperf3 >/dev/null || fail "iperf3 not installed (scripts/install-deps)"
command -v tcpdump >/dev/null || fail "tcpdump not installed (scripts/install-deps)"
NS=nmxx$$
V0=nmxv$$a
V1=nmxv$$b
TAPIF=nmxh$$
cleanup_net() {
  ip netns del "$NS" 2>/dev/null || true
  ip link del "$V0" 2>/dev/null || true
  ip link del "${V0}m" 2>/dev/null || true
}
CLEANUP_HOOKS+=(cleanup_net)
nsx() { ip netns exec "$NS" "$@"; }
xdp_prog_on() { ip -d link show "$1" | grep -o 'prog/xdp id [0-9]* name [a-z_]*' || true; }

ip netns add "$NS"
ip link add "$V0" type veth peer name "$V1"
ip link set "$V1" netns "$NS"
ip link set "$V0" up
nsx ip addr add 10.9.0.2/24 dev "$V1"
nsx ip link set "$V1" up
nsx ip link set lo up
nsx ethtool -K "$V1" tx off gso off >/dev/null

# ---- 1. traffic
nicmuxd --port "tap:host:ifname=$TAPIF,address=10.9.0.1/24" --port "af_xdp:up0:iface=$V0"
wait_until 30 "port up0" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port show up0 >/dev/null 2>&1"
mode=$(ctl --json port show up0 | python3 -c "import json,sys; print(json.load(sys.stdin)['xdp_mode'])")
[ -n "$(xdp_prog_on "$V0")" ] || fail "no XDP program on $V0"
echo "ok: af_xdp port on $V0: $mode ($(xdp_prog_on "$V0"))"
nsx ping -c 3 -i 0.2 -W 5 10.9.0.1 >"$WORK/ping1.log" || fail "ping namespace -> host through af_xdp"
ping -c 3 -i 0.2 -W 5 -I "$TAPIF" 10.9.0.2 >"$WORK/ping2.log" || fail "ping host -> namespace through af_xdp"
echo "ok: ping both ways ($(grep -h rtt "$WORK/ping1.log" "$WORK/ping2.log" | tr '\n' ' '))"
nsx nstat -n >/dev/null 2>&1 || true
for gro in on off; do
  ethtool -K "$V0" gro "$gro" >/dev/null 2>&1 || fail "ethtool -K $V0 gro $gro"
  for dir in "" "-R"; do
    iperf3 -s -B 10.9.0.1 -1 >"$WORK/iperf_s.log" 2>&1 &
    sp=$!
    sleep 0.5
    out=$(nsx timeout 30 iperf3 -c 10.9.0.1 -t 1 -f g $dir 2>&1) || fail "iperf3 $dir (gro $gro): $out"
    wait "$sp" 2>/dev/null || true
    way="namespace -> host"
    [ -n "$dir" ] && way="host -> namespace"
    echo "ok: iperf3 TCP $way, $V0 gro $gro: $(grep receiver <<<"$out" | awk '{for (i = 1; i < NF; i++) if ($(i+1) == "Gbits/sec") print $i " Gbit/s"}')"
  done
done
csum_err=$(nsx nstat -az TcpInCsumErrors 2>/dev/null | awk '/TcpInCsumErrors/ {print $2}')
[ "${csum_err:-0}" = 0 ] || fail "namespace saw $csum_err TCP checksum errors"
echo "ok: namespace TcpInCsumErrors 0"

# ---- 2. bad configuration, the daemon serving on
expect_refused "af_xdp:x1:iface=nosuch$$" "no interface named nosuch$$"
ip link add "${V0}m" type veth peer name "${V0}n"
ip link set "${V0}m" mtu 9000
expect_refused "af_xdp:x2:iface=${V0}m" "MTU 9000 does not fit a 4096-byte UMEM frame"
expect_refused "af_xdp:x3:iface=$V0" "interface $V0 (index [0-9]*) is in use by port up0"
expect_refused "af_xdp:x4:iface=${V0}m,mode=bogus" "mode=bogus: expected auto, zero-copy, native or generic"
expect_refused "af_xdp:x5:iface=${V0}m,ring=1000" "ring=1000 is not a power of two"
expect_refused "af_xdp:x7:iface=${V0}m,tx_csum=on" "tx_csum=on: expected auto or off"
ip link set "${V0}m" mtu 1500
# Someone else's XDP program (built here: clang -target bpf) on the interface: not replaced.
printf '%s\n' 'int other_prog(void *ctx) __attribute__((section("xdp")));' 'int other_prog(void *ctx) { return 2; }' \
  'char _license[] __attribute__((section("license"))) = "GPL";' >"$WORK/other.c"
clang -O2 -target bpf -c "$WORK/other.c" -o "$WORK/other.o" || fail "clang -target bpf"
ip link set dev "${V0}m" xdpgeneric obj "$WORK/other.o" sec xdp || fail "loading another XDP program"
expect_refused "af_xdp:x6:iface=${V0}m" "has XDP program 'other_prog' attached"
xdp_prog_on "${V0}m" | grep -q other_prog || fail "the other program was touched"
ip link del "${V0}m"
nsx ping -c 1 -W 5 10.9.0.1 >/dev/null || fail "ping after the refusals"
echo "ok: still forwarding after the refusals"

# ---- 3. 100 add/remove cycles
python3 - "$BIN/nicmuxctl" "$CTL" "$NICMUXD_PID" "$V0" <<'PY' || fail "add/remove cycles"
import os, subprocess, sys
ctl, sock, pid, v0 = sys.argv[1:]
def run(*a): subprocess.run([ctl, "--socket", sock, *a], check=True, stdout=subprocess.DEVNULL)
def fds(): return len(os.listdir(f"/proc/{pid}/fd"))
def rss_kb():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
for i in range(100):
    if i == 10: fd0, rss0 = fds(), rss_kb()
    run("port", "del", "up0")
    if "prog/xdp" in subprocess.run(["ip", "-d", "link", "show", v0], capture_output=True, text=True).stdout:
        sys.exit(f"cycle {i}: the XDP program stayed after port del")
    run("port", "add", f"af_xdp:up0:iface={v0}")
import time
for _ in range(20):  # the last control connection is closed by the daemon a moment after its reply
    if fds() <= fd0: break
    time.sleep(0.1)
fd1, rss1 = fds(), rss_kb()
print(f"fds {fd0} -> {fd1}, rss {rss0} -> {rss1} kB")
assert fd1 <= fd0, "fds grew"
assert rss1 - rss0 < 16 * 1024, "RSS grew by more than 16 MiB"
PY
nsx ping -c 2 -i 0.2 -W 5 10.9.0.1 >/dev/null || fail "ping after 100 add/remove cycles"
echo "ok: 100 add/remove cycles of the af_xdp port: fds and RSS flat, the program detached each time"

# ---- 4. a crash leaves the program; the next nicmuxd replaces it; SIGTERM detaches
kill -9 "$NICMUXD_PID"
wait "$NICMUXD_PID" 2>/dev/null || true
[ -n "$(xdp_prog_on "$V0")" ] || fail "expected the killed daemon's program on $V0"
rm -f "$CTL"
nicmuxd --port "tap:host:ifname=$TAPIF,address=10.9.0.1/24" --port "af_xdp:up0:iface=$V0"
wait_until 30 "port up0 again" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port show up0 >/dev/null 2>&1"
grep -q "replacing XDP program nicmux_xsk" "$WORK/nicmuxd.log" || fail "the leftover program was not replaced"
nsx ip neigh flush all  # the new TAP has a new MAC address
nsx ping -c 3 -i 0.2 -W 5 10.9.0.1 >/dev/null || fail "ping after the restart"
stop_nicmuxd
[ -z "$(xdp_prog_on "$V0")" ] || fail "program left on $V0 after SIGTERM: $(xdp_prog_on "$V0")"
echo "ok: after SIGKILL the next nicmuxd replaced the leftover program; SIGTERM detached it"

# ---- 5. checksums through AF_XDP TX metadata
FRAMES=20  # TSO frames of 65000 B per case: 45 segments each
SEGS=$((FRAMES * 45))
V1MAC=$(nsx cat "/sys/class/net/$V1/address")
nsx ip addr add 10.0.0.2/24 dev "$V1"
nsx ip neigh replace 10.0.0.1 lladdr 02:00:00:00:00:01 dev "$V1"  # (the RSTs go back to the sender)
nsx ethtool -K "$V1" gro off >/dev/null  # one skb per segment: exact counts
ethtool -K "$V0" tx on >/dev/null
# The namespace's TcpInSegs TcpInCsumErrors TcpOutRsts (absolute: nstat's history file is
# per user, not per namespace).
tcp_counters() {
  nsx nstat -az TcpInSegs TcpInCsumErrors TcpOutRsts |
    awk '/TcpInSegs/ {s=$2} /TcpInCsumErrors/ {e=$2} /TcpOutRsts/ {r=$2} END {print s+0, e+0, r+0}'
}
# meta_case LABEL SPEC_OPTS EXPECT_METADATA EXPECT_CKSUM [BEFORE_SEND_CMD]: one nicmuxd with a
# vhost-user port for pktgen and the af_xdp port; EXPECT_CKSUM is what tcpdump must say of
# every segment (correct or incorrect).
meta_case() {
  local label=$1 opts=$2 expect_meta=$3 expect_ck=$4 before=${5:-}
  rm -f "$CTL" "$WORK/pg.sock"
  nicmuxd --port "vhost-user:pg:socket=$WORK/pg.sock" --port "af_xdp:up1:iface=$V0$opts"
  wait_until 30 "port up1" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port show up1 >/dev/null 2>&1"
  ctl --json port caps up1 >"$WORK/caps.json"
  ctl --json port show up1 >"$WORK/show.json"
  python3 - "$WORK/caps.json" "$WORK/show.json" "$expect_meta" <<'PY' || fail "$label: caps"
import json, sys
caps, show, want = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), sys.argv[3]
dev = caps["device"]
meta = dev["tx_metadata"]
assert meta == show["tx_metadata"], (meta, show["tx_metadata"])
assert meta.startswith(want), f"tx_metadata {meta!r}, expected {want!r}..."
assert ("csum" in caps["tx_offloads"]) == (meta == "checksum"), caps["tx_offloads"]
assert "sum_on_copy" in caps["tx_offloads"], caps["tx_offloads"]
# The kernel's netdev family, over real netlink, about the veth: XDP but no AF_XDP TX metadata.
assert dev["xsk_features"] == "none", dev["xsk_features"]
assert "basic" in dev["xdp_features"].split() and "redirect" in dev["xdp_features"].split(), dev["xdp_features"]
assert dev["tx_metadata_len"] == (0 if "tx_csum=off" in meta else 24), dev["tx_metadata_len"]
print(f"   tx_metadata: {meta}; caps {caps['tx_offloads']}; xdp_features {dev['xdp_features']}; xsk_features {dev['xsk_features']}")
PY
  grep -q "port up1: AF_XDP on $V0.*tx_metadata: $expect_meta" "$WORK/nicmuxd.log" || fail "$label: tx_metadata not logged"
  [ -n "$before" ] && eval "$before"
  local before_c
  before_c=$(tcp_counters)
  start tcpdump ip netns exec "$NS" tcpdump -i "$V1" -nn -vv -l -c "$SEGS" "tcp and dst port 5201"
  local tp=$LAST_PID
  wait_log "$WORK/tcpdump.log" "listening on" 30 "$tp"
  start pg "$BIN/nicmux-pktgen" --socket "$WORK/pg.sock" --mac 02:00:00:00:00:01 --peer-mac "$V1MAC" \
    --mode tx --tso 1448 --size 65000 --count "$FRAMES" --rate 100 --duration 60 --interval 0 --announce --delay 1
  local pp=$LAST_PID
  wait_pid "$pp" 90 || fail "$label: pktgen: $(tail -3 "$WORK/pg.log")"
  wait_pid "$tp" 30 || fail "$label: tcpdump saw $(grep -c cksum "$WORK/tcpdump.log") of $SEGS segments"
  local ok seed insegs errs rsts
  # Per segment: does tcpdump find its checksum correct, and is it the pseudo-header seed a
  # sender leaves for checksum offload (10.0.0.1 -> 10.0.0.2, TCP, the segment's length)? (A
  # completed checksum can equal its seed by chance: pktgen's payload makes one such segment
  # in these 900. The bytes are what tell.)
  read -r ok seed < <(python3 - "$WORK/tcpdump.log" <<'PY'
import re, sys
ok = seed = 0
for m in re.finditer(r"cksum 0x([0-9a-f]+) \((correct|incorrect)[^)]*\).*length (\d+)", open(sys.argv[1]).read()):
    acc = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + 20 + int(m.group(3))
    while acc >> 16: acc = (acc & 0xffff) + (acc >> 16)
    ok += m.group(2) == "correct"
    seed += int(m.group(1), 16) == acc
print(ok, seed)
PY
)
  sleep 0.5
  read -r insegs errs rsts < <(echo "$before_c $(tcp_counters)" | awk '{print $4 - $1, $5 - $2, $6 - $3}')
  [ "$errs" = 0 ] || fail "$label: namespace TcpInCsumErrors $errs"
  [ "$insegs" -ge "$SEGS" ] && [ "$rsts" -ge "$SEGS" ] || fail "$label: namespace took $insegs segments, answered $rsts (expected $SEGS)"
  if [ "$expect_ck" = correct ]; then
    [ "$ok" = "$SEGS" ] || fail "$label: tcpdump: $ok of $SEGS checksums correct ($seed still the seed)"
  else
    [ "$seed" = "$SEGS" ] || fail "$label: tcpdump: $seed of $SEGS checksums are the partial seed ($ok correct)"
  fi
  stop_nicmuxd
  echo "ok: $label: $SEGS segments; tcpdump in the namespace: $ok checksums correct, $seed the partial seed; TcpInSegs $insegs, TcpOutRsts $rsts, TcpInCsumErrors 0"
}
meta_case "5a. tx_csum=auto, native XDP (copy mode)" "" checksum incorrect
meta_case "5a. tx_csum=auto, generic XDP" ",mode=generic" checksum incorrect
meta_case "5b. tx_csum=auto, then ethtool -K v0 tx off (the kernel sums)" "" checksum correct "ethtool -K $V0 tx off >/dev/null"
meta_case "5c. v0 with tx off before the port" "" "none (copy mode, and $V0 has tx-checksum-ip-generic off" correct
ethtool -K "$V0" tx on >/dev/null
meta_case "5d. tx_csum=off" ",tx_csum=off" "none (tx_csum=off)" correct
