#!/usr/bin/env bash
# Usage: hack/helm.sh
#
# Builds the helm CLI (helm.sh/helm/v4 at $HELM_VERSION, from the Go module
# proxy: no release archive is downloaded) into $CACHE_DIR/helm-$HELM_VERSION/
# if it is missing, and prints its path. `go install` of a versioned package
# uses helm's own go.mod: the main module's go.mod is not touched.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version() { sed -n "s/^$1[[:space:]]*:=[[:space:]]*//p" "$root/hack/versions.mk"; }
: "${HELM_VERSION:=$(version HELM_VERSION)}"
: "${CACHE_DIR:=$HOME/.cache/k8secrets}"
dir=$CACHE_DIR/helm-$HELM_VERSION

if [ ! -x "$dir/helm" ]; then
	echo "helm.sh: building helm $HELM_VERSION into $dir (once; about 5 minutes cold)" >&2
	mkdir -p "$dir"
	# helm stamps its version with -X, as its own Makefile does; without it
	# `helm version` says only the minor version.
	(cd "$dir" && GOBIN=$dir CGO_ENABLED=0 go install -trimpath \
		-ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
		"helm.sh/helm/v4/cmd/helm@$HELM_VERSION")
fi
echo "$dir/helm"
