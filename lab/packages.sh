# lab/packages.sh — sourced by the lab's scripts (lab.sh, pacemaker.sh,
# cluster.sh), which define log, die and PACKAGES.
#
# install_packages installs the PACKAGES that are missing, with service
# starts forbidden: a policy-rc.d that exits 101 keeps Debian's maintainer
# scripts from starting the machine's own libvirtd, corosync or pacemaker
# (the lab runs its daemons itself). An existing policy-rc.d (Debian's
# container images ship one) is left alone.
install_packages() {
	local missing=() p
	for p in "${PACKAGES[@]}"; do
		if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
			missing+=("$p")
		fi
	done
	((${#missing[@]} == 0)) && return 0
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	local policy=/usr/sbin/policy-rc.d ours=""
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		ours=1
	fi
	local rc=0
	apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
	[[ -n $ours ]] && rm -f "$policy"
	((rc == 0)) || die "apt-get install ${missing[*]} failed"
}
