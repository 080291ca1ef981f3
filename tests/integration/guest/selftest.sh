#!/usr/bin/env bash
# selftest.sh - proves the test guest images (build-guest.sh, run-guest.sh,
# init.sh, guest-exec.py) work, WITHOUT nicmux: DPDK's dpdk-testpmd with two
# vhost PMD ports (net_vhost, the vhost-user backend) in io forwarding mode
# cross-connects two QEMU guests:
#
#   guest a 10.0.0.1 (serve: iperf3 -s)      guest b 10.0.0.2 (run: ping, iperf3 -c)
#        virtio-net -- S0 --> testpmd port 0 <== io fwd ==> port 1 <-- S1 -- virtio-net
#
# Checks: both guests boot and report NICMUX-READY with carrier; b pings a;
# iperf3 TCP a<-b for --seconds, then reversed (-R); the console agent runs a
# command in a (guest-exec.py); testpmd forwarded packets both ways.
# Prints "selftest: key=value" result lines and "selftest: PASS" or FAIL.
#
# Every process it starts is bounded (QEMU --timeout, testpmd under timeout(1),
# an overall watchdog) and stopped at exit (trap), by pid/process group.
set -euo pipefail
set +m   # children stay in our process group: setsid never forks, $! is the leader

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
usage: $PROG [options]
  --queues N         queue pairs per port, guests and testpmd (default 1)
  --seconds N        iperf3 duration per direction (default 5)
  --mem MODE         testpmd memory: no-huge (default; --no-huge -m 512) or
                     in-memory (--in-memory --socket-mem=512; needs 512 MB of
                     free 2 MiB hugepages: echo 512 > /proc/sys/vm/nr_hugepages)
  --cpu N            CPU for testpmd's two lcores (default 1)
  --device-opts O    extra virtio-net-pci properties for both guests
                     (e.g. packed=on)
  --mtu N            guest MTU (default: the driver's, 1500)
  --vhost-client     testpmd is the vhost-user client (net_vhost client=1),
                     QEMU the server (run-guest.sh --socket-mode server)
  --accel A          auto | kvm | tcg (passed to run-guest.sh)
  --timeout S        bound for the whole test (default 900)
  --workdir DIR      scratch dir (default mktemp -d; removed on success)
  --keep             keep the scratch dir
  -h, --help         this text
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

queues=1 seconds=5 mem=no-huge cpu=1 device_opts="" mtu="" accel=auto total_s=900
workdir="" keep=0 vhost_client=0
while [ $# -gt 0 ]; do
    case $1 in
        --queues) queues=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --cpu) cpu=$2; shift 2 ;;
        --device-opts) device_opts=$2; shift 2 ;;
        --mtu) mtu=$2; shift 2 ;;
        --vhost-client) vhost_client=1; shift ;;
        --accel) accel=$2; shift 2 ;;
        --timeout) total_s=$2; shift 2 ;;
        --workdir) workdir=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root (packages, DPDK)"
case $mem in no-huge|in-memory) ;; *) die "--mem must be no-huge or in-memory" ;; esac

# ---------------------------------------------------------------- packages
# Debian 12: dpdk-testpmd is in dpdk-dev; the vhost PMD is a plugin package.
need=(dpdk dpdk-dev librte-net-vhost23 librte-mempool-ring23 python3)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
          apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi
"$HERE/build-guest.sh" >/dev/null

# ---------------------------------------------------------------- scratch, cleanup
if [ -z "$workdir" ]; then
    workdir=$(mktemp -d /tmp/nicmux-guest-selftest.XXXXXX)
else
    mkdir -p "$workdir"; workdir=$(cd "$workdir" && pwd)
fi
W=$workdir
prefix=gtest$$
tp_pid="" tp_fd="" watchdog_pid=""
qemu_pidfiles=("$W/a.pid" "$W/b.pid")
failed=0

alive() {  # a zombie counts as dead
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [ "${s%% *}" != Z ]
}
stop_pid() {  # TERM, up to 10 s, KILL
    local p=$1
    alive "$p" || return 0
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do alive "$p" || return 0; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
}
cleanup() {
    local rc=$? f p
    trap - EXIT INT TERM
    for f in "${qemu_pidfiles[@]}"; do
        p=$(cat "$f" 2>/dev/null) || continue
        [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = qemu-system-x86 ] && stop_pid "$p"
    done
    if [ -n "$tp_fd" ]; then
        { echo quit >&"$tp_fd"; } 2>/dev/null || true
        exec {tp_fd}>&-
        tp_fd=""
    fi
    if [ -n "$tp_pid" ]; then
        for _ in $(seq 1 50); do alive "$tp_pid" || break; sleep 0.1; done
        kill -TERM -- "-$tp_pid" 2>/dev/null || true   # its own process group (setsid)
        for _ in $(seq 1 100); do alive "$tp_pid" || break; sleep 0.1; done
        kill -KILL -- "-$tp_pid" 2>/dev/null || true
        wait "$tp_pid" 2>/dev/null || true
    fi
    [ -z "$watchdog_pid" ] || { kill "$watchdog_pid" 2>/dev/null; wait "$watchdog_pid" 2>/dev/null; } || true
    rm -rf "/var/run/dpdk/$prefix"
    [ "$rc" = 0 ] || failed=1
    if [ "$keep" = 1 ] || [ "$failed" = 1 ]; then
        log "logs kept in $W"
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# overall bound: the watchdog TERMs us, the trap stops everything
# (its sleep is killed with it, so no process is left holding our stdout)
(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$total_s" & sp=$!
    wait "$sp" && { echo "$PROG: overall timeout ${total_s}s" >&2; kill -TERM $$; }
) </dev/null >/dev/null 2>&1 &
watchdog_pid=$!

wait_for() {  # wait_for SECONDS WHAT cmd...
    local t=$1 what=$2; shift 2
    local end=$((SECONDS + t))
    while [ $SECONDS -lt $end ]; do
        "$@" && return 0
        sleep 0.2
    done
    log "timeout (${t}s) waiting for $what"
    return 1
}
in_log() { tr -d '\r' <"$1" 2>/dev/null | grep -aq "$2"; }
fail() { failed=1; log "FAIL: $*"; echo "selftest: FAIL ($*)"; exit 1; }

# ---------------------------------------------------------------- testpmd
case $mem in
    no-huge) eal_mem=(--no-huge -m 512) ;;
    in-memory)
        free_mb=$(awk '/^HugePages_Free/{f=$2} /^Hugepagesize/{s=$2} END{print int(f*s/1024)}' /proc/meminfo)
        [ "$free_mb" -ge 512 ] || die "--mem in-memory needs 512 MB of free hugepages (have $free_mb)"
        eal_mem=(--in-memory --socket-mem=512) ;;
esac
txq=()
[ "$queues" -gt 1 ] && txq=(--rxq="$queues" --txq="$queues")
mkfifo "$W/testpmd.in"
exec {tp_fd}<>"$W/testpmd.in"   # read-write: never blocks, and testpmd never sees EOF
client=""
[ "$vhost_client" = 1 ] && client=",client=1"
tp_cmd=(timeout -k 10 "$total_s" stdbuf -oL taskset -c "$cpu" dpdk-testpmd
    --lcores "0@$cpu,1@$cpu" --no-pci --no-telemetry --no-shconf --file-prefix="$prefix"
    "${eal_mem[@]}"
    --vdev "net_vhost0,iface=$W/s0,queues=$queues$client"
    --vdev "net_vhost1,iface=$W/s1,queues=$queues$client"
    -- -i --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 "${txq[@]}")
echo "${tp_cmd[*]}" >"$W/commands.txt"
setsid "${tp_cmd[@]}" <"$W/testpmd.in" >"$W/testpmd.log" 2>&1 {tp_fd}>&- &
tp_pid=$!
tp_ready() { grep -q 'testpmd> ' "$W/testpmd.log" 2>/dev/null || ! alive "$tp_pid"; }
wait_for 90 "testpmd prompt" tp_ready || fail "testpmd not ready"
alive "$tp_pid" || { tail -20 "$W/testpmd.log" >&2; fail "testpmd died"; }
# server mode: testpmd created the sockets; client mode: it keeps retrying
# to connect in the background until QEMU (the server) creates them
if [ "$vhost_client" = 0 ] && ! { [ -S "$W/s0" ] && [ -S "$W/s1" ]; }; then
    fail "testpmd created no vhost-user sockets"
fi
echo start >&"$tp_fd"

# ---------------------------------------------------------------- guests
common=(--queues "$queues" --accel "$accel" --timeout "$total_s")
[ "$vhost_client" = 0 ] || common+=(--socket-mode server)
[ -z "$device_opts" ] || common+=(--device-opts "$device_opts")
[ -z "$mtu" ] || common+=(--mtu "$mtu")

t0=$(date +%s.%N)
"$HERE/run-guest.sh" a "$W/s0" --ip 10.0.0.1/24 --serve 'iperf3 -s' "${common[@]}" \
    --background --console-socket "$W/a.con" --log "$W/a.log" --pidfile "$W/a.pid" \
    >"$W/a.qpid" || fail "guest a did not start"
echo "run-guest.sh a $W/s0 --ip 10.0.0.1/24 --serve 'iperf3 -s' ${common[*]} --background --console-socket $W/a.con --log $W/a.log" >>"$W/commands.txt"
a_pid=$(cat "$W/a.qpid")
a_up() { in_log "$W/a.log" '^NICMUX-AGENT' || in_log "$W/a.log" '^NICMUX-ERROR' || ! alive "$a_pid"; }
wait_for 300 "guest a agent" a_up || fail "guest a not ready"
t1=$(date +%s.%N)
in_log "$W/a.log" '^NICMUX-AGENT' || { cat "$W/a.log" >&2; fail "guest a: $(grep -a NICMUX-ERROR "$W/a.log" || echo 'QEMU exited')"; }
a_ready=$(tr -d '\r' <"$W/a.log" | grep -a '^NICMUX-READY' | tail -1)
boot_a=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}')
echo "selftest: guest_a_boot_s=$boot_a ($a_ready)"

# b: ping, then iperf3 both ways; each step echoes a tag for the parser
b_cmd="ping -c 5 10.0.0.1 || exit 10
echo STEP-iperf-fwd; iperf3 -c 10.0.0.1 -t $seconds -f g || exit 11
echo STEP-iperf-rev; iperf3 -c 10.0.0.1 -t $seconds -f g -R || exit 12"
b_rc=0
t2=$(date +%s.%N)
# in the background + wait: a TERM (watchdog, ^C) runs the trap at once
"$HERE/run-guest.sh" b "$W/s1" --ip 10.0.0.2/24 --run "$b_cmd" "${common[@]}" \
    --log "$W/b.log" --pidfile "$W/b.pid" </dev/null &
wait $! || b_rc=$?
t3=$(date +%s.%N)
echo "run-guest.sh b $W/s1 --ip 10.0.0.2/24 --run '$b_cmd' ${common[*]} --log $W/b.log" >>"$W/commands.txt"
bl=$(tr -d '\r' <"$W/b.log")
echo "selftest: guest_b_rc=$b_rc guest_b_total_s=$(awk -v a="$t2" -v b="$t3" 'BEGIN{printf "%.1f", b - a}') ($(grep -a '^NICMUX-READY' <<<"$bl" | tail -1))"
ping_line=$(grep -a 'packets transmitted' <<<"$bl" | head -1 || true)
rtt_line=$(grep -a 'round-trip' <<<"$bl" | head -1 || true)
echo "selftest: ping: ${ping_line:-none}; ${rtt_line:-no rtt}"
fwd=$(sed -n '/^STEP-iperf-fwd/,/^STEP-iperf-rev/p' <<<"$bl" | grep -a 'receiver' | tail -1 || true)
rev=$(sed -n '/^STEP-iperf-rev/,$p' <<<"$bl" | grep -a 'receiver' | tail -1 || true)
gb() { awk '{for (i = 1; i < NF; i++) if ($(i + 1) == "Gbits/sec") {print $i; exit}}' <<<"$1"; }
retr=$(sed -n '/^STEP-iperf-fwd/,/^STEP-iperf-rev/p' <<<"$bl" | grep -a 'sender' | tail -1 | awk '{print $(NF-1)}' || true)
echo "selftest: iperf3_tcp_b_to_a_gbps=$(gb "$fwd") retransmits=${retr:-?} ($fwd)"
echo "selftest: iperf3_tcp_a_to_b_gbps=$(gb "$rev") ($rev)"
[ "$b_rc" = 0 ] || { tail -40 <<<"$bl" >&2; fail "guest b command rc=$b_rc"; }

# ---------------------------------------------------------------- console agent
out=$("$HERE/guest-exec.py" --timeout 60 "$W/a.con" 'cat /sys/class/net/eth0/statistics/rx_packets /sys/class/net/eth0/statistics/tx_packets; ethtool -l eth0 | tail -4 | grep Combined; exit 7') && erc=0 || erc=$?
echo "selftest: guest-exec rc=$erc (expected 7) output: $(tr '\n' ' ' <<<"$out")"
[ "$erc" = 7 ] || fail "guest-exec: rc=$erc"
ex_rx=$(sed -n 1p <<<"$out")
[ "${ex_rx:-0}" -gt 100 ] 2>/dev/null || fail "guest-exec: unexpected output"

# ---------------------------------------------------------------- testpmd stats
: >"$W/testpmd.stats"
echo "show port stats all" >&"$tp_fd"
sleep 2
echo stop >&"$tp_fd"
sleep 2
# "stop" prints per-port forward statistics: RX-packets, TX-packets, TX-dropped
stats=$(awk '
    /Forward statistics for port/ { for (i = 1; i <= NF; i++) if ($i == "port") p = $(i + 1) }
    p != "" && /RX-packets:/ { rx[p] = $2 }
    p != "" && /TX-packets:/ { tx[p] = $2; drop[p] = $4; p = "" }
    END { for (q = 0; q <= 1; q++) printf "port%d_rx=%s port%d_tx=%s port%d_tx_dropped=%s ", q, rx[q], q, tx[q], q, drop[q] }
' "$W/testpmd.log")
echo "selftest: testpmd $stats"
rx0=$(sed -n 's/.*port0_rx=\([0-9]*\).*/\1/p' <<<"$stats")
rx1=$(sed -n 's/.*port1_rx=\([0-9]*\).*/\1/p' <<<"$stats")
if [ "${rx0:-0}" -le 1000 ] || [ "${rx1:-0}" -le 1000 ]; then
    fail "testpmd forwarded too little ($stats)"
fi

# a: the serve-mode guest powers off on request
"$HERE/guest-exec.py" --timeout 30 "$W/a.con" 'poweroff -f' >/dev/null 2>&1 || true
a_gone() { ! alive "$a_pid"; }
wait_for 30 "guest a poweroff" a_gone || true
echo "selftest: PASS (queues=$queues mem=$mem vhost_client=$vhost_client${mtu:+ mtu=$mtu}${device_opts:+ device_opts=$device_opts})"
