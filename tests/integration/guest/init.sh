#!/bin/sh
# /init of the nicmux test guest: a busybox initramfs built by build-guest.sh
# (this file is copied in verbatim; editing it changes the build hash, so the
# next build-guest.sh run rebuilds the image).
#
# It mounts proc/sys/dev, loads the virtio-net modules, configures the NIC
# from the kernel command line, runs one command and reports on the serial
# console with markers that the host greps for (each on a line of its own):
#
#   NICMUX-BOOT name=N kernel=K                   init started
#   NICMUX-READY name=N if=eth0 mac=M ip=A mtu=U queues=Q carrier=0|1 uptime=S
#   NICMUX-ERROR <what>                           setup failed (then rc=125, poweroff)
#   NICMUX-RESULT rc=N                            run mode: the command's exit status
#   NICMUX-SERVING pid=P                          serve mode: background command started
#   NICMUX-BG-EXIT rc=N                           serve mode: background command ended
#   NICMUX-AGENT                                  serve mode: console agent reads commands
#   NICMUX-BEGIN id=I / NICMUX-RESULT id=I rc=N   agent: around one command's output
#   NICMUX-POWEROFF                               about to power off
#
# Kernel command line (all optional):
#   nicmux.name=NAME      hostname, echoed in the markers
#   nicmux.ip=A.B.C.D/N   address for the NIC (also IPv6: any "ip addr add" form)
#   nicmux.mac=MAC        use the NIC with this MAC (default: first non-lo);
#                         it is renamed eth0 if needed
#   nicmux.mtu=N          ip link set eth0 mtu N
#   nicmux.queues=N       ethtool -L eth0 combined N (failure is fatal)
#   nicmux.run=BASE64     command line for sh -c, base64 (so spaces survive)
#   nicmux.mode=MODE      run   (default) run the command, print NICMUX-RESULT,
#                               power off
#                         serve start the command in the background (e.g.
#                               iperf3 -s), then the console agent below
#                         shell run the command (if any), then an interactive
#                               busybox shell on the console; poweroff on exit
#   nicmux.carrier=SECS   wait up to SECS for carrier after link up (default 10)
#
# Console agent (serve mode): reads lines from the serial console (echo off).
#   "NICMUX-EXEC <id> <base64 command>" runs the command (sh -c, stdin
#   /dev/null) between "NICMUX-BEGIN id=<id>" and "NICMUX-RESULT id=<id> rc=N";
#   any other non-empty line is run the same way with an empty id.
#   guest-exec.py implements the host side.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
umask 022

mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ln -sf /proc/self/fd /dev/fd 2>/dev/null

name=guest ip="" mac="" mtu="" queues="" run_b64="" mode=run carrier_s=10
for w in $(cat /proc/cmdline); do
    case $w in
        nicmux.name=*) name=${w#nicmux.name=} ;;
        nicmux.ip=*) ip=${w#nicmux.ip=} ;;
        nicmux.mac=*) mac=${w#nicmux.mac=} ;;
        nicmux.mtu=*) mtu=${w#nicmux.mtu=} ;;
        nicmux.queues=*) queues=${w#nicmux.queues=} ;;
        nicmux.run=*) run_b64=${w#nicmux.run=} ;;
        nicmux.mode=*) mode=${w#nicmux.mode=} ;;
        nicmux.carrier=*) carrier_s=${w#nicmux.carrier=} ;;
    esac
done
hostname "$name"

# Markers start on a fresh line: a command's output may not end with one.
marker() { printf '\nNICMUX-%s\n' "$*"; }

power_off() {
    marker POWEROFF
    sync
    poweroff -f
    # not reached; if it is, make the kernel stop QEMU (-no-reboot)
    sleep 5
    echo o >/proc/sysrq-trigger
    exit 1
}

fail() {
    marker "ERROR $*"
    marker "RESULT rc=125"
    power_off
}

marker "BOOT name=$name kernel=$(uname -r)"

# Serial output without CR/LF translation: the host reads log files.
[ "$mode" = shell ] || stty -onlcr 2>/dev/null

# ---------------------------------------------------------------- modules
# /etc/nicmux-modules lists the .ko files in load order (dependencies first);
# empty when virtio_net/virtio_pci are built in.
if [ -s /etc/nicmux-modules ]; then
    while read -r ko; do
        [ -n "$ko" ] || continue
        out=$(insmod "$ko" 2>&1) || case $out in
            *"File exists"*) ;;
            *) fail "insmod $ko: $out" ;;
        esac
    done </etc/nicmux-modules
fi

# ---------------------------------------------------------------- network
ip link set lo up

# The NIC appears asynchronously after the driver binds: wait up to 20 s.
ifname=""
i=0
while [ $i -lt 200 ]; do
    for d in /sys/class/net/*; do
        n=${d##*/}
        [ "$n" = lo ] && continue
        [ -e "$d/device" ] || continue
        if [ -z "$mac" ] || [ "$(cat "$d/address")" = "$(echo "$mac" | tr 'A-F' 'a-f')" ]; then
            ifname=$n
            break
        fi
    done
    [ -n "$ifname" ] && break
    sleep 0.1
    i=$((i + 1))
done
[ -n "$ifname" ] || fail "no network interface${mac:+ with MAC $mac} (interfaces: $(ls /sys/class/net | tr '\n' ' '))"
if [ "$ifname" != eth0 ]; then
    ip link set "$ifname" name eth0 || fail "rename $ifname to eth0"
fi

if [ -n "$mtu" ]; then
    ip link set eth0 mtu "$mtu" || fail "ip link set eth0 mtu $mtu"
fi
if [ -n "$queues" ]; then
    out=$(ethtool -L eth0 combined "$queues" 2>&1)
    rc=$?
    # ethtool -L fails with "unmodified" when nothing changes: not an error.
    case $rc:$out in
        0:*|*unmodified*) ;;
        *) fail "ethtool -L eth0 combined $queues: rc=$rc $out" ;;
    esac
fi
ip link set eth0 up || fail "ip link set eth0 up"
if [ -n "$ip" ]; then
    ip addr add "$ip" dev eth0 || fail "ip addr add $ip dev eth0"
fi

carrier=0
i=0
while [ $i -lt $((carrier_s * 10)) ]; do
    [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && { carrier=1; break; }
    sleep 0.1
    i=$((i + 1))
done
cur_q=$(ethtool -l eth0 2>/dev/null | awk '/^Current hardware settings/ {c = 1} c && /^Combined:/ {print $2; exit}')
marker "READY name=$name if=eth0 mac=$(cat /sys/class/net/eth0/address) ip=${ip:-none} mtu=$(cat /sys/class/net/eth0/mtu) queues=${cur_q:-?} carrier=$carrier uptime=$(cut -d' ' -f1 /proc/uptime)"

cmd=""
if [ -n "$run_b64" ]; then
    cmd=$(echo "$run_b64" | base64 -d) || fail "nicmux.run is not valid base64"
fi

cd /root || cd /

# ---------------------------------------------------------------- modes
case $mode in
run)
    rc=0
    if [ -n "$cmd" ]; then
        sh -c "$cmd" </dev/null
        rc=$?
    fi
    marker "RESULT rc=$rc"
    power_off
    ;;
shell)
    if [ -n "$cmd" ]; then
        sh -c "$cmd" </dev/null
        marker "RESULT rc=$?"
    fi
    echo "nicmux guest $name: busybox shell on the console; exit to power off"
    setsid cttyhack sh -l
    power_off
    ;;
serve)
    if [ -n "$cmd" ]; then
        (
            sh -c "$cmd" </dev/null
            marker "BG-EXIT rc=$?"
        ) &
        marker "SERVING pid=$!"
    fi
    stty -echo 2>/dev/null
    cr=$(printf '\r')
    marker AGENT
    while :; do
        if ! IFS= read -r line; then
            sleep 1   # console EOF (should not happen on a tty): keep serving
            continue
        fi
        line=${line%"$cr"}
        id=""
        case $line in
            "") continue ;;
            NICMUX-EXEC\ *)
                # shellcheck disable=SC2086  # split "NICMUX-EXEC id b64"
                set -- $line
                id=$2
                c=$(echo "$3" | base64 -d 2>/dev/null) || {
                    marker "BEGIN id=$id"
                    marker "RESULT id=$id rc=126"
                    continue
                }
                ;;
            *) c=$line ;;
        esac
        marker "BEGIN id=$id"
        sh -c "$c" </dev/null
        marker "RESULT id=$id rc=$?"
    done
    ;;
*)
    fail "unknown nicmux.mode=$mode"
    ;;
esac
power_off
