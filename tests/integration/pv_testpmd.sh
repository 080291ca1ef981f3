#!/usr/bin/env bash
# The DPDK PMD net_nicmux_pv (src/pv/pmd/) in Debian's unmodified dpdk-testpmd, loaded with -d,
# holding two pv devices of one nicmuxd:
#
#   pktgen A <-> vhost-user pga <-> [nicmuxd xconnect] <-> pv p0 <-> testpmd port 0
#                                                                     = io / csum fwd =
#   pktgen B <-> vhost-user pgb <-> [nicmuxd xconnect] <-> pv p1 <-> testpmd port 1
#
#   1. what testpmd shows is what nicmuxd announced: queues, ring size, frame length, the MTU
#      range (testpmd's own checks refuse 60 and 9000 naming 68 and 2030), the tx offloads
#      (IPV4_CKSUM UDP_CKSUM TCP_CKSUM, no TCP_TSO: p1's uplink pga has no TSO yet);
#   2. io forwarding: 5000 verified frames each way at 64 and 1518 B, exact counts at both
#      pktgens, every byte checked; testpmd's port stats (from nicmuxd's STATS_GET) exact too.
#      testpmd's mbufs hold 896 bytes (--mbuf-size=1024, --enable-scatter): a 1518-byte frame
#      arrives as a chain of two mbufs (the PMD's SCATTER) and leaves as one (made flat);
#   3. tcp_tso asked of a device that does not offer it: `port start` fails, saying so;
#   4. capabilities follow nicmuxd's events: pktgen A attached with TSO (--offloads) makes
#      nicmuxd offer tcp_tso on p1 (uplink=pga); testpmd sees TCP_TSO without reloading;
#   5. the PMD's tx offloads: testpmd's csum engine, TCP checksum in "hardware" and TSO at MSS
#      1000 on port 1, so each mbuf carries TCP_SEG/TCP_CKSUM/IPV4 with l2/l3/l4_len and
#      tso_segsz: pktgen A's 65000-byte TSO frames reach testpmd as 45 segments (nicmuxd cuts
#      them for p0), testpmd sends each as a TSO request, nicmuxd cuts those at 1000 bytes for
#      pktgen B (no offloads): 90 verified segments per frame, checksums right;
#   6. a socket nobody serves: the device's probe fails naming it; testpmd's quit closes both
#      devices (nicmuxd sees each driver leave);
#   7. (once, after both sessions) link state change events: nicmuxd stops under a running
#      testpmd, which gets RTE_ETH_EVENT_INTR_LSC and shows the link down.
# Steps 1 to 6 run twice, each time in a new testpmd (its EAL memory: --no-huge, a memfd):
#   copy:      zerocopy=0: the PMD copies each frame (1024-byte mbufs: rx chains, tx made flat);
#   zero copy: the default: the PMD registers the EAL's memory with nicmuxd (MEM_ADD) and nicmuxd
#              copies straight from and into testpmd's mbufs (the default 2048-byte ones, which
#              hold a 1518-byte frame): the same exact counts, bytes and checksums, and the TSO
#              requests of step 5 posted from the mbufs themselves; and in step 2 a live
#              upgrade of nicmuxd amid verified frames both ways (the registered memory handed
#              over): none lost or reordered, no reconnect, testpmd's stats counting them.
# The PMD runs under the build's sanitizers (the dev preset: ASan + UBSan, their runtimes
# preloaded into testpmd).
source "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

# What it needs: Debian's DPDK (testpmd, libdpdk-dev) and DPDK's driver SDK headers of that
# version (scripts/dpdk-driver-sdk), then the PMD itself: a build configured before the headers
# were fetched skipped it, so configure again and build it.
"$ROOT/scripts/install-deps" || fail "scripts/install-deps failed"
"$ROOT/scripts/dpdk-driver-sdk" >/dev/null || fail "scripts/dpdk-driver-sdk failed (DPDK's driver headers)"
PMD=${NICMUX_PV_PMD:?NICMUX_PV_PMD must name librte_net_nicmux_pv.so of this build}
BUILD=${NICMUX_BUILD_DIR:?NICMUX_BUILD_DIR must name the build directory}
cmake --build "$BUILD" --target rte_net_nicmux_pv >"$WORK/pmd-build.log" 2>&1 || {
  echo "the PMD is not in this build's configuration: configuring $BUILD again"
  cmake "$BUILD" >"$WORK/pmd-configure.log" 2>&1 || fail "configuring $BUILD: $(tail -n 5 "$WORK/pmd-configure.log")"
  grep "net_nicmux_pv" "$WORK/pmd-configure.log" || true
  cmake --build "$BUILD" --target rte_net_nicmux_pv >"$WORK/pmd-build.log" 2>&1 ||
    fail "building rte_net_nicmux_pv: $(tail -n 20 "$WORK/pmd-build.log")"
}
[ -f "$PMD" ] || fail "$PMD was not built"
# DPDK loads a -d plugin only from a directory that no one else may write to, nor any of its
# parents: a build under /tmp (world-writable) is refused ("Cannot init plugins"). A private
# copy under /run (root's, 755) is loaded instead, wherever the build is.
PMD_DIR=$(mktemp -d /run/nicmux-pmd.XXXXXX)
rm_pmd_dir() { rm -rf "$PMD_DIR"; }
CLEANUP_HOOKS+=(rm_pmd_dir)
cp "$PMD" "$PMD_DIR/" || fail "copying $PMD to $PMD_DIR"
PMD=$PMD_DIR/$(basename "$PMD")
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"
PRELOAD=${NICMUX_PV_PMD_PRELOAD:-}
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 # testpmd's own allocations are not ours to judge

N=20         # TSO frames in 5
S=$WORK
nicmuxd --forward xconnect --port "vhost-user:pga:socket=$S/pga.sock" --port "pv:p0:socket=$S/p0.sock" \
  --port "pv:p1:socket=$S/p1.sock,uplink=pga,buf_size=66560,ring=256" --port "vhost-user:pgb:socket=$S/pgb.sock"
wait_for "$S/pgb.sock" 60
wait_for "$S/p1.sock" 30

# 6 (first half): a device whose socket nobody serves is not probed (the EAL goes on without
# it), with an error naming the socket.
LD_PRELOAD=$PRELOAD timeout 60 dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="npx$$" -d "$PMD" \
  --vdev "net_nicmux_pv7,socket=$S/nobody.sock" -- --total-num-mbufs=2048 </dev/null >"$WORK/tp-nobody.log" 2>&1 || true
grep -aq "net_nicmux_pv7: cannot open the pv device at $S/nobody.sock: connect $S/nobody.sock: No such file" \
  "$WORK/tp-nobody.log" || fail "no probe error naming the socket: $(tail -n 5 "$WORK/tp-nobody.log")"
grep -aq "No probed ethernet devices" "$WORK/tp-nobody.log" || fail "testpmd has a port on a socket nobody serves"
echo "ok: $(grep -a -m1 'cannot open the pv device' "$WORK/tp-nobody.log")"

# session MODE: steps 1 to 6 in a new testpmd; MODE is copy or zerocopy; SESSION counts them.
SESSION=0
session() {
local mode=$1
SESSION=$((SESSION + 1))
local devargs mbufs
if [ "$mode" = copy ]; then
  devargs=",zerocopy=0"
  mbufs=(--mbuf-size=1024)
else
  devargs=""
  mbufs=()
fi
rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
exec 7<>"$WORK/tp.in"
start_with_input "testpmd-$mode" "$WORK/tp.in" env LD_PRELOAD="$PRELOAD" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" \
  --file-prefix="npv$$$mode" --lcores 0@0,1@1 -d "$PMD" \
  --vdev "net_nicmux_pv0,socket=$S/p0.sock$devargs" --vdev "net_nicmux_pv1,socket=$S/p1.sock$devargs" \
  -- -i --nb-cores=1 --total-num-mbufs=16384 "${mbufs[@]}" --enable-scatter
tp=$LAST_PID
TPLOG=$WORK/testpmd-$mode.log
echo "== $mode: testpmd with net_nicmux_pv0 and net_nicmux_pv1${devargs:+ ($devargs)}"

# tp MARKER CMD...: sends the commands to testpmd, then `show port summary all` as a sentinel;
# waits for the sentinel and MARKER in what testpmd printed since; that output is in $WORK/tp.out.
tp() {
  local marker=$1 from deadline
  shift
  from=$(stat -c %s "$TPLOG")
  printf '%s\n' "$@" 'show port summary all' >&7
  deadline=$(($(date +%s) + 60))
  while :; do
    tail -c +$((from + 1)) "$TPLOG" >"$WORK/tp.out"
    if grep -aq "Number of available ports" "$WORK/tp.out" && grep -aqE -- "$marker" "$WORK/tp.out"; then return 0; fi
    kill -0 "$tp" 2>/dev/null || fail "testpmd exited: $(tail -n 20 "$TPLOG")"
    [ "$(date +%s)" -le "$deadline" ] || fail "testpmd printed no '$marker' after: $*: $(cat "$WORK/tp.out")"
    sleep 0.1
  done
}
# expect_tp PATTERN: the last tp output has a line matching PATTERN (grep -E).
expect_tp() { grep -aqE -- "$1" "$WORK/tp.out" || fail "testpmd's output lacks '$1': $(cat "$WORK/tp.out")"; }

wait_log "$TPLOG" "testpmd> " 60 "$tp"
[ "$(grep -c "port p0: pv driver connected" "$WORK/nicmuxd.log")" = "$SESSION" ] || fail "p0 saw no driver: $(grep p0 "$WORK/nicmuxd.log")"
[ "$(grep -c "port p1: pv driver connected" "$WORK/nicmuxd.log")" = "$SESSION" ] || fail "p1 saw no driver: $(grep p1 "$WORK/nicmuxd.log")"
# The mode each device runs in, as the PMD logged it at its start; nicmuxd's view of it.
if [ "$mode" = copy ]; then
  for port in 0 1; do
    grep -aq "net_nicmux_pv: port $port: copy mode: zerocopy=0" "$TPLOG" || fail "port $port is not in copy mode: $(grep -a net_nicmux_pv "$TPLOG")"
  done
  ctl port show p0 | grep -qE "registered_memory: +0 regions, 0$" || fail "p0 has registered memory: $(ctl port show p0)"
else
  # The EAL's memory (--no-huge -m 512: one memfd) is registered; both directions zero copy.
  for port in 0 1; do
    grep -aq "net_nicmux_pv: port $port: zero copy: 1 regions (512 MB) registered with nicmuxd, 1 rx and 1 tx queues" "$TPLOG" ||
      fail "port $port is not zero copy: $(grep -a net_nicmux_pv "$TPLOG")"
  done
  for p in p0 p1; do
    ctl port show $p | grep -qE "registered_memory: +1 regions, 512M$" || fail "$p: $(ctl port show $p)"
  done
  grep -q "port p1: pv driver registered region 1: 536870912 bytes" "$WORK/nicmuxd.log" || fail "nicmuxd logged no registration"
fi
echo "ok: $mode: $(grep -a -m1 'net_nicmux_pv: port 0: ' "$TPLOG")"

# ---- 1. the capabilities nicmuxd announced
tp "Infos for port 1" 'show port info 0' 'show port info 1'
for k in "Driver name: net_nicmux_pv" "Devargs: socket=$S/p0.sock$devargs" "Link status: up" "MTU: 1500" \
  "Max possible RX queues: 1" "Max possible number of RXDs per queue: 1024" \
  "Maximum configurable length of RX packet: 2048" "Max possible number of RXDs per queue: 256" \
  "Maximum configurable length of RX packet: 66560"; do
  expect_tp "^$k\$"
done
tp "Tx Offloading Capabilities of port 1" 'show port 0 tx_offload capabilities' 'show port 0 rx_offload capabilities' \
  'show port 1 tx_offload capabilities'
expect_tp "^  Per Port  : IPV4_CKSUM UDP_CKSUM TCP_CKSUM MULTI_SEGS *\$"
expect_tp "^  Per Port  : IPV4_CKSUM UDP_CKSUM TCP_CKSUM SCATTER *\$"
grep -aq "TCP_TSO" "$WORK/tp.out" && fail "TCP_TSO offered without an uplink taking TSO: $(cat "$WORK/tp.out")"
tx0=$(grep -a -A2 "Tx Offloading Capabilities of port 0" "$WORK/tp.out" | grep -a "Per Port" | tr -s ' ')
# Copy: 1518-byte frames cannot fit one of testpmd's mbufs (1024 bytes, 128 of headroom): with
# SCATTER on, the PMD must chain them (without, it would drop them and the counts below fail).
# Zero copy: the default mbufs (2176 bytes) hold a frame of the MTU, as zero copy needs.
if [ "$mode" = copy ]; then
  grep -aq "create a new mbuf pool <mb_pool_0>: n=16384, size=1024" "$TPLOG" || fail "testpmd's mbufs are not 1024 bytes"
else
  grep -aq "create a new mbuf pool <mb_pool_0>: n=16384, size=2176" "$TPLOG" || fail "testpmd's mbufs are not 2176 bytes"
fi
tp "Rx Offloading Configuration of port 0" 'show port 0 rx_offload configuration'
expect_tp "^  Port : SCATTER *\$"
tp "device max MTU" 'port config mtu 0 60' 'port config mtu 0 9000'
expect_tp "MTU \(60\) < device min MTU \(68\) for port_id 0"
expect_tp "MTU \(9000\) > device max MTU \(2030\) for port_id 0"
echo "ok: $mode: testpmd shows nicmuxd's capabilities: MTU 68..2030, frames up to 2048 (66560 on p1), rings of 1024 (256), tx offloads:$tx0"

# ---- 2. io forwarding, both ways, exact
# io with retry: a tx ring that is full for a moment (nicmuxd's worker shares 2 CPUs with
# testpmd's busy lcore and the pktgens) is waited on rather than dropped, as dpdk_port.sh does.
tp "io packet forwarding" 'set fwd io retry' 'set burst tx delay 20 retry 100000' 'start'
for size in 64 1518; do
  start pg_b "$BIN/nicmux-pktgen" --socket "$S/pgb.sock" --mode bidir --verify --size "$size" --count 5000 \
    --duration 60 --interval 0 --stream 2 --ring 1024 --rate 20000 --hold
  pb=$LAST_PID
  start pg_a "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mode bidir --verify --size "$size" --count 5000 \
    --duration 60 --interval 0 --stream 1 --ring 1024 --rate 20000 --hold
  pa=$LAST_PID
  wait_log "$WORK/pg_a.log" connected 60 "$pa"
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
  release "$pa" "$pb"
  wait_pid "$pa" 90 || fail "pktgen a, $size B: $(tail -1 "$WORK/pg_a.log")"
  wait_pid "$pb" 90 || fail "pktgen b, $size B: $(tail -1 "$WORK/pg_b.log")"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets 5000
    expect_summary "$l" rx_packets 5000
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
    expect_summary "$l" rx_reordered 0
  done
  echo "ok: $mode: $size B: 5000 frames each way through pv p0 -> testpmd -> pv p1 and back, every byte verified: $(grep '^summary' "$WORK/pg_a.log" | grep -o 'tx_packets=[0-9]* rx_packets=[0-9]* rx_bad=[0-9]* rx_lost=[0-9]*')"
done
# ---- 2b. (zero copy) a live upgrade of nicmuxd while frames flow both ways (docs/pv-protocol.md
# "Live upgrade"): both devices go over with the EAL's memory testpmd registered, nicmuxd going
# on copying straight from and into its mbufs; testpmd notices nothing (no reconnect, the same
# registration, its port stats below count these frames too), every frame arrives once and in
# order.
packets=10000 bytes=$((5000 * 64 + 5000 * 1518))
if [ "$mode" = zerocopy ]; then
  for e in b a; do
    start pg_$e "$BIN/nicmux-pktgen" --socket "$S/pg$e.sock" --mode bidir --verify --size 512 --count 12000 \
      --duration 60 --interval 0 --stream $([ $e = a ] && echo 1 || echo 2) --ring 1024 --rate 2000 --hold
    eval "p$e=\$LAST_PID"
  done
  wait_log "$WORK/pg_a.log" connected 60 "$pa"
  wait_log "$WORK/pg_b.log" connected 60 "$pb"
  release "$pa" "$pb"
  sleep 1.5
  kill -0 "$pa" && kill -0 "$pb" || fail "the frames stopped before the upgrade"
  upgrade_nicmuxd
  wait_pid "$pa" 90 || fail "pktgen a, across the upgrade: $(tail -1 "$WORK/pg_a.log")"
  wait_pid "$pb" 90 || fail "pktgen b, across the upgrade: $(tail -1 "$WORK/pg_b.log")"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets 12000
    expect_summary "$l" rx_packets 12000
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
    expect_summary "$l" rx_reordered 0
  done
  for p in p0 p1; do
    ctl port show $p | grep -qE "registered_memory: +1 regions, 512M$" || fail "$p after the upgrade: $(ctl port show $p)"
    ctl port show $p | grep -qE "^connections: +$SESSION$" || fail "$p: testpmd reconnected: $(ctl port show $p)"
    ctl port show $p | grep -qE "^state: +running$" || fail "$p after the upgrade: $(ctl port show $p)"
  done
  packets=$((packets + 12000)) bytes=$((bytes + 12000 * 512))
  echo "ok: $mode: live upgrade to pid $NICMUXD_PID (paused $UPGRADE_PAUSED_US us) amid 12000 frames of 512 B each way" \
    "through testpmd: none lost or reordered; registered memory and connections kept"
fi
tp "Forward statistics for port 1|Done" 'stop'
# testpmd's port stats are nicmuxd's STATS_GET through the PMD: every frame, every byte.
tp "NIC statistics for port 1" 'show port stats 0' 'show port stats 1'
python3 - "$WORK/tp.out" "$bytes" "$packets" <<'PY' || fail "testpmd's port stats are not exact: $(grep -a -A8 'NIC statistics' "$WORK/tp.out")"
import re, sys
text, want_bytes, want = open(sys.argv[1], errors="replace").read(), int(sys.argv[2]), int(sys.argv[3])
for port in (0, 1):
    block = text.split(f"NIC statistics for port {port}")[1].split("Throughput")[0]
    get = lambda k: int(re.search(k + r":\s*(\d+)", block).group(1))
    got = {k: get(k) for k in ("RX-packets", "RX-missed", "RX-bytes", "RX-errors", "RX-nombuf", "TX-packets", "TX-errors", "TX-bytes")}
    print(f"port {port}:", " ".join(f"{k}={v}" for k, v in got.items()))
    assert got == {"RX-packets": want, "RX-missed": 0, "RX-bytes": want_bytes, "RX-errors": 0, "RX-nombuf": 0,
                   "TX-packets": want, "TX-errors": 0, "TX-bytes": want_bytes}, got
PY
echo "ok: $mode: testpmd's port stats (nicmuxd's counts through the PMD) exact on both ports"

# ---- 3. an offload the device does not offer
tp "Fail to configure port 1|Port 1 can not be set|rte_eth_dev_configure" 'port stop 1' 'port config 1 tx_offload tcp_tso on' 'port start 1'
expect_tp "requested Tx offloads 0x[0-9a-f]* doesn't match Tx offloads capabilities"
expect_tp "Fail to configure port 1"
echo "ok: $mode: tcp_tso refused on p1 (not offered): $(grep -a "doesn't match" "$WORK/tp.out" | head -n 1) / $(grep -a 'Fail to configure' "$WORK/tp.out" | head -n 1)"
tp "Port 1: " 'port config 1 tx_offload tcp_tso off' 'port start 1'
expect_tp "^Port 1: [0-9A-F:]+"

# ---- 4. pktgen A attaches with TSO: nicmuxd offers tcp_tso on p1 (its uplink is pga)
start pg_a "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --offloads --mode tx --tso 1448 --size 65000 --count "$N" \
  --rate 100 --duration 120 --interval 0 --hold
pa=$LAST_PID
wait_log "$WORK/pg_a.log" connected 60 "$pa"
wait_until 30 "tcp_tso offered on p1" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port caps p1 | grep -q tcp_tso"
tp "Tx Offloading Capabilities of port 1" 'show port 1 tx_offload capabilities'
expect_tp "^  Per Port  : IPV4_CKSUM UDP_CKSUM TCP_CKSUM TCP_TSO MULTI_SEGS *\$"
echo "ok: $mode: p1 offers TCP_TSO once its uplink takes TSO; testpmd sees it (event_seq -> GET_INFO): $(grep -a 'Per Port' "$WORK/tp.out" | tr -s ' ')"

# ---- 5. TSO and checksum requests from testpmd's csum engine
tp "csum packet forwarding" 'port stop all' 'csum set tcp hw 1' 'csum set ip sw 1' 'tso set 1000 1' \
  'port config 1 tx_offload tcp_tso on' 'port start all' 'set fwd csum' 'start'
grep -aq "TSO segment size for non-tunneled packets is 1000" "$WORK/tp.out" || fail "testpmd did not take 'tso set 1000 1': $(cat "$WORK/tp.out")"
start pg_b "$BIN/nicmux-pktgen" --socket "$S/pgb.sock" --mode rx --verify --count $((N * 90)) --duration 120 \
  --interval 0 --ring 1024
pb=$LAST_PID
wait_log "$WORK/pg_b.log" connected 60 "$pb"
release "$pa"
wait_pid "$pa" 150 || fail "TSO sender failed: $(tail -n 3 "$WORK/pg_a.log")"
wait_pid "$pb" 150 || fail "TSO receiver failed: $(grep summary "$WORK/pg_b.log")"
expect_summary "$WORK/pg_b.log" rx_packets $((N * 90))
expect_summary "$WORK/pg_b.log" rx_bad 0
expect_summary "$WORK/pg_b.log" rx_lost 0
expect_summary "$WORK/pg_b.log" rx_reordered 0
tp "Forward statistics for port 1|Done" 'stop'
tp "NIC statistics for port 1" 'show port stats 0' 'show port stats 1'
rx0=$(grep -a -A2 "NIC statistics for port 0" "$WORK/tp.out" | grep -ao "RX-packets: *[0-9]*" | grep -o "[0-9]*$")
tx1=$(grep -a -A6 "NIC statistics for port 1" "$WORK/tp.out" | grep -ao "TX-packets: *[0-9]*" | grep -o "[0-9]*$")
[ "$rx0" = $((packets + N * 45)) ] || fail "testpmd port 0 received $rx0 frames, not $((packets + N * 45))"
[ "$tx1" = $((packets + N * 45)) ] || fail "testpmd port 1 sent $tx1 frames, not $((packets + N * 45))"
ctl port show p1 >"$WORK/p1.txt"
grep -qE "bad_offload" "$WORK/p1.txt" && ! grep -qE "bad_offload: *0" "$WORK/p1.txt" && fail "p1 dropped TSO requests as bad_offload: $(cat "$WORK/p1.txt")"
echo "ok: $mode: $N TSO frames of 65000 B -> $((N * 45)) segments into testpmd -> $((N * 45)) TSO requests (MSS 1000, TCP checksum) out of testpmd -> $((N * 90)) segments at pktgen B, every byte and checksum verified"

# ---- 6. quit: testpmd closes both devices
printf 'quit\n' >&7
exec 7>&-
wait_pid "$tp" 30 || fail "testpmd exited with an error: $(tail -n 20 "$TPLOG")"
grep -aq "ERROR: AddressSanitizer\|runtime error:" "$TPLOG" && fail "a sanitizer report in testpmd: $(grep -a -A20 'ERROR: AddressSanitizer\|runtime error:' "$TPLOG")"
wait_until 10 "p0 and p1 to see their drivers leave" sh -c \
  "[ \$(grep -c 'pv driver disconnected (the driver closed the connection)' '$WORK/nicmuxd.log') -ge $((2 * SESSION)) ]"
echo "ok: $mode: testpmd quit cleanly (no sanitizer report) and nicmuxd saw both drivers close"
}

session copy
session zerocopy

# ---- 7. link state change events: testpmd asks for them (intr_conf.lsc, its default when the
# device offers RTE_ETH_DEV_INTR_LSC); nicmuxd stopping takes the link down and testpmd hears of
# it (the PMD's alarm sees the socket close and the region marked gone) without asking.
rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
exec 7<>"$WORK/tp.in"
start_with_input "testpmd-lsc" "$WORK/tp.in" env LD_PRELOAD="$PRELOAD" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" \
  --file-prefix="npv$$lsc" --lcores 0@0,1@1 -d "$PMD" --vdev "net_nicmux_pv0,socket=$S/p0.sock" \
  -- -i --nb-cores=1 --total-num-mbufs=8192
tp=$LAST_PID
TPLOG=$WORK/testpmd-lsc.log
wait_log "$TPLOG" "testpmd> " 60 "$tp"
tp "Infos for port 0" 'show port info 0'
expect_tp "^Link status: up\$"
grep -aq "Port 0: link state change event" "$TPLOG" && fail "an LSC event before anything changed: $(grep -a 'event' "$TPLOG")"
stop_nicmuxd
wait_until 10 "testpmd's link state change event" grep -aq "Port 0: link state change event" "$TPLOG"
tp "Infos for port 0" 'show port info 0'
expect_tp "^Link status: down\$"
grep -aq "net_nicmux_pv: port 0: link down, .*(nicmuxd is gone)" "$TPLOG" || fail "the PMD did not log why: $(grep -a nicmux_pv "$TPLOG" | tail -n 3)"
printf 'quit\n' >&7
exec 7>&-
wait_pid "$tp" 30 || fail "testpmd exited with an error after nicmuxd left: $(tail -n 20 "$TPLOG")"
grep -aq "ERROR: AddressSanitizer\|runtime error:" "$TPLOG" && fail "a sanitizer report in testpmd: $(grep -a -A20 'ERROR: AddressSanitizer\|runtime error:' "$TPLOG")"
echo "ok: nicmuxd stopped under a running testpmd: link state change event, link down: $(grep -a 'link down' "$TPLOG" | head -n 1)"

