#!/usr/bin/env bash
# Live upgrade (docs/upgrade.md): nicmuxd hands its ports over to a new process three times
# while two nicmux-pktgen endpoints send to each other through the switch — one attached in
# each socket role (nicmuxd listens for a, connects to b), one on split rings and one on
# packed, two queue pairs each — and a TAP port waits on the side. Every frame sent arrives,
# verified, in order and once; neither endpoint reconnects; the TAP interface stays and still
# delivers; a failed upgrade (a binary that exits) leaves the old process serving; a port kind
# that cannot be handed over makes the upgrade refuse before anything starts; the last process
# removes the sockets at exit. Prints nicmuxd's pause and the endpoints' longest gap.
source "$(dirname "$0")/lib.sh"

a=$WORK/a.sock b=$WORK/b.sock
tap=nmxup$$
tap=${tap:0:15}
RATE=50000 COUNT=400000  # 8 s each way: the upgrades happen while the frames flow

json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
# cur_pid: the nicmuxd that serves the control socket now.
CUR=
upgrade() {
  local out
  out=$(ctl --json upgrade "$@") || fail "upgrade $*: $out"
  local pid paused
  pid=$(json_field "['pid']" <<<"$out")
  paused=$(json_field "['paused_us']" <<<"$out")
  [ "$pid" != "$CUR" ] || fail "upgrade: the same pid $pid still serves"
  wait_until 10 "exit of the old nicmuxd $CUR" bash -c "! kill -0 $CUR 2>/dev/null"
  grep -q "^MAINPID=$pid READY=1" "$WORK/notify.txt" || fail "no MAINPID=$pid on the notify socket: $(cat "$WORK/notify.txt")"
  PIDS+=("$pid")
  echo "ok: upgraded pid $CUR -> $pid, forwarding paused ${paused} us"
  CUR=$pid
}
connections() { ctl --json port show "$1" | json_field "['connections']"; }
CLEANUP_HOOKS+=(del_tap)
del_tap() { ip link del "$tap" 2>/dev/null || true; }

# systemd's notify socket (packaging/nicmuxd.service: Type=notify, NotifyAccess=all): READY=1
# from the first process, MAINPID=<pid> from each new one before the old exits.
start notify python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
f = open(sys.argv[2], "a", buffering=1)
while True:
    f.write(s.recv(4096).decode().replace("\n", " ") + "\n")
' "$WORK/notify.sock" "$WORK/notify.txt"
wait_for "$WORK/notify.sock" 10
export NOTIFY_SOCKET=$WORK/notify.sock

# b: the endpoint listens, nicmuxd connects (QEMU's server=on).
start pg_b "$BIN/nicmux-pktgen" --socket "$b" --server --mode bidir --verify --count "$COUNT" --rate "$RATE" \
  --queues 2 --packed --duration 60 --interval 0 --stream 2 --mac 02:00:00:00:0b:02 --peer-mac 02:00:00:00:0a:01 \
  --announce --hold
pb=$LAST_PID
wait_for "$b" 30
nicmuxd --port "vhost-user:a:socket=$a,queues=2" --port "vhost-user:b:socket=$b,client,queues=2" \
  --port "tap:t0:ifname=$tap,address=10.213.0.1/24"
CUR=$NICMUXD_PID
wait_for "$a" 30
wait_until 10 "READY=1 on the notify socket" grep -q "^READY=1" "$WORK/notify.txt"
start pg_a "$BIN/nicmux-pktgen" --socket "$a" --mode bidir --verify --count "$COUNT" --rate "$RATE" \
  --queues 2 --duration 60 --interval 0 --stream 1 --mac 02:00:00:00:0a:01 --peer-mac 02:00:00:00:0b:02 \
  --announce --hold
pa=$LAST_PID
wait_log "$WORK/pg_a.log" connected 60 "$pa"
wait_log "$WORK/pg_b.log" connected 60 "$pb"
ifindex=$(cat "/sys/class/net/$tap/ifindex")
release "$pa" "$pb"
sleep 1.5

# 1. nicmuxctl upgrade: the binary at nicmuxd's own path.
upgrade
sleep 1
# 2. A binary that dies before it says hello: the upgrade fails, the old process serves on.
rc=0
ctl upgrade /bin/false >"$WORK/false.txt" 2>&1 || rc=$?
[ $rc -eq 1 ] || fail "upgrade /bin/false: exit status $rc: $(cat "$WORK/false.txt")"
grep -q "goes on serving" "$WORK/false.txt" && grep -q "exited with status 1" "$WORK/false.txt" ||
  fail "upgrade /bin/false: $(cat "$WORK/false.txt")"
kill -0 "$CUR" || fail "nicmuxd $CUR died after a failed upgrade"
echo "ok: refused: $(tail -n 1 "$WORK/false.txt")"
# 3. A port whose kind cannot be handed over (a dpdk port, on DPDK's net_null): refused before
#    anything starts.
ctl port add "dpdk:n1:devargs=net_null0" >/dev/null || fail "port add n1 (dpdk, net_null)"
rc=0
ctl upgrade >"$WORK/dpdk.txt" 2>&1 || rc=$?
[ $rc -eq 6 ] && grep -q "port n1 (dpdk) cannot be handed over" "$WORK/dpdk.txt" ||
  fail "upgrade with a dpdk port: status $rc: $(cat "$WORK/dpdk.txt")"
echo "ok: refused: $(cat "$WORK/dpdk.txt")"
ctl port del n1 >/dev/null
# 4. SIGUSR2: the same as 1, the outcome in the log.
kill -USR2 "$CUR"
wait_until 20 "a handover after SIGUSR2" bash -c "grep -q 'upgrade: handed 3 port(s) over.*pid' '$WORK/nicmuxd.log' && \
  [ \$(grep -c 'upgrade: handed' '$WORK/nicmuxd.log') -ge 2 ]"
new=$(grep 'upgrade: handed' "$WORK/nicmuxd.log" | tail -n 1 | sed -n 's/.*(pid \([0-9]*\)).*/\1/p')
wait_until 10 "exit of the old nicmuxd $CUR" bash -c "! kill -0 $CUR 2>/dev/null"
PIDS+=("$new")
echo "ok: SIGUSR2: pid $CUR -> $new ($(grep 'upgrade: handed' "$WORK/nicmuxd.log" | tail -n 1 | sed 's/.*workers paused/paused/'))"
CUR=$new
sleep 1
# 5. nicmuxctl upgrade PATH, with a frontend on a third port stuck in the middle of a message:
# it cannot be handed over as it is, and must not hold up the others: it is disconnected (it
# sees its connection end once the old process exits) and the upgrade says so.
ctl port add "vhost-user:c:socket=$WORK/c.sock" >/dev/null
start halfmsg python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.send(b"\x01\x00\x00\x00\x01")  # five bytes of a 12-byte header
print("sent", flush=True)
s.settimeout(60)
print("closed by nicmuxd" if s.recv(1) == b"" else "data?", flush=True)
' "$WORK/c.sock"
hm=$LAST_PID
wait_log "$WORK/halfmsg.log" sent 10 "$hm"
wait_until 10 "port c connected" bash -c "[ \"\$($BIN/nicmuxctl --socket $CTL --json port show c | python3 -c \"import json,sys; print(json.load(sys.stdin)['state'])\")\" = connected ]"
out=$(ctl upgrade "$BIN/nicmuxd") || fail "upgrade with a half message on port c: $out"
grep -q "warning: port c: frontend disconnected (a vhost-user message was half received)" <<<"$out" ||
  fail "upgrade with a half message on port c: no warning: $out"
pid=$(sed -n 's/^upgraded: pid \([0-9]*\) .*/\1/p' <<<"$out")
wait_until 10 "exit of the old nicmuxd $CUR" bash -c "! kill -0 $CUR 2>/dev/null"
PIDS+=("$pid")
echo "ok: upgraded pid $CUR -> $pid with a half-sent message on port c: $(grep warning <<<"$out")"
CUR=$pid
wait_pid "$hm" 10 || fail "the half-message frontend: $(cat "$WORK/halfmsg.log")"
grep -q "closed by nicmuxd" "$WORK/halfmsg.log" || fail "the half-message frontend: $(cat "$WORK/halfmsg.log")"
ctl port del c >/dev/null

wait_pid "$pa" 60 || fail "pktgen a failed"
wait_pid "$pb" 60 || fail "pktgen b failed"
for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
  expect_summary "$l" tx_packets "$COUNT"
  expect_summary "$l" rx_packets "$COUNT"
  expect_summary "$l" rx_bad 0
  expect_summary "$l" rx_lost 0
  expect_summary "$l" rx_reordered 0
done
echo "ok: $COUNT frames each way through 3 upgrades and a failed one: none lost, duplicated or reordered;" \
  "longest gap a: $(summary_field "$WORK/pg_a.log" rx_max_gap_us) us, b: $(summary_field "$WORK/pg_b.log" rx_max_gap_us) us"
for p in a b; do
  [ "$(connections $p)" = 1 ] || fail "port $p: $(connections $p) connections (the endpoint reconnected)"
done
echo "ok: neither endpoint reconnected"
# The counters were carried over: the last process counts every frame since the first started.
for p in a b; do
  got=$(ctl --json port show $p | json_field "['rx_packets']")
  [ "$got" -ge "$COUNT" ] || fail "port $p: rx_packets $got after the upgrades, $COUNT were received"
done
echo "ok: counters carried over (port a rx_packets $(ctl --json port show a | json_field "['rx_packets']"))"
[ "$(cat "/sys/class/net/$tap/ifindex")" = "$ifindex" ] || fail "the TAP interface was made again"
ping -c 2 -W 1 -I "$tap" 10.213.0.2 >/dev/null 2>&1 || true
wait_until 10 "frames from the TAP interface" bash -c \
  "[ \$($BIN/nicmuxctl --socket $CTL --json port show t0 | python3 -c \"import json,sys; print(json.load(sys.stdin)['rx_packets'])\") -gt 0 ]"
echo "ok: TAP interface $tap (ifindex $ifindex) kept, and read by the new process"
kill -TERM "$CUR"
wait_until 30 "exit of nicmuxd $CUR" bash -c "! kill -0 $CUR 2>/dev/null"
[ ! -e "$a" ] || fail "the last nicmuxd left $a behind"
[ ! -e "/sys/class/net/$tap" ] || fail "the last nicmuxd left $tap behind"
echo "ok: the last nicmuxd removed the socket and the TAP interface at exit"
