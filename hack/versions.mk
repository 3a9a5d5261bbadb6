# Every pinned version of the test and cluster tooling, in one place.
K8S_VERSION     := v1.37.2
ETCD_VERSION    := v3.7.0
COREDNS_VERSION := v1.14.6
CRICTL_VERSION  := v1.37.0
KIND_VERSION    := v0.33.0
PAUSE_VERSION   := 3.10.2
# The helm CLI of the chart tests (hack/helm.sh builds it from the module proxy).
HELM_VERSION    := v4.3.1
# The PodMonitor and PrometheusRule CRDs the chart's objects are checked against
# (charts/chart_test.go reads them from this Go module).
PROMETHEUS_OPERATOR_VERSION := v0.85.0
# Debian release of the offline kind node image's root filesystem.
NODE_DEBIAN_SUITE := bookworm
export K8S_VERSION ETCD_VERSION COREDNS_VERSION CRICTL_VERSION KIND_VERSION PAUSE_VERSION HELM_VERSION NODE_DEBIAN_SUITE CYCLONEDX_GOMOD_VERSION KREW_VERSION
# The SBOM generator of `make release` (hack/release/tools/cyclonedx-gomod).
CYCLONEDX_GOMOD_VERSION := v1.10.0
# The krew CLI that `make release-test` installs the krew manifest with
# (hack/release/tools/krew).
KREW_VERSION := v0.4.3
