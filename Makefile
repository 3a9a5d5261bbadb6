# k8secrets: see README.md. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

MODULE    := github.com/k8secrets/k8secrets
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN       := $(CURDIR)/bin
GO        ?= go
GOFLAGS_BUILD := -trimpath -ldflags "-s -w -X $(MODULE)/internal/version.Version=$(VERSION)"

# Versions of everything the tests and the kind cluster build; pinned here only.
include hack/versions.mk

# Heavy builds live outside the clone, keyed by version, so that a rerun on
# the same machine (and CI after a session) reuses them.
CACHE_DIR ?= $(HOME)/.cache/k8secrets
KUBE_BIN  ?= $(CACHE_DIR)/kubernetes-$(K8S_VERSION)/bin
export CACHE_DIR KUBE_BIN

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: build
build: ## Build static binaries of the Job and the agent into bin/.
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/k8secrets-job ./job
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN)/k8secrets-agent ./agent

.PHONY: lint
lint: ## go vet and gofmt.
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

.PHONY: unit
unit: test-assets ## Unit tests and real-API-server tests, with the race detector.
	K8SECRETS_TEST_ASSETS=$(KUBE_BIN) $(GO) test -race -count=1 ./...

.PHONY: test
test: lint unit ## Everything CI runs: lint, unit and API-server tests.

.PHONY: test-assets
test-assets: ## Build etcd and kube-apiserver for the API-server tests (cached by version).
	hack/kube-binaries.sh etcd kube-apiserver

.PHONY: clean
clean: ## Remove bin/ (the cache under $(CACHE_DIR) stays).
	rm -rf $(BIN)
