#!/usr/bin/env bash
# lab/cluster.sh — a two-node corosync + pacemaker failover cluster for the
# Lifeboat lab, whose nodes are the lab's libvirt hosts node1 and node2:
#   up | down [--purge] | status | exec NODE CMD… | kill NODE [VM…] | revive NODE
#
# Each cluster node is a set of namespaces held by a long-lived process
# ("holder"): its own network namespace (`ip netns`, joined to the other
# node's by a veth pair), mount namespace and UTS namespace (host name =
# node name). In the mount namespace /etc/corosync, /var/lib/corosync,
# /var/lib/pacemaker, /var/log/corosync and /var/log/pacemaker are bind
# mounts of folders under $LAB/hacluster/NODE, and /run and /dev/shm are
# private tmpfs: Pacemaker's IPC (abstract unix sockets, which follow the
# network namespace, and ring buffers in /dev/shm) is the node's own, so two
# clusters fit one machine, next to lab/pacemaker.sh's single-node one.
# Pacemaker's tools therefore work only inside a node: `exec NODE crm_mon -1`.
#
# The libvirt daemons stay where lab/lab.sh runs them; the VirtualDomain
# agent reaches them through their `?socket=` URIs ($LAB is the same path
# in every namespace).
#
# `kill NODE` is a hard node death: SIGKILL of corosync, pacemaker (every
# process in the node's mount namespace) and the QEMU of the VMs the cluster
# runs there (or of the VMs named), never the node's libvirtd. `revive NODE`
# starts its corosync and pacemaker again.
#
# Must run as root. Needs no systemd.
set -euo pipefail

LAB=${LIFEBOAT_LAB:-/var/tmp/lifeboat-lab}
CL=$LAB/hacluster
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODES=(node1 node2)
CLUSTER=lifeboat-ha
PACKAGES=(corosync pacemaker pacemaker-cli-utils resource-agents crmsh)
ONLINE_TIMEOUT=${LIFEBOAT_HA_TIMEOUT:-60}
# Names that carry a hash of $LAB, so labs in other folders do not collide.
H=$(printf '%s' "$LAB" | sha256sum | cut -c1-6)

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

node_index() {
	case $1 in
	node1) echo 1 ;;
	node2) echo 2 ;;
	*) die "unknown node $1 (node1 or node2)" ;;
	esac
}
netns_of() { echo "lbha-$H-$1"; }
veth_of() { echo "lbha${H:0:4}n$(node_index "$1")"; } # at most 15 characters
addr_of() { echo "10.213.88.$(node_index "$1")"; }
ndir() { echo "$CL/$1"; }

# ---------------------------------------------------------------- packages

# shellcheck source=packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/packages.sh"

# ------------------------------------------------------------------ helpers

gone() { [[ ! -e /proc/$1 || $(awk '{print $3}' /proc/"$1"/stat 2>/dev/null) == Z ]]; }

# pid_alive FILE COMM: the pid in FILE is alive (not a zombie) and its comm
# starts with COMM.
pid_alive() {
	local f=$1 comm=$2 pid
	[[ -s $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/comm ]] || return 1
	[[ $(</proc/"$pid"/comm) == "$comm"* ]] || return 1
	! gone "$pid"
}

# kill_pid PID [SECONDS] [SIGNAL]: SIGNAL (TERM), wait, then KILL.
kill_pid() {
	local pid=$1 wait=${2:-10} sig=${3:-TERM} i
	kill -"$sig" "$pid" 2>/dev/null || return 0
	for ((i = 0; i < wait * 10; i++)); do
		gone "$pid" && return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		gone "$pid" && return 0
		sleep 0.1
	done
}

holder_alive() { pid_alive "$(ndir "$1")/holder.pid" sleep; }
holder_pid() { cat "$(ndir "$1")/holder.pid"; }

# in_node NODE CMD…: run CMD in the node's namespaces.
in_node() {
	local n=$1
	shift
	holder_alive "$n" || die "node $n is not up (run $0 up)"
	nsenter --target "$(holder_pid "$n")" --mount --net --uts -- env LC_ALL=C "$@"
}

# ns_pids NODE: live processes in the node's mount namespace, but the holder.
ns_pids() {
	local d ns p hp=""
	d=$(ndir "$1")
	[[ -s $d/mntns ]] || return 0
	ns=$(<"$d/mntns")
	[[ -s $d/holder.pid ]] && hp=$(<"$d/holder.pid")
	for p in /proc/[0-9]*; do
		[[ ${p#/proc/} == "$hp" ]] && continue
		[[ $(readlink "$p/ns/mnt" 2>/dev/null) == "$ns" ]] || continue
		gone "${p#/proc/}" || echo "${p#/proc/}"
	done
	return 0
}

daemons_alive() {
	local d
	d=$(ndir "$1")
	pid_alive "$d/corosync.pid" corosync && pid_alive "$d/pacemakerd.pid" pacemakerd
}

# online NODE…: crm_mon (asked on the first node) shows every node online
# and a DC.
online() {
	local out n
	out=$(timeout 10 nsenter --target "$(holder_pid "$1")" --mount --net --uts -- crm_mon -1 --output-as=xml 2>/dev/null) || return 1
	for n in "$@"; do
		grep -q "<node name=\"$n\" [^>]*online=\"true\"" <<<"$out" || return 1
	done
	grep -q '<current_dc [^>]*present="true"' <<<"$out"
}

wait_online() {
	local i
	for ((i = 0; i < ONLINE_TIMEOUT * 4; i++)); do
		online "$@" && return 0
		for n in "$@"; do
			pid_alive "$(ndir "$n")/pacemakerd.pid" pacemakerd || die "pacemakerd of $n died (see $(ndir "$n")/log-pacemaker/pacemaker.log)"
		done
		sleep 0.25
	done
	die "nodes $* not online after ${ONLINE_TIMEOUT}s (see $CL/node*/log-pacemaker/pacemaker.log)"
}

# ------------------------------------------------------------------ network

net_up() {
	local n ns addrs
	for n in "${NODES[@]}"; do
		ns=$(netns_of "$n")
		[[ -e /run/netns/$ns ]] || ip netns add "$ns"
		ip -n "$ns" link set lo up
	done
	local ns1 ns2 v1 v2
	ns1=$(netns_of node1) ns2=$(netns_of node2) v1=$(veth_of node1) v2=$(veth_of node2)
	if ! ip -n "$ns1" link show "$v1" >/dev/null 2>&1; then
		ip link add "$v1" netns "$ns1" type veth peer name "$v2" netns "$ns2"
	fi
	for n in "${NODES[@]}"; do
		ns=$(netns_of "$n")
		# Captured first: grep -q ending the pipe early fails it (pipefail).
		addrs=$(ip -n "$ns" addr show dev "$(veth_of "$n")")
		[[ $addrs == *"inet $(addr_of "$n")/"* ]] ||
			ip -n "$ns" addr add "$(addr_of "$n")/24" dev "$(veth_of "$n")"
		ip -n "$ns" link set "$(veth_of "$n")" up
	done
}

net_down() {
	local n ns
	for n in "${NODES[@]}"; do
		ns=$(netns_of "$n")
		[[ -e /run/netns/$ns ]] && ip netns delete "$ns"
	done
	return 0
}

# ------------------------------------------------------------------ config

write_corosync_conf() {
	local f=$1/etc-corosync/corosync.conf
	cat >"$f.tmp" <<EOF
# Written by lifeboat lab/cluster.sh; rewritten on every 'up'.
totem {
	version: 2
	cluster_name: $CLUSTER
	transport: knet
	crypto_cipher: none
	crypto_hash: none
	token: 1000
}

nodelist {
	node {
		name: node1
		nodeid: 1
		ring0_addr: $(addr_of node1)
	}
	node {
		name: node2
		nodeid: 2
		ring0_addr: $(addr_of node2)
	}
}

quorum {
	provider: corosync_votequorum
	# Two nodes: the survivor of a node death keeps quorum (with
	# wait_for_all, so a node starting alone waits for its peer).
	two_node: 1
}

logging {
	to_logfile: yes
	logfile: /var/log/corosync/corosync.log
	to_stderr: no
	to_syslog: no
	timestamp: on
}
EOF
	mv "$f.tmp" "$f"
}

# seed_cib DIR: a first CIB written offline, as lab/pacemaker.sh does
# (dc-deadtime 2s, no fencing), plus a resource stickiness so a node that
# comes back does not pull VMs back to itself. An existing CIB is kept.
seed_cib() {
	local cib=$1/lib-pacemaker/cib/cib.xml tmp=$1/seed-cib.xml
	[[ -s $cib ]] && return 0
	cibadmin --empty >"$tmp"
	CIB_file=$tmp crm_attribute --type crm_config --name stonith-enabled --update false
	CIB_file=$tmp crm_attribute --type crm_config --name dc-deadtime --update 2s
	CIB_file=$tmp cibadmin --create --scope configuration --xml-text \
		'<rsc_defaults><meta_attributes id="rsc-options"><nvpair id="rsc-options-resource-stickiness" name="resource-stickiness" value="100"/></meta_attributes></rsc_defaults>'
	chown hacluster:haclient "$tmp"
	chmod 0600 "$tmp"
	mv "$tmp" "$cib"
}

prepare_node() {
	local n=$1 d sub
	d=$(ndir "$n")
	mkdir -p "$d"/{etc-corosync,lib-corosync,lib-pacemaker,log-corosync,log-pacemaker}
	for sub in cib pengine blackbox cores; do
		mkdir -p "$d/lib-pacemaker/$sub"
		chown hacluster:haclient "$d/lib-pacemaker/$sub"
		chmod 0750 "$d/lib-pacemaker/$sub"
	done
	chown hacluster:haclient "$d/log-pacemaker"
	chmod 0770 "$d/log-pacemaker"
	write_corosync_conf "$d"
	seed_cib "$d"
}

# ------------------------------------------------------------------ nodes

# holder_up NODE: the process that keeps the node's namespaces. It enters
# the node's network namespace, unshares mount and UTS namespaces, mounts
# the node's folders and private /run and /dev/shm, and sleeps for ever.
holder_up() {
	local n=$1 d i
	d=$(ndir "$n")
	holder_alive "$n" && return 0
	rm -f "$d/holder.pid" "$d/mntns"
	for sub in /etc/corosync /var/lib/corosync /var/lib/pacemaker /var/log/corosync /var/log/pacemaker; do
		mkdir -p "$sub"
	done
	# shellcheck disable=SC2016
	setsid nsenter --net="/run/netns/$(netns_of "$n")" -- \
		unshare --mount --uts --propagation private -- /bin/bash -c '
		set -e
		d=$1 n=$2
		hostname "$n"
		mount --bind "$d/etc-corosync" /etc/corosync
		mount --bind "$d/lib-corosync" /var/lib/corosync
		mount --bind "$d/lib-pacemaker" /var/lib/pacemaker
		mount --bind "$d/log-corosync" /var/log/corosync
		mount --bind "$d/log-pacemaker" /var/log/pacemaker
		mount -t tmpfs -o mode=0755,size=64m "lbha-run-$n" /run
		mkdir -p /run/crm /run/resource-agents /run/lock
		chown hacluster:haclient /run/crm
		chmod 0750 /run/crm
		mount -t tmpfs -o mode=1777,size=64m "lbha-shm-$n" /dev/shm
		readlink /proc/self/ns/mnt >"$d/mntns"
		echo $$ >"$d/holder.pid"
		exec sleep infinity
	' sh "$d" "$n" </dev/null >"$d/holder.log" 2>&1 9>&- &
	for ((i = 0; i < 100; i++)); do
		holder_alive "$n" && return 0
		sleep 0.05
	done
	die "holder of $n did not start: $(cat "$d/holder.log")"
}

# daemons_up NODE: corosync, then pacemakerd, in the node's namespaces.
daemons_up() {
	local n=$1 d f
	d=$(ndir "$n")
	daemons_alive "$n" && return 0
	daemons_down "$n"
	for f in "$d/log-pacemaker/pacemaker.log" "$d/log-corosync/corosync.log"; do
		if [[ -f $f ]] && (($(stat -c %s "$f") > 16 << 20)); then mv -f "$f" "$f.1"; fi
	done
	log "starting corosync and pacemakerd on $n"
	# shellcheck disable=SC2016
	nsenter --target "$(holder_pid "$n")" --mount --net --uts -- /bin/bash -c '
		set -e
		d=$1
		# Ring buffers and state of daemons killed earlier.
		rm -rf /dev/shm/qb-* /run/crm/* /run/resource-agents/* 2>/dev/null || true
		setsid corosync -f </dev/null >>"$d/log-corosync/stdout.log" 2>&1 &
		echo $! >"$d/corosync.pid"
		for ((i = 0; i < 100; i++)); do
			corosync-cfgtool -s >/dev/null 2>&1 && break
			kill -0 "$(<"$d/corosync.pid")" 2>/dev/null || { echo "corosync exited" >&2; exit 1; }
			sleep 0.1
		done
		corosync-cfgtool -s >/dev/null 2>&1 || { echo "corosync does not answer" >&2; exit 1; }
		PCMK_logfile=/var/log/pacemaker/pacemaker.log PCMK_logfacility=none \
			HA_LOGFACILITY=none PCMK_debug=no \
			setsid pacemakerd </dev/null >>"$d/log-pacemaker/stdout.log" 2>&1 &
		echo $! >"$d/pacemakerd.pid"
	' sh "$d" </dev/null >"$d/start.log" 2>&1 9>&- ||
		die "start on $n failed: $(cat "$d/start.log"; tail -5 "$d/log-corosync/corosync.log" 2>/dev/null)"
	pid_alive "$d/corosync.pid" corosync || die "corosync of $n died (see $d/log-corosync/corosync.log)"
}

# daemons_down NODE [hard]: pacemakerd (which stops the node's resources),
# corosync, then anything left in the node's mount namespace. "hard"
# SIGKILLs everything at once: a node death.
daemons_down() {
	local n=$1 hard=${2:-} d pid
	d=$(ndir "$n")
	if [[ $hard == hard ]]; then
		for pid in $(ns_pids "$n"); do kill -KILL "$pid" 2>/dev/null || true; done
	else
		if pid_alive "$d/pacemakerd.pid" pacemakerd; then
			log "stopping pacemakerd on $n"
			kill_pid "$(<"$d/pacemakerd.pid")" 30
		fi
		for pid in $(ns_pids "$n"); do
			[[ $(cat /proc/"$pid"/comm 2>/dev/null) == corosync ]] && continue
			kill_pid "$pid" 5
		done
		if pid_alive "$d/corosync.pid" corosync; then
			log "stopping corosync on $n"
			kill_pid "$(<"$d/corosync.pid")" 10
		fi
	fi
	for pid in $(ns_pids "$n"); do kill_pid "$pid" 5 KILL; done
	rm -f "$d/corosync.pid" "$d/pacemakerd.pid"
}

holder_down() {
	local n=$1 d
	d=$(ndir "$n")
	if holder_alive "$n"; then kill_pid "$(<"$d/holder.pid")" 5; fi
	rm -f "$d/holder.pid" "$d/mntns"
}

# cluster_vms NODE: names of the domains of the VirtualDomain resources that
# run on NODE (asked before a kill; nothing when the node does not answer).
cluster_vms() {
	local n=$1 out id cfg
	out=$(timeout 10 nsenter --target "$(holder_pid "$n")" --mount --net --uts -- crm_mon -1 --output-as=xml 2>/dev/null) || return 0
	for id in $(tr '\n' ' ' <<<"$out" |
		grep -o "<resource id=\"[^\"]*\" resource_agent=\"ocf:heartbeat:VirtualDomain\"[^>]*>[[:space:]]*<node name=\"$n\"" |
		sed 's/<resource id="\([^"]*\)".*/\1/'); do
		cfg=$(timeout 10 nsenter --target "$(holder_pid "$n")" --mount --net --uts -- \
			crm_resource --resource "$id" --get-parameter config 2>/dev/null) || continue
		[[ -r $cfg ]] && sed -n 's/^[[:space:]]*<name>\(.*\)<\/name>[[:space:]]*$/\1/p' "$cfg" | head -1
	done
	return 0
}

# kill_vm NODE VM: SIGKILL the VM's QEMU on that libvirt host (found by the
# session daemon's pidfile; driver.pid is libvirtd's own and never matches).
kill_vm() {
	local n=$1 vm=$2 f pid
	f=$LAB/$n/run/libvirt/qemu/run/$vm.pid
	[[ -s $f ]] || return 0
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ && $(cat /proc/"$pid"/comm 2>/dev/null) == qemu-system* ]] || return 0
	kill -KILL "$pid"
	log "killed QEMU of $vm on $n (pid $pid)"
}

write_description() {
	local n N
	{
		echo "# Written by lifeboat lab/cluster.sh up"
		echo "HA_CLUSTER=$CLUSTER"
		echo "HA_DIR=$CL"
		echo "HA_NODES='${NODES[*]}'"
		for n in "${NODES[@]}"; do
			N=${n^^}
			echo "HA_${N}_HOLDER=$(holder_pid "$n")"
			echo "HA_${N}_NETNS=$(netns_of "$n")"
			echo "HA_${N}_ADDR=$(addr_of "$n")"
			echo "HA_${N}_LOG=$(ndir "$n")/log-pacemaker/pacemaker.log"
			echo "HA_${N}_COROSYNC_LOG=$(ndir "$n")/log-corosync/corosync.log"
		done
	} >"$CL/cluster.env.tmp"
	mv "$CL/cluster.env.tmp" "$CL/cluster.env"
}

# ---------------------------------------------------------------- commands

cmd_up() {
	local was_down="" n t0=$SECONDS
	install_packages
	# The libvirt hosts the cluster's nodes are (idempotent, quick when up).
	if [[ ! -s $LAB/lab.json ]] || ! pid_alive "$LAB/node1/libvirtd.pid" libvirtd || ! pid_alive "$LAB/node2/libvirtd.pid" libvirtd; then
		bash "$HERE/lab.sh" up
	fi
	mkdir -p "$CL"
	net_up
	for n in "${NODES[@]}"; do
		prepare_node "$n"
		holder_up "$n"
		daemons_alive "$n" || was_down=1
	done
	for n in "${NODES[@]}"; do daemons_up "$n"; done
	wait_online "${NODES[@]}"
	set_property stonith-enabled false
	set_property dc-deadtime 2s
	((SECONDS - t0 > 0)) && log "nodes ${NODES[*]} online after $((SECONDS - t0))s"
	write_description
	# Test binaries (cluster/pacemaker/clusterlab) take the cluster down
	# when the last of them ends, but only one they brought up.
	if [[ ${LIFEBOAT_HA_BY_TESTS:-} == 1 ]]; then
		[[ -z $was_down ]] || : >"$CL/.started-by-tests"
	else
		rm -f "$CL/.started-by-tests"
	fi
	log "up: nodes ${NODES[*]}"
}

set_property() {
	local name=$1 value=$2 cur
	cur=$(in_node node1 crm_attribute --type crm_config --name "$name" --query --quiet 2>/dev/null) || cur=""
	[[ $cur == "$value" ]] && return 0
	in_node node1 crm_attribute --type crm_config --name "$name" --update "$value" >/dev/null
}

cmd_down() {
	local n
	[[ -d $CL ]] || return 0
	for n in "${NODES[@]}"; do
		# pacemakerd stops the node's resources first; with both nodes
		# stopping at once they are not moved to the other.
		if [[ -s $(ndir "$n")/holder.pid ]] && holder_alive "$n"; then
			in_node "$n" crm_attribute --node "$n" --name standby --update on --lifetime reboot >/dev/null 2>&1 || true
		fi
	done
	for n in "${NODES[@]}"; do
		[[ -d $(ndir "$n") ]] || continue
		daemons_down "$n"
		holder_down "$n"
	done
	net_down
	rm -f "$CL/cluster.env" "$CL/.started-by-tests"
	if [[ ${1:-} == --purge ]]; then
		rm -rf "$CL"
	fi
	log "down"
}

cmd_kill() {
	local n=${1:-} vms=() vm pid
	[[ -n $n ]] || die "usage: $0 kill NODE [VM…]"
	node_index "$n" >/dev/null
	shift
	if (($# > 0)); then
		vms=("$@")
	elif holder_alive "$n"; then
		mapfile -t vms < <(cluster_vms "$n")
	fi
	# The VMs and the daemons by their pidfiles first (quick), then
	# whatever else runs in the node's namespace.
	local d f
	d=$(ndir "$n")
	for vm in "${vms[@]}"; do kill_vm "$n" "$vm"; done
	for f in corosync pacemakerd; do
		if pid_alive "$d/$f.pid" "$f"; then kill -KILL "$(<"$d/$f.pid")" 2>/dev/null || true; fi
	done
	for pid in $(ns_pids "$n"); do kill -KILL "$pid" 2>/dev/null || true; done
	daemons_down "$n" hard
	log "killed $n${vms:+ (VMs: ${vms[*]})}"
}

cmd_revive() {
	local n=${1:-} other
	[[ -n $n ]] || die "usage: $0 revive NODE"
	node_index "$n" >/dev/null
	holder_up "$n"
	daemons_up "$n"
	for other in "${NODES[@]}"; do
		[[ $other == "$n" ]] && continue
		if daemons_alive "$other"; then
			wait_online "$other" "$n"
			return 0
		fi
	done
	log "$n started; its peer is down (two_node waits for it)"
}

cmd_status() {
	local n rc=0 d
	for n in "${NODES[@]}"; do
		d=$(ndir "$n")
		if daemons_alive "$n"; then
			printf '%-6s up (corosync %s, pacemakerd %s, netns %s, %s)\n' "$n" "$(<"$d/corosync.pid")" \
				"$(<"$d/pacemakerd.pid")" "$(netns_of "$n")" "$(addr_of "$n")"
		else
			printf '%-6s down\n' "$n"
			rc=3
		fi
	done
	for n in "${NODES[@]}"; do
		if daemons_alive "$n"; then
			timeout 10 nsenter --target "$(holder_pid "$n")" --mount --net --uts -- crm_mon -1 2>&1 | sed 's/^/  /' || true
			break
		fi
	done
	return $rc
}

main() {
	[[ $(id -u) == 0 ]] || die "must run as root"
	local cmd=${1:-}
	case $cmd in
	up | down | kill | revive)
		mkdir -p "$CL"
		exec 9>"$CL/.lock"
		flock 9
		;;
	esac
	case $cmd in
	up) cmd_up ;;
	down) shift; cmd_down "${1:-}" ;;
	status) cmd_status ;;
	kill) shift; cmd_kill "$@" ;;
	revive) shift; cmd_revive "$@" ;;
	exec)
		shift
		(($# >= 2)) || die "usage: $0 exec NODE CMD…"
		local n=$1
		shift
		node_index "$n" >/dev/null
		in_node "$n" "$@"
		;;
	*) echo "usage: $0 up | down [--purge] | status | exec NODE CMD… | kill NODE [VM…] | revive NODE" >&2; exit 2 ;;
	esac
}

main "$@"
