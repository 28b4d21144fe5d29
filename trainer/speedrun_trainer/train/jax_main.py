"""`python -m speedrun_trainer.train.jax_main --config run.json`: the JAX backend's training entry point.

One plain process per host (a TPU VM, a pod of a TPU slice, or a test's process), never under
torchrun; each uses every local device. How the processes find each other (docs/contracts.md,
"JAX backend entry point"), first match wins:

1. `SPEEDRUN_JAX_COORDINATOR=host:port`: explicit, with `SPEEDRUN_JAX_NUM_PROCESSES` and
   `SPEEDRUN_JAX_PROCESS_ID` (else `TPU_WORKER_ID`, else `JOB_COMPLETION_INDEX`). `speedrun run`
   and the CPU tests join this way over loopback.
2. `TPU_WORKER_HOSTNAMES` naming more than one host (GKE sets it, and `TPU_WORKER_ID`, on the pods
   of a multi-host TPU slice): `jax.distributed.initialize()` reads them itself (its GkeTpuCluster,
   named: never its K8sCluster, which needs a ServiceAccount token). jax looks for
   them only where libtpu found a TPU, so with `SPEEDRUN_JAX_PLATFORM=cpu` (a CPU host standing
   in for a TPU host: the control-plane tests) the process joins as jax's GkeTpuCluster would,
   explicitly: worker 0's hostname on port 8482, `TPU_WORKER_ID` its id.
3. Otherwise one process.

`SPEEDRUN_JAX_PLATFORM` (cpu | tpu) sets `JAX_PLATFORMS` before jax loads. A `tpu-*` accelerator
with no TPU here exits 1 (a node problem, worth a retry), never falling back to the host CPU
silently; only an explicit `SPEEDRUN_JAX_PLATFORM=cpu` (which the operator never sets, and
spec.env cannot) trains a TPU manifest on the CPU in the chips' place, saying so.
Exit codes as the torch entry point (train/runtime.py `entry_point`): 2 an invalid config, its
one line last on stderr; 1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

from speedrun_api.accelerators import lookup
from speedrun_api.manifest import EXIT_INVALID, ConfigError
from speedrun_api.spec import SpeedrunJob
from speedrun_api.tpu import JAX_COORDINATOR_PORT
from speedrun_trainer.data.run_lock import RunLocked
from speedrun_trainer.data.storage import DataError
from speedrun_trainer.train.runtime import DeviceError, Dist, load_config, log, phase, run_writer
from speedrun_trainer.train.startup_checks import failure_exit
from speedrun_trainer.train.trainer_base import finish_training

ENV_COORDINATOR = "SPEEDRUN_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SPEEDRUN_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SPEEDRUN_JAX_PROCESS_ID"
ENV_PLATFORM = "SPEEDRUN_JAX_PLATFORM"
PROG = "speedrun_trainer.train.jax_main"
# Everything given: jax detects nothing more. Its detection would otherwise still run for
# local_device_ids, and in a pod (KUBERNETES_SERVICE_HOST) its K8sCluster asks the apiserver with
# a ServiceAccount token the trainer's pods do not mount (and would pick one device per process).
EXPLICIT = {"cluster_detection_method": "deactivate"}
GKE_TPU = {"cluster_detection_method": "gketpu"}  # GKE's variables by name, never K8sCluster's API call


def join_args(environ: dict[str, str]) -> dict[str, object] | None:
    """`jax.distributed.initialize`'s keyword arguments from the environment; None: one process.

    Raises ConfigError naming the variable when the explicit form is incomplete."""
    coordinator = environ.get(ENV_COORDINATOR)
    if coordinator:
        try:
            count = int(environ[ENV_NUM_PROCESSES])
            pid = int(
                environ.get(ENV_PROCESS_ID) or environ.get("TPU_WORKER_ID") or environ.get("JOB_COMPLETION_INDEX") or ""
            )
        except (KeyError, ValueError):
            raise ConfigError(
                f"{ENV_COORDINATOR} is set: {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} (or TPU_WORKER_ID)"
                " must be integers"
            ) from None
        if count < 1 or not 0 <= pid < count:
            raise ConfigError(f"{ENV_PROCESS_ID}: {pid} is not in 0..{count - 1} ({ENV_NUM_PROCESSES}={count})")
        return {"coordinator_address": coordinator, "num_processes": count, "process_id": pid, **EXPLICIT}
    hosts = [h.strip() for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) <= 1:
        return None
    if environ.get(ENV_PLATFORM) != "cpu":
        return GKE_TPU  # a TPU VM: jax's GkeTpuCluster reads them (and MEGASCALE_* of a multislice)
    try:  # a CPU host playing a TPU host: join as GkeTpuCluster would, which jax skips without libtpu
        pid = int(environ["TPU_WORKER_ID"])
    except (KeyError, ValueError):
        raise ConfigError("TPU_WORKER_HOSTNAMES names several hosts: TPU_WORKER_ID must be an integer") from None
    return {"coordinator_address": f"{hosts[0]}:{JAX_COORDINATOR_PORT}", "num_processes": len(hosts),
            "process_id": pid, **EXPLICIT}  # fmt: skip


def check_platform(job: SpeedrunJob, backend: str, forced: str = "") -> None:
    """A TPU manifest trains on a TPU, nowhere else (jax would fall back to the CPU silently),
    unless `forced` (SPEEDRUN_JAX_PLATFORM) is cpu: the CPU then stands in for the chips, said once."""
    acc = lookup(job.spec.resources.accelerator)
    if acc is not None and acc.kind != "cpu" and backend == "cpu" and forced == "cpu":
        log(f"{ENV_PLATFORM}=cpu: training the {acc.name} manifest on this host's CPU devices in its place")
        return
    if acc is not None and acc.kind == "tpu" and backend != "tpu":
        raise DeviceError(f"spec.resources.accelerator is {acc.name}, but jax's backend here is {backend}, not tpu")
    if acc is not None and acc.kind == "gpu" and backend not in ("gpu", "cuda"):
        raise DeviceError(f"spec.resources.accelerator is {acc.name}, but jax's backend here is {backend}")


def _train(job: SpeedrunJob) -> int:
    import jax

    from speedrun_trainer.train.jax_loop import JaxTrainer

    check_platform(job, jax.default_backend(), os.environ.get(ENV_PLATFORM, ""))
    env = Dist(rank=jax.process_index(), local_rank=0, world_size=1, device=torch.device("cpu"))
    print(f"jax process {env.rank}/{jax.process_count()} with {jax.local_device_count()} device(s)", flush=True)
    with run_writer(job, env):
        return finish_training(JaxTrainer(job, env))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="SpeedrunJob manifest (YAML or JSON)")
    args = parser.parse_args(argv)
    if os.environ.get(ENV_PLATFORM):
        os.environ["JAX_PLATFORMS"] = os.environ[ENV_PLATFORM]
    job = load_config(args.config)
    try:
        join = join_args(dict(os.environ))
        if os.environ.get("RANK", "0") == "0" and (join is None or join.get("process_id", 0) == 0):
            phase("importing jax")
        import jax

        # torchax casts token ids to int64, which jax (x64 off) keeps as int32: harmless, said per trace
        warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")
        if join is not None:
            jax.distributed.initialize(**join)  # type: ignore[arg-type]
        return _train(job)
    except (ConfigError, DataError, RunLocked) as err:
        code, line = (EXIT_INVALID, str(err)) if isinstance(err, RunLocked) else failure_exit(err)
        if code != EXIT_INVALID:
            print(f"{PROG}: {line}", file=sys.stderr, flush=True)
            return code
        from speedrun_trainer.train.torchrun import INVALID_CONFIG, report_config_error

        report_config_error(line)
        print(f"{INVALID_CONFIG}{line}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    except DeviceError as err:
        print(f"{PROG}: {err}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
