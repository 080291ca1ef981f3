#!/usr/bin/env bash
# nicmuxd as a learning switch, driven through its control socket and config file, with
# nicmux-pktgen endpoints (no guests: tests/integration/switch_guests.sh has those), two
# worker threads (so destination queues are shared under their TX lock):
#   1. two pktgens through the switch, every byte verified; the MAC table shows both; the
#      third port sees no unicast after learning
#   2. bad control requests: error replies with the right codes, nicmuxctl exit codes, the
#      daemon unaffected
#   3. capture: a pcap that tcpdump reads with the expected packet count
#   4. ports added and removed 1000 times while traffic flows: no crash, every packet
#      accounted for, open fds and RSS flat
#   5. config file: a bad one refused with its line number; SIGHUP reload touches only the
#      ports that changed
source "$(dirname "$0")/lib.sh"

MAC_A=02:00:00:00:aa:01 MAC_B=02:00:00:00:bb:02
pktgen() {  # pktgen NAME SOCKET MAC PEER_MAC [options]
  local name=$1 sock=$2 mac=$3 peer=$4; shift 4
  start "$name" "$BIN/nicmux-pktgen" --socket "$sock" --mac "$mac" --peer-mac "$peer" --interval 0 "$@"
}
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
port_field() { ctl --json port show "$1" | json_field "d.get('$2', 0)"; }

# ---- 1. switching between two pktgens, a third port idle
# (ASan's quarantine would hold freed ports' memory and hide whether RSS stays flat.)
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=1
nicmuxd --workers 2 --port "vhost-user:a:socket=$WORK/a.sock" --port "vhost-user:b:socket=$WORK/b.sock" \
  --port "vhost-user:c:socket=$WORK/c.sock"
wait_for "$WORK/c.sock" 30
wait_for "$CTL" 30
pktgen pg_c "$WORK/c.sock" 02:00:00:00:cc:03 02:00:00:00:cc:04 --mode rx --duration 600
PC=$LAST_PID
# The switch holds a source while a destination's ring is full, but only within the
# destination's hold credit (50 ms at a time, docs/switch.md); past it, it drops. Unpaced
# senders into 256-deep rings lost thousands of frames when the machine was busy (a pktgen
# waiting for a CPU for more than a few ms). So senders are paced well below what two shared
# CPUs sustain and receivers get 1024-deep rings: a frame is lost only if a receiver waits
# about 100 ms for a CPU. Counts stay exact.
PACE=(--rate 20000 --ring 1024)
fdb_has() { ctl fdb show | grep -q "$1"; }
forgotten() { [ "$(grep -c "port $1: its peer went away" "$WORK/nicmuxd.log")" -ge "$2" ]; }
# run_pair STREAM_BASE: 20000 verified frames each way between a and b. Both are held
# (--hold: a frame for a port with no frontend is dropped) and announce themselves
# (--announce: one broadcast each); once the switch has learned both MACs (they stay learned
# while connected) both are released. So, whatever the timing, not one of the 40000 frames is
# flooded (a flooded frame is never held for a full destination: it would be dropped for a
# receiver that waits for a CPU), and port c gets the two broadcasts, nothing else.
run_pair() {
  local c0 a0 b0 c1 a1 b1
  c0=$(port_field c tx_packets) a0=$(port_field a flooded) b0=$(port_field b flooded)
  pktgen pg_a "$WORK/a.sock" $MAC_A $MAC_B --mode bidir --verify --count 20000 --duration 120 --stream "$1" --hold --announce "${PACE[@]}"
  PA=$LAST_PID
  pktgen pg_b "$WORK/b.sock" $MAC_B $MAC_A --mode bidir --verify --count 20000 --duration 120 --stream "$(($1 + 1))" --hold --announce "${PACE[@]}"
  PB=$LAST_PID
  wait_log "$WORK/pg_a.log" connected 60 "$PA"
  wait_log "$WORK/pg_b.log" connected 60 "$PB"
  wait_until 60 "a's MAC in the table" fdb_has "$MAC_A"
  wait_until 60 "b's MAC in the table" fdb_has "$MAC_B"
  release "$PA" "$PB"
  wait_pid "$PA" 150 || fail "pktgen a failed"
  wait_pid "$PB" 150 || fail "pktgen b failed"
  for l in "$WORK/pg_a.log" "$WORK/pg_b.log"; do
    expect_summary "$l" tx_packets 20000
    expect_summary "$l" rx_packets 20000
    expect_summary "$l" rx_bad 0
    expect_summary "$l" rx_lost 0
  done
  c1=$(port_field c tx_packets) a1=$(port_field a flooded) b1=$(port_field b flooded)
  [ "$((a1 - a0))" -eq 1 ] && [ "$((b1 - b0))" -eq 1 ] ||
    fail "a flooded $((a1 - a0)) frames, b $((b1 - b0)): expected only their announcements"
  [ "$((c1 - c0))" -eq 2 ] || fail "port c got $((c1 - c0)) frames, expected the 2 announcements: flooding after learning"
  echo "ok: 20000 frames each way through the switch, verified, none lost, none flooded; c got the 2 broadcasts only"
}
run_pair 1
# The MACs behind a port are forgotten when its frontend goes: after that, not while the next
# pair has learned them anew.
wait_until 60 "a's and b's MACs forgotten" eval 'forgotten a 1 && forgotten b 1'
run_pair 3
ctl stats >"$WORK/stats.txt" || fail "nicmuxctl stats"
grep -q "^a " "$WORK/stats.txt" || grep -q " a " "$WORK/stats.txt" || fail "stats table lacks port a: $(cat "$WORK/stats.txt")"

# ---- 2. bad requests
rc=0; ctl port show nosuch 2>"$WORK/err.txt" || rc=$?
[ $rc -eq 4 ] || fail "port show of an unknown port: exit $rc, expected 4"
grep -q nosuch "$WORK/err.txt" || fail "the error does not name the port: $(cat "$WORK/err.txt")"
rc=0; ctl port add "vhost-user:a:socket=$WORK/z.sock" 2>"$WORK/err.txt" || rc=$?
[ $rc -eq 5 ] || fail "port add with a clashing name: exit $rc, expected 5"
rc=0; ctl port add "vhost-user:z:socket=$WORK/a.sock" 2>"$WORK/err.txt" || rc=$?
[ $rc -eq 5 ] || fail "port add with a socket path in use: exit $rc, expected 5 ($(cat "$WORK/err.txt"))"
rc=0; ctl port add "virtio-user:z:socket=$WORK/a.sock" 2>"$WORK/err.txt" || rc=$?
[ $rc -eq 5 ] || fail "a virtio-user port on a vhost-user port's socket: exit $rc, expected 5 ($(cat "$WORK/err.txt"))"
grep -q "socket $WORK/a.sock is in use by port a" "$WORK/err.txt" || fail "the clash is not named: $(cat "$WORK/err.txt")"
rc=0; ctl port add "tap:z:queues=99" 2>"$WORK/err.txt" || rc=$?
[ $rc -eq 6 ] || fail "port add with queues out of the kind's range: exit $rc, expected 6"
grep -q "queues=99 is outside 1..8" "$WORK/err.txt" || fail "the range is not named: $(cat "$WORK/err.txt")"
ctl port kinds >"$WORK/kinds.txt" || fail "port kinds"
for k in "vhost-user:NAME:socket=PATH" "virtio-user:NAME:socket=PATH" "tap:NAME:"; do
  grep -q "^$k" "$WORK/kinds.txt" || fail "port kinds lacks $k: $(cat "$WORK/kinds.txt")"
done
rc=0; ctl port add "vhost-user:z:sockt=$WORK/z.sock" 2>"$WORK/err.txt" || rc=$?
[ $rc -eq 6 ] || fail "port add with an unknown option: exit $rc, expected 6"
grep -q sockt "$WORK/err.txt" || fail "the error does not name the option: $(cat "$WORK/err.txt")"
rc=0; ctl port add "bogus" 2>/dev/null || rc=$?
[ $rc -eq 6 ] || fail "port add of a malformed spec: exit $rc, expected 6"
rc=0; "$BIN/nicmuxctl" --socket "$WORK/none.sock" port list 2>/dev/null || rc=$?
[ $rc -eq 3 ] || fail "nicmuxctl without a daemon: exit $rc, expected 3"
python3 - "$CTL" <<'EOF' || fail "raw bad requests"
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rwb")
def ask(line):
    f.write(line + b"\n"); f.flush(); return json.loads(f.readline())
cases = [b"not json", b"[1,2]", b'{"cmd": 5}', b'{"cmd": "nope"}', b'{"cmd": "port.show"}',
         b'{"cmd": "port.show", "args": {"name": 7}}', b'{"cmd": "port.add", "args": []}',
         b'{"cmd": "capture", "args": {"port": "a", "count": -1}}', b'\xff\xfe{"cmd"',
         b'{"cmd": "fdb.flush", "args": {"port": {"x": 1}}}', b"{" * 40 + b"}" * 40]
for c in cases:
    r = ask(c)
    assert r["ok"] is False and r["error"]["code"] in ("bad_request", "invalid", "not_found"), (c, r)
r = ask(b'{"cmd": "port.list"}')
assert r["ok"] and len(r["result"]["ports"]) == 3, r
EOF
kill -0 "$NICMUXD_PID" || fail "nicmuxd died on bad requests"
echo "ok: bad control requests answered with errors (exit codes 3/4/5/6), the daemon unaffected"

# ---- 3. capture
# The sender is held until the receiver is attached and the capture is on (nicmuxctl says
# "capturing" once the daemon has installed it): then all 500 frames reach b, and the
# capture sees the first 200 of them.
# b never sends, so a's frames are flooded (to b and c), never held: deep rings.
pktgen pg_b "$WORK/b.sock" $MAC_B $MAC_A --mode rx --duration 120 --count 500 --ring 1024
PB=$LAST_PID
pktgen pg_a "$WORK/a.sock" $MAC_A $MAC_B --mode tx --count 500 --rate 2000 --duration 120 --hold
PA=$LAST_PID
wait_log "$WORK/pg_b.log" connected 60 "$PB"
wait_log "$WORK/pg_a.log" connected 60 "$PA"
start capture "$BIN/nicmuxctl" --socket "$CTL" capture a -w "$WORK/a.pcap" -c 200
CP=$LAST_PID
wait_log "$WORK/capture.log" "capturing on a" 60 "$CP"
release "$PA"
wait_pid "$CP" 120 || fail "capture: $(cat "$WORK/capture.log")"
wait_pid "$PA" 150 || fail "pktgen a (capture) failed"
wait_pid "$PB" 150 || fail "pktgen b (capture) failed"
n=$(tcpdump -r "$WORK/a.pcap" --count 2>/dev/null | awk '{print $1}')
[ "$n" -eq 200 ] || fail "tcpdump read $n packets from the capture, expected 200"
first=$(tcpdump -r "$WORK/a.pcap" -nn -e -c 1 2>/dev/null)
grep -q "$MAC_A" <<<"$first" || fail "captured frames are not a's: $first"
echo "ok: capture of 200 packets, tcpdump reads them ($(head -1 "$WORK/capture.log"))"

# ---- 4. ports added and removed 1000 times while traffic flows
# The traffic runs from before the churn starts until it ends, however long that takes on a
# busy machine: the pktgens are released once both are attached, the churn starts once
# frames reach both, and they are stopped (SIGINT: a summary line) after it.
kill "$PC" 2>/dev/null || true
pktgen pg_a "$WORK/a.sock" $MAC_A $MAC_B --mode bidir --verify --duration 3600 --stream 3 --hold --announce "${PACE[@]}"
PA=$LAST_PID
pktgen pg_b "$WORK/b.sock" $MAC_B $MAC_A --mode bidir --verify --duration 3600 --stream 4 --hold --announce "${PACE[@]}"
PB=$LAST_PID
wait_log "$WORK/pg_a.log" connected 60 "$PA"
wait_log "$WORK/pg_b.log" connected 60 "$PB"
wait_until 60 "a's MAC in the table" fdb_has "$MAC_A"
wait_until 60 "b's MAC in the table" fdb_has "$MAC_B"
a0=$(port_field a tx_packets) b0=$(port_field b tx_packets)
release "$PA" "$PB"
flowing() { [ "$(port_field a tx_packets)" -gt "$1" ] && [ "$(port_field b tx_packets)" -gt "$2" ]; }
wait_until 60 "traffic to both pktgens" flowing "$a0" "$b0"
a1=$(port_field a tx_packets) b1=$(port_field b tx_packets)
python3 - "$CTL" "$NICMUXD_PID" "$WORK" <<'EOF' || fail "port churn"
import json, os, socket, sys
ctl, pid, work = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX); s.connect(ctl); f = s.makefile("rwb")
def ask(cmd, **args):
    f.write(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n"); f.flush()
    r = json.loads(f.readline()); assert r["ok"], (cmd, args, r); return r["result"]
def fds(): return len(os.listdir(f"/proc/{pid}/fd"))
def rss_kb():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"): return int(l.split()[1])
for i in range(1000):
    if i == 100: fd0, rss0 = fds(), rss_kb()
    spec = f"tap:t{i % 7}:ifname=nmxchurn{i % 7}" if i % 10 == 0 else f"vhost-user:p{i % 7}:socket={work}/p.sock,queues={1 + i % 4}"
    name = spec.split(":")[1]
    ask("port.add", spec=spec)
    ask("port.del", name=name)
fd1, rss1 = fds(), rss_kb()
print(f"fds {fd0} -> {fd1}, rss {rss0} -> {rss1} kB")
assert fd1 == fd0, "fd leak"
assert rss1 - rss0 < 16 * 1024, "RSS grew by more than 16 MiB"
EOF
# Frames reached both pktgens while the churn ran (it started after a1/b1 were read).
a2=$(port_field a tx_packets) b2=$(port_field b tx_packets)
kill -INT "$PA" "$PB"
echo "ok: during the churn nicmuxd delivered $((a2 - a1)) frames to a and $((b2 - b1)) to b"
[ "$a2" -gt "$a1" ] && [ "$b2" -gt "$b1" ] || fail "no traffic reached a or b during the churn"
# pktgen exits 1 on a gap in a sequence or a bad frame.
wait_pid "$PA" 60 || fail "pktgen a failed during the churn"
wait_pid "$PB" 60 || fail "pktgen b failed during the churn"
for pair in "pg_a b" "pg_b a"; do
  set -- $pair
  rx=$(summary_field "$WORK/$1.log" rx_packets)
  bad=$(summary_field "$WORK/$1.log" rx_bad)
  lost=$(summary_field "$WORK/$1.log" rx_lost)
  [ "$bad" = 0 ] || fail "$1: $bad corrupted frames"
  [ "$rx" -gt 0 ] || fail "$1 received nothing"
  # A gap in the sequence is a frame lost on the way (pktgen's exit status already said so;
  # this names the count). The churn pauses the workers thousands of times, but a pause
  # holds frames, it does not drop them: none may be lost. Frames still in flight when the
  # receiver stopped are not gaps.
  [ "$lost" = 0 ] || fail "$1: $lost frames lost during the churn"
done
kill -0 "$NICMUXD_PID" || fail "nicmuxd died during the churn"
echo "ok: 1000 port add/del cycles (vhost-user and TAP) with traffic flowing: $(tail -1 "$WORK/nicmuxd.log" >/dev/null; echo verified, fds and RSS flat)"
stop_nicmuxd

# ---- 5. config file: refused when bad, reloaded by diff
cat >"$WORK/bad.toml" <<EOF
[daemon]
workers = 1

[[port]]
name = "a"
kind = "vhost-user"
socket = "$WORK/a.sock"
queues = "two" ]
EOF
rc=0; "$BIN/nicmuxd" --config "$WORK/bad.toml" --control none >"$WORK/bad.log" 2>&1 || rc=$?
[ $rc -eq 2 ] || fail "a bad config: exit $rc, expected 2"
grep -q "bad.toml:8" "$WORK/bad.log" || fail "the config error does not give line 8: $(cat "$WORK/bad.log")"
cat >"$WORK/n.toml" <<EOF
[daemon]
mac_aging = 60

[[port]]
name = "a"
kind = "vhost-user"
socket = "$WORK/a.sock"

[[port]]
name = "b"
kind = "vhost-user"
socket = "$WORK/b.sock"
EOF
nicmuxd --config "$WORK/n.toml"
wait_for "$WORK/b.sock" 30
pktgen pg_a "$WORK/a.sock" $MAC_A $MAC_B --mode rx --duration 600
PA=$LAST_PID
wait_log "$WORK/nicmuxd.log" "port a: frontend connected" 60
cat >"$WORK/n.toml" <<EOF
[daemon]
mac_aging = 60

[[port]]
name = "a"
kind = "vhost-user"
socket = "$WORK/a.sock"

[[port]]
name = "b"
kind = "vhost-user"
socket = "$WORK/b.sock"
queues = 2

[[port]]
name = "c"
kind = "vhost-user"
socket = "$WORK/c.sock"
EOF
kill -HUP "$NICMUXD_PID"
wait_log "$WORK/nicmuxd.log" "1 added, 0 removed, 1 changed" 60
wait_for "$WORK/c.sock" 30
[ "$(ctl --json port show b | json_field "d['queues']")" = 2 ] || fail "port b was not recreated with 2 queues"
[ "$(port_field a connections)" = 1 ] || fail "port a was touched by the reload"
kill -0 "$PA" || fail "a's pktgen lost its connection in the reload"
grep -q "port a: frontend disconnected" "$WORK/nicmuxd.log" && fail "port a was disconnected by the reload"
echo "ok: bad config refused at line 8; SIGHUP reload: c added, b changed, a untouched"
stop_nicmuxd
[ ! -e "$WORK/a.sock" ] && [ ! -e "$CTL" ] || fail "sockets left behind after SIGTERM"
echo "ok: clean shutdown removed the sockets"
