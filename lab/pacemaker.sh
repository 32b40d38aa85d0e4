#!/usr/bin/env bash
# lab/pacemaker.sh — a single-node corosync + pacemaker cluster for the
# Lifeboat lab: up | down [--purge] | status
#
# The cluster node is called node0 (like the lab's libvirt host whose VMs it
# manages). corosync (knet on 127.0.0.1, one node, quorate alone) and
# pacemakerd run as root in a private mount namespace in which
# /etc/corosync, /var/lib/corosync, /var/lib/pacemaker, /var/log/corosync
# and /var/log/pacemaker are bind mounts of folders under
# $LAB/pacemaker, so the machine's own cluster files are never written.
# /run and /dev/shm stay shared: the cluster's IPC (libqb: abstract unix
# sockets plus ring buffers in /dev/shm) is then reachable from this
# machine's namespace, and cibadmin, crm_mon, crm_resource and crm_attribute
# work from anywhere on the machine.
#
# `up` is idempotent; `down` stops the daemons by pid (and any process left
# in the cluster's mount namespace) and leaves no process behind.
# Must run as root. Needs no systemd.
set -euo pipefail

LAB=${LIFEBOAT_LAB:-/var/tmp/lifeboat-lab}
PM=$LAB/pacemaker
NODE=${LIFEBOAT_PCMK_NODE:-node0}
CLUSTER=lifeboat-lab
PACKAGES=(corosync pacemaker pacemaker-cli-utils resource-agents crmsh)
ONLINE_TIMEOUT=${LIFEBOAT_PCMK_TIMEOUT:-60}

log() { printf 'pacemaker: %s\n' "$*" >&2; }
die() { printf 'pacemaker: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- packages

# shellcheck source=packages.sh
source "$(dirname "${BASH_SOURCE[0]}")/packages.sh"

# ------------------------------------------------------------------ helpers

# pid_alive FILE COMM: the pid in FILE is alive (not a zombie) and its comm
# starts with COMM.
pid_alive() {
	local f=$1 comm=$2 pid
	[[ -s $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/comm ]] || return 1
	[[ $(</proc/"$pid"/comm) == "$comm"* ]] || return 1
	[[ $(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null) != Z ]]
}

gone() { [[ ! -e /proc/$1 || $(awk '{print $3}' /proc/"$1"/stat 2>/dev/null) == Z ]]; }

# kill_pid PID [SECONDS]: TERM, wait (10 s by default), then KILL.
kill_pid() {
	local pid=$1 wait=${2:-10} i
	kill -TERM "$pid" 2>/dev/null || return 0
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

# ns_pids: every live process in the cluster's mount namespace.
ns_pids() {
	local ns p
	[[ -s $PM/mntns ]] || return 0
	ns=$(<"$PM/mntns")
	for p in /proc/[0-9]*; do
		[[ $(readlink "$p/ns/mnt" 2>/dev/null) == "$ns" ]] || continue
		gone "${p#/proc/}" || echo "${p#/proc/}"
	done
	return 0
}

# crm_mon_online: crm_mon shows our node online and a DC elected.
crm_mon_online() {
	local out
	out=$(timeout 10 crm_mon -1 --output-as=xml 2>/dev/null) || return 1
	grep -q "<node name=\"$NODE\" [^>]*online=\"true\"" <<<"$out" || return 1
	grep -q '<current_dc [^>]*present="true"' <<<"$out"
}

# ------------------------------------------------------------------ config

write_corosync_conf() {
	local f=$PM/etc/corosync/corosync.conf
	cat >"$f.tmp" <<EOF
# Written by lifeboat lab/pacemaker.sh; rewritten on every 'up'.
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
		name: $NODE
		nodeid: 1
		ring0_addr: 127.0.0.1
	}
}

quorum {
	provider: corosync_votequorum
	# One node with one vote is quorate on its own.
	expected_votes: 1
	wait_for_all: 0
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

prepare_dirs() {
	mkdir -p "$PM"/{etc/corosync/uidgid.d,lib-corosync,lib-pacemaker,log-corosync,log-pacemaker}
	local d
	for d in cib pengine blackbox cores; do
		mkdir -p "$PM/lib-pacemaker/$d"
		chown hacluster:haclient "$PM/lib-pacemaker/$d"
		chmod 0750 "$PM/lib-pacemaker/$d"
	done
	chown hacluster:haclient "$PM/log-pacemaker"
	chmod 0770 "$PM/log-pacemaker"
	# Pacemaker's state folder (shared /run) and the resource agents'.
	mkdir -p /run/crm /run/resource-agents
	chown hacluster:haclient /run/crm
	chmod 0750 /run/crm
	write_corosync_conf
	seed_cib
}

# seed_cib: a first CIB with the lab's cluster properties, written offline
# (CIB_file) before pacemaker ever starts. Without it the first start takes
# about 23 s: the controller waits dc-deadtime (20 s by default) before it
# elects itself. An existing CIB (resources of an earlier 'up') is kept.
seed_cib() {
	local cib=$PM/lib-pacemaker/cib/cib.xml tmp
	[[ -s $cib ]] && return 0
	tmp=$PM/seed-cib.xml
	cibadmin --empty >"$tmp"
	CIB_file=$tmp crm_attribute --type crm_config --name stonith-enabled --update false
	CIB_file=$tmp crm_attribute --type crm_config --name dc-deadtime --update 2s
	chown hacluster:haclient "$tmp"
	chmod 0600 "$tmp"
	mv "$tmp" "$cib"
}

# ---------------------------------------------------------------- commands

start_daemons() {
	local f
	for f in /etc/corosync /var/lib/corosync /var/lib/pacemaker /var/log/corosync /var/log/pacemaker; do
		mkdir -p "$f"
	done
	rm -f "$PM/corosync.pid" "$PM/pacemakerd.pid" "$PM/mntns"
	# Keep one old log of each beyond 16 MiB.
	for f in "$PM/log-pacemaker/pacemaker.log" "$PM/log-corosync/corosync.log"; do
		if [[ -f $f ]] && (($(stat -c %s "$f") > 16 << 20)); then mv -f "$f" "$f.1"; fi
	done
	log "starting corosync and pacemakerd (node $NODE)"
	# One shell in a new mount namespace mounts the private folders,
	# starts corosync in the foreground (so that $! is its pid), waits for
	# it to answer, then starts pacemakerd. Both outlive the shell and
	# keep the namespace. fd 9 (the lock) is closed for them.
	# shellcheck disable=SC2016
	unshare --mount --propagation private -- /bin/bash -c '
		set -e
		pm=$1
		mount --bind "$pm/etc/corosync" /etc/corosync
		mount --bind "$pm/lib-corosync" /var/lib/corosync
		mount --bind "$pm/lib-pacemaker" /var/lib/pacemaker
		mount --bind "$pm/log-corosync" /var/log/corosync
		mount --bind "$pm/log-pacemaker" /var/log/pacemaker
		readlink /proc/self/ns/mnt >"$pm/mntns"
		setsid corosync -f </dev/null >>"$pm/log-corosync/stdout.log" 2>&1 &
		echo $! >"$pm/corosync.pid"
		for ((i = 0; i < 100; i++)); do
			corosync-cfgtool -s >/dev/null 2>&1 && break
			kill -0 "$(<"$pm/corosync.pid")" 2>/dev/null || { echo "corosync exited" >&2; exit 1; }
			sleep 0.1
		done
		corosync-cfgtool -s >/dev/null 2>&1 || { echo "corosync does not answer" >&2; exit 1; }
		PCMK_logfile=/var/log/pacemaker/pacemaker.log PCMK_logfacility=none \
			HA_LOGFACILITY=none PCMK_debug=no \
			setsid pacemakerd </dev/null >>"$pm/log-pacemaker/stdout.log" 2>&1 &
		echo $! >"$pm/pacemakerd.pid"
	' sh "$PM" </dev/null >"$PM/start.log" 2>&1 9>&- ||
		die "start failed: $(cat "$PM/start.log"; tail -5 "$PM/log-corosync/corosync.log" 2>/dev/null)"
	pid_alive "$PM/corosync.pid" corosync || die "corosync died (see $PM/log-corosync/corosync.log)"
}

cmd_up() {
	local was_down=""
	install_packages
	mkdir -p "$LAB" "$PM"
	prepare_dirs
	if pid_alive "$PM/corosync.pid" corosync && pid_alive "$PM/pacemakerd.pid" pacemakerd; then
		:
	else
		was_down=1
		# A half-running cluster is stopped first.
		stop_daemons
		start_daemons
	fi
	local i t0=$SECONDS
	for ((i = 0; i < ONLINE_TIMEOUT * 4; i++)); do
		crm_mon_online && break
		pid_alive "$PM/pacemakerd.pid" pacemakerd || die "pacemakerd died (see $PM/log-pacemaker/pacemaker.log)"
		sleep 0.25
	done
	crm_mon_online || die "node $NODE not online after ${ONLINE_TIMEOUT}s (see $PM/log-pacemaker/pacemaker.log)"
	# No fencing device in the lab; a single node needs no quorum policy.
	# Only written when different, so a running cluster's CIB stays as is.
	set_property stonith-enabled false
	set_property dc-deadtime 2s
	((SECONDS - t0 > 0)) && log "node $NODE online after $((SECONDS - t0))s"
	write_description
	# Test binaries (cluster/pacemaker/pacemakerlab) take the cluster down
	# when the last of them ends, but only a cluster they brought up; an
	# `up` by hand claims it.
	if [[ ${LIFEBOAT_PCMK_BY_TESTS:-} == 1 ]]; then
		[[ -z $was_down ]] || : >"$PM/.started-by-tests"
	else
		rm -f "$PM/.started-by-tests"
	fi
	log "up: node $NODE"
}

set_property() {
	local name=$1 value=$2 cur
	cur=$(crm_attribute --type crm_config --name "$name" --query --quiet 2>/dev/null) || cur=""
	[[ $cur == "$value" ]] && return 0
	crm_attribute --type crm_config --name "$name" --update "$value" >/dev/null
}

write_description() {
	{
		echo "# Written by lifeboat lab/pacemaker.sh up"
		echo "PCMK_NODE=$NODE"
		echo "PCMK_CLUSTER=$CLUSTER"
		echo "PCMK_DIR=$PM"
		echo "PCMK_LOG=$PM/log-pacemaker/pacemaker.log"
		echo "PCMK_COROSYNC_LOG=$PM/log-corosync/corosync.log"
		echo "PCMK_COROSYNC_PID=$(<"$PM/corosync.pid")"
		echo "PCMK_PACEMAKERD_PID=$(<"$PM/pacemakerd.pid")"
	} >"$PM/cluster.env.tmp"
	mv "$PM/cluster.env.tmp" "$PM/cluster.env"
}

# stop_daemons: pacemakerd first (it stops the resources it runs and its
# children), then corosync, then anything left in the namespace.
stop_daemons() {
	local pid
	if pid_alive "$PM/pacemakerd.pid" pacemakerd; then
		log "stopping pacemakerd"
		# A graceful stop stops every resource first; resources that
		# ignore it are left to the KILL after 30 s.
		kill_pid "$(<"$PM/pacemakerd.pid")" 30
	fi
	for pid in $(ns_pids); do
		[[ $(cat /proc/"$pid"/comm 2>/dev/null) == corosync ]] && continue
		kill_pid "$pid" 5
	done
	if pid_alive "$PM/corosync.pid" corosync; then
		log "stopping corosync"
		kill_pid "$(<"$PM/corosync.pid")" 10
	fi
	for pid in $(ns_pids); do kill_pid "$pid" 5; done
	rm -f "$PM/corosync.pid" "$PM/pacemakerd.pid" "$PM/mntns" "$PM/cluster.env" "$PM/.started-by-tests"
}

cmd_down() {
	[[ -d $PM ]] || return 0
	stop_daemons
	if [[ ${1:-} == --purge ]]; then
		rm -rf "$PM"
	fi
	log "down"
}

cmd_status() {
	local rc=0
	if pid_alive "$PM/corosync.pid" corosync; then
		printf 'corosync   up pid %s\n' "$(<"$PM/corosync.pid")"
	else
		printf 'corosync   down\n'
		rc=3
	fi
	if pid_alive "$PM/pacemakerd.pid" pacemakerd; then
		printf 'pacemakerd up pid %s\n' "$(<"$PM/pacemakerd.pid")"
	else
		printf 'pacemakerd down\n'
		rc=3
	fi
	if ((rc == 0)); then
		timeout 10 crm_mon -1 2>&1 | sed 's/^/  /' || true
	fi
	return $rc
}

main() {
	[[ $(id -u) == 0 ]] || die "must run as root"
	case ${1:-} in
	up | down)
		mkdir -p "$PM"
		exec 9>"$PM/.lock"
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
