#!/usr/bin/env bash
# lab/guest.sh — builds the lab's real Linux guest from Debian packages.
#
#   kernel  Debian's linux-image-cloud-amd64 (ext4 built in, virtio as modules)
#   initrd  static busybox + the virtio modules; mounts /dev/vda (ext4) and
#           switch_roots into it
#   rootfs  static busybox + qemu-guest-agent (with the shared libraries ldd
#           names), an fsfreeze hook that logs to /var/log/fsfreeze.log, and
#           an init that starts qemu-ga and prints LIFEBOAT-GUEST-READY on the
#           serial console
#   disk    a 64 MiB ext4 filesystem made with `mke2fs -d` (no mounting),
#           converted to qcow2
#
# The result is cached under ${LIFEBOAT_LAB:-/var/tmp/lifeboat-lab}/guest and
# rebuilt only when this script's content changes. It prints the path of
# guest.json, which describes the files. Nothing is installed on the machine:
# the packages are fetched with `apt-get download` and unpacked with
# `dpkg-deb -x`. Must run as root (apt-get download, file ownership in the
# image).
set -euo pipefail

LAB=${LIFEBOAT_LAB:-/var/tmp/lifeboat-lab}
OUT=$LAB/guest
DISK_MIB=64
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
	virtio_blk virtio_console virtio-rng)

log() { printf 'guest: %s\n' "$*" >&2; }
die() { printf 'guest: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root"
for t in apt-get apt-cache dpkg-deb mke2fs qemu-img ldd sha256sum flock; do
	command -v "$t" >/dev/null || die "missing tool $t"
done

HASH=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)
mkdir -p "$OUT"
chmod 755 "$LAB" "$OUT"
exec 9>"$OUT/.lock"
flock 9

if [[ -f $OUT/stamp && $(<"$OUT/stamp") == "$HASH" && -f $OUT/guest.json ]]; then
	echo "$OUT/guest.json"
	exit 0
fi

log "building the guest (script $HASH)"
WORK=$(mktemp -d "$OUT/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"

# ------------------------------------------------------------------ packages

fetch() { # fetch PACKAGE... : .debs into $WORK/debs
	mkdir -p "$WORK/debs"
	chmod 777 "$WORK/debs" # apt-get download drops to _apt where it can
	(cd "$WORK/debs" && apt-get download -qq "$@" >/dev/null 2>&1) ||
		(apt-get update -qq && cd "$WORK/debs" && apt-get download -qq "$@" >/dev/null) ||
		die "apt-get download $* failed"
}

# linux-image-cloud-amd64 is a metapackage: take the image it depends on.
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
if [[ -z $KPKG ]]; then
	apt-get update -qq
	KPKG=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
fi
[[ -n $KPKG ]] || die "no kernel package behind linux-image-cloud-amd64"
fetch "$KPKG" busybox-static qemu-guest-agent
mkdir -p "$WORK/pkg"
for deb in "$WORK"/debs/*.deb; do
	dpkg-deb -x "$deb" "$WORK/pkg"
done
BB=$WORK/pkg/bin/busybox
[[ -x $BB ]] || die "busybox-static has no /bin/busybox"
VMLINUZ=$(ls "$WORK"/pkg/boot/vmlinuz-* | head -n1)
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR=$WORK/pkg/lib/modules/$KVER/kernel

# busybox_tree DIR: static busybox and its applet links under DIR.
busybox_tree() {
	local dir=$1 a
	mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin}
	cp "$BB" "$dir/bin/busybox"
	for a in $("$BB" --list-full); do
		[[ -e $dir/$a || -L $dir/$a ]] || ln -s /bin/busybox "$dir/$a"
	done
}

# -------------------------------------------------------------------- initrd

INITRD=$WORK/initrd
busybox_tree "$INITRD"
mkdir -p "$INITRD"/{proc,sys,dev,newroot,lib/modules}
for m in "${MODULES[@]}"; do
	ko=$(find "$MODDIR" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -n1)
	[[ -n $ko ]] || die "module $m not in $KPKG"
	case $ko in
	*.xz) xz -dc "$ko" >"$INITRD/lib/modules/$m.ko" ;;
	*.zst) zstd -qdc "$ko" >"$INITRD/lib/modules/$m.ko" ;;
	*) cp "$ko" "$INITRD/lib/modules/$m.ko" ;;
	esac
done
cat >"$INITRD/init" <<EOF
#!/bin/sh
# No udev, no depmod: load the virtio stack in dependency order.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${MODULES[*]}; do
	insmod /lib/modules/\$m.ko || echo "initrd: insmod \$m failed" >/dev/console
done
i=0
while [ ! -b /dev/vda ] && [ \$i -lt 100 ]; do sleep 0.1; i=\$((i+1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
	echo "initrd: cannot mount /dev/vda" >/dev/console
	exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
EOF
chmod 755 "$INITRD/init"
(cd "$INITRD" && find . | "$BB" cpio -o -H newc 2>/dev/null | gzip -9) >"$WORK/initrd.img"

# -------------------------------------------------------------------- rootfs

ROOT=$WORK/root
busybox_tree "$ROOT"
mkdir -p "$ROOT"/{proc,sys,dev,run,tmp,root,data,etc/init.d,etc/qemu,var/log,lib64,lib/x86_64-linux-gnu}
ln -s /run "$ROOT/var/run"
chmod 1777 "$ROOT/tmp"
cp "$WORK/pkg/usr/sbin/qemu-ga" "$ROOT/usr/sbin/qemu-ga"
# qemu-ga's libraries, from this machine (the same Debian release).
ldd "$WORK/pkg/usr/sbin/qemu-ga" | awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | while read -r lib; do
	case $lib in
	/lib64/*) cp -L "$lib" "$ROOT/lib64/" ;;
	*) cp -L "$lib" "$ROOT/lib/x86_64-linux-gnu/" ;;
	esac
done
[[ -e $ROOT/lib64/ld-linux-x86-64.so.2 ]] || die "ldd did not name the dynamic loader"

cat >"$ROOT/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::shutdown:/bin/sync
EOF
cat >"$ROOT/etc/init.d/rcS" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
grep -q "^devtmpfs /dev " /proc/mounts || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=755 tmpfs /run
hostname lbguest
# No udev: name the virtio ports the way its rules do.
mkdir -p /dev/virtio-ports
i=0
while [ -z "$(ls /sys/class/virtio-ports 2>/dev/null)" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
for p in /sys/class/virtio-ports/*; do
	[ -f "$p/name" ] || continue
	ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"
done
if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
	/usr/sbin/qemu-ga -d -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \
		-t /run -f /run/qemu-ga.pid --fsfreeze-hook=/etc/qemu/fsfreeze-hook
else
	echo "guest: no guest-agent channel" >/dev/console
fi
echo "LIFEBOAT-GUEST-READY" >/dev/console
EOF
chmod 755 "$ROOT/etc/init.d/rcS"
# qemu-ga runs the hook with "freeze" before freezing and "thaw" after
# thawing. The hook says so on the console at once and appends
# "EPOCH-SECONDS UPTIME-SECONDS freeze|thaw" to /var/log/fsfreeze.log right
# before the freeze and after the thaw. A test makes the freeze hang (an
# application hook that takes long) by writing a number of seconds to
# /run/fsfreeze-hang (empty: practically forever); it holds for one freeze.
cat >"$ROOT/etc/qemu/fsfreeze-hook" <<'EOF'
#!/bin/sh
echo "fsfreeze-hook: $1" >/dev/console
if [ "$1" = freeze ] && [ -e /run/fsfreeze-hang ]; then
	s=$(cat /run/fsfreeze-hang)
	rm -f /run/fsfreeze-hang
	sleep "${s:-100000}"
fi
echo "$(date +%s) $(cut -d" " -f1 /proc/uptime) $1" >>/var/log/fsfreeze.log
exit 0
EOF
chmod 755 "$ROOT/etc/qemu/fsfreeze-hook"
# qemu-ga calls shutdown for guest-shutdown.
printf '#!/bin/sh\nsync\nexec poweroff -f\n' >"$ROOT/sbin/shutdown.tmp"
rm -f "$ROOT/sbin/shutdown"
mv "$ROOT/sbin/shutdown.tmp" "$ROOT/sbin/shutdown"
chmod 755 "$ROOT/sbin/shutdown"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\n' >"$ROOT/etc/group"
echo lbguest >"$ROOT/etc/hostname"
: >"$ROOT/var/log/fsfreeze.log"

truncate -s "${DISK_MIB}M" "$WORK/rootfs.raw"
mke2fs -q -F -t ext4 -L lbguest -E root_owner=0:0 -d "$ROOT" "$WORK/rootfs.raw"
qemu-img convert -f raw -O qcow2 "$WORK/rootfs.raw" "$WORK/rootfs.qcow2"

# ------------------------------------------------------------------- install

# Renamed into place: a guest starting meanwhile gets the old or the new
# file, never half of one.
cp "$VMLINUZ" "$WORK/vmlinuz"
for f in vmlinuz initrd.img rootfs.qcow2; do
	chmod 644 "$WORK/$f"
	mv -f "$WORK/$f" "$OUT/$f"
done
cat >"$OUT/guest.json.tmp" <<EOF
{
  "kernel": "$OUT/vmlinuz",
  "initrd": "$OUT/initrd.img",
  "rootfs": "$OUT/rootfs.qcow2",
  "cmdline": "console=ttyS0 root=/dev/vda rw quiet",
  "kernel_package": "$KPKG",
  "kernel_version": "$KVER",
  "ready_marker": "LIFEBOAT-GUEST-READY",
  "script_hash": "$HASH"
}
EOF
mv "$OUT/guest.json.tmp" "$OUT/guest.json"
echo "$HASH" >"$OUT/stamp.tmp"
mv "$OUT/stamp.tmp" "$OUT/stamp"
log "built: $(du -h "$OUT/initrd.img" | cut -f1) initrd, $(du -h "$OUT/rootfs.qcow2" | cut -f1) rootfs"
echo "$OUT/guest.json"
