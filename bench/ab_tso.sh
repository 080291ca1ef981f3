#!/usr/bin/env bash
# bench/ab_tso.sh DIR_A DIR_B [ROUNDS] [SECONDS] [RX_OPTS]: two nicmuxd builds (their tools/
# folders) between a nicmux-pktgen sending 65000-byte TSO frames (MSS 1448) and one receiving,
# run in turn A B A B ... ROUNDS times (default 5) for SECONDS each (default 5). The receiver
# negotiates no offload by default, so the switch must segment (bench/run's "tso cut");
# RX_OPTS=--offloads makes it take TSO (passthrough). nicmuxd on CPU 1, both pktgens on CPU 0.
# Prints each run's Gbit/s of TCP payload received and the median ratio B/A of the pairs.
# Both runs use DIR_B's nicmux-pktgen, so only nicmuxd differs.
set -euo pipefail
A=${1:?DIR_A}; B=${2:?DIR_B}; rounds=${3:-5}; secs=${4:-5}; ropts=${5:-}
W=$(mktemp -d /tmp/nicmux-abtso.XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$W"' EXIT
one() {  # one TOOLS_DIR -> Gbit/s
  local d=$1
  rm -f "$W"/*.sock
  taskset -c 1 "$d/nicmuxd" --control "$W/ctl" --port "vhost-user:p1:socket=$W/p1.sock" \
    --port "vhost-user:p2:socket=$W/p2.sock" >"$W/d.log" 2>&1 &
  local dp=$!
  for _ in $(seq 100); do [ -S "$W/p2.sock" ] && break; sleep 0.05; done
  # shellcheck disable=SC2086
  taskset -c 0 "$B/nicmux-pktgen" --socket "$W/p2.sock" --mode rx --mac 02:00:00:00:02:02 \
    --peer-mac 02:00:00:00:01:01 --duration $((secs + 3)) --interval 0 --announce --yield $ropts >"$W/rx.log" 2>&1 &
  local rp=$!
  sleep 0.5
  taskset -c 0 "$B/nicmux-pktgen" --socket "$W/p1.sock" --mode tx --mac 02:00:00:00:01:01 \
    --peer-mac 02:00:00:00:02:02 --tso 1448 --size 65000 --static-payload --duration "$secs" --delay 1 \
    --interval 0 --yield >"$W/tx.log" 2>&1 || true
  wait "$rp" || true
  kill -TERM "$dp"; wait "$dp" || true
  python3 - "$W/rx.log" "$secs" <<'PY'
import re, sys
s = open(sys.argv[1]).read()
m = re.search(r"^summary .*", s, re.M)
if not m:
    print("0.000"); sys.exit()
kv = dict(x.split("=", 1) for x in m.group(0).split()[1:])
bad = int(kv.get("rx_bad", "0") or 0)
g = float(kv["rx_tcp_payload_gbps"]) * float(kv["seconds"]) / float(sys.argv[2])
print(f"{g:.3f}" + (f" BAD={bad}" if bad else ""))
PY
}
ratios=()
for r in $(seq "$rounds"); do
  a=$(one "$A"); b=$(one "$B")
  echo "round $r: A $a  B $b"
  ratios+=("$(python3 -c "a=float('$a'.split()[0]); b=float('$b'.split()[0]); print(b/a if a else 0)")")
done
python3 -c "import statistics,sys; r=sorted(map(float,sys.argv[1:])); print(f'median B/A {statistics.median(r):.3f} over {len(r)} pairs: ' + ' '.join(f'{x:.3f}' for x in r))" "${ratios[@]}"
