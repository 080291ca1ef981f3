#!/usr/bin/env bash
# The dpdk port (docs/dpdk.md) against DPDK's testpmd over net_memif:
#
#   pktgen A <-> [nicmuxd] <-> dpdk port d0 (net_memif0, server) <-> testpmd memif 0 =io fwd=
#   testpmd memif 1 <-> dpdk port d1 (net_memif1, server) <-> [nicmuxd] <-> pktgen B
#
#   1. 5000 verified frames each way, 64 and 1518 bytes, over two queue pairs everywhere
#      (pktgen's, the ports', testpmd's; each carries some) (testpmd's memif refuses
#      --max-pkt-len 9100, so no jumbo frames here): exact counts, every byte checked;
#      `port show` has the device's link, stats and offload capabilities.
#   2. frames to a dpdk port whose link is down are dropped (port_down), not held; bad
#      configuration, refused by name while the daemon serves: devargs DPDK rejects, a
#      second port on the same device, a memif devargs key the PMD does not know.
#   3. 100 add/remove cycles of a dpdk port (net_null) at run time: fds and RSS flat.
#   4. a device the EAL probed at start (--vdev in the EAL arguments, as -a ADDR for a PCI NIC)
#      is adopted by the port that names it; removed and added again, it is probed anew.
#   5. zero copy towards the device (zerocopy_min=512, docs/dpdk.md "Zero copy"): the setup of
#      1 (split and packed rings), 5000 verified frames each way at 64 (copied), 512 and 1518
#      bytes (from the guests' memory): exact counts, every byte checked, and the ports'
#      tx_zerocopy / tx_copied exact; then a learning switch with a dpdk port (zero copy) to
#      testpmd in macswap mode: the guest's port removed while its frames flow to the dpdk
#      port, added again, then the dpdk port removed while they flow: the daemon serves on,
#      nothing leaks (ASan).
#      (No jumbo frames: testpmd's memif refuses --max-pkt-len 9100, and the port keeps the
#      device's MTU, 1500.)
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "dpdk-testpmd not installed (scripts/install-deps)"
S=$WORK
mem() { echo "net_memif$1;role=server;socket=$S/m$1.sock;socket-abstract=no"; }

nicmuxd --forward xconnect --port "vhost-user:pga:socket=$S/pga.sock,queues=2" --port "dpdk:d0:devargs=$(mem 0),queues=2" \
  --port "dpdk:d1:devargs=$(mem 1),queues=2" --port "vhost-user:pgb:socket=$S/pgb.sock,queues=2"
wait_for "$S/pgb.sock" 60
wait_for "$S/m1.sock" 30
rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
exec 7<>"$WORK/tp.in"
start_with_input testpmd "$WORK/tp.in" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmd$$" --lcores 0@0,1@1 \
  --vdev "net_memif0,role=client,socket=$S/m0.sock,socket-abstract=no" \
  --vdev "net_memif1,role=client,socket=$S/m1.sock,socket-abstract=no" \
  -- -i --nb-cores=1 --rxq=2 --txq=2 --total-num-mbufs=16384
tp=$LAST_PID
printf 'set fwd io retry\nset burst tx delay 20 retry 100000\nstart\n' >&7
wait_log "$WORK/testpmd.log" "io packet forwarding" 60 "$tp"
wait_until 30 "d0 and d1 linked to testpmd" sh -c \
  "'$BIN/nicmuxctl' --socket '$CTL' port list | grep -q '^d0 .*link up' && '$BIN/nicmuxctl' --socket '$CTL' port list | grep -q '^d1 .*link up'"
for size in 64 1518; do
  start pg_b "$BIN/nicmux-pktgen" --socket "$S/pgb.sock" --mode bidir --verify --size "$size" --count 5000 \
    --duration 60 --interval 0 --stream 2 --ring 1024 --rate 20000 --queues 2 --hold
  pb=$LAST_PID
  start pg_a "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mode bidir --verify --size "$size" --count 5000 \
    --duration 60 --interval 0 --stream 1 --ring 1024 --rate 20000 --queues 2 --hold
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
  done
  echo "ok: $size B: 5000 frames each way through two dpdk memif ports and testpmd, every byte verified"
done
ctl port show d0 >"$WORK/d0.txt"
for k in "state: *link up" "driver: *net_memif" "device_imissed: *0"; do
  grep -q "^$k" "$WORK/d0.txt" || fail "port show d0 lacks '$k': $(cat "$WORK/d0.txt")"
done
ctl port caps d0 >"$WORK/d0caps.txt"
for k in "tx offloads: *sum_on_copy" "  driver: *net_memif" "  tx_offloads: *MULTI_SEGS" "  tx_offloads_used: *none"; do
  grep -q "^$k" "$WORK/d0caps.txt" || fail "port caps d0 lacks '$k': $(cat "$WORK/d0caps.txt")"
done
echo "ok: port show d0: $(grep -E '^(state|driver):' "$WORK/d0.txt" | tr -s ' ' | tr '\n' ';') port caps d0: $(grep -E '(tx offloads|  tx_offloads):' "$WORK/d0caps.txt" | tr -s ' ' | tr '\n' ';')"
printf 'stop\nquit\n' >&7
exec 7>&-
wait_pid "$tp" 20 || { kill -9 "$tp" 2>/dev/null || true; wait "$tp" 2>/dev/null || true; }
# Both queue pairs carried traffic both ways (testpmd's per-stream counts at its stop).
python3 - "$WORK/testpmd.log" <<'PY' || fail "a memif queue carried nothing: $(grep -A1 'Forward Stats for RX Port' "$WORK/testpmd.log")"
import re, sys
text = open(sys.argv[1]).read()
streams = re.findall(r"Forward Stats for RX Port= *(\d+)/Queue= *(\d+).*\n\s*RX-packets: *(\d+)", text)
got = {(int(p), int(q)): int(n) for p, q, n in streams}
print("testpmd streams:", got)
assert all(got.get((p, q), 0) > 0 for p in (0, 1) for q in (0, 1)), got
PY
echo "ok: both queue pairs of d0 and d1 carried frames each way"
stop_nicmuxd

# ---- 2 and 3: a learning switch taking dpdk ports at run time
nicmuxd --port "vhost-user:pga:socket=$S/pga.sock"
wait_for "$S/pga.sock" 30
expect_refused "dpdk:x1:devargs=net_nosuch0" "DPDK refused the device"
ctl port add "dpdk:d0:devargs=$(mem 0)" >/dev/null || fail "port add d0"
# d0's memif has no peer: its link is down, and what the switch floods to it is dropped
# (port_down), never held: the sender finishes.
start pg_down "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mode tx --size 1518 --count 2000 --duration 30 --interval 0 \
  --mac 02:00:00:00:00:0a --peer-mac 02:00:00:00:00:0b
wait_pid "$LAST_PID" 60 || fail "pktgen towards a down dpdk port: $(tail -2 "$WORK/pg_down.log")"
expect_summary "$WORK/pg_down.log" tx_packets 2000
down=$(ctl --json port show d0 | python3 -c "import json,sys; print(json.load(sys.stdin)['drops'].get('port_down', 0))")
[ "$down" -eq 2000 ] || fail "d0 (link down) dropped $down frames as port_down, not 2000"
echo "ok: 2000 frames flooded to a dpdk port whose link is down: dropped port_down, the sender not held"
expect_refused "dpdk:x2:devargs=$(mem 0)" "DPDK device net_memif0 is in use by port d0"
expect_refused "dpdk:x3:devargs=net_memif2;bogus=1" "port x3: devargs net_memif2,bogus=1: "
ctl port show pga >/dev/null || fail "the daemon stopped serving"
# (net_null: a memif server device leaves one socket fd open per removal in DPDK 22.11's
# memif PMD, after rte_eth_dev_close and the hot-unplug; docs/dpdk.md.)
python3 - "$BIN/nicmuxctl" "$CTL" "$NICMUXD_PID" "net_null3" <<'PY' || fail "add/remove cycles"
import os, subprocess, sys
ctl, sock, pid, dev = sys.argv[1:]
def run(*a): subprocess.run([ctl, "--socket", sock, *a], check=True, stdout=subprocess.DEVNULL)
def fds(): return len(os.listdir(f"/proc/{pid}/fd"))
def rss_kb():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
for i in range(100):
    if i == 10: fd0, rss0 = fds(), rss_kb()
    run("port", "add", f"dpdk:dx:devargs={dev}")
    run("port", "del", "dx")
import time
for _ in range(20):  # the last control connection is closed by the daemon a moment after its reply
    if fds() <= fd0: break
    time.sleep(0.1)
fd1, rss1 = fds(), rss_kb()
print(f"fds {fd0} -> {fd1}, rss {rss0} -> {rss1} kB")
assert fd1 <= fd0, "fds grew"
assert rss1 - rss0 < 16 * 1024, "RSS grew by more than 16 MiB"
PY
echo "ok: 100 add/remove cycles of a dpdk port (net_null): fds and RSS flat"
stop_nicmuxd

# ---- 4. adopting a device probed at the EAL's start
nicmuxd --dpdk-eal-args "--no-huge -m 256 --no-shconf --no-telemetry --no-pci --vdev net_null7" \
  --port "vhost-user:pga:socket=$S/pga.sock" --port "dpdk:n7:devargs=net_null7"
wait_for "$S/pga.sock" 60
wait_until 30 "port n7" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port show n7 >/dev/null 2>&1"
grep -q "port n7: adopting DPDK device net_null7" "$WORK/nicmuxd.log" || fail "n7 did not adopt net_null7: $(grep n7 "$WORK/nicmuxd.log")"
ctl port show n7 | grep -q "^state: *link up" || fail "adopted n7: $(ctl port show n7)"
ctl port del n7 >/dev/null || fail "port del n7"
ctl port add "dpdk:n7:devargs=net_null7" >/dev/null || fail "adding net_null7 again after its removal"
ctl port show n7 | grep -q "^state: *link up" || fail "n7 again: $(ctl port show n7)"
echo "ok: net_null7 (probed by the EAL's --vdev) adopted by port n7; removed and added again"
stop_nicmuxd

# ---- 5. zero copy towards the device
zc_count() { ctl --json port show "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
for rings in split packed; do
  pk=(); [ "$rings" = packed ] && pk=(--packed)
  nicmuxd --forward xconnect --port "vhost-user:pga:socket=$S/pga.sock,queues=2" \
    --port "dpdk:d0:devargs=$(mem 0),queues=2,zerocopy_min=512" \
    --port "dpdk:d1:devargs=$(mem 1),queues=2,zerocopy_min=512" --port "vhost-user:pgb:socket=$S/pgb.sock,queues=2"
  wait_for "$S/pgb.sock" 60
  wait_for "$S/m1.sock" 30
  grep -q "port d0: .*zero copy: frames of 512 bytes and more" "$WORK/nicmuxd.log" || fail "d0 has no zero copy: $(grep 'port d0' "$WORK/nicmuxd.log")"
  rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
  exec 7<>"$WORK/tp.in"
  start_with_input testpmd "$WORK/tp.in" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmz$$" --lcores 0@0,1@1 \
    --vdev "net_memif0,role=client,socket=$S/m0.sock,socket-abstract=no" \
    --vdev "net_memif1,role=client,socket=$S/m1.sock,socket-abstract=no" \
    -- -i --nb-cores=1 --rxq=2 --txq=2 --total-num-mbufs=16384
  tp=$LAST_PID
  printf 'set fwd io retry\nset burst tx delay 20 retry 100000\nstart\n' >&7
  wait_log "$WORK/testpmd.log" "io packet forwarding" 60 "$tp"
  wait_until 30 "d0 and d1 linked to testpmd" sh -c \
    "'$BIN/nicmuxctl' --socket '$CTL' port list | grep -q '^d0 .*link up' && '$BIN/nicmuxctl' --socket '$CTL' port list | grep -q '^d1 .*link up'"
  zc=0; cp=0
  for size in 64 512 1518; do
    start pg_b "$BIN/nicmux-pktgen" --socket "$S/pgb.sock" --mode bidir --verify --size "$size" --count 5000 \
      --duration 60 --interval 0 --stream 2 --ring 1024 --rate 20000 --queues 2 --hold "${pk[@]}"
    pb=$LAST_PID
    start pg_a "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mode bidir --verify --size "$size" --count 5000 \
      --duration 60 --interval 0 --stream 1 --ring 1024 --rate 20000 --queues 2 --hold "${pk[@]}"
    pa=$LAST_PID
    wait_log "$WORK/pg_a.log" connected 60 "$pa"
    wait_log "$WORK/pg_b.log" connected 60 "$pb"
    release "$pa" "$pb"
    wait_pid "$pa" 90 || fail "pktgen a, $size B, zero copy, $rings: $(tail -1 "$WORK/pg_a.log")"
    wait_pid "$pb" 90 || fail "pktgen b, $size B, zero copy, $rings: $(tail -1 "$WORK/pg_b.log")"
    for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
      expect_summary "$l" tx_packets 5000
      expect_summary "$l" rx_packets 5000
      expect_summary "$l" rx_bad 0
      expect_summary "$l" rx_lost 0
    done
    if [ "$size" -ge 512 ]; then zc=$((zc + 5000)); else cp=$((cp + 5000)); fi
    for d in d0 d1; do
      got_zc=$(zc_count $d tx_zerocopy); got_cp=$(zc_count $d tx_copied)
      [ "$got_zc" = "$zc" ] && [ "$got_cp" = "$cp" ] || fail "$d after $size B ($rings): tx_zerocopy=$got_zc tx_copied=$got_cp, expected $zc and $cp"
    done
    echo "ok: zero copy, $rings rings, $size B: 5000 frames each way, every byte verified; d0 and d1: tx_zerocopy=$zc tx_copied=$cp"
  done
  printf 'stop\nquit\n' >&7
  exec 7>&-
  wait_pid "$tp" 20 || { kill -9 "$tp" 2>/dev/null || true; wait "$tp" 2>/dev/null || true; }
  stop_nicmuxd
done

# Removal while frames flow: pga (pktgen A -> B) and d0 (zero copy) to testpmd swapping MACs
# back on its one memif: after the first reply, B is learned on d0 and A's frames go to d0
# whole (held until the memif PMD has copied them).
nicmuxd --port "vhost-user:pga:socket=$S/pga.sock" --port "dpdk:d0:devargs=$(mem 0),zerocopy_min=512"
wait_for "$S/pga.sock" 60
wait_for "$S/m0.sock" 30
rm -f "$WORK/tp.in"; mkfifo "$WORK/tp.in"
exec 7<>"$WORK/tp.in"
start_with_input testpmd "$WORK/tp.in" stdbuf -oL dpdk-testpmd "${DPDK_EAL[@]}" --file-prefix="nmr$$" --lcores 0@0,1@1 \
  --vdev "net_memif0,role=client,socket=$S/m0.sock,socket-abstract=no" -- -i --nb-cores=1 --total-num-mbufs=16384
tp=$LAST_PID
printf 'set fwd macswap\nstart\n' >&7
wait_log "$WORK/testpmd.log" "macswap packet forwarding" 60 "$tp"
wait_until 30 "d0 linked to testpmd" sh -c "'$BIN/nicmuxctl' --socket '$CTL' port list | grep -q '^d0 .*link up'"
zc_sent() { ctl --json port show d0 | python3 -c "import json,sys; print(json.load(sys.stdin)['tx_zerocopy'])"; }
pg_r() {  # pktgen A sending 160000 frames to B through pga, 8 s
  start "pg_r$1" "$BIN/nicmux-pktgen" --socket "$S/pga.sock" --mode tx --size 1518 --count 160000 --duration 40 \
    --interval 0 --rate 20000 --mac 02:00:00:00:00:0a --peer-mac 02:00:00:00:00:0b --ring 1024
}
# (memif's client in testpmd does not come back to a server made anew: the guest's port goes
# first, then the dpdk port.)
pg_r 1
pr=$LAST_PID
z0=0
wait_until 20 "frames sent zero copy to d0" sh -c "[ \$('$BIN/nicmuxctl' --socket '$CTL' --json port show d0 | python3 -c \"import json,sys; print(json.load(sys.stdin)['tx_zerocopy'])\") -gt $((z0 + 5000)) ]"
ctl port del pga >/dev/null || fail "port del pga while its frames flow to d0"
# Its backend went away: pktgen (which looks at its connection only with progress lines, none
# with --interval 0) would send into a full ring until --duration; it is ended, its verdict
# does not matter here.
kill -TERM "$pr" 2>/dev/null || true
wait_pid "$pr" 10 || true
ctl port show d0 | grep -q "^state: *link up" || fail "d0 after pga's removal: $(ctl port show d0)"
ctl port add "vhost-user:pga:socket=$S/pga.sock" >/dev/null || fail "port add pga again"
wait_for "$S/pga.sock" 30
z0=$(zc_sent)
pg_r 2
pr=$LAST_PID
wait_until 20 "frames sent zero copy to d0 again" sh -c "[ \$('$BIN/nicmuxctl' --socket '$CTL' --json port show d0 | python3 -c \"import json,sys; print(json.load(sys.stdin)['tx_zerocopy'])\") -gt $((z0 + 5000)) ]"
ctl port del d0 >/dev/null || fail "port del d0 while a guest's frames flow to it"
sleep 1
ctl port show pga | grep -q "^state: *connected" || fail "pga after d0's removal: $(ctl port show pga)"
kill -0 "$pr" 2>/dev/null || fail "pktgen stopped when d0 was removed: $(tail -2 "$WORK/pg_r2.log")"
wait_pid "$pr" 40 || fail "pktgen after d0's removal: $(tail -2 "$WORK/pg_r2.log")"
echo "ok: the guest's port removed while its frames went zero copy to d0, added again; then d0 removed while they flowed: the daemon serves on"
# testpmd's memif client may have crashed when d0, its server, went away under traffic (DPDK
# 22.11's memif unmaps the regions in its interrupt thread while the lcore still reads them:
# seen once here as a segfault); the peer's fate is not under test, only nicmuxd's.
printf 'stop\nquit\n' >&7
exec 7>&-
wait_pid "$tp" 20 || { kill -9 "$tp" 2>/dev/null || true; wait "$tp" 2>/dev/null || true; }
stop_nicmuxd
