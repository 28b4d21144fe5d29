# speedrun-operator: every target does its own set-up (idempotent; re-runs when pyproject changes).
#   make speedrun   the CPU-tiny speedrun, locally (no cluster); installs only what running needs
#   make test       lint, generated-file drift check, the control plane's binaries, and the whole test suite
#   make test-unit | test-cluster | test-e2e   one tier alone (tests/unit needs no Go and no root)
#   make cluster-bin  build the control-plane tier's binaries (Go; cached per machine)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run

.PHONY: setup speedrun test test-unit test-cluster test-e2e lint crd clean cluster-bin

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0's CPU wheel is what these machines carry (see DESIGN.md)
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train,fp8,wandb,gcs,torchx,plot,dev]'
	touch $(STAMP)

# The trainer and the CLI only (no test tools, no torchx, no W&B, no matplotlib).
$(RUN_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train]'
	touch $(RUN_STAMP)

speedrun: $(RUN_STAMP)
	$(BIN)/speedrun run examples/tiny-cpu.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/speedrun crd --check
	$(BIN)/python -m tests.cluster.binaries build --optional
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

test-cluster: setup
	$(BIN)/python -m tests.cluster.binaries build --optional
	$(BIN)/python -m pytest -q tests/cluster

test-e2e: setup
	$(BIN)/python -m tests.cluster.binaries build --optional
	$(BIN)/python -m pytest -q tests/e2e

# The control-plane tier's etcd, kube-apiserver, kube-controller-manager, kube-scheduler and CoreDNS,
# built from tests/cluster/go/ into ~/.cache/speedrun-operator/cluster/<go.sum hash>/bin (never the
# repo; KUBEBUILDER_ASSETS=<dir> uses binaries you have instead). Needs Go; cold: see README "Testing".
cluster-bin: setup
	$(BIN)/python -m tests.cluster.binaries build

lint: setup
	$(BIN)/ruff check .

crd: setup
	$(BIN)/speedrun crd

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# The kind quickstart (needs docker with a running engine, kind, kubectl; see README "Try it on kind").
.PHONY: kind
kind:
	scripts/kind-quickstart.sh
