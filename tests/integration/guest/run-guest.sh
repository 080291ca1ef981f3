#!/usr/bin/env bash
# run-guest.sh - starts one QEMU guest (the image from build-guest.sh) whose
# only NIC is a virtio-net-pci device on a vhost-user socket, for nicmux's
# integration tests.  See --help.
#
# QEMU flags that matter here:
#  * guest RAM is a shared memfd (-object memory-backend-memfd,share=on +
#    -numa node,memdev=): the vhost-user backend maps it;
#  * KVM only where real KVM exists (module kvm_intel or kvm_amd): /dev/kvm
#    may be PVM (kvm_pvm), under which stock guest kernels do not boot; else
#    TCG (-cpu max);
#  * under TCG the NIC gets vectors=0 (no MSI-X): QEMU 7.2 + TCG + vhost-user
#    segfaults when the guest driver starts with MSI-X; under KVM multiqueue
#    gets vectors=2N+2;
#  * romfile= (no iPXE option ROM: faster boot, no PXE traffic);
#  * -no-reboot: a guest "poweroff -f", reboot or panic ends QEMU.
set -euo pipefail
set +m   # background children stay in our process group: setsid never forks

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
    cat <<EOF
usage: $PROG NAME SOCKET [options] [-- extra QEMU arguments]

Starts a QEMU guest NAME whose NIC is vhost-user on the UNIX socket SOCKET.
The guest's /init configures eth0 and runs --run CMD; its serial console goes
to --log.  Builds the guest image first if the cache is missing or stale
(build-guest.sh).

Guest:
  --ip ADDR/LEN       address of eth0, e.g. 10.0.0.1/24 (default: none)
  --mac MAC           NIC MAC (default: 02:6e:78 + 3 bytes of md5(NAME))
  --mtu N             ip link set eth0 mtu N in the guest
  --queues N          queue pairs: netdev queues=N, device mq=on, and in the
                      guest ethtool -L eth0 combined N (default 1)
  --run CMD           command for sh -c in the guest (base64 on the kernel
                      command line; keep it under ~1000 characters)
  --mode MODE         run   run CMD, print "NICMUX-RESULT rc=N", power off
                            (default)
                      serve start CMD in the background (e.g. "iperf3 -s"),
                            then accept commands on the console
                            (guest-exec.py; needs --console-socket)
                      shell run CMD, then a busybox shell on the console
                            (interactive: foreground, console on stdio)
  --serve CMD         same as --mode serve --run CMD
  --append ARGS       extra kernel command line arguments
  --verbose-kernel    kernel messages on the console (default: quiet)
  --smp N             vCPUs (default 1)
  --mem MB            guest RAM, a shared memfd (default 256)
  --with FILE         also put FILE (a static binary) in the guest's /bin
                      (build-guest.sh --with; repeatable)

vhost-user:
  --socket-mode M     client: QEMU connects to SOCKET, the backend listens
                              (default); QEMU waits for nothing else
                      server: QEMU creates and listens on SOCKET
                              (server=on,wait=off), the backend connects; QEMU
                              blocks in its start-up until the backend is there
  --reconnect SECS    client mode: QEMU reconnects every SECS after the
                      backend goes away (reconnect=SECS); also lets QEMU start
                      before SOCKET exists
  --device-opts OPTS  extra virtio-net-pci properties, comma separated
                      (e.g. packed=on,mrg_rxbuf=off,rx_queue_size=1024)

Process:
  --log FILE          serial console log (default ./NAME.console.log)
  --console-socket P  the console also on UNIX socket P (QEMU listens), for
                      guest-exec.py or "socat -,raw,echo=0 UNIX-CONNECT:P"
  --console-stdio     (foreground) console on stdio as well as in --log
                      (default when stdin and stdout are terminals)
  --pidfile FILE      QEMU's pid file (default: FILE.pid next to --log)
  --background        start QEMU detached (own session), print its pid and
                      return; QEMU's own stderr goes to LOG.qemu
  --timeout SECS      QEMU is killed after SECS (default 900; 0 = never);
                      a bound for tests that forget to stop it
  --accel A           auto (default) | kvm | tcg
  --dry-run           print the QEMU command line and exit
  -h, --help          this text

Exit status: foreground: the guest command's status from the
"NICMUX-RESULT rc=N" line (run mode), 124 if --timeout hit, 125 if the guest
reported no result (QEMU error, guest setup failed: see the log).
Background: 0 once QEMU runs (pid on stdout), 1 if it failed to start.

Environment: NICMUX_GUEST_DIR (image cache, as build-guest.sh), QEMU
(default qemu-system-x86_64).

Examples:
  $PROG a /tmp/s0 --ip 10.0.0.1/24 --serve 'iperf3 -s' --background \\
      --console-socket /tmp/a.con --log /tmp/a.log
  $PROG b /tmp/s1 --ip 10.0.0.2/24 --run 'ping -c 3 10.0.0.1' --log /tmp/b.log
  $HERE/guest-exec.py /tmp/a.con 'ip -s link show eth0'
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }

[ $# -ge 1 ] && { [ "$1" = -h ] || [ "$1" = --help ]; } && { usage; exit 0; }
[ $# -ge 2 ] || { usage >&2; exit 2; }
name=$1 socket=$2
shift 2
[[ $name =~ ^[A-Za-z0-9_.-]+$ ]] || die "NAME must be [A-Za-z0-9_.-]+: $name"

ip="" mac="" mtu="" queues=1 run="" mode=run append="" quiet=quiet smp=1 mem=256
socket_mode=client reconnect="" device_opts=""
log="" console_socket="" console_stdio=auto pidfile="" background=0 timeout_s=900
accel=auto dry_run=0 extra=() with=()
while [ $# -gt 0 ]; do
    case $1 in
        --ip) ip=$2; shift 2 ;;
        --mac) mac=$2; shift 2 ;;
        --mtu) mtu=$2; shift 2 ;;
        --queues) queues=$2; shift 2 ;;
        --run) run=$2; shift 2 ;;
        --mode) mode=$2; shift 2 ;;
        --serve) mode=serve; run=$2; shift 2 ;;
        --append) append=$2; shift 2 ;;
        --verbose-kernel) quiet=""; shift ;;
        --smp) smp=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --socket-mode) socket_mode=$2; shift 2 ;;
        --reconnect) reconnect=$2; shift 2 ;;
        --device-opts) device_opts=$2; shift 2 ;;
        --log) log=$2; shift 2 ;;
        --console-socket) console_socket=$2; shift 2 ;;
        --console-stdio) console_stdio=1; shift ;;
        --pidfile) pidfile=$2; shift 2 ;;
        --background) background=1; shift ;;
        --timeout) timeout_s=$2; shift 2 ;;
        --accel) accel=$2; shift 2 ;;
        --with) with+=(--with "$2"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

for v in "$queues" "$smp" "$mem" "$timeout_s" ${mtu:+"$mtu"} ${reconnect:+"$reconnect"}; do
    [[ $v =~ ^[0-9]+$ ]] || die "not a number: $v"
done
[ "$queues" -ge 1 ] || die "--queues must be >= 1"
case $mode in run|serve|shell) ;; *) die "--mode must be run, serve or shell" ;; esac
case $socket_mode in client|server) ;; *) die "--socket-mode must be client or server" ;; esac
[ -z "$reconnect" ] || [ "$socket_mode" = client ] || die "--reconnect is for --socket-mode client"
if [ -z "$mac" ]; then
    h=$(printf '%s' "$name" | md5sum)
    mac=02:6e:78:${h:0:2}:${h:2:2}:${h:4:2}
fi
[[ $mac =~ ^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$ ]] || die "bad MAC: $mac"
[[ -z $ip || $ip =~ ^[0-9A-Fa-f:./]+$ ]] || die "bad --ip: $ip"
# QEMU option values: a comma would start a new property
case $socket$console_socket in *,*) die "socket paths must not contain commas" ;; esac

log=${log:-./$name.console.log}
pidfile=${pidfile:-$log.pid}
QEMU=${QEMU:-qemu-system-x86_64}

if [ "$console_stdio" = auto ]; then
    console_stdio=0
    if [ "$background" = 0 ] && [ -t 0 ] && [ -t 1 ]; then console_stdio=1; fi
fi
[ "$background" = 0 ] || [ "$console_stdio" = 0 ] || die "--console-stdio and --background exclude each other"
[ "$mode" != serve ] || [ -n "$console_socket" ] || [ "$console_stdio" = 1 ] ||
    echo "$PROG: note: serve mode without --console-socket: no way to send commands" >&2

# ---------------------------------------------------------------- image
if [ "$dry_run" = 1 ] && ! "$HERE/build-guest.sh" --check; then
    gdir=${NICMUX_GUEST_DIR:-/var/cache/nicmux-guest}
else
    gdir=$("$HERE/build-guest.sh" "${with[@]}")
fi
kernel=$gdir/vmlinuz initrd=$gdir/initramfs.gz

# ---------------------------------------------------------------- accel
real_kvm() {
    { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } && [ -w /dev/kvm ]
}
if [ "$accel" = auto ]; then
    if real_kvm; then accel=kvm; else accel=tcg; fi
fi
# shellcheck disable=SC2054  # commas inside QEMU option values
case $accel in
    kvm) machine=(-machine pc,accel=kvm -cpu host) ;;
    tcg) machine=(-machine pc,accel=tcg -cpu max) ;;
    *) die "--accel must be auto, kvm or tcg" ;;
esac

# ---------------------------------------------------------------- command line
chr="socket,id=chr0,path=$socket"
if [ "$socket_mode" = server ]; then
    chr+=",server=on,wait=off"
elif [ -n "$reconnect" ]; then
    chr+=",reconnect=$reconnect"
fi
netdev="vhost-user,id=net0,chardev=chr0"
dev="virtio-net-pci,netdev=net0,mac=$mac,romfile="
if [ "$queues" -gt 1 ]; then
    netdev+=",queues=$queues"
    dev+=",mq=on"
fi
if [ "$accel" = tcg ]; then
    dev+=",vectors=0"
elif [ "$queues" -gt 1 ]; then
    dev+=",vectors=$((2 * queues + 2))"
fi
[ -z "$device_opts" ] || dev+=",$device_opts"

if [ -n "$console_socket" ]; then
    con="socket,id=ser0,path=$console_socket,server=on,wait=off,logfile=$log,logappend=off"
elif [ "$console_stdio" = 1 ]; then
    con="stdio,id=ser0,signal=off,logfile=$log,logappend=off"
else
    con="file,id=ser0,path=$log"
fi

cmdline="console=ttyS0 panic=-1 $quiet nicmux.name=$name nicmux.mac=$mac nicmux.mode=$mode"
[ -z "$ip" ] || cmdline+=" nicmux.ip=$ip"
[ -z "$mtu" ] || cmdline+=" nicmux.mtu=$mtu"
[ "$queues" -le 1 ] || cmdline+=" nicmux.queues=$queues"
[ -z "$run" ] || cmdline+=" nicmux.run=$(printf '%s' "$run" | base64 -w0)"
[ -z "$append" ] || cmdline+=" $append"
[ ${#cmdline} -lt 2000 ] || die "kernel command line too long (${#cmdline} > 2000 bytes): shorten --run"

# shellcheck disable=SC2054  # commas inside QEMU option values
qemu=("$QEMU" -name "$name" "${machine[@]}" -smp "$smp"
    -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem -m "${mem}M"
    -nodefaults -no-user-config -nographic -no-reboot
    -chardev "$con" -serial chardev:ser0
    -chardev "$chr" -netdev "$netdev" -device "$dev"
    -kernel "$kernel" -initrd "$initrd" -append "$cmdline"
    -pidfile "$pidfile" "${extra[@]}")

if [ "$dry_run" = 1 ]; then
    printf '%q ' "${qemu[@]}"
    echo
    exit 0
fi

[ "$socket_mode" = server ] || [ -n "$reconnect" ] || [ -S "$socket" ] ||
    die "no vhost-user socket at $socket (start the backend first, or --reconnect N / --socket-mode server)"
mkdir -p "$(dirname "$log")" "$(dirname "$pidfile")"
rm -f "$pidfile"
: >"$log"

if [ "$timeout_s" -gt 0 ]; then
    tmo=(timeout -k 10 "$timeout_s")
    [ "$console_stdio" = 1 ] && tmo=(timeout --foreground -k 10 "$timeout_s")
else
    tmo=()
fi

# ---------------------------------------------------------------- background
if [ "$background" = 1 ]; then
    setsid "${tmo[@]}" "${qemu[@]}" </dev/null >"$log.qemu" 2>&1 &
    leader=$!
    # The pidfile is written early in QEMU's start-up, before it connects the
    # vhost-user socket (which can block in server mode).
    for _ in $(seq 1 300); do
        [ -s "$pidfile" ] && break
        kill -0 "$leader" 2>/dev/null || break
        sleep 0.1
    done
    if ! [ -s "$pidfile" ]; then
        kill -TERM "$leader" 2>/dev/null || true
        echo "$PROG: QEMU did not start; $log.qemu:" >&2
        sed 's/^/  /' "$log.qemu" >&2
        exit 1
    fi
    qpid=$(cat "$pidfile")
    # a client-mode connect error makes QEMU exit right after writing the pidfile
    sleep 0.3
    if ! kill -0 "$qpid" 2>/dev/null; then
        echo "$PROG: QEMU exited at once; $log.qemu:" >&2
        sed 's/^/  /' "$log.qemu" >&2
        exit 1
    fi
    echo "$qpid"
    exit 0
fi

# ---------------------------------------------------------------- foreground
qrc=0
if [ "$console_stdio" = 1 ]; then
    "${tmo[@]}" "${qemu[@]}" || qrc=$?
else
    "${tmo[@]}" "${qemu[@]}" </dev/null || qrc=$?
fi
if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    echo "$PROG: $name: timeout after ${timeout_s}s (log: $log)" >&2
    exit 124
fi
res=$(tr -d '\r' <"$log" | sed -n 's/^NICMUX-RESULT rc=\([0-9]*\)$/\1/p' | tail -1)
if [ -z "$res" ]; then
    echo "$PROG: $name: no NICMUX-RESULT from the guest (QEMU rc=$qrc, log: $log)" >&2
    grep -a 'NICMUX-ERROR' "$log" >&2 || true
    exit 125
fi
exit "$res"
