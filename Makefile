# speedrun-operator: every target does its own set-up (idempotent; re-runs when pyproject changes).
#   make speedrun   the CPU-tiny speedrun, locally (no cluster); installs only what running needs
#   make test       lint, generated-file drift check, the control plane's binaries, and the whole test suite
#   make cluster-bin  build the control-plane tier's binaries (Go; cached per machine)
#   make lock       re-resolve requirements/*.txt after editing pyproject.toml (lock-upgrade: newest versions)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
TOOLS_STAMP := $(VENV)/.installed-tools

.PHONY: setup speedrun test lint crd clean cluster-bin
.PHONY: lock lock-upgrade

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.in
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: 2.13.0's CPU wheel is what these machines carry (see DESIGN.md)
	$(BIN)/python -m pip install -q -c requirements/constraints.in torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements/constraints.in -e '.[train,fp8,wandb,gcs,torchx,plot,dev]'
	touch $(STAMP)

# The trainer and the CLI only (no test tools, no torchx, no W&B, no matplotlib).
$(RUN_STAMP): pyproject.toml requirements/constraints.in
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements/constraints.in torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements/constraints.in -e '.[train]'
	touch $(RUN_STAMP)

# uv, pinned by requirements/tools.txt, resolves the locks: one per install profile, with hashes,
# for CPython 3.11 on x86_64 Linux (this machine's python3, and the Dockerfile's python:3.11 images).
$(TOOLS_STAMP): requirements/tools.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --require-hashes -r requirements/tools.txt
	touch $(TOOLS_STAMP)

LOCK_FLAGS ?=
COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 $(LOCK_FLAGS)
PROFILE = $(COMPILE) pyproject.toml -c requirements/constraints.in

# One lock per install profile: operator (the operator image), speedrun (make speedrun), trainer
# (the trainer image), dev (make setup / make test: every extra); tools (this set-up's own tools).
lock: $(TOOLS_STAMP)
	$(COMPILE) requirements/tools.in -o requirements/tools.txt
	$(PROFILE) -o requirements/operator.txt
	$(PROFILE) --extra train -o requirements/speedrun.txt
	$(PROFILE) --extra train --extra wandb --extra gcs --extra fp8 -o requirements/trainer.txt
	$(PROFILE) --all-extras -o requirements/dev.txt

# An existing lock keeps its pins where they still fit; this moves every pin to the newest version.
lock-upgrade:
	$(MAKE) lock LOCK_FLAGS=--upgrade

speedrun: $(RUN_STAMP)
	$(BIN)/speedrun run examples/tiny-cpu.yaml

test: setup
	$(BIN)/ruff check .
	$(BIN)/speedrun crd --check
	$(BIN)/python -m tests.cluster.binaries build --optional
	$(BIN)/python -m pytest -q

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
