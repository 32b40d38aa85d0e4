#!/usr/bin/env bash
# lab/lab.sh — the Lifeboat libvirt test lab: up | down | status
#
# Three libvirt "hosts" on one machine, with QEMU TCG guests that have no OS:
#   node0  system-mode libvirtd (runs VMs as root), isolated in its own mount
#          namespace: /etc/libvirt, /var/lib/libvirt, /run/libvirt,
#          /var/log/libvirt and /var/cache/libvirt are bind mounts of folders
#          under $LAB/node0, so the machine's own libvirt configuration is
#          never touched.
#   node1  libvirtd session daemon of user lvnode1
#   node2  libvirtd session daemon of user lvnode2
# plus $LAB/shared, a folder acting as the cluster shared volume
# (root:lbshared, 2770; disks 660), and base images with real NTFS and ext4
# filesystems built without mounting.
#
# Everything lives under ${LIFEBOAT_LAB:-/var/tmp/lifeboat-lab}. `up` is
# idempotent; `down` stops daemons and the lab's QEMU processes by pid.
# Tests read $LAB/lab.json (or source $LAB/lab.env).
#
# Must run as root. Needs no systemd.
set -euo pipefail

LAB=${LIFEBOAT_LAB:-/var/tmp/lifeboat-lab}
GROUP=lbshared
SESSION_NODES=(node1 node2)
DISK_MIB=64
PACKAGES=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
	qemu-system-x86 qemu-utils qemu-block-extra ntfs-3g e2fsprogs openssl)

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }

node_user() { echo "lv$1"; } # node1 -> lvnode1

# ---------------------------------------------------------------- packages

# shellcheck source=packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/packages.sh"

ensure_users() {
	if ! getent passwd libvirt-qemu >/dev/null; then
		useradd --system --no-create-home --home-dir /var/lib/libvirt \
			--shell /usr/sbin/nologin libvirt-qemu
	fi
	getent group "$GROUP" >/dev/null || groupadd --system "$GROUP"
	local n u
	for n in "${SESSION_NODES[@]}"; do
		u=$(node_user "$n")
		if ! getent passwd "$u" >/dev/null; then
			useradd --system --user-group --no-create-home \
				--home-dir "$LAB/$n/home" --shell /usr/sbin/nologin "$u"
		fi
		id -nG "$u" | tr ' ' '\n' | grep -qx "$GROUP" || usermod -a -G "$GROUP" "$u"
		# The home recorded in passwd follows $LAB.
		[[ $(getent passwd "$u" | cut -d: -f6) == "$LAB/$n/home" ]] ||
			usermod -d "$LAB/$n/home" "$u"
	done
}

# ------------------------------------------------------------------ helpers

# pid_alive FILE COMM: the pid in FILE is alive and its comm starts with COMM.
pid_alive() {
	local f=$1 comm=$2 pid
	[[ -s $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/comm ]] || return 1
	[[ $(</proc/"$pid"/comm) == "$comm"* ]] || return 1
	# A killed daemon may linger as a zombie until init reaps it.
	[[ $(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null) != Z ]]
}

wait_socket() {
	local s=$1 i
	for ((i = 0; i < 100; i++)); do
		[[ -S $s ]] && return 0
		sleep 0.1
	done
	return 1
}

# kill_pid PID: TERM, wait up to 10 s, then KILL.
kill_pid() {
	local pid=$1 i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		[[ -e /proc/$pid ]] || return 0
		# A zombie counts as gone.
		[[ $(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null) == Z ]] && return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		[[ -e /proc/$pid ]] || return 0
		sleep 0.1
	done
}

uri_of() {
	case $1 in
	node0) echo "qemu:///system?socket=$LAB/node0/run/libvirt-sock" ;;
	*) echo "qemu:///session?socket=$LAB/$1/run/libvirt/libvirt-sock" ;;
	esac
}

socket_of() {
	case $1 in
	node0) echo "$LAB/node0/run/libvirt-sock" ;;
	*) echo "$LAB/$1/run/libvirt/libvirt-sock" ;;
	esac
}

vsh() { local n=$1; shift; virsh -q -c "$(uri_of "$n")" "$@"; }

# ----------------------------------------------------------------- qemu.conf

# The settings that make QEMU run here: no cgroups, namespaces, security
# driver or ownership games, and stdio logged to plain files (no virtlogd).
write_qemu_conf() {
	local f=$1 mode=$2
	{
		echo "# Written by lifeboat lab/lab.sh; rewritten on every 'up'."
		if [[ $mode == system ]]; then
			echo 'user = "root"'
			echo 'group = "root"'
			echo 'dynamic_ownership = 0'
			echo 'remember_owner = 0'
		fi
		echo 'security_driver = "none"'
		echo 'cgroup_controllers = [ ]'
		[[ $mode == system ]] && echo 'namespaces = [ ]'
		echo 'stdio_handler = "file"'
	} >"$f.tmp"
	mv "$f.tmp" "$f"
}

write_libvirtd_conf() {
	local f=$1 logfile=$2
	{
		echo "# Written by lifeboat lab/lab.sh; rewritten on every 'up'."
		echo 'auth_unix_ro = "none"'
		echo 'auth_unix_rw = "none"'
		echo "log_outputs = \"3:file:$logfile\""
	} >"$f.tmp"
	mv "$f.tmp" "$f"
}

# ------------------------------------------------------------------- node0

node0_up() {
	local d=$LAB/node0 sub
	mkdir -p "$d"/{etc/qemu,lib,run,log,cache,disks,scratch}
	write_qemu_conf "$d/etc/qemu.conf" system
	write_libvirtd_conf "$d/etc/libvirtd.conf" /var/log/libvirt/libvirtd.log
	if pid_alive "$d/libvirtd.pid" libvirtd; then
		return 0
	fi
	rm -f "$d/libvirtd.pid" "$d/run/libvirt-sock" "$d/run/libvirt-sock-ro" "$d/run/libvirt-admin-sock"
	# Mount points on the machine (empty folders if libvirt never ran).
	for sub in /etc/libvirt /var/lib/libvirt /run/libvirt /var/log/libvirt /var/cache/libvirt; do
		mkdir -p "$sub"
	done
	log "starting node0 (system libvirtd in a private mount namespace)"
	unshare --mount --propagation private -- /bin/sh -c '
		set -e
		d=$1
		mount --bind "$d/etc" /etc/libvirt
		mount --bind "$d/lib" /var/lib/libvirt
		mount --bind "$d/run" /run/libvirt
		mount --bind "$d/log" /var/log/libvirt
		mount --bind "$d/cache" /var/cache/libvirt
		exec libvirtd -d -f /etc/libvirt/libvirtd.conf -p "$d/libvirtd.pid"
	' sh "$d" </dev/null >"$d/start.log" 2>&1 9>&- || die "node0 libvirtd failed to start: $(cat "$d/start.log")"
	wait_socket "$d/run/libvirt-sock" || die "node0 socket did not appear (see $d/log)"
	pid_alive "$d/libvirtd.pid" libvirtd || die "node0 libvirtd died (see $d/log/libvirtd.log)"
	readlink "/proc/$(<"$d/libvirtd.pid")/ns/mnt" >"$d/mntns"
}

# ------------------------------------------------------------ session nodes

# short_config NODE: a short path (a symlink to $LAB/NODE/config) used as the
# session daemon's XDG_CONFIG_HOME. libvirt puts per-VM unix sockets (guest
# agent channels, the monitor) below it, and a unix socket path must fit in
# 107 bytes: $LAB/node1/config is too long for VM names of 20 characters.
short_config() {
	echo "/run/lb-$(printf '%s' "$LAB" | sha256sum | cut -c1-6)/$1"
}

session_env() {
	local n=$1 d=$LAB/$1
	echo "HOME=$d/home" "XDG_CONFIG_HOME=$(short_config "$n")" "XDG_CACHE_HOME=$d/cache" \
		"XDG_DATA_HOME=$d/data" "XDG_RUNTIME_DIR=$d/run" \
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin" "USER=$(node_user "$n")" "LOGNAME=$(node_user "$n")"
}

session_up() {
	local n=$1 d=$LAB/$1 u
	u=$(node_user "$n")
	mkdir -p "$d"/{home,config/libvirt,cache,data,run,disks,scratch}
	chown -R "$u:$u" "$d"
	chmod 0711 "$d"
	chmod 0700 "$d/run"
	local short
	short=$(short_config "$n")
	mkdir -p "$(dirname "$short")"
	ln -sfn "$d/config" "$short"
	write_qemu_conf "$d/config/libvirt/qemu.conf" session
	write_libvirtd_conf "$d/config/libvirt/libvirtd.conf" "$d/cache/libvirtd.log"
	chown "$u:$u" "$d/config/libvirt/qemu.conf" "$d/config/libvirt/libvirtd.conf"
	if pid_alive "$d/libvirtd.pid" libvirtd; then
		return 0
	fi
	rm -f "$d/libvirtd.pid" "$d/run/libvirt/libvirt-sock" "$d/run/libvirt/libvirt-admin-sock"
	log "starting $n (session libvirtd of $u)"
	# shellcheck disable=SC2046
	runuser -u "$u" -- env -i $(session_env "$n") \
		libvirtd -d -f "$d/config/libvirt/libvirtd.conf" -p "$d/libvirtd.pid" \
		</dev/null >"$d/start.log" 2>&1 9>&- || die "$n libvirtd failed to start: $(cat "$d/start.log")"
	wait_socket "$d/run/libvirt/libvirt-sock" || die "$n socket did not appear (see $d/cache/libvirtd.log)"
	pid_alive "$d/libvirtd.pid" libvirtd || die "$n libvirtd died (see $d/cache/libvirtd.log)"
}

# ----------------------------------------------------------- shared volume

shared_up() {
	mkdir -p "$LAB/shared"
	chown root:"$GROUP" "$LAB/shared"
	chmod 2770 "$LAB/shared"
}

# ------------------------------------------------------------------ images

le32() {
	local v=$1
	printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((v & 255)) $((v >> 8 & 255)) $((v >> 16 & 255)) $((v >> 24 & 255))
}

# write_mbr FILE TYPE: one primary partition from 1 MiB to the end.
write_mbr() {
	local f=$1 type=$2 size sectors
	size=$(stat -c %s "$f")
	sectors=$((size / 512 - 2048))
	# boot code: cli; hlt; jmp $-2 (the guest idles instead of running
	# through zeroed memory under TCG)
	printf '\xfa\xf4\xeb\xfd' | dd of="$f" bs=1 conv=notrunc status=none
	# disk signature "LBOA"
	printf '\x4c\x42\x4f\x41' | dd of="$f" bs=1 seek=440 conv=notrunc status=none
	# status, CHS first, type, CHS last, LBA start, sector count
	printf "\\x00\\xfe\\xff\\xff\\x$type\\xfe\\xff\\xff$(le32 2048)$(le32 $sectors)" |
		dd of="$f" bs=1 seek=446 conv=notrunc status=none
	printf '\x55\xaa' | dd of="$f" bs=1 seek=510 conv=notrunc status=none
}

# pattern BYTES SEED: deterministic pseudo-random bytes.
pattern() {
	local key
	key=$(printf '%s' "$2" | sha256sum | cut -c1-32)
	head -c "$1" /dev/zero |
		openssl enc -aes-128-ctr -nosalt -K "$key" -iv 00000000000000000000000000000000
}

# build_image NAME: $LAB/images/NAME.qcow2 (ntfs or ext4), 64 MiB, an MBR
# with one partition at 1 MiB holding the filesystem.
build_image() {
	local kind=$1 out=$LAB/images/$1.qcow2 tmp part
	[[ -s $out ]] && return 0
	log "building $out"
	tmp=$(mktemp -d "$LAB/images/.build-$kind.XXXXXX")
	part=$tmp/part.raw
	truncate -s $(((DISK_MIB - 1) * 1024 * 1024)) "$part"
	mkdir "$tmp/root"
	printf 'Hello from the Lifeboat lab (%s).\n' "$kind" >"$tmp/root/hello.txt"
	pattern 1048576 "$kind-random" >"$tmp/root/random.bin"
	seq 1 20000 >"$tmp/root/numbers.txt"
	case $kind in
	ntfs)
		mkntfs -F -Q -q -s 512 -L LIFEBOAT-NTFS -p 2048 -H 255 -S 63 "$part" 2>/dev/null
		local f
		for f in hello.txt random.bin numbers.txt; do
			ntfscp -q "$part" "$tmp/root/$f" "$f"
		done
		;;
	ext4)
		mkdir -p "$tmp/root/dir/sub"
		echo nested >"$tmp/root/dir/sub/nested.txt"
		mke2fs -q -F -t ext4 -L LIFEBOAT-EXT4 -E root_owner=0:0 -d "$tmp/root" "$part"
		;;
	esac
	truncate -s $((DISK_MIB * 1024 * 1024)) "$tmp/disk.raw"
	case $kind in
	ntfs) write_mbr "$tmp/disk.raw" 07 ;;
	ext4) write_mbr "$tmp/disk.raw" 83 ;;
	esac
	dd if="$part" of="$tmp/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
	qemu-img convert -q -f raw -O qcow2 "$tmp/disk.raw" "$tmp/out.qcow2"
	mv "$tmp/out.qcow2" "$out"
	rm -rf "$tmp"
}

images_up() {
	mkdir -p "$LAB/images"
	build_image ntfs
	build_image ext4
}

# ---------------------------------------------------------------------- VMs

# vm_xml NAME DISK MAC: a TCG guest with no OS, one virtio disk, a user-mode
# NIC and a guest-agent channel (nothing answers on it without an OS).
vm_xml() {
	cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='$3'/>
      <model type='virtio'/>
    </interface>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}

# vm_up NODE NAME IMAGEKIND DISK MAC
vm_up() {
	local n=$1 name=$2 kind=$3 disk=$4 mac=$5 owner
	if [[ ! -e $disk ]]; then
		cp --sparse=always "$LAB/images/$kind.qcow2" "$disk.tmp"
		mv "$disk.tmp" "$disk"
		if [[ $n != node0 ]]; then
			if [[ $disk == "$LAB/shared/"* ]]; then
				owner=root:$GROUP
			else
				owner=$(node_user "$n"):$(node_user "$n")
			fi
			chown "$owner" "$disk"
			chmod 660 "$disk"
		fi
	fi
	if ! vsh "$n" dominfo "$name" >/dev/null 2>&1; then
		vm_xml "$name" "$disk" "$mac" >"$LAB/$n/$name.xml"
		vsh "$n" define "$LAB/$n/$name.xml" >/dev/null
	fi
	if [[ $(vsh "$n" domstate "$name") != running ]]; then
		vsh "$n" start "$name" >/dev/null
	fi
}

vms_up() {
	vm_up node0 lab0 ntfs "$LAB/node0/disks/lab0.qcow2" 52:54:00:1b:00:00
	vm_up node1 lab1 ext4 "$LAB/shared/lab1.qcow2" 52:54:00:1b:00:01
}

# ------------------------------------------------------------- description

write_description() {
	local root0 n
	root0="/proc/$(<"$LAB/node0/libvirtd.pid")/root"
	{
		echo "# Written by lifeboat lab/lab.sh up"
		echo "LAB_DIR=$LAB"
		echo "LAB_SHARED=$LAB/shared"
		echo "LAB_SHARED_GROUP=$GROUP"
		echo "LAB_IMAGE_NTFS=$LAB/images/ntfs.qcow2"
		echo "LAB_IMAGE_EXT4=$LAB/images/ext4.qcow2"
		echo "LAB_NODE0_URI='$(uri_of node0)'"
		echo "LAB_NODE0_SOCKET=$(socket_of node0)"
		echo "LAB_NODE0_ROOT=$root0"
		echo "LAB_NODE0_DISKS=$LAB/node0/disks"
		echo "LAB_NODE0_SCRATCH=$LAB/node0/scratch"
		for n in "${SESSION_NODES[@]}"; do
			local N=${n^^}
			echo "LAB_${N}_URI='$(uri_of "$n")'"
			echo "LAB_${N}_SOCKET=$(socket_of "$n")"
			echo "LAB_${N}_USER=$(node_user "$n")"
			echo "LAB_${N}_DISKS=$LAB/$n/disks"
			echo "LAB_${N}_SCRATCH=$LAB/$n/scratch"
		done
	} >"$LAB/lab.env.tmp"
	mv "$LAB/lab.env.tmp" "$LAB/lab.env"

	{
		printf '{\n  "dir": "%s",\n  "shared": "%s",\n  "shared_group": "%s",\n' "$LAB" "$LAB/shared" "$GROUP"
		printf '  "images": {"ntfs": "%s", "ext4": "%s"},\n' "$LAB/images/ntfs.qcow2" "$LAB/images/ext4.qcow2"
		printf '  "nodes": [\n'
		printf '    {"name": "node0", "mode": "system", "uri": "%s", "socket": "%s", "user": "root", "root": "%s", "disks": "%s", "scratch": "%s", "pidfile": "%s", "vms": ["lab0"]}' \
			"$(uri_of node0)" "$(socket_of node0)" "$root0" "$LAB/node0/disks" "$LAB/node0/scratch" "$LAB/node0/libvirtd.pid"
		for n in "${SESSION_NODES[@]}"; do
			local vms='[]'
			[[ $n == node1 ]] && vms='["lab1"]'
			printf ',\n    {"name": "%s", "mode": "session", "uri": "%s", "socket": "%s", "user": "%s", "root": "", "disks": "%s", "scratch": "%s", "pidfile": "%s", "vms": %s}' \
				"$n" "$(uri_of "$n")" "$(socket_of "$n")" "$(node_user "$n")" "$LAB/$n/disks" "$LAB/$n/scratch" "$LAB/$n/libvirtd.pid" "$vms"
		done
		printf '\n  ]\n}\n'
	} >"$LAB/lab.json.tmp"
	mv "$LAB/lab.json.tmp" "$LAB/lab.json"
}

# --------------------------------------------------------------- commands

cmd_up() {
	local was_down=""
	pid_alive "$LAB/node0/libvirtd.pid" libvirtd || was_down=1
	install_packages
	mkdir -p "$LAB"
	chmod 0755 "$LAB"
	ensure_users
	shared_up
	images_up
	node0_up
	local n
	for n in "${SESSION_NODES[@]}"; do session_up "$n"; done
	write_description
	vms_up
	# Test binaries (lab/lab.go) take the lab down when the last of them
	# ends, but only a lab they brought up; an `up` by hand claims it.
	if [[ ${LIFEBOAT_LAB_BY_TESTS:-} == 1 ]]; then
		[[ -z $was_down ]] || : >"$LAB/.started-by-tests"
	else
		rm -f "$LAB/.started-by-tests"
	fi
	log "up: $LAB/lab.json"
}

# lab_qemu_pids: QEMU processes that belong to the lab: pidfiles of the
# nodes' QEMU state folders, processes in node0's mount namespace, processes
# of the node users, and any whose command line names $LAB.
lab_qemu_pids() {
	local p comm ns0="" users=() u f
	[[ -s $LAB/node0/mntns ]] && ns0=$(<"$LAB/node0/mntns")
	for n in "${SESSION_NODES[@]}"; do
		u=$(node_user "$n")
		getent passwd "$u" >/dev/null && users+=("$(id -u "$u")")
	done
	for p in /proc/[0-9]*; do
		comm=$(cat "$p/comm" 2>/dev/null) || continue
		[[ $comm == qemu-system* ]] || continue
		local pid=${p#/proc/} hit=""
		if [[ -n $ns0 && $(readlink "$p/ns/mnt" 2>/dev/null) == "$ns0" ]]; then hit=1; fi
		for u in "${users[@]}"; do
			[[ $(stat -c %u "$p" 2>/dev/null) == "$u" ]] && hit=1
		done
		local args
		args=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || args=""
		[[ $args == *"$LAB/"* ]] && hit=1
		[[ -n $hit ]] && echo "$pid"
	done
	for f in "$LAB"/node0/run/qemu/*.pid "$LAB"/node*/run/libvirt/qemu/run/*.pid; do
		[[ -s $f && $(basename "$f") != driver.pid ]] || continue
		p=$(<"$f")
		[[ $p =~ ^[0-9]+$ && $(cat /proc/"$p"/comm 2>/dev/null) == qemu-system* ]] && echo "$p"
	done
	return 0
}

cmd_down() {
	local n name pid
	[[ -d $LAB ]] || return 0
	for n in node0 "${SESSION_NODES[@]}"; do
		if pid_alive "$LAB/$n/libvirtd.pid" libvirtd; then
			for name in $(timeout 20 virsh -q -c "$(uri_of "$n")" list --name 2>/dev/null); do
				timeout 20 virsh -q -c "$(uri_of "$n")" destroy "$name" >/dev/null 2>&1 || true
			done
		fi
	done
	for pid in $(lab_qemu_pids | sort -u); do kill_pid "$pid"; done
	for n in node0 "${SESSION_NODES[@]}"; do
		if pid_alive "$LAB/$n/libvirtd.pid" libvirtd; then
			log "stopping $n"
			kill_pid "$(<"$LAB/$n/libvirtd.pid")"
		fi
		rm -f "$LAB/$n/libvirtd.pid"
		[[ $n == node0 ]] || rm -f "$(short_config "$n")"
	done
	rmdir "$(dirname "$(short_config node1)")" 2>/dev/null || true
	for pid in $(lab_qemu_pids | sort -u); do kill_pid "$pid"; done
	rm -f "$LAB/lab.json" "$LAB/lab.env" "$LAB/node0/mntns" "$LAB/.started-by-tests"
	if [[ ${1:-} == --purge ]]; then
		rm -rf "$LAB"
	fi
	log "down"
}

cmd_status() {
	local n rc=0 state
	for n in node0 "${SESSION_NODES[@]}"; do
		if pid_alive "$LAB/$n/libvirtd.pid" libvirtd; then
			state="up pid $(<"$LAB/$n/libvirtd.pid")"
		else
			state=down
			rc=3
		fi
		printf '%-6s %-8s %s\n' "$n" "$state" "$(uri_of "$n")"
		if [[ $state != down ]]; then
			timeout 20 virsh -q -c "$(uri_of "$n")" list --all 2>/dev/null | sed 's/^/         /' || true
		fi
	done
	printf 'shared %s\n' "$LAB/shared"
	[[ -e $LAB/lab.json ]] && printf 'json   %s\n' "$LAB/lab.json"
	return $rc
}

main() {
	[[ $(id -u) == 0 ]] || die "must run as root"
	case ${1:-} in
	up | down)
		# One up or down at a time (test binaries of several packages
		# may start the lab together). Daemons are started with fd 9
		# closed, or they would hold the lock for ever.
		mkdir -p "$LAB"
		exec 9>"$LAB/.lock"
		flock 9
		;;
	esac
	case ${1:-} in
	up) cmd_up ;;
	down) shift; cmd_down "${1:-}" ;;
	status) cmd_status ;;
	*) echo "usage: $0 up | down [--purge] | status" >&2; exit 2 ;;
	esac
}

main "$@"
