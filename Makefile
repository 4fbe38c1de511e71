# The two commands of the README, and what they need. Everything installs into .venv.
#   make demo   install, then run the main job on its embedded default (no cluster, no GPU)
#   make test   install (with test tools and services), then run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch, pinned. pip takes a CPU build where its find-links hold one (some machines have one on
# local disk); otherwise PyPI's default Linux build, which bundles CUDA and also runs on CPU.
TORCH  ?= torch==2.13.0

.PHONY: demo test install install-test services go-tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps make re-runs fast; they are redone when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[operator,trainer]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[operator,trainer,test]'
	# DeepSpeed builds from source: against the torch above, with no ops compiled ahead.
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet --no-build-isolation 'deepspeed>=0.15'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Services the tests run for real (Prometheus from Debian's package; tests start it on loopback).
services:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else echo "prometheus is not installed: sudo apt-get install -y prometheus (tests that need it will fail)"; fi; }

demo: install
	$(BIN)/cpt run-local examples/local

# The Go programs the tests run (tests/support/gotools.py): built before pytest, so a cold
# build (minutes) is never charged to one test's timeout; a warm rebuild takes seconds.
go-tools: install-test
	$(BIN)/python tests/support/gotools.py

# A hard limit under CI's 90 minutes, so a hang can never eat the whole budget: 50 min, since
# pytest took 21 min alone and 30 min beside a second CI run, and a cold setup takes about 26 min.
test: install-test services go-tools
	timeout 3000 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache

# A real control plane for the tests (etcd, kube-apiserver, kube-controller-manager on loopback),
# built from Go modules by tests/cluster/controlplane. State, kubeconfigs and logs go in .cluster/.
#   make cluster        build (incremental) and start it in the background; returns once it is ready
#   make cluster-down   stop it
CLUSTER_DIR ?= $(CURDIR)/.cluster
CLUSTER_BIN := $(CLUSTER_DIR)/bin/controlplane
GO          ?= go

.PHONY: cluster cluster-build cluster-down

# The version the apiserver reports comes from the linker flags, as in upstream's own builds
# (clients such as Kueue refuse "v0.0.0-master"); it is the k8s.io/kubernetes of go.mod.
cluster-build:
	@mkdir -p $(CLUSTER_DIR)/bin
	cd tests/cluster/controlplane && v=$$($(GO) list -m -f '{{.Version}}' k8s.io/kubernetes) && \
	  major=$$(echo $$v | cut -d. -f1 | tr -d v) && minor=$$(echo $$v | cut -d. -f2) && p=k8s.io/component-base/version && \
	  GOFLAGS="-mod=readonly -p=2" nice $(GO) build -o $(CLUSTER_BIN) \
	  -ldflags "-X $$p.gitVersion=$$v -X $$p.gitMajor=$$major -X $$p.gitMinor=$$minor -X $$p.gitTreeState=clean" .

cluster: cluster-build
	@if [ -f $(CLUSTER_DIR)/pid ] && kill -0 $$(cat $(CLUSTER_DIR)/pid) 2>/dev/null; then \
	  echo "cluster already running (pid $$(cat $(CLUSTER_DIR)/pid))"; exit 0; fi; \
	rm -f $(CLUSTER_DIR)/ready; \
	nohup $(CLUSTER_BIN) --state-dir $(CLUSTER_DIR) >$(CLUSTER_DIR)/controlplane.log 2>&1 </dev/null & pid=$$!; \
	for i in $$(seq 1 600); do \
	  [ -f $(CLUSTER_DIR)/ready ] && { echo "cluster ready: $$(cat $(CLUSTER_DIR)/ready) (kubeconfigs in $(CLUSTER_DIR))"; exit 0; }; \
	  kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
	echo "cluster did not start; last lines of $(CLUSTER_DIR)/controlplane.log:"; \
	tail -n 30 $(CLUSTER_DIR)/controlplane.log; kill $$pid 2>/dev/null; exit 1

cluster-down:
	@if [ -f $(CLUSTER_DIR)/pid ]; then pid=$$(cat $(CLUSTER_DIR)/pid); kill -TERM $$pid 2>/dev/null; \
	  for i in $$(seq 1 120); do kill -0 $$pid 2>/dev/null || break; sleep 0.5; done; \
	  kill -0 $$pid 2>/dev/null && kill -KILL $$pid; rm -f $(CLUSTER_DIR)/pid $(CLUSTER_DIR)/ready; \
	  echo "cluster stopped"; else echo "cluster not running"; fi
