# Every pinned version of the test and cluster tooling, in one place.
K8S_VERSION     := v1.37.2
ETCD_VERSION    := v3.7.0
COREDNS_VERSION := v1.14.6
CRICTL_VERSION  := v1.37.0
KIND_VERSION    := v0.33.0
PAUSE_VERSION   := 3.10.2
# Debian release of the offline kind node image's root filesystem.
NODE_DEBIAN_SUITE := bookworm
export K8S_VERSION ETCD_VERSION COREDNS_VERSION CRICTL_VERSION KIND_VERSION PAUSE_VERSION NODE_DEBIAN_SUITE CYCLONEDX_GOMOD_VERSION
# The SBOM generator of `make release` (hack/release/tools/cyclonedx-gomod).
CYCLONEDX_GOMOD_VERSION := v1.10.0
