# k8secrets: see README.md. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

MODULE    := github.com/k8secrets/k8secrets
# Evaluated once: a recursive variable would run git again at each use, and a
# commit in between would make the images and the tests disagree on the tag.
ifndef VERSION
VERSION   := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
endif
BIN       := $(CURDIR)/bin
GO        ?= go
GOFLAGS_BUILD := -trimpath -ldflags "-s -w -X $(MODULE)/internal/version.Version=$(VERSION)"
# The agent speaks HTTP/1.1 only (probes, scrapes, a local reload endpoint):
# without net/http's bundled HTTP/2 it is 0.55 MB smaller and 0.6 MiB lighter
# in RSS (make bench-agent).
AGENT_TAGS    := -tags nethttpomithttp2

# Versions of everything the tests and the kind cluster build; pinned here only.
include hack/versions.mk

# Heavy builds live outside the clone, keyed by version, so that a rerun on
# the same machine (and CI after a session) reuses them.
CACHE_DIR ?= $(HOME)/.cache/k8secrets
KUBE_BIN  ?= $(CACHE_DIR)/kubernetes-$(K8S_VERSION)/bin
HELM      ?= $(CACHE_DIR)/helm-$(HELM_VERSION)/helm
export CACHE_DIR KUBE_BIN

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: build
build: ## Build static binaries of the Job (also as kubectl-k8secrets), the agent and the demo app into bin/.
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/k8secrets-job ./job
	# The same binary is the kubectl plugin (kubectl k8secrets) and its completion helper.
	ln -f $(BIN)/k8secrets-job $(BIN)/kubectl-k8secrets
	ln -f $(BIN)/k8secrets-job $(BIN)/kubectl_complete-k8secrets
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) $(AGENT_TAGS) -o $(BIN)/k8secrets-agent ./agent
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/k8secrets-demo ./demo

.PHONY: images
images: build ci-deps ## Build the FROM-scratch images k8secrets-job, k8secrets-agent and k8secrets-demo, tagged $(VERSION).
	@for i in agent job demo; do docker build -q -f Dockerfile.$$i --build-arg VERSION=$(VERSION) -t k8secrets-$$i:$(VERSION) . >/dev/null || exit 1; done
	@docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^k8secrets-(agent|job|demo):$(VERSION) '

.PHONY: lint
lint: ## go vet and gofmt.
	$(GO) vet ./...
	$(GO) -C hack/release vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: unit
unit: test-assets helm ## Unit tests and real-API-server tests, with the race detector; the Helm chart's tests (chart-test) among them.
	K8SECRETS_TEST_ASSETS=$(KUBE_BIN) K8SECRETS_HELM=$(HELM) $(GO) test -race -count=1 -timeout 30m ./...

.PHONY: test
# One stage after the other. The overlapped stages of f6ee870 (make -j3)
# saved 107 s of 2,242 here, and hung in the project's CI: dockerd, started
# by ci-deps inside the parallel make, inherited its jobserver pipe, and a
# parallel make ends by reading that pipe to its end (reproduced here with
# dockerd stopped first; hack/ci-deps.sh no longer passes it on). .ci/run
# names what runs every 5 minutes, so a stage that hangs is named.
test: lint unit release-test e2e ## Everything CI runs: lint, unit and API-server tests, the release artifacts, then the e2e suite on kind.

.PHONY: e2e-setup
e2e-setup: cluster images load-images kube-binaries ## The kind cluster, the images loaded into it and the Kubernetes binaries of the e2e suite (make e2e does this too).

.PHONY: helm
helm: ## Build the helm CLI $(HELM_VERSION) from the Go module proxy into $(CACHE_DIR) (cached by version).
	hack/helm.sh >/dev/null

.PHONY: chart-test
chart-test: helm test-assets ## Only the chart's tests (make unit runs them too): helm lint and helm template of charts/k8secrets with each ci/ values file against its golden (UPDATE=1 rewrites them), schema refusals.
	CI=true K8SECRETS_HELM=$(HELM) K8SECRETS_TEST_ASSETS=$(KUBE_BIN) $(GO) test -count=1 ./charts/ $(if $(UPDATE),-args -update)

.PHONY: test-assets
test-assets: ## Build etcd, kube-apiserver, kube-controller-manager and kubectl for the API-server tests (cached by version).
	hack/kube-binaries.sh etcd kube-apiserver kube-controller-manager kubectl

.PHONY: clean
clean: ## Remove bin/ and dist/ (the cache under $(CACHE_DIR) stays).
	rm -rf $(BIN) $(DIST)

##@ Benchmarks

.PHONY: bench-agent
bench-agent: ## Measure the stripped agent: swap-to-reload latency, burst reloads, idle RSS, binary size.
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) $(AGENT_TAGS) -o $(BIN)/k8secrets-agent ./agent
	$(GO) run ./agent/cmd/bench -binary $(BIN)/k8secrets-agent

BENCH_N ?= 1000
.PHONY: bench-propagation
bench-propagation: cluster images load-images kube-binaries ## Secret update -> app reload on the kind cluster: watch, refresh --wait, rollout restart side by side, and the kubelet sync alone: p50/p95/max.
	$(GO) -C e2e run ./cmd/propagation -tag $(VERSION) -job $(BIN)/k8secrets-job -kubeconfig $(KIND_KUBECONFIG)

.PHONY: bench-job
bench-job: build node-image test-assets ## Scale benchmark of the Job: BENCH_N Deployments x 10 pods on kwok nodes in a kind cluster of its own (k8secrets-bench, deleted after).
	$(GO) -C e2e run ./cmd/benchjob -n $(BENCH_N) -job $(BIN)/k8secrets-job -kubectl $(KUBE_BIN)/kubectl -node-image $(NODE_IMAGE) $(BENCH_ARGS)

##@ Cluster

# The kind cluster of the e2e tests (e2e/cluster). Its kubeconfig goes to a
# file of its own; ~/.kube/config is left alone.
KIND_CLUSTER_NAME ?= k8secrets
KIND_KUBECONFIG   ?= $(CACHE_DIR)/kind-$(KIND_CLUSTER_NAME).kubeconfig
NODE_IMAGE        ?= k8secrets/node:$(K8S_VERSION)
# Images load-images loads; by default the project's, where built.
IMAGES            ?= $(foreach i,k8secrets-job k8secrets-agent k8secrets-demo,$(shell docker image inspect $(i):$(VERSION) >/dev/null 2>&1 && echo $(i):$(VERSION)))
CLUSTER_TOOL      := $(BIN)/e2e-cluster
export KIND_CLUSTER_NAME KIND_KUBECONFIG

.PHONY: ci-deps
ci-deps: ## Install Docker and debootstrap, start dockerd if none answers (root; idempotent).
	hack/ci-deps.sh

.PHONY: kube-binaries
kube-binaries: ## Build all Kubernetes, etcd, CoreDNS, crictl and kind binaries into $(KUBE_BIN) (cached).
	hack/kube-binaries.sh all

.PHONY: node-image
node-image: ci-deps ## Build the offline kind node image $(NODE_IMAGE) (skipped if present; FORCE=1 rebuilds).
	NODE_IMAGE=$(NODE_IMAGE) e2e/nodeimage/build.sh

.PHONY: cluster-tool
cluster-tool:
	$(GO) -C e2e build -o $(CLUSTER_TOOL) ./cmd/cluster

.PHONY: cluster
cluster: node-image cluster-tool ## Create the kind cluster if missing and wait for node, kube-proxy and CoreDNS; kubeconfig in $(KIND_KUBECONFIG).
	KIND_NODE_IMAGE=$(NODE_IMAGE) $(CLUSTER_TOOL) create

.PHONY: cluster-down
cluster-down: cluster-tool ## Delete the kind cluster and its kubeconfig file, nothing else.
	$(CLUSTER_TOOL) delete

.PHONY: load-images
load-images: cluster-tool ## Load IMAGES into the cluster (default: those of k8secrets-job, -agent, -demo:$(VERSION) that `make images` built).
	@if [ -z "$(strip $(IMAGES))" ]; then echo "load-images: no image to load (run make images, or set IMAGES=)"; else $(CLUSTER_TOOL) load $(IMAGES); fi

.PHONY: e2e
# End-to-end tests run through gotestsum, which reruns a failed test once and
# says so in its summary ("re-run"): on a 2-core VM a kind cluster has
# timing flakes that say nothing about the code (shared/offline-cluster.md).
# A test that fails twice fails the run. Unit tests get no rerun.
GOTESTSUM := $(GO) run gotest.tools/gotestsum@v1.13.0
# The rerun list is printed whether or not the reruns passed, so a flaky
# test shows in every CI log.
E2E_RERUNS := $(CACHE_DIR)/e2e-reruns.txt

e2e: cluster images load-images kube-binaries helm ## End-to-end tests (build tag e2e) on the kind cluster, one package at a time.
	rm -f $(E2E_RERUNS); cd e2e && E2E_KUBECONFIG=$(KIND_KUBECONFIG) E2E_IMAGE_TAG=$(VERSION) E2E_BIN=$(BIN) E2E_KUBECTL=$(KUBE_BIN)/kubectl E2E_HELM=$(HELM) \
		$(GOTESTSUM) --format testname --rerun-fails=1 --rerun-fails-max-failures=3 --rerun-fails-report=$(E2E_RERUNS) --packages ./... \
		-- -tags e2e -p 1 -count=1 -timeout 40m; rc=$$?; \
		if [ -s $(E2E_RERUNS) ]; then echo "--- e2e: tests that failed once and were rerun (flaky unless the rerun failed too):"; cat $(E2E_RERUNS); else echo "--- e2e: no test was rerun"; fi; \
		exit $$rc

##@ Demo

.PHONY: demo
demo: cluster images kube-binaries ## Bring up the kind cluster, inject a Secret into the demo app, update it, watch the app reload in place.
	@for i in job agent demo; do docker tag k8secrets-$$i:$(VERSION) k8secrets-$$i:demo; done
	$(CLUSTER_TOOL) load k8secrets-job:demo k8secrets-agent:demo k8secrets-demo:demo
	BIN=$(BIN) hack/demo.sh

.PHONY: demo-down
demo-down: ## Remove the demo's namespace (the cluster stays: make cluster-down).
	KUBECONFIG=$(KIND_KUBECONFIG) $(KUBE_BIN)/kubectl delete namespace k8secrets-demo --ignore-not-found

##@ Release

# Everything `make release` writes goes to dist/ (gitignored): archives,
# checksums, SBOMs, the krew manifest and one OCI layout per image.
DIST              ?= $(CURDIR)/dist
REVISION          := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
# The commit's time stamps the images and archives, so that two builds of one
# commit give the same digests. Evaluated once, like VERSION.
ifndef SOURCE_DATE_EPOCH
SOURCE_DATE_EPOCH := $(shell git log -1 --format=%ct $(REVISION) 2>/dev/null || echo 0)
endif
RELEASE_PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
IMAGE_PLATFORMS   := linux/amd64 linux/arm64
RELEASE_TOOL      := $(BIN)/k8secrets-release
CYCLONEDX_GOMOD   := $(CACHE_DIR)/cyclonedx-gomod-$(CYCLONEDX_GOMOD_VERSION)/cyclonedx-gomod
KREW              := $(CACHE_DIR)/krew-$(KREW_VERSION)/krew
# Where `make release` says the images go, and `make push` pushes them.
REGISTRY          ?= ghcr.io/k8secrets

.PHONY: release
release: release-binaries release-tool sbom-tool ## Archives, checksums, SBOMs, krew manifest and multi-arch OCI image layouts in dist/ (offline).
	$(RELEASE_TOOL) build -dist $(DIST) -version $(VERSION) -revision $(REVISION) -epoch $(SOURCE_DATE_EPOCH) \
		-cyclonedx-gomod $(CYCLONEDX_GOMOD) -registry $(REGISTRY)

.PHONY: push
push: release-tool ## Push the multi-arch images of dist/ (make release) to REGISTRY=host/org, tagged with their version.
	@if [ "$(origin REGISTRY)" = file ]; then echo "push: name the registry: make push REGISTRY=host/org"; exit 2; fi
	$(RELEASE_TOOL) push -dist $(DIST) -registry $(REGISTRY)

.PHONY: release-test
release-test: release krew-tool ## Inspect the artifacts of make release, install the krew manifest with krew, push the images to a registry started by the test.
	cd hack/release && DIST=$(DIST) VERSION=$(VERSION) REVISION=$(REVISION) KREW=$(KREW) $(GO) test -count=1 -timeout 20m ./...

.PHONY: release-binaries
release-binaries: ## Static binaries for every platform into dist/bin/OS-ARCH/ (the Job everywhere; agent and demo for the images).
	@set -e; for p in $(RELEASE_PLATFORMS); do os=$${p%/*}; arch=$${p#*/}; out=$(DIST)/bin/$$os-$$arch; \
		echo "build $$p"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build $(GOFLAGS_BUILD) -o $$out/k8secrets-job ./job; \
		case " $(IMAGE_PLATFORMS) " in *" $$p "*) \
			CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build $(GOFLAGS_BUILD) $(AGENT_TAGS) -o $$out/k8secrets-agent ./agent; \
			CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build $(GOFLAGS_BUILD) -o $$out/k8secrets-demo ./demo;; \
		esac; \
	done

.PHONY: release-tool
release-tool:
	$(GO) -C hack/release build -o $(RELEASE_TOOL) .

.PHONY: krew-tool
krew-tool: ## Build the krew CLI $(KREW_VERSION) into $(CACHE_DIR) (cached by version).
	@if [ ! -x $(KREW) ]; then \
		grep -q 'sigs.k8s.io/krew $(KREW_VERSION)' hack/release/tools/krew/go.mod || \
			{ echo "hack/release/tools/krew/go.mod does not require krew $(KREW_VERSION) (hack/versions.mk)"; exit 1; }; \
		echo "build krew $(KREW_VERSION)"; \
		mkdir -p $(dir $(KREW)); \
		CGO_ENABLED=0 $(GO) -C hack/release/tools/krew build -trimpath -o $(KREW).tmp sigs.k8s.io/krew/cmd/krew && \
		mv $(KREW).tmp $(KREW); \
	fi

.PHONY: sbom-tool
sbom-tool: ## Build cyclonedx-gomod $(CYCLONEDX_GOMOD_VERSION) into $(CACHE_DIR) (cached by version).
	@if [ ! -x $(CYCLONEDX_GOMOD) ]; then \
		grep -q 'github.com/CycloneDX/cyclonedx-gomod $(CYCLONEDX_GOMOD_VERSION)' hack/release/tools/cyclonedx-gomod/go.mod || \
			{ echo "hack/release/tools/cyclonedx-gomod/go.mod does not require cyclonedx-gomod $(CYCLONEDX_GOMOD_VERSION) (hack/versions.mk)"; exit 1; }; \
		echo "build cyclonedx-gomod $(CYCLONEDX_GOMOD_VERSION)"; \
		mkdir -p $(dir $(CYCLONEDX_GOMOD)); \
		CGO_ENABLED=0 $(GO) -C hack/release/tools/cyclonedx-gomod build -trimpath -o $(CYCLONEDX_GOMOD).tmp github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod && \
		mv $(CYCLONEDX_GOMOD).tmp $(CYCLONEDX_GOMOD); \
	fi
