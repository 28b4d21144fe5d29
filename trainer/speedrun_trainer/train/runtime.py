"""Process runtime shared by the training and evaluation entry points.

torch.distributed set-up from torchrun's environment (NCCL on GPU, gloo on CPU), the device,
the autocast context for the spec's precision, the run's storage and the config loading that
turns a bad config into exit code 2 (the operator's podFailurePolicy fails the Job at once on it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from speedrun_api.accelerator_labels import device_kind
from speedrun_api.manifest import EXIT_INVALID, ConfigError, SpecError, load_job
from speedrun_api.run_contract import ENV_RUN_ID, ENV_RUN_LOCK_HELD, PHASE_PREFIX
from speedrun_api.spec import SpeedrunJob, train_backend
from speedrun_api.spec_placement import RunPolicy
from speedrun_trainer.data.run_lease import hold_run
from speedrun_trainer.data.run_lock import Holder, RunLocked
from speedrun_trainer.data.storage import DataError, Storage, open_storage
from speedrun_trainer.train import nccl_transport, rank_order
from speedrun_trainer.train.startup_checks import failure_exit, run_storage_uri

# spec.runPolicy.collectiveTimeoutSeconds' default (600 s, torch's NCCL default), for callers without a spec.
DEFAULT_COLLECTIVE_TIMEOUT_SECONDS = float(RunPolicy.model_fields["collective_timeout_seconds"].default)


class DeviceError(Exception):
    """The accelerator the spec asks for is not here (a node problem: exit 1, worth a retry)."""


@dataclass
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def log(msg: str) -> None:
    """Rank-0 log line with a timestamp (stdout, flushed: pods and `speedrun run` read it)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def phase(text: str) -> None:
    """Rank 0 begins a set-up phase: one log line `speedrun run` shows as its live line."""
    log(f"{PHASE_PREFIX}{text}")


def load_config(path: str) -> SpeedrunJob:
    """Load the run config or exit 2 with one line per problem."""
    try:
        return load_job(path)
    except SpecError as err:
        from speedrun_trainer.train.torchrun import INVALID_CONFIG, report_config_error

        if not report_config_error(err.lines[0]):
            for line in err.lines:
                print(f"{INVALID_CONFIG}{line}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INVALID)


def setup_distributed(collective_timeout_seconds: float = DEFAULT_COLLECTIVE_TIMEOUT_SECONDS) -> Dist:
    """torch.distributed from torchrun's env; a collective that waits longer than
    `collective_timeout_seconds` (spec.runPolicy.collectiveTimeoutSeconds) fails the rank (gloo
    raises; NCCL's watchdog aborts the process, TORCH_NCCL_ASYNC_ERROR_HANDLING's default), so
    its pod fails and the gang restarts instead of hanging on a peer that will never answer."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = dt.timedelta(seconds=collective_timeout_seconds)
        if rank_order.wanted():  # a training pod: ranks in completion-index order (train/rank_order.py)
            store, rank = rank_order.by_completion_index(timeout)
            dist.init_process_group(backend=backend, timeout=timeout, store=store, rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)
        nccl_transport.report(backend, log=log)  # which network NCCL uses between nodes; warns on sockets
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device)


def check_device(job: SpeedrunJob, env: Dist) -> None:
    """Refuse to train a GPU or TPU manifest on the host CPU: an accelerator the table lacks (with
    deviceFlops) is a GPU too (api accelerator_labels.py), so it is never trained on the CPU either.

    A ConfigError: exit code 2, which the operator's podFailurePolicy takes as final. A pod that
    asked for GPUs and sees none has an image without CUDA or a node whose runtime does not hand
    the GPUs to containers; another attempt gets the same, and a run that trained on the CPU
    would report a GPU's MFU for it."""
    if train_backend(job.spec) == "jax":  # jax_main trains it; torchrun never should
        raise ConfigError(
            "spec.train.backend: jax trains under `python -m speedrun_trainer.train.jax_main`, not torchrun"
        )
    name = job.spec.resources.accelerator
    kind = device_kind(name)
    if kind == "cpu":
        return
    if kind == "tpu":  # torch_xla is tied to an older torch: TPUs train through jax (torchax)
        raise ConfigError(
            f"spec.train.backend: torch cannot train on {name} (no torch_xla for this torch); "
            "use jax (the default on TPUs)"
        )
    if env.device.type != "cuda":
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise ConfigError(
            f"spec.resources.accelerator: {name} is a GPU, but torch (built {build}) sees no CUDA device"
            " here; refusing to train on the CPU"
        )


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def native_bf16_matmul(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices natively: CUDA, or a CPU with AVX512-BF16 or AMX
    (oneDNN's check of the CPU's capability flags; there a bf16 matmul runs about twice as fast as fp32).
    Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The dtype `precision` runs matmuls in on `device` (None: fp32, no autocast).

    bf16 on CUDA for bf16 and fp8 (whose FP8 layers are torchao's, train/fp8.py); bf16 on CPUs
    that multiply it natively (`native_bf16_matmul`) for bf16, as torch's CPU autocast does it:
    matmuls, linear and attention in bf16, norms, softmax, the loss and the weights in fp32.
    A CPU without native bf16 would emulate it, slower than fp32: there bf16 trains in fp32.
    """
    if device.type == "cuda" and precision in ("bf16", "fp8"):
        return torch.bfloat16
    if device.type == "cpu" and precision == "bf16" and native_bf16_matmul(device):
        return torch.bfloat16
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """`torch.autocast` in `autocast_dtype(device, precision)`, or a no-op where that is fp32."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def resolve_compile(setting: bool | None, device: torch.device) -> bool:
    """`train.compile`: as given, or when omitted (None) on for CUDA and off elsewhere."""
    return device.type == "cuda" if setting is None else setting


def run_storage(job: SpeedrunJob) -> Storage:
    """The run's storage: what the launcher set, else spec.storage.uri, else `runs/<name>` here."""
    return open_storage(run_storage_uri(job), endpoint_url=job.spec.storage.endpoint_url)


@contextlib.contextmanager
def run_writer(job: SpeedrunJob, env: Dist) -> Iterator[None]:
    """Rank 0, the one process that writes the run's storage, holds the run's lock (data/run_lock.py)
    for the block: in pods and for entry points started by hand. Under `speedrun run` its launcher
    holds it for everything it starts (`SPEEDRUN_RUN_LOCK_HELD=1`), and the workers take none."""
    if not env.is_main or os.environ.get(ENV_RUN_LOCK_HELD) == "1":
        yield
        return
    from speedrun_trainer.train.preflight import check_writable

    storage = run_storage(job)
    if storage.local_path("") is not None:  # a path that cannot be written is an invalid config, lock or not
        check_writable(storage)
    # The same run restarted (a new pod of the same SpeedrunJob, a worker restarted by its agent)
    # takes over its own lease at once instead of waiting for it to expire.
    restart_key = os.environ.get(ENV_RUN_ID) or os.environ.get("TORCHELASTIC_RUN_ID") or None
    with hold_run(storage, Holder.here(restart_key or job.metadata.name, restart_key)):
        yield


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (identity when not distributed)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under a fixed torch seed, restoring the previous RNG state after."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def entry_point(
    prog: str, description: str, body: Callable[[SpeedrunJob, Dist], int], argv: list[str] | None = None
) -> int:
    """`python -m <prog> --config FILE`: load the config, set up torch.distributed, run `body`.

    Exit codes: 0 done; 2 the config can never work (found before or while running: the spec,
    the tokenizer, the data, a storage that cannot be written or holds another spec's run; the
    torchrun wrapper passes it on and stops its agent from restarting) or another writer holds
    the run, or a GPU run where torch sees no GPU (check_device); 1 anything worth a retry: a
    network failure.
    """
    from speedrun_trainer.train.torchrun import die_with_parent

    if os.environ.get("TORCHELASTIC_RUN_ID"):  # a worker of a torchrun agent: go when it goes
        die_with_parent()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", required=True, help="SpeedrunJob manifest (YAML or JSON)")
    args = parser.parse_args(argv)
    job = load_config(args.config)
    env = setup_distributed(job.spec.run_policy.collective_timeout_seconds)
    try:
        with run_writer(job, env):
            return body(job, env)
    except (ConfigError, DataError, RunLocked) as err:
        # Found at run time: the tokenizer, the vocabulary, the world size, the data, the storage
        # (train/startup_checks.py says which failures no retry can fix), or another writer
        # holding the run (a usage error: a retry would be refused the same way).
        code, line = (EXIT_INVALID, str(err)) if isinstance(err, RunLocked) else failure_exit(err)
        if code != EXIT_INVALID:
            print(f"{prog}: {line}", file=sys.stderr, flush=True)
            return code
        from speedrun_trainer.train.torchrun import INVALID_CONFIG, report_config_error

        if not report_config_error(line):  # else the torchrun wrapper prints it, once for the node
            print(f"{INVALID_CONFIG}{line}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    except DeviceError as err:
        print(f"{prog}: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        teardown_distributed()
