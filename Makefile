# speedrun-operator: every target does its own set-up (idempotent; re-runs when pyproject or a lock changes).
#   make speedrun   the CPU-tiny speedrun, locally (no cluster); installs only what running needs
#   make test       lint, format check, generated-file drift check, the control plane's binaries, the images, and the whole test suite
#   make test-unit | test-cluster | test-e2e   one tier alone (tests/unit needs no Go and no root)
#   make cluster-bin  build the control-plane tier's binaries, Kueue's too (Go; cached per machine)
#   make lock       re-resolve requirements/*.txt after editing pyproject.toml (lock-upgrade: newest versions)
#   make format     ruff format the tree
#   make picture    redraw the README's picture from Marin's published runs
#   make image REGISTRY=<registry/namespace> [TAG=...] [IMAGES=...]   build and push the images (docker, podman or buildah)
# The locks are resolved for CPython 3.11 on x86_64 Linux: python3.11 is preferred where one runs
# (a pyenv shim for a version not selected does not); any other interpreter is installed unlocked,
# and scripts/setup_venv.sh says so.
PYTHON ?= $(shell python3.11 -c 'import sys; print(sys.executable)' 2>/dev/null || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
TOOLS_STAMP := $(VENV)/.installed-tools

.PHONY: setup speedrun test test-unit test-cluster test-e2e lint crd clean cluster-bin picture
.PHONY: lock lock-upgrade format

setup: $(STAMP)

# Everything: the trainer, every extra, the test tools (requirements/dev.txt).
$(STAMP): pyproject.toml requirements/dev.txt requirements/tools.txt
	scripts/setup_venv.sh $(VENV) $(PYTHON) requirements/dev.txt train,fp8,wandb,gcs,torchx,plot,dev
	touch $(STAMP)

# The trainer and the CLI only (requirements/speedrun.txt: no test tools, no torchx, no W&B, no
# matplotlib). A venv that holds the full set-up keeps it (brought up to date if need be): it has
# all speedrun needs, and speedrun.txt over it would move kubernetes past the cap torchx needs.
ifneq ($(wildcard $(STAMP)),)
$(RUN_STAMP): $(STAMP)
	touch $(RUN_STAMP)
else
$(RUN_STAMP): pyproject.toml requirements/speedrun.txt requirements/tools.txt
	scripts/setup_venv.sh $(VENV) $(PYTHON) requirements/speedrun.txt train
	touch $(RUN_STAMP)
endif

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
# levanter's reference venv for the differential tests (tests/support/levanter_env.py) and the JAX
# backend's (tests/support/jax_env.py): Python 3.12, dev-versioned packages (levanter's, torchax's
# pre-release; hence the pre-release rule).
LEVANTER_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.12 \
	--python-platform x86_64-manylinux_2_28 --prerelease=if-necessary-or-explicit $(LOCK_FLAGS)

# The TPU trainer image (Dockerfile target trainer-tpu): Python 3.12 (jax 0.12), jax[tpu], torchax's
# dev release; libtpu's wheels are manylinux_2_31 (bookworm's glibc is 2.36).
TPU_COMPILE = $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.12 \
	--python-platform x86_64-manylinux_2_31 --prerelease=if-necessary-or-explicit $(LOCK_FLAGS)

# One lock per install profile: operator (the operator image), speedrun (make speedrun), trainer
# (the trainer image), dev (make setup / make test: every extra); tools (this set-up's own tools);
# levanter (the levanter reference the e2e differential tests build their own venv from); jax (the
# JAX backend's Python 3.12 venv: requirements/jax.in + the train extra, tests/support/jax_env.py).
lock: $(TOOLS_STAMP)
	$(COMPILE) requirements/tools.in -o requirements/tools.txt
	$(PROFILE) -o requirements/operator.txt
	$(PROFILE) --extra train -o requirements/speedrun.txt
	$(PROFILE) --extra train --extra wandb --extra gcs --extra fp8 -o requirements/trainer.txt
	$(PROFILE) --all-extras -o requirements/dev.txt
	$(LEVANTER_COMPILE) requirements/levanter.in -o requirements/levanter.txt
	$(TPU_COMPILE) pyproject.toml requirements/trainer-tpu.in -c requirements/constraints.in \
		--extra train --extra gcs -o requirements/trainer-tpu.txt
	$(LEVANTER_COMPILE) pyproject.toml requirements/jax.in --extra train -c requirements/constraints.in \
		-o requirements/jax.txt

# An existing lock keeps its pins where they still fit; this moves every pin to the newest version.
lock-upgrade:
	$(MAKE) lock LOCK_FLAGS=--upgrade

speedrun: $(RUN_STAMP)
	$(BIN)/speedrun run examples/tiny-cpu.yaml

# Each phase says how long it took (scripts/phase.sh: "== NAME: N s").
PHASE := scripts/phase.sh
test: setup
	@$(PHASE) lint $(BIN)/ruff check .
	@$(PHASE) format-check $(BIN)/ruff format --check .
	@$(PHASE) crd-check $(BIN)/speedrun crd --check
	@$(MAKE) --no-print-directory -j2 test-prep-bin test-prep-images
	@$(PHASE) pytest $(BIN)/python -m pytest -q

# The Go build is CPU-bound and the image build mostly waits on downloads, unpacking and the
# registry: side by side, a cold `make test` gets to pytest minutes sooner.
.PHONY: test-prep-bin test-prep-images
test-prep-bin: setup
	@$(PHASE) cluster-bin $(BIN)/python -m tests.cluster.binaries build --optional
test-prep-images: setup
	@$(PHASE) images $(BIN)/python -m tests.support.images build --optional

test-unit: setup
	$(BIN)/python -m pytest -q tests/unit

test-cluster: setup
	$(BIN)/python -m tests.cluster.binaries build --optional
	$(BIN)/python -m pytest -q tests/cluster

test-e2e: setup
	$(BIN)/python -m tests.cluster.binaries build --optional
	$(BIN)/python -m tests.support.images build --optional
	$(BIN)/python -m pytest -q tests/e2e

# The control-plane tier's etcd, kube-apiserver, kube-controller-manager, kube-scheduler, CoreDNS,
# its real nodes' kubelet and containerd 2.x (containerd, containerd-shim-runc-v2, ctr) and Kueue,
# built from tests/cluster/go/ into ~/.cache/speedrun-operator/cluster/<module>-<go.sum hash>/bin
# (never the repo; KUBEBUILDER_ASSETS=<dir> uses binaries you have instead). Needs Go; cold: see
# docs/testing.md.
cluster-bin: setup
	$(BIN)/python -m tests.cluster.binaries build

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .

crd: setup
	$(BIN)/speedrun crd

# The README's picture: the leaderboard of Marin's published runs (`--demo`: the site's data file,
# shipped in trainer/speedrun_trainer/leaderboard/marin_speedrun/), drawn by the CLI itself;
# tests/unit/deploy/test_readme_picture.py fails when the committed file drifts.
PICTURE := docs/img/leaderboard.png
picture: setup
	$(BIN)/speedrun leaderboard --demo --plot $(PICTURE) > /dev/null

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# The kind quickstart (needs docker with a running engine, kind, kubectl; see docs/operator.md, "Try it on kind").
.PHONY: kind
kind:
	scripts/kind-quickstart.sh

# The chart's three images, built from the Dockerfile's targets and pushed to a registry you can
# push to: $(REGISTRY)/operator:$(TAG), $(REGISTRY)/trainer:$(TAG) and $(REGISTRY)/trainer-tpu:$(TAG)
# (the TPU runs' training image; REGISTRY=ghcr.io/speedrun-operator gives the chart's defaults). TAG
# defaults to the chart's appVersion, the tag the chart pulls when none is set. The trainer image
# is ~6.3 GB (3.3 GB compressed, what a node pulls), the TPU trainer's ~6.7 GB (3.4 GB).
#   IMAGES="operator trainer"   build a subset (the TPU image is the largest and only TPU runs use it)
#   BUILDER=docker|podman|buildah   the builder; by default docker when its engine answers, else
#       podman, else buildah (CONTAINER_TOOL= is the same setting's older name)
#   PYTHON_IMAGE=<image>   the operator and trainer images' base (default python:3.11-slim-bookworm)
#   TPU_PYTHON_IMAGE=<image>   the TPU image's (default python:3.12-slim-bookworm)
#   INSECURE=1   plain HTTP to the registry (podman/buildah --tls-verify=false); on by itself when
#       REGISTRY or PYTHON_IMAGE is on localhost or 127.x (docker's daemon trusts those by itself)
#   BUILD_ARGS=...   more `build` arguments, e.g. --build-arg BASE=<a CUDA base for the trainer>
IMAGE_NAMES := operator trainer trainer-tpu
IMAGES ?= $(IMAGE_NAMES)
REGISTRY ?=
IMAGE_PREFIX = $(patsubst %/,%,$(REGISTRY))
TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/speedrun-operator/Chart.yaml)
PYTHON_IMAGE ?=
TPU_PYTHON_IMAGE ?=
BUILD_ARGS ?=
# Found once, when a recipe first needs it, so other targets never ask docker anything.
ifeq ($(origin BUILDER),undefined)
BUILDER = $(eval BUILDER := $(or $(CONTAINER_TOOL),$(shell \
  if docker info >/dev/null 2>&1; then echo docker; \
  elif command -v podman >/dev/null 2>&1; then echo podman; \
  elif command -v buildah >/dev/null 2>&1; then echo buildah; fi)))$(BUILDER)
endif
loopback = $(filter localhost localhost:% 127.% [::1]%,$(firstword $(subst /, ,$(1))))
INSECURE ?= $(if $(call loopback,$(REGISTRY))$(call loopback,$(PYTHON_IMAGE))$(call loopback,$(TPU_PYTHON_IMAGE)),1)
# buildah reuses a build's layers only with --layers (podman and docker always do).
BUILD_FLAGS = $(if $(filter buildah,$(BUILDER)),--layers) \
  $(if $(filter 1,$(INSECURE)),$(if $(filter docker,$(BUILDER)),,--tls-verify=false)) \
  $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
  $(if $(TPU_PYTHON_IMAGE),--build-arg TPU_PYTHON_IMAGE=$(TPU_PYTHON_IMAGE)) $(BUILD_ARGS)
PUSH_FLAGS = $(if $(filter 1,$(INSECURE)),$(if $(filter docker,$(BUILDER)),,--tls-verify=false))
HELM_IMAGE_VALUES = --set image.repository=$(IMAGE_PREFIX)/operator,image.tag=$(TAG) \
  --set trainer.image.repository=$(IMAGE_PREFIX)/trainer,trainer.image.tag=$(TAG) \
  --set trainer.tpuImage.repository=$(IMAGE_PREFIX)/trainer-tpu,trainer.tpuImage.tag=$(TAG)

# Every image is built before any is pushed, so a failed build pushes nothing.
.PHONY: image image-check
image: image-check $(IMAGES:%=image-build-%) $(IMAGES:%=image-push-%)
	@echo "Pushed. Install the chart with these images (and default storage: README.md, 'Run it on a cluster'):"
	@echo "  helm install speedrun charts/speedrun-operator -n speedrun --create-namespace $(HELM_IMAGE_VALUES)"

image-check:
	$(if $(REGISTRY),,$(error REGISTRY: give the registry and namespace to push to, e.g. make image REGISTRY=ghcr.io/you))
	$(if $(filter-out $(IMAGE_NAMES),$(IMAGES)),$(error IMAGES: $(filter-out $(IMAGE_NAMES),$(IMAGES)) is not an image; choose among $(IMAGE_NAMES)))
	$(if $(strip $(IMAGES)),,$(error IMAGES: empty; choose among $(IMAGE_NAMES)))
	$(if $(BUILDER),,$(error BUILDER: no container builder here: install docker (with a running engine), podman or buildah, or name one with BUILDER=))

image-build-%: image-check
	$(strip $(BUILDER) build $(BUILD_FLAGS) --target $* -t $(IMAGE_PREFIX)/$*:$(TAG) .)

image-push-%: $(IMAGES:%=image-build-%)
	$(strip $(BUILDER) push $(PUSH_FLAGS) $(IMAGE_PREFIX)/$*:$(TAG))
