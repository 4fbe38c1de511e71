# The two commands of the README, and what they need. Everything installs into .venv.
#   make demo   install, then run the main job on its embedded default (no cluster, no GPU)
#   make test   install (with test tools and services), then run every test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
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

# A hard limit well under CI's 90 minutes, so a hang can never eat the whole budget.
test: install-test services go-tools
	timeout 2400 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
