#!/usr/bin/env bash
# Usage: e2e/nodeimage/build.sh [IMAGE]        (make node-image)
#
# Builds a kind node image offline, for machines where kind's own
# kindest/node image cannot be pulled: the Kubernetes binaries from
# hack/kube-binaries.sh (versions in hack/versions.mk), a debootstrapped
# Debian root filesystem (cached under $CACHE_DIR), kind's base-image files
# from the kind module's source, and the control-plane, CoreDNS and pause
# images built FROM scratch and shipped inside the node, imported into its
# containerd before the kubelet starts. IMAGE defaults to
# k8secrets/node:$K8S_VERSION. Skips the build if IMAGE was built from the
# same inputs (versions, this folder), unless FORCE=1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version() { sed -n "s/^$1[[:space:]]*:=[[:space:]]*//p" "$root/hack/versions.mk"; }
: "${K8S_VERSION:=$(version K8S_VERSION)}"
: "${ETCD_VERSION:=$(version ETCD_VERSION)}"
: "${COREDNS_VERSION:=$(version COREDNS_VERSION)}"
: "${KIND_VERSION:=$(version KIND_VERSION)}"
: "${PAUSE_VERSION:=$(version PAUSE_VERSION)}"
: "${NODE_DEBIAN_SUITE:=$(version NODE_DEBIAN_SUITE)}"
: "${CACHE_DIR:=$HOME/.cache/k8secrets}"
: "${KUBE_BIN:=$CACHE_DIR/kubernetes-$K8S_VERSION/bin}"
export K8S_VERSION ETCD_VERSION COREDNS_VERSION KIND_VERSION PAUSE_VERSION CACHE_DIR KUBE_BIN
image=${1:-${NODE_IMAGE:-k8secrets/node:$K8S_VERSION}}
# Legacy builder: Debian's docker.io has no buildx, and nothing here needs it.
export DOCKER_BUILDKIT=0

log() { printf 'node-image: %s\n' "$*" >&2; }
# dbuild TAG DIR: docker build, quiet unless it fails; removes the image
# TAG named before, unless a container still uses it, so that rebuilds do
# not pile up dangling gigabytes.
dbuild() {
	local out old
	old=$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true)
	if ! out=$(docker build -q -t "$1" "$2" 2>&1); then
		printf '%s\n' "$out" >&2
		log "docker build $1 failed"
		return 1
	fi
	if [[ -n $old && $old != "$(docker image inspect -f '{{.Id}}' "$1")" ]]; then
		docker image rm "$old" >/dev/null 2>&1 || true
	fi
}
start=$SECONDS

# The image records a hash of everything it is built from; a change to a
# version, this script or its files, or the tools' modules rebuilds it.
inputs=$( (
	echo "$K8S_VERSION $ETCD_VERSION $COREDNS_VERSION $KIND_VERSION $PAUSE_VERSION $NODE_DEBIAN_SUITE"
	cd "$here" && find . -type f | LC_ALL=C sort | xargs sha256sum
	# What the binaries are built from, beyond their versions.
	cd "$root/e2e/tools" && sha256sum coredns/main.go */go.mod
) | sha256sum | cut -c1-16)
if [[ ${FORCE:-} != 1 ]] &&
	[[ $(docker image inspect -f '{{index .Config.Labels "k8secrets.inputs"}}' "$image" 2>/dev/null) == "$inputs" ]]; then
	log "$image is up to date (FORCE=1 rebuilds)"
	exit 0
fi

# --- root filesystem, cached by suite and package list -----------------------
suite=$NODE_DEBIAN_SUITE
packages=(systemd systemd-sysv dbus iptables iproute2 ca-certificates mount conntrack ethtool socat
	util-linux kmod procps libseccomp2 containerd runc containernetworking-plugins nftables pigz
	bash findutils curl udev)
key=$(printf '%s\n' "$suite" "${packages[@]}" | sha256sum | cut -c1-12)
rootfs=$CACHE_DIR/node-rootfs-$suite-$key
rootfs_image=k8secrets/node-rootfs:$suite-$key
build_rootfs() {
	[[ -f $rootfs/.complete ]] && return 0
	# The machine's own apt source: no mirror is named here.
	local mirror t
	mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs:[[:space:]]*\([^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)}
	[[ -n $mirror ]] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	[[ -n $mirror ]] || { log "no Debian mirror found in /etc/apt; set DEBIAN_MIRROR"; return 1; }
	log "debootstrap $suite into $rootfs (log: $CACHE_DIR/debootstrap.log)"
	rm -rf "$rootfs"
	t=$SECONDS
	debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" "$suite" "$rootfs" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; return 1; }
	chroot "$rootfs" apt-get clean
	rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
	touch "$rootfs/.complete"
	log "root filesystem in $((SECONDS - t))s"
}

# debootstrap waits on the network and the disk, the compiler on the CPU: on
# a fresh machine they run side by side.
mkdir -p "$CACHE_DIR"
build_rootfs &
rootfs_pid=$!
"$root/hack/kube-binaries.sh" kube-apiserver kube-controller-manager kube-scheduler kube-proxy \
	kubelet kubectl kubeadm etcd coredns crictl || { kill "$rootfs_pid" 2>/dev/null; exit 1; }
wait "$rootfs_pid" || { log "root filesystem failed"; exit 1; }
if ! docker image inspect "$rootfs_image" >/dev/null 2>&1; then
	log "importing $rootfs_image"
	tar -C "$rootfs" --exclude=./.complete -c . | docker import - "$rootfs_image" >/dev/null
fi

work=$(mktemp -d "$CACHE_DIR/node-image-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- control-plane, CoreDNS and pause images, FROM scratch --------------------
# kubeadm names the images it expects; the node must hold exactly those.
mapfile -t want < <("$KUBE_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
((${#want[@]})) || { log "kubeadm config images list printed nothing"; exit 1; }
CGO_ENABLED=0 go -C "$root/e2e" build -trimpath -ldflags "-s -w" -o "$work/pause" ./nodeimage/pause

# ship_libs DEST BINARY...: copies binaries and the shared libraries they load
# from the root filesystem, for kube-proxy's iptables and conntrack.
ship_libs() {
	local dest=$1; shift
	local f lib
	for f in "$@"; do
		mkdir -p "$dest$(dirname "$f")"
		cp -a "$rootfs$f" "$dest$f"
		[[ -L $rootfs$f ]] && f=$(chroot "$rootfs" readlink -f "$f") && mkdir -p "$dest$(dirname "$f")" && cp -a "$rootfs$f" "$dest$f"
		for lib in $(chroot "$rootfs" ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
			mkdir -p "$dest$(dirname "$lib")"
			cp -aL "$rootfs$lib" "$dest$lib"
		done
	done
}

tags=()
for ref in "${want[@]}"; do
	name=${ref##*/}; name=${name%%:*}; tag=${ref##*:}
	ctx=$work/images/$name
	mkdir -p "$ctx/root/usr/local/bin"
	entry=
	case $name in
	kube-apiserver | kube-controller-manager | kube-scheduler) cp "$KUBE_BIN/$name" "$ctx/root/usr/local/bin/" ;;
	kube-proxy)
		cp "$KUBE_BIN/$name" "$ctx/root/usr/local/bin/"
		# iptables mode: xtables-nft-multi (the host kernel's nf_tables,
		# as the node's own iptables), its extensions and conntrack.
		ship_libs "$ctx/root" /usr/sbin/xtables-nft-multi /usr/sbin/conntrack \
			$(cd "$rootfs" && ls usr/lib/x86_64-linux-gnu/xtables/*.so | sed 's|^|/|')
		for l in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
			ln -sf xtables-nft-multi "$ctx/root/usr/sbin/$l"
		done
		;;
	etcd)
		[[ $tag == "${ETCD_VERSION#v}"* ]] || log "warning: kubeadm wants etcd $tag, hack/versions.mk pins $ETCD_VERSION"
		cp -L "$KUBE_BIN/etcd" "$ctx/root/usr/local/bin/" ;;
	coredns)
		[[ $tag == "$COREDNS_VERSION" ]] || log "warning: kubeadm wants coredns $tag, hack/versions.mk pins $COREDNS_VERSION"
		cp -L "$KUBE_BIN/coredns" "$ctx/root/coredns"; entry='ENTRYPOINT ["/coredns"]' ;;
	pause)
		[[ $tag == "$PAUSE_VERSION" ]] || log "warning: kubeadm wants pause $tag, hack/versions.mk pins $PAUSE_VERSION"
		pause_ref=$ref
		cp "$work/pause" "$ctx/root/pause"; entry='ENTRYPOINT ["/pause"]' ;;
	*) log "kubeadm wants $ref, which this script does not know how to build"; exit 1 ;;
	esac
	mkdir -p "$ctx/root/tmp" && chmod 1777 "$ctx/root/tmp"
	printf 'FROM scratch\nCOPY root/ /\nENV PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin\n%s\n' "$entry" >"$ctx/Dockerfile"
	dbuild "$ref" "$ctx"
	tags+=("$ref")
done
[[ -n ${pause_ref:-} ]] || { log "kubeadm listed no pause image"; exit 1; }

# --- the node image ------------------------------------------------------------
ctx=$work/node
# Downloads the kind module on a fresh machine; prints its folder.
kind_src=$(go -C "$root/e2e" mod download -json sigs.k8s.io/kind | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d $kind_src/images/base/files ]] || { log "kind module source not found (cd e2e && go mod download sigs.k8s.io/kind)"; exit 1; }
mkdir -p "$ctx/root/kind/images" "$ctx/root/usr/bin" "$ctx/root/usr/local/bin"
cp -r "$kind_src/images/base/files/." "$ctx/root/"
chmod -R u+w "$ctx/root"
# Ours override kind's where both exist (containerd 1.6 config, CNI).
cp -r "$here/files/." "$ctx/root/"
sed -i "s|^\(  sandbox_image = \).*|\1\"$pause_ref\"|" "$ctx/root/etc/containerd/config.toml"
cp "$KUBE_BIN/kubeadm" "$KUBE_BIN/kubelet" "$KUBE_BIN/kubectl" "$ctx/root/usr/bin/"
cp -L "$KUBE_BIN/crictl" "$ctx/root/usr/local/bin/"
echo "$K8S_VERSION" >"$ctx/root/kind/version"
docker save "${tags[@]}" -o "$ctx/root/kind/images/control-plane.tar"
cat >"$ctx/Dockerfile" <<EOF
FROM $rootfs_image
COPY root/ /
RUN chmod 755 /kind /kind/bin /kind/bin/* /usr/local/bin/* \\
 && ln -sf /usr/bin/containerd /usr/local/bin/containerd \\
 && rm -rf /opt/cni/bin && mkdir -p /opt/cni && ln -s /usr/lib/cni /opt/cni/bin \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo ReadKMsg=no >>/etc/systemd/journald.conf \\
 && ln -sf /usr/lib/systemd/systemd /sbin/init \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service kind-images.service \\
 && systemctl mask systemd-binfmt.service \\
 && mkdir -p /etc/kubernetes/manifests
ENV container=docker
LABEL k8secrets.inputs=$inputs
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/unprivileged-entrypoint", "/usr/local/bin/entrypoint", "/sbin/init"]
EOF
log "building $image"
dbuild "$image" "$ctx"
size=$(docker image inspect -f '{{.Size}}' "$image")
log "built $image ($((size / 1024 / 1024)) MiB) in $((SECONDS - start))s"
