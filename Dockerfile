# syntax=docker/dockerfile:1
# The three images of speedrun-operator, one target each:
#
#   docker build --target operator -t ghcr.io/speedrun-operator/operator:0.1.0 .   # kopf operator, no torch
#   docker build --target trainer  -t ghcr.io/speedrun-operator/trainer:0.1.0 .    # torch 2.13.0
#   docker build --target trainer-tpu -t ghcr.io/speedrun-operator/trainer-tpu:0.1.0 .   # jax[tpu], TPU runs
#
# `make image REGISTRY=<registry/namespace you can push to>` builds them as <REGISTRY>/operator,
# <REGISTRY>/trainer and <REGISTRY>/trainer-tpu (tag: the chart's appVersion), pushes them and
# prints the `helm install` line.
#
# Each installs its lock, hash-checked: requirements/operator.txt (the base dependencies) and
# requirements/trainer.txt (train, wandb, gcs, fp8), resolved by `make lock` for CPython 3.11 on
# x86_64 Linux, the python:3.11 image's (the TPU image's requirements/trainer-tpu.txt: 3.12's).
# The trainer's torch is PyPI's 2.13.0, which on Linux x86_64 is the CUDA build: its CUDA
# libraries ride along as nvidia-* wheels (the node brings the driver), so one image serves CPU
# and GPU nodes (~6.3 GB; 3.3 GB to pull).
# BASE picks another base image for the trainer (e.g. nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04);
# one without python3 gets Debian/Ubuntu's (Ubuntu 24.04's 3.12 installs the 3.11 lock: its hashes
# cover every wheel of each pinned version; 3.10, e.g. Ubuntu 22.04's, does not).
#
# pip's download cache is a build cache mount (RUN --mount=type=cache: docker's BuildKit, podman
# and buildah keep it on the build machine, never in a layer), so a rebuild after a lock change
# downloads only the wheels that changed, and the trainer and TPU images share the nvidia-* wheels.
#
# All three run as UID/GID 1000 (the operator's SPEEDRUN_OPERATOR_RUN_AS_USER default) and work with a
# read-only root filesystem: HOME is /tmp, which the pods mount as an emptyDir. Layers go from
# least to most often changed: dependencies (from the locks) before the source.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG BASE=${PYTHON_IMAGE}
# The TPU image's base: jax 0.12 needs Python >= 3.12.
ARG TPU_PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- operator ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS operator-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY requirements/operator.txt requirements/
# The base dependencies only: no `train` extra, so no torch.
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked pip install --require-hashes -r requirements/operator.txt
COPY pyproject.toml README.md ./
COPY api/ api/
COPY trainer/ trainer/
COPY operator/ operator/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked pip install --no-deps . \
 && speedrun operator --help >/dev/null \
 && if pip show torch >/dev/null 2>&1; then echo "torch must not be in the operator image" >&2; exit 1; fi

FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="speedrun-operator" \
      org.opencontainers.image.description="kopf operator for SpeedrunJob (speedrun.dev/v1alpha1)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 1000 speedrun \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin speedrun
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
# 9090: Prometheus metrics; 8080: kopf's /healthz (both set by the chart).
EXPOSE 9090 8080
CMD ["speedrun", "operator"]

# ---- trainer -----------------------------------------------------------------------------------
# One stage: the venv is made where it runs. A build stage's venv would come over by a 5 GB
# COPY --from, whose cache check alone reads the whole venv and whose layer is a second copy of it
# on the build machine.
FROM ${BASE} AS trainer
LABEL org.opencontainers.image.title="speedrun-trainer" \
      org.opencontainers.image.description="GPT speedrun trainer and evaluator (torchrun -m speedrun_trainer.train)" \
      org.opencontainers.image.licenses="Apache-2.0"
# torch.compile needs a compiler at run time: Triton builds its CUDA launcher with gcc against
# Python.h on first use, and inductor's CPU kernels are C++ (g++). The python images carry the
# headers; a base without python3 gets Debian/Ubuntu's python3 with python3-dev.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
 && { command -v python3 >/dev/null || apt-get install -y --no-install-recommends python3 python3-venv python3-dev; } \
 && rm -rf /var/lib/apt/lists/* \
 && { getent group 1000 >/dev/null || groupadd --gid 1000 speedrun; } \
 && { getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin speedrun; } \
 && python3 -m venv /opt/venv
# torch and the rest in one layer, rebuilt only when the lock changes (the lock stays in the image,
# a record of what it holds).
COPY requirements/trainer.txt /opt/speedrun/requirements/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/pip install --require-hashes -r /opt/speedrun/requirements/trainer.txt
# The image proves it compiles: inductor's C++ path compiles and runs a small function here, in
# the final image (its cache goes to a scratch dir removed in the same layer).
RUN TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-check /opt/venv/bin/python3 -c "import torch; \
f = torch.compile(lambda x: (x * 2).sin() + x.cos()); x = torch.arange(8.0); \
assert torch.allclose(f(x), (x * 2).sin() + x.cos()); print('torch.compile (inductor C++): ok')" \
 && rm -rf /tmp/inductor-check
# The project last, in its own small layer: a change to the source alone rebuilds (and pushes) a
# few MB, not the 5 GB venv layer under it.
COPY pyproject.toml README.md /src/
COPY api/ /src/api/
COPY trainer/ /src/trainer/
COPY operator/ /src/operator/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/pip install --no-deps /src \
 && rm -rf /src \
 && /opt/venv/bin/python3 -c "import torch, speedrun_trainer.train.loop; print('torch', torch.__version__)"
# torch.compile and friends cache under HOME; the pods mount /tmp and the shard cache as emptyDirs.
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SPEEDRUN_CACHE_DIR=/var/cache/speedrun
USER 1000:1000
# 9400: rank 0's Prometheus metrics; 29400: the c10d rendezvous.
EXPOSE 9400 29400
CMD ["speedrun", "--help"]

# ---- trainer-tpu -------------------------------------------------------------------------------
# The TPU runs' training image (the operator's SPEEDRUN_OPERATOR_TPU_TRAINER_IMAGE): the JAX backend
# (docs/contracts.md), python:3.12 (jax 0.12 needs >= 3.12), requirements/trainer-tpu.txt: jax[tpu]
# with libtpu, torchax and torch 2.13.0 (the GPT is torch code run through torchax), hash-checked.
# torch is PyPI's (its nvidia-* wheels ride along unused: a CPU-index torch cannot be hash-locked
# from where the locks are made). One stage, as the trainer's (a build stage's venv would come over
# by a COPY --from as big as the venv); same user, HOME and read-only root as the trainer image.
FROM ${TPU_PYTHON_IMAGE} AS trainer-tpu
LABEL org.opencontainers.image.title="speedrun-trainer-tpu" \
      org.opencontainers.image.description="GPT speedrun trainer on TPU (JAX: python -m speedrun_trainer.train.jax_main)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN { getent group 1000 >/dev/null || groupadd --gid 1000 speedrun; } \
 && { getent passwd 1000 >/dev/null || useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin speedrun; } \
 && python3 -m venv /opt/venv
# jax, libtpu, torch and the rest in one layer, rebuilt only when the lock changes.
COPY requirements/trainer-tpu.txt /opt/speedrun/requirements/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/pip install --require-hashes -r /opt/speedrun/requirements/trainer-tpu.txt
# The project last, in its own small layer over the venv; the image imports the JAX backend's
# loop and step (jax, optax, torchax, torch), as jax_main does, before it is done.
COPY pyproject.toml README.md /src/
COPY api/ /src/api/
COPY trainer/ /src/trainer/
COPY operator/ /src/operator/
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/venv/bin/pip install --no-deps /src \
 && rm -rf /src \
 && /opt/venv/bin/python3 -c "import jax, torchax, torch, speedrun_trainer, speedrun_trainer.train.jax_loop; \
print('jax', jax.__version__, 'torch', torch.__version__)"
# jax and libtpu cache under HOME; the pods mount /tmp and the shard cache as emptyDirs.
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    SPEEDRUN_CACHE_DIR=/var/cache/speedrun
USER 1000:1000
# 9400: process 0's Prometheus metrics; 8482: jax.distributed's coordinator on worker 0 (jax 0.12 on GKE).
EXPOSE 9400 8482
CMD ["speedrun", "--help"]
