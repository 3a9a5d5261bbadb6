#!/usr/bin/env bash
# Usage: hack/kube-binaries.sh NAME...
#
# Builds the named binaries from the Go module proxy into $KUBE_BIN, each only
# if it is missing, and prints nothing else when all are cached. Names:
#   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy
#   kubectl kubeadm etcd coredns crictl kind      (or "all")
#
# Kubernetes binaries go straight into $KUBE_BIN
# (default $CACHE_DIR/kubernetes-$K8S_VERSION/bin). etcd, coredns, crictl and
# kind have their own versions, so each is built into $CACHE_DIR/NAME-VERSION/
# (CoreDNS: NAME-VERSION-HASH of e2e/tools/coredns/main.go)
# and linked from $KUBE_BIN: every binary is found in $KUBE_BIN, and changing
# one version in hack/versions.mk rebuilds only that one.
#
# The go.mod files that name k8s.io/kubernetes (with its staging replace
# block), etcd, CoreDNS and cri-tools live under e2e/tools/, one module each,
# so that none of them enters the main module's dependency graph or another's.
# Everything is built static (CGO_ENABLED=0) so that the node image can ship
# each one FROM scratch.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools=$root/e2e/tools

# Versions come from hack/versions.mk (exported by make); read it when this
# script is run by hand.
version() { sed -n "s/^$1[[:space:]]*:=[[:space:]]*//p" "$root/hack/versions.mk"; }
: "${K8S_VERSION:=$(version K8S_VERSION)}"
: "${ETCD_VERSION:=$(version ETCD_VERSION)}"
: "${COREDNS_VERSION:=$(version COREDNS_VERSION)}"
: "${CRICTL_VERSION:=$(version CRICTL_VERSION)}"
: "${KIND_VERSION:=$(version KIND_VERSION)}"
: "${CACHE_DIR:=$HOME/.cache/k8secrets}"
: "${KUBE_BIN:=$CACHE_DIR/kubernetes-$K8S_VERSION/bin}"

# CoreDNS is built from e2e/tools/coredns/main.go (a chosen set of plugins):
# its cache key names that file's hash as well as the version.
coredns_key=$COREDNS_VERSION-$(sha256sum "$tools/coredns/main.go" | cut -c1-8)

kube_names=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl kubeadm)
other_names=(etcd coredns crictl kind)

if [[ $# -eq 0 ]]; then
	sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0" >&2
	exit 2
fi
names=()
for n in "$@"; do
	if [[ $n == all ]]; then names+=("${kube_names[@]}" "${other_names[@]}"); else names+=("$n"); fi
done

log() { printf 'kube-binaries: %s\n' "$*" >&2; }

# The module's go.mod must agree with versions.mk, or the cache key would lie.
check_pin() { # dir module version
	if ! grep -qE "^(require )?[[:space:]]*$2 $3( |$)" "$tools/$1/go.mod"; then
		log "e2e/tools/$1/go.mod does not require $2 $3 (hack/versions.mk); update it with: cd e2e/tools/$1 && go get -tool $2@$3"
		exit 1
	fi
}

# Fast path without the lock: everything asked for is already there.
cached() {
	local n
	for n in "${names[@]}"; do
		case " ${kube_names[*]} " in *" $n "*) [[ -x $KUBE_BIN/$n ]] || return 1 ;; esac
		case $n in
		etcd) [[ $(readlink "$KUBE_BIN/etcd" 2>/dev/null) == "$CACHE_DIR/etcd-$ETCD_VERSION/etcd" ]] || return 1 ;;
		coredns) [[ $(readlink "$KUBE_BIN/coredns" 2>/dev/null) == "$CACHE_DIR/coredns-$coredns_key/coredns" ]] || return 1 ;;
		crictl) [[ $(readlink "$KUBE_BIN/crictl" 2>/dev/null) == "$CACHE_DIR/crictl-$CRICTL_VERSION/crictl" ]] || return 1 ;;
		kind) [[ $(readlink "$KUBE_BIN/kind" 2>/dev/null) == "$CACHE_DIR/kind-$KIND_VERSION/kind" ]] || return 1 ;;
		esac
		[[ -x $KUBE_BIN/$n ]] || return 1
	done
}
if cached; then
	exit 0
fi

mkdir -p "$KUBE_BIN" "$CACHE_DIR"
# One build at a time per cache: parallel `make unit` runs wait here instead
# of compiling the same thing twice.
exec 9>"$CACHE_DIR/.kube-binaries.lock"
flock 9

build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
major=${K8S_VERSION#v}; major=${major%%.*}

kube_missing=()
for n in "${names[@]}"; do
	case " ${kube_names[*]} " in *" $n "*)
		[[ -x $KUBE_BIN/$n ]] || kube_missing+=("$n")
		continue
	esac
	case " ${other_names[*]} " in *" $n "*) ;; *)
		log "unknown binary $n; known: ${kube_names[*]} ${other_names[*]}"
		exit 2
	esac
done

# build_other NAME VERSION TOOLDIR MODULE PKG [LDFLAGS [KEY]]: KEY (default
# VERSION) names the cache folder.
build_other() {
	local name=$1 ver=$2 dir=$3 mod=$4 pkg=$5 ldflags="-s -w ${6:-}"
	local out=$CACHE_DIR/$name-${7:-$ver}/$name
	if [[ ! -x $out ]]; then
		[[ $dir == e2e ]] || check_pin "$dir" "$mod" "$ver"
		log "building $name $ver into ${out%/*}"
		mkdir -p "${out%/*}"
		local start=$SECONDS
		local moddir=$tools/$dir
		[[ $dir == e2e ]] && moddir=$root/e2e
		(cd "$moddir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
		mv "$out.tmp" "$out"
		log "built $name in $((SECONDS - start))s"
	fi
	if [[ $(readlink "$KUBE_BIN/$name" 2>/dev/null) != "$out" ]]; then
		ln -sfn "$out" "$KUBE_BIN/$name"
	fi
}

build_kube() {
	((${#kube_missing[@]})) || return 0
	check_pin kubernetes k8s.io/kubernetes "$K8S_VERSION"
	# Without the version stamp nodes report v0.0.0-master, kubectl warns
	# about skew and kubeadm refuses the control plane.
	ldflags="-s -w"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
		ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
	done
	pkgs=()
	for n in "${kube_missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$n"); done
	log "building ${kube_missing[*]} $K8S_VERSION into $KUBE_BIN"
	tmp=$(mktemp -d "$KUBE_BIN/.build.XXXXXX")
	start=$SECONDS
	if ! (cd "$tools/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}"); then
		rm -rf "$tmp"
		return 1
	fi
	for n in "${kube_missing[@]}"; do mv "$tmp/$n" "$KUBE_BIN/$n"; done
	rm -rf "$tmp"
	log "built ${kube_missing[*]} in $((SECONDS - start))s"
}

build_others() {
	local n
	for n in "${names[@]}"; do
		case $n in
		etcd) build_other etcd "$ETCD_VERSION" etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 ;;
		coredns) build_other coredns "$COREDNS_VERSION" coredns github.com/coredns/coredns . "" "$coredns_key" ;;
		crictl) build_other crictl "$CRICTL_VERSION" cri-tools sigs.k8s.io/cri-tools sigs.k8s.io/cri-tools/cmd/crictl \
			"-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}" ;;
		kind) build_other kind "$KIND_VERSION" e2e sigs.k8s.io/kind sigs.k8s.io/kind ;;
		esac
	done
}

# The Kubernetes build keeps both cores busy but leaves gaps (downloading
# modules, linking): etcd, CoreDNS, crictl and kind build beside it, one
# after the other, and fill them.
build_others &
others=$!
kube_rc=0
build_kube || kube_rc=$?
others_rc=0
wait "$others" || others_rc=$?
if ((kube_rc || others_rc)); then
	log "build failed"
	exit 1
fi
