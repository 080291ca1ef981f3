#!/usr/bin/env bash
# Live upgrade with a dpdk port (docs/upgrade.md, docs/dpdk.md "Live upgrade"). DPDK's EAL
# state cannot be handed over: the old process closes the device at the precise point and the
# new one opens it again, both with their workers paused. Two nicmuxds across a veth:
#   pktgen a <-> nicmuxd 1 [a, dpdk da: net_af_packet on V0] <-> veth <-> [af_xdp xb on V1, b] nicmuxd 2 <-> pktgen b
# nicmuxd 1 is upgraded three times (and once with a binary that exits: refused, the device
# stays open in the old process). Towards the device nothing is lost (the vhost-user ring holds
# a's frames through the gap); from it, what reaches the interface while no socket is bound is
# lost (the gap), and the test bounds and prints it, with the pauses and the reopen times.
source "$(dirname "$0")/lib.sh"
command -v dpdk-testpmd >/dev/null || fail "DPDK not installed (scripts/install-deps)"

a=$WORK/a.sock b=$WORK/b.sock
V0=nmxd$$a
V1=nmxd$$b
CTL2=$WORK/n2.ctl
RATE=${RATE:-2000} COUNT=${COUNT:-30000}
UPGRADES=${UPGRADES:-3}  # 3, or 0: no upgrade at all (a baseline)

cleanup_veth() { ip link del "$V0" 2>/dev/null || true; }
CLEANUP_HOOKS+=(cleanup_veth)
ip link add "$V0" type veth peer name "$V1"
ip link set "$V0" up
ip link set "$V1" up
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }

nicmuxd ${EAL_ARGS:+--dpdk-eal-args "$EAL_ARGS"} --port "vhost-user:a:socket=$a,queues=2" --port "dpdk:da:devargs=net_af_packet0;iface=$V0;framecnt=${FRAMECNT:-512}"
start nicmuxd2 "$BIN/nicmuxd" --log-level info --control "$CTL2" ${NICMUX_SECCOMP:+--seccomp=$NICMUX_SECCOMP} \
  --port "vhost-user:b:socket=$b,queues=2" --port "af_xdp:xb:iface=$V1"
wait_for "$a" 60
wait_for "$b" 30

start_bidir_pair

pauses=() opens=()
up1() {
  local prev=$NICMUXD_PID
  upgrade_nicmuxd
  pauses+=("$UPGRADE_PAUSED_US")
  # The new process's log says how long its open of the device took.
  opens+=("$(grep -ho 'opened again for the handover in [0-9]* us' "$WORK"/nicmuxd*.log | tail -n 1 | grep -o '[0-9]* us')")
  ctl port show da | grep -q "link up" || fail "after the upgrade $prev -> $NICMUXD_PID: da is $(ctl port show da | grep -i state)"
  echo "ok: nicmuxd 1 upgraded $prev -> $NICMUXD_PID, forwarding paused $UPGRADE_PAUSED_US us (the device opened again in ${opens[-1]})"
}
if [ "$UPGRADES" = 0 ]; then  # (the same flow without upgrades: what this machine loses anyway)
  sleep 12
else
  up1
  sleep 1
  rc=0
  ctl upgrade /bin/false >"$WORK/false.txt" 2>&1 || rc=$?
  [ $rc -eq 1 ] && grep -q "goes on serving" "$WORK/false.txt" || fail "upgrade /bin/false: status $rc: $(cat "$WORK/false.txt")"
  kill -0 "$NICMUXD_PID" || fail "nicmuxd $NICMUXD_PID died after a failed upgrade"
  ctl port show da | grep -q "link up" || fail "after the failed upgrade da is not up"
  echo "ok: refused: $(tail -n 1 "$WORK/false.txt"); da still up in the old process"
  sleep 1
  up1
  sleep 1
  up1
fi

wait_pid "$pa" 60 || grep -q '^summary' "$WORK/pg_a.log" || fail "pktgen a: $(tail -n 3 "$WORK/pg_a.log")"
wait_pid "$pb" 60 || grep -q '^summary' "$WORK/pg_b.log" || fail "pktgen b: $(tail -n 3 "$WORK/pg_b.log")"
for e in a b; do
  expect_summary "$WORK/pg_$e.log" tx_packets "$COUNT"
  expect_summary "$WORK/pg_$e.log" rx_bad 0
  expect_summary "$WORK/pg_$e.log" rx_reordered 0
done
# b receives what went a -> da -> veth: the gap held it in a's ring (what af_xdp's kernel side
# dropped on a busy machine, it counted).
kb=$("$BIN/nicmuxctl" --socket "$CTL2" --json port show xb | json_field "['kernel_rx_dropped']")
lost_b=$(summary_field "$WORK/pg_b.log" rx_lost)
[ "$lost_b" = "$kb" ] || fail "towards the device: b lost $lost_b frames, the kernel counted $kb"
# a receives what came b -> veth -> da: frames that reached V0 while its socket was closed are
# lost. Bounded by the rate over half a second per upgrade (the gap is milliseconds).
lost_a=$(summary_field "$WORK/pg_a.log" rx_lost)
bound=$((RATE * (UPGRADES + 1) / 2))
[ "$lost_a" -le "$bound" ] || fail "from the device: a lost $lost_a frames in $UPGRADES upgrades (bound $bound)"
echo "ok: dpdk (net_af_packet): $COUNT frames each way at $RATE/s through $UPGRADES upgrade(s) and a failed one:" \
  "towards the device none lost in an upgrade (the kernel's af_xdp drops on the far side $kb); from it $lost_a" \
  "lost (reaching $V0 with no socket bound, or dropped by a full socket ring: DPDK 22.11's net_af_packet" \
  "does not report the kernel's drops); none duplicated or reordered; pauses ${pauses[*]} us; device" \
  "reopened in ${opens[*]}"
echo PASS
