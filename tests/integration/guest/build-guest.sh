#!/usr/bin/env bash
# build-guest.sh - builds and caches the Linux guest used by nicmux's
# integration tests: a Debian cloud kernel and a busybox initramfs with the
# virtio-net modules (and uio_pci_generic, for a DPDK PCI driver), iperf3, ethtool, ping and ip, whose /init (init.sh)
# configures the NIC from the kernel command line and runs one command.
#
# Everything comes from Debian packages: the host tools are installed with
# apt-get when missing; the kernel is the package that linux-image-cloud-amd64
# depends on, fetched with "apt-get download" and unpacked with dpkg-deb
# (never installed).
#
# Cache (default /var/cache/nicmux-guest, or $NICMUX_GUEST_DIR, or --dir):
#   vmlinuz         the kernel
#   initramfs.gz    the initramfs (gzip'ed newc cpio)
#   guest.env       shell-sourceable: GUEST_KERNEL GUEST_INITRD GUEST_KVER ...
#   stamp           sha256 of build-guest.sh + init.sh that built the cache
#   debs/           the kernel .deb (reused by rebuilds)
# The cache is rebuilt only when a file is missing or the stamp differs
# (i.e. this script or init.sh changed), or with --force.  A build holds an
# flock on DIR/.lock and replaces the files atomically, so concurrent callers
# are safe.  Prints the cache directory on stdout.
#
# --with FILE (repeatable): files of the build tree the image should carry in
# /bin as well (a static nicmux-pvgen for the pv VM test; a dynamically linked
# file, such as dpdk-testpmd or a PMD, brings the libraries ldd reports, at
# their own paths).  They are not part
# of the base image: a second gzip'ed cpio holding them is appended to it (the
# kernel unpacks concatenated archives in order), in DIR/with-HASH/ (vmlinuz, a
# hard link; initramfs.gz; guest.env), HASH covering the base image's stamp and
# bytes and each file's name and bytes: a changed file or base makes a new one,
# an unchanged one is reused.  The directory appears by an atomic rename; the
# oldest beyond the 4 newest are removed.  With --with that directory is
# printed instead of DIR.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INIT_SRC=$HERE/init.sh

usage() {
    cat <<EOF
usage: $PROG [--dir DIR] [--force] [--check] [--with FILE]...
  Builds (if needed) the nicmux test guest and prints its cache directory.
  --dir DIR   cache directory (default \$NICMUX_GUEST_DIR or /var/cache/nicmux-guest)
  --with FILE also put FILE in the guest's /bin (and, if it is dynamically
              linked, the libraries it needs at their paths): prints
              DIR/with-HASH, the base image plus a layer with the files
  --force     rebuild even if the cache is up to date
  --check     only check: exit 0 if the cache is up to date, 1 if not
  -h, --help  this text
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

dir=${NICMUX_GUEST_DIR:-/var/cache/nicmux-guest}
force=0 check=0 with=()
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2 ;;
        --with) [ -f "$2" ] || die "--with $2: no such file"; with+=("$(realpath "$2")"); shift 2 ;;
        --force) force=1; shift ;;
        --check) check=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
[ -f "$INIT_SRC" ] || die "missing $INIT_SRC"

stamp=$(cat "${BASH_SOURCE[0]}" "$INIT_SRC" | sha256sum | cut -d' ' -f1)

up_to_date() {
    [ -s "$dir/vmlinuz" ] && [ -s "$dir/initramfs.gz" ] && [ -s "$dir/guest.env" ] &&
        [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]
}

# finish: prints the directory to use (DIR, or with --with DIR/with-HASH, made
# if missing) and exits.
finish() {
    if [ ${#with[@]} -eq 0 ]; then
        echo "$dir"
        exit 0
    fi
    local h f out tmp lib
    h=$({ cat "$dir/stamp"; sha256sum <"$dir/initramfs.gz"
          for f in "${with[@]}"; do echo "${f##*/}"; sha256sum <"$f"; done; } | sha256sum | cut -c1-16)
    out=$dir/with-$h
    if [ ! -s "$out/initramfs.gz" ]; then
        tmp=$(mktemp -d "$dir/.with.XXXXXX")
        chmod 755 "$tmp"
        mkdir -p "$tmp/layer/bin"
        for f in "${with[@]}"; do
            cp -L "$f" "$tmp/layer/bin/${f##*/}"
            # A dynamically linked file brings the libraries ldd reports, at their paths.
            ! ldd "$f" 2>/dev/null | grep -q "not found" || die "--with $f: a library it needs is missing: $(ldd "$f" | grep "not found" | head -n 3 | tr -s ' \t\n' ' ')"
            for lib in $(ldd "$f" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
                mkdir -p "$tmp/layer$(dirname "$lib")"
                [ -e "$tmp/layer$lib" ] || cp -L "$lib" "$tmp/layer$lib"
            done
        done
        (cd "$tmp/layer" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
            gzip -1 >"$tmp/layer.gz"
        cat "$dir/initramfs.gz" "$tmp/layer.gz" >"$tmp/initramfs.gz"
        ln -f "$dir/vmlinuz" "$tmp/vmlinuz" 2>/dev/null || cp "$dir/vmlinuz" "$tmp/vmlinuz"
        sed -e "s|^GUEST_KERNEL=.*|GUEST_KERNEL=$out/vmlinuz|" -e "s|^GUEST_INITRD=.*|GUEST_INITRD=$out/initramfs.gz|" \
            "$dir/guest.env" >"$tmp/guest.env"
        echo "GUEST_WITH=\"${with[*]##*/}\"" >>"$tmp/guest.env"
        rm -rf "$tmp/layer" "$tmp/layer.gz"
        # a concurrent caller may have made it meanwhile: then ours goes
        mv -T "$tmp" "$out" 2>/dev/null || rm -rf "$tmp"
        # shellcheck disable=SC2012  # names are ours: with-HEX
        ls -dt "$dir"/with-* 2>/dev/null | tail -n +5 | while read -r f; do rm -rf "$f"; done
    fi
    echo "$out"
    exit 0
}

if [ "$check" = 1 ]; then
    up_to_date
    exit
fi
if [ "$force" = 0 ] && up_to_date; then
    finish
fi

# ---------------------------------------------------------------- host packages
# Tools used to build (busybox-static, cpio, kmod, iperf3, ethtool: their
# binaries go into the image) and to run (qemu-system-x86) the guest.
packages=(qemu-system-x86 busybox-static cpio kmod iperf3 ethtool gzip)

ensure_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); run as root or install them"
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # another apt run (a concurrent build) may hold the lock: wait for it
    if ! apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
exec {lock_fd}>"$dir/.lock"
flock -w 1200 "$lock_fd" || die "timeout waiting for the build lock $dir/.lock"
# someone else may have built it while we waited
if [ "$force" = 0 ] && up_to_date; then
    flock -u "$lock_fd"
    finish
fi

ensure_packages "${packages[@]}"

work=$(mktemp -d "$dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---------------------------------------------------------------- kernel
# The meta package's Depends names the current cloud kernel image package.
kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}'
}
kpkg=$(kernel_pkg)
if [ -z "$kpkg" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    kpkg=$(kernel_pkg)
fi
[ -n "$kpkg" ] || die "cannot resolve the kernel package of linux-image-cloud-amd64"
# The .deb is kept in DIR/debs/ so that a rebuild (init.sh changed) does not
# download it again; older kernels' .debs are removed.
mkdir -p "$dir/debs"
kpkg_cand=$(apt-cache policy "$kpkg" 2>/dev/null | awk '$1 == "Candidate:" {print $2; exit}')
deb=$(ls "$dir/debs/${kpkg}_${kpkg_cand//:/%3a}_"*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
    log "downloading $kpkg $kpkg_cand"
    (cd "$work" && apt-get -q -o APT::Sandbox::User=root download "$kpkg" >/dev/null) ||
        die "apt-get download $kpkg failed"
    deb=$(ls "$work"/"${kpkg}"_*.deb)
    find "$dir/debs" -name '*.deb' -delete
    mv "$deb" "$dir/debs/"
    deb=$dir/debs/${deb##*/}
fi
kpkg_version=$(dpkg-deb -f "$deb" Version)
dpkg-deb -x "$deb" "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
if [ -z "$kver" ] || [ ! -f "$work/kernel/boot/vmlinuz-$kver" ]; then
    die "unexpected layout in $deb"
fi
kconfig=$work/kernel/boot/config-$kver
depmod -b "$work/kernel" "$kver"

# ---------------------------------------------------------------- rootfs
root=$work/root
mkdir -p "$root"/{bin,dev,etc,lib,lib64,proc,sys,tmp,run,root,mnt}
ln -s bin "$root/sbin"
mkdir -p "$root/usr"
ln -s ../bin "$root/usr/bin"
ln -s ../bin "$root/usr/sbin"
chmod 1777 "$root/tmp"

# A dynamically linked binary and the libraries ldd reports, at the same
# paths (/lib/x86_64-linux-gnu/..., /lib64/ld-linux-x86-64.so.2).
copy_with_libs() {
    local bin=$1 lib
    rm -f "$root/bin/${bin##*/}"          # a busybox applet link, if any
    cp -L "$bin" "$root/bin/${bin##*/}"
    for lib in $(ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        mkdir -p "$root$(dirname "$lib")"
        [ -e "$root$lib" ] || cp -L "$lib" "$root$lib"
    done
}
# busybox (static from busybox-static; libraries copied if it is not) and
# one symlink per applet; iperf3 and ethtool replace busybox applets, if any.
copy_with_libs /bin/busybox
for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
copy_with_libs "$(command -v iperf3)"
copy_with_libs "$(command -v ethtool)"

# virtio-net modules, dependencies first.  modprobe --show-depends prints
# "insmod PATH" for modules and "builtin NAME" for built-in ones.
modlist=()
for m in virtio_pci virtio_net uio_pci_generic; do
    deps=$(modprobe -d "$work/kernel" -S "$kver" --show-depends "$m") ||
        die "module $m: not found in $kpkg (CONFIG_${m^^} is $(grep "^CONFIG_${m^^}=" "$kconfig" || echo unset))"
    while read -r kind path; do
        [ "$kind" = insmod ] || continue
        rel=${path#"$work/kernel"}
        case " ${modlist[*]} " in *" $rel "*) ;; *) modlist+=("$rel") ;; esac
    done <<<"$deps"
done
: >"$root/etc/nicmux-modules"
for rel in "${modlist[@]}"; do
    mkdir -p "$root$(dirname "$rel")"
    cp "$work/kernel$rel" "$root$rel"
    echo "$rel" >>"$root/etc/nicmux-modules"
done
cp "$work/kernel/lib/modules/$kver/"modules.{order,builtin} "$root/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$root" "$kver" 2>/dev/null || true   # lets busybox modprobe work too

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
EOF
echo "127.0.0.1 localhost" >"$root/etc/hosts"
cp "$INIT_SRC" "$root/init"
chmod 755 "$root/init"

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9 >"$work/initramfs.gz"
cp "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"

busybox_version=$(/bin/busybox 2>&1 | awk 'NR == 1 {print $2}')  # (awk reads it all: head -1 left busybox a SIGPIPE, which pipefail made the script's exit status)
iperf3_version=$(dpkg-query -W -f='${Version}' iperf3)
cat >"$work/guest.env" <<EOF
# written by build-guest.sh $(date -u +%FT%TZ)
GUEST_KERNEL=$dir/vmlinuz
GUEST_INITRD=$dir/initramfs.gz
GUEST_KVER=$kver
GUEST_KERNEL_PKG=$kpkg
GUEST_KERNEL_PKG_VERSION=$kpkg_version
GUEST_MODULES="${modlist[*]##*/}"
GUEST_BUSYBOX=$busybox_version
GUEST_IPERF3=$iperf3_version
GUEST_INITRD_BYTES=$(stat -c %s "$work/initramfs.gz")
GUEST_STAMP=$stamp
EOF

# install: data files first, the stamp last (it is what marks the cache valid)
rm -f "$dir/stamp"
for f in vmlinuz initramfs.gz guest.env; do
    mv -f "$work/$f" "$dir/$f"
done
echo "$stamp" >"$dir/stamp.tmp" && mv -f "$dir/stamp.tmp" "$dir/stamp"
log "built $kpkg $kpkg_version ($kver), initramfs $(stat -c %s "$dir/initramfs.gz") bytes, modules: ${modlist[*]##*/}"
finish
