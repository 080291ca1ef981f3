#!/usr/bin/env bash
# Live upgrade of af_xdp ports (docs/upgrade.md, docs/af_xdp.md "Live upgrade"): two nicmuxds,
# each with an af_xdp port on one end of a veth pair and a vhost-user port with a nicmux-pktgen
# endpoint, pass verified frames both ways through the veth:
#   pktgen a <-> nicmuxd 1 [a, xa on V0] <-> veth <-> [xb on V1, b] nicmuxd 2 <-> pktgen b
# while nicmuxd 1 is upgraded three times (one of them attempted with a binary that exits:
# refused, the old process serves on) and nicmuxd 2 once. No frame is lost in an upgrade: the
# kernel's drop count of the receiving socket (a veth cannot be pushed back: a receiver that
# falls behind loses frames, which the kernel counts) does not move across one; every frame
# sent arrives, in order and once, or is one the kernel counted (on a machine busy enough to
# starve a receiver; none on an idle one); the XDP program on each interface is the same one
# throughout (never detached, never reloaded); the last process detaches it at exit. Prints the
# pauses, the endpoints' longest gap and the kernel's drops.
source "$(dirname "$0")/lib.sh"

a=$WORK/a.sock b=$WORK/b.sock
V0=nmxu$$a
V1=nmxu$$b
CTL2=$WORK/n2.ctl
RATE=${RATE:-2000} COUNT=${COUNT:-30000}  # 15 s each way: the upgrades happen while the frames flow (a rate the rings absorb a slow ASan upgrade at, on a busy machine)

cleanup_veth() { ip link del "$V0" 2>/dev/null || true; }
CLEANUP_HOOKS+=(cleanup_veth)
ip link add "$V0" type veth peer name "$V1"
ip link set "$V0" up
ip link set "$V1" up
xdp_id() { ip -j link show "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; print(d.get("xdp", {}).get("prog", {}).get("id", 0))'; }
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
# kdrops CTL PORT: the kernel's receive drops for the port's sockets (XDP_STATISTICS).
kdrops() { "$BIN/nicmuxctl" --socket "$1" --json port show "$2" | json_field "['kernel_rx_dropped']"; }
# up1 / up2: a live upgrade of nicmuxd 1 / 2, with the kernel's drops of its af_xdp port
# before and after (they must not move: the old process forwards until the precise point,
# the new one from there, and the rings hold what arrives in the pause).
up1() {
  local k0 k1 prev=$NICMUXD_PID
  k0=$(kdrops "$CTL" xa)
  upgrade_nicmuxd
  k1=$(kdrops "$CTL" xa)
  pauses+=("$UPGRADE_PAUSED_US")
  [ "$k1" = "$k0" ] || fail "nicmuxd 1 upgrade $prev -> $NICMUXD_PID: the kernel dropped $((k1 - k0)) frame(s) for xa"
  echo "ok: nicmuxd 1 upgraded $prev -> $NICMUXD_PID, forwarding paused $UPGRADE_PAUSED_US us, kernel drops on xa unchanged ($k1)"
}

nicmuxd --port "vhost-user:a:socket=$a,queues=2" --port "af_xdp:xa:iface=$V0"
N1=$NICMUXD_PID
start nicmuxd2 "$BIN/nicmuxd" --log-level info --control "$CTL2" ${NICMUX_SECCOMP:+--seccomp=$NICMUX_SECCOMP} --port "vhost-user:b:socket=$b,queues=2" --port "af_xdp:xb:iface=$V1"
N2=$LAST_PID
wait_for "$a" 30
wait_for "$b" 30
id0=$(xdp_id "$V0") id1=$(xdp_id "$V1")
[ "$id0" != 0 ] && [ "$id1" != 0 ] || fail "no XDP program on $V0 ($id0) or $V1 ($id1)"
mode=$(ctl --json port show xa | json_field "['xdp_mode']")

start_bidir_pair

pauses=()
# 1. nicmuxd 1, twice, with a failed attempt between.
up1
sleep 1
rc=0
ctl upgrade /bin/false >"$WORK/false.txt" 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q "goes on serving" "$WORK/false.txt" || fail "upgrade /bin/false: status $rc: $(cat "$WORK/false.txt")"
kill -0 "$NICMUXD_PID" || fail "nicmuxd $NICMUXD_PID died after a failed upgrade"
[ "$(xdp_id "$V0")" = "$id0" ] || fail "the failed upgrade changed the XDP program on $V0: $(xdp_id "$V0"), was $id0"
echo "ok: refused: $(tail -n 1 "$WORK/false.txt"); program $id0 still on $V0"
sleep 1
up1
sleep 1
# 2. nicmuxd 2.
k0=$(kdrops "$CTL2" xb)
out=$("$BIN/nicmuxctl" --socket "$CTL2" --json upgrade) || fail "upgrade of nicmuxd 2: $out"
new2=$(json_field "['pid']" <<<"$out")
wait_until 10 "exit of nicmuxd 2's old process $N2" bash -c "! kill -0 $N2 2>/dev/null"
PIDS+=("$new2")
k1=$(kdrops "$CTL2" xb)
pauses+=("$(json_field "['paused_us']" <<<"$out")")
[ "$k1" = "$k0" ] || fail "nicmuxd 2 upgrade: the kernel dropped $((k1 - k0)) frame(s) for xb"
echo "ok: nicmuxd 2 upgraded $N2 -> $new2, forwarding paused ${pauses[-1]} us, kernel drops on xb unchanged ($k1)"
sleep 1
# 3. nicmuxd 1 once more.
up1

# (An endpoint that lost frames exits with status 1: the accounting below decides.)
wait_pid "$pa" 60 || grep -q '^summary' "$WORK/pg_a.log" || fail "pktgen a: $(tail -n 3 "$WORK/pg_a.log")"
wait_pid "$pb" 60 || grep -q '^summary' "$WORK/pg_b.log" || fail "pktgen b: $(tail -n 3 "$WORK/pg_b.log")"
# a receives through xa (nicmuxd 1), b through xb (nicmuxd 2): what each lost, the kernel counted.
ka=$(kdrops "$CTL" xa) kb=$(kdrops "$CTL2" xb)
for e in a:$ka b:$kb; do
  l=$WORK/pg_${e%%:*}.log
  expect_summary "$l" tx_packets "$COUNT"
  expect_summary "$l" rx_bad 0
  expect_summary "$l" rx_reordered 0
  lost=$(summary_field "$l" rx_lost) rx=$(summary_field "$l" rx_packets)
  [ "$lost" = "${e#*:}" ] && [ $((rx + lost)) -eq "$COUNT" ] ||
    fail "endpoint ${e%%:*}: received $rx, lost $lost of $COUNT; the kernel counted ${e#*:} drops"
done
[ "$(xdp_id "$V0")" = "$id0" ] && [ "$(xdp_id "$V1")" = "$id1" ] ||
  fail "the XDP programs changed: $V0 $(xdp_id "$V0") (was $id0), $V1 $(xdp_id "$V1") (was $id1)"
echo "ok: af_xdp ($mode): $COUNT frames each way through 4 upgrades of 2 switches and a failed one: none lost" \
  "in an upgrade, none duplicated or reordered, the kernel's drops outside them (a starved receiver) $ka/$kb;" \
  "pauses ${pauses[*]} us; longest gap a: $(summary_field "$WORK/pg_a.log" rx_max_gap_us) us," \
  "b: $(summary_field "$WORK/pg_b.log" rx_max_gap_us) us; XDP programs $id0/$id1 attached throughout"

# 4. The last processes detach the programs at exit (they own them once the handover committed).
stop_nicmuxd
kill -TERM "$new2"
wait_until 30 "exit of nicmuxd 2 ($new2)" bash -c "! kill -0 $new2 2>/dev/null"
[ "$(xdp_id "$V0")" = 0 ] && [ "$(xdp_id "$V1")" = 0 ] || fail "XDP programs left: $V0 $(xdp_id "$V0"), $V1 $(xdp_id "$V1")"
echo "ok: the upgraded processes detached their XDP programs at exit"
echo PASS
