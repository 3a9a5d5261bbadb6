#!/usr/bin/env bash
# Usage: hack/ci-deps.sh
#
# Installs what the kind cluster and its node image need on a fresh Debian 12
# machine (Docker, debootstrap) and starts dockerd if no daemon answers.
# Idempotent and quick when everything is there: it installs only missing
# packages and runs `apt-get update` only when it has to install something.
set -euo pipefail

log() { printf 'ci-deps: %s\n' "$*" >&2; }

# docker.io brings dockerd, containerd and runc; debootstrap builds the node
# image's root filesystem; iptables is what dockerd programs for its bridge.
packages=(docker.io debootstrap iptables util-linux ca-certificates)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		log "missing packages ${missing[*]}; run this script as root"
		exit 1
	fi
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
	exit 0
fi

# No init system here runs services, so start the daemon ourselves; it keeps
# running after this script and the next call finds it.
dockerd_log=${DOCKERD_LOG:-/var/log/k8secrets-dockerd.log}
log "starting dockerd (log: $dockerd_log)"
dockerd=$(command -v dockerd || echo /usr/sbin/dockerd)
# The daemon must not inherit this script's other open files: under make -j
# they include the jobserver's pipe, and a parallel make ends by reading
# that pipe to its end, which never comes while dockerd (and containerd,
# its shims) hold its write side: the make hung after its last target
# (the project's CI of f6ee870, reproduced here on 2026-12-01).
close_fds() {
	local fd
	for fd in /proc/self/fd/*; do
		fd=${fd##*/}
		((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
	done
	return 0
}
(close_fds && exec nohup setsid "$dockerd" >>"$dockerd_log" 2>&1 </dev/null) &
for _ in $(seq 1 60); do
	if docker info >/dev/null 2>&1; then
		log "dockerd ready"
		exit 0
	fi
	sleep 1
done
log "dockerd did not answer within 60s; last lines of $dockerd_log:"
tail -n 20 "$dockerd_log" >&2
exit 1
