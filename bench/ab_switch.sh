#!/usr/bin/env bash
# bench/ab_switch.sh DIR_A DIR_B [ROUNDS] [SIZE] [SECONDS]: two nicmuxd builds (their tools/
# folders) as a learning switch between two nicmux-pktgen endpoints (bidir, verified), run in
# turn A B A B ... ROUNDS times (default 5), SIZE-byte frames (default 64) for SECONDS (default
# 5). nicmuxd on CPU 1, both pktgens on CPU 0 (bench/run's topology). Prints each run's Mpps
# (both directions together) and the median ratio B/A of the pairs. For a change's A/B: build
# the old commit into another folder (git worktree + cmake --preset release) and pass both.
# Both runs use DIR_B's nicmux-pktgen, so only nicmuxd differs.
set -euo pipefail
A=${1:?DIR_A}; B=${2:?DIR_B}; rounds=${3:-5}; size=${4:-64}; secs=${5:-5}
W=$(mktemp -d /tmp/nicmux-ab.XXXXXX)
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$W"' EXIT
one() {  # one TOOLS_DIR -> Mpps
  local d=$1 pids=() m=0
  rm -f "$W"/*.sock
  taskset -c 1 "$d/nicmuxd" --control "$W/ctl" --port "vhost-user:p1:socket=$W/p1.sock" \
    --port "vhost-user:p2:socket=$W/p2.sock" >"$W/d.log" 2>&1 &
  local dp=$!
  for _ in $(seq 100); do [ -S "$W/p2.sock" ] && break; sleep 0.05; done
  taskset -c 0 "$B/nicmux-pktgen" --socket "$W/p1.sock" --mac 02:00:00:00:01:01 --peer-mac 02:00:00:00:02:02 \
    --mode bidir --size "$size" --duration "$secs" --delay 1.3 --interval 0 --stream 1 --yield >"$W/a.log" 2>&1 &
  pids+=($!)
  taskset -c 0 "$B/nicmux-pktgen" --socket "$W/p2.sock" --mac 02:00:00:00:02:02 --peer-mac 02:00:00:00:01:01 \
    --mode bidir --size "$size" --duration "$secs" --delay 1 --interval 0 --stream 2 --yield >"$W/b.log" 2>&1 &
  pids+=($!)
  wait "${pids[@]}" || true
  kill -TERM "$dp"; wait "$dp" || true
  python3 - "$W/a.log" "$W/b.log" <<'PY'
import re, sys
t = 0.0
for p in sys.argv[1:]:
    s = open(p).read()
    m = re.search(r"rx_mpps=([0-9.]+)", s)
    t += float(m.group(1)) if m else 0.0
print(f"{t:.3f}")
PY
}
ratios=()
for r in $(seq "$rounds"); do
  a=$(one "$A"); b=$(one "$B")
  echo "round $r: A $a Mpps, B $b Mpps"
  ratios+=("$(python3 -c "print($b / $a if $a > 0 else 0)")")
done
python3 -c "import statistics,sys; r=[float(x) for x in sys.argv[1:]]; print(f'B/A median {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f}, {len(r)} pairs)')" "${ratios[@]}"
