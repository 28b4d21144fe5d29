"""TPU slices scheduled the GKE way: one pod per host, one JAX process per pod.

A `resources.accelerator: tpu-*` run's training Job is still the Indexed Job of train_job.py
(completions = parallelism = the slice's hosts, `subdomain` = the headless Service), which is
what GKE's TPU webhook looks for: it injects `TPU_WORKER_ID` (the completion index) and
`TPU_WORKER_HOSTNAMES` (every pod's `<name>-train-<i>.<name>`) into pods that request
`google.com/tpu`, and `jax.distributed.initialize()` reads them, reaching worker 0 on
`JAX_COORDINATOR_PORT`. So the pod here differs from a GPU node's only in:

- its image: the TPU trainer image (jax[tpu], the operator's `tpu_trainer_image`) unless
  `spec.image` names one;
- its command: the JAX trainer (`speedrun_trainer.train.jax_main`, docs/contracts.md), no torchrun:
  JAX has no per-chip processes to launch; `SPEEDRUN_JAX_PLATFORM=tpu` makes a pod that finds no
  TPU fail instead of training on the host's CPU;
- its requests: `google.com/tpu: <chips per host>`, with the gke-tpu-accelerator and
  gke-tpu-topology node selectors (common.resources and common.node_selector).

The eval pod of a TPU run asks for no TPU: the torch evaluation loads the checkpoint on CPU, in
the plain trainer image, anywhere in the cluster (a slice's hosts are all or nothing, and the
scoring is one forward pass over the evaluation set). Multislice (`MEGASCALE_*`, several slices
over the data-center network) is not supported yet: one slice per run.
"""

from __future__ import annotations

from typing import Any

from speedrun_api.spec import SpeedrunJob
from speedrun_api.tpu import JAX_COORDINATOR_PORT, Slice, slice_of
from speedrun_operator import labels as L

# The JAX backend's entry point and environment (docs/contracts.md "JAX backend entry point").
JAX_TRAIN_MODULE = "speedrun_trainer.train.jax_main"
ENV_JAX_PLATFORM = "SPEEDRUN_JAX_PLATFORM"  # "tpu": the trainer never falls back to jax's CPU
PORT_NAME_COORDINATOR = "jax-coordinator"


def tpu_slice(job: SpeedrunJob) -> Slice | None:
    """The job's TPU slice (the spec's rules guarantee it resolves), or None for GPUs and CPU."""
    return slice_of(job.spec.resources)


def train_command(job: SpeedrunJob) -> list[str]:
    """One JAX process per host: jax.distributed reads TPU_WORKER_ID / TPU_WORKER_HOSTNAMES itself."""
    return ["python", "-m", JAX_TRAIN_MODULE, "--config", L.CONFIG_PATH]


def train_env() -> list[dict[str, Any]]:
    return [{"name": ENV_JAX_PLATFORM, "value": "tpu"}]


def train_ports(job: SpeedrunJob) -> list[dict[str, Any]]:
    return [
        {"name": PORT_NAME_COORDINATOR, "containerPort": JAX_COORDINATOR_PORT},
        {"name": L.PORT_NAME_METRICS, "containerPort": job.spec.metrics.port},
    ]
