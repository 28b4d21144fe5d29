"""Trainer speed, measured side by side: our real training step against two references, in one run.

    python bench/bench_trainer.py --device cpu                        # tiny config: fp32, + ours at bf16
    python bench/bench_trainer.py --device cuda --config gpt2-124m    # bf16 autocast, compile
    python bench/bench_trainer.py --device cuda --precision fp8       # ours in FP8 (torchao)
    python bench/bench_trainer.py --device cpu --json                 # one JSON object on stdout

Contenders (bench/contenders.py): `ours` is the trainer's own step (model, Muon + AdamW, clip,
the prefetching shard loader, DDP only as the trainer uses it); `reference` a plain nanoGPT-style GPT with
for-loop AdamW (reference_gpt.py); `modded` modded-nanogpt's GPT-2 step re-implemented from its
source (modded_gpt.py). On CPU `ours` runs fp32 like the references (nanoGPT's train.py runs fp32
on cpu) and, where the trainer's default `train.precision` (bf16) autocasts on this CPU, a second
time as `ours_default`: every ratio names the two rows it divides (trainer_report.py). All train
the same shape (hidden, layers, MLP width, seq len, vocab, tied head) on the same tokens, for
`--steps` steps per round after `--warmup` steps. Rounds alternate
ours, [ours_default,] reference, modded, ours, ... so machine noise hits all; step time and tokens/s are medians
over rounds, and each speedup is also given as the median of per-round ratios and as the ratio of
the best rounds. Inside our timed steps nothing syncs with the host; the device is synchronized
only at round boundaries.

MFU = training FLOPs per token (levanter's formula, `flops.training_flops_per_token` of the
equivalent ModelSpec, the same for all) x tokens/s / peak FLOP/s. The peak comes from the
accelerator table (`--accelerator`, detected from the GPU name on CUDA; `cpu` is the nominal
1e11). Each round also times a large matmul in the training dtype (and in bf16 for `ours_default`),
and MFU is reported against that measured peak too (the median over rounds of each round's best).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from contenders import CONFIGS, Contender, build_modded, build_ours, build_reference, model_spec, token_stream
from trainer_report import NAMES, report

from speedrun_api.accelerators import lookup
from speedrun_api.flops import training_flops_per_token
from speedrun_api.spec_train import TrainSpec
from speedrun_trainer.cli.launch import free_port
from speedrun_trainer.train.runtime import autocast_dtype

# (pattern in torch.cuda.get_device_name, accelerator table entry)
GPU_NAMES = [
    (r"H200", "nvidia-h200"),
    (r"H100", "nvidia-h100-80gb"),
    (r"A100.*80", "nvidia-a100-80gb"),
    (r"A100", "nvidia-a100-40gb"),
    (r"\bL4\b", "nvidia-l4"),
    (r"4090", "rtx-4090"),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(c: Contender, steps: int, device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds per step over `steps` steps, the device synced only before and after.

    CPU seconds count every thread of this process (OpenMP workers, our prefetch thread): on a
    machine that other processes keep busy they measure the work a step takes, where wall time
    also measures the turns the scheduler gave us. On CUDA only wall time means anything.
    """
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        c.last_loss = c.step()
    sync(device)
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def count_host_syncs(c: Contender, steps: int, device: torch.device) -> int | None:
    """CUDA only: how many host-device syncs `steps` steps make (torch's sync debug mode); None on CPU.

    The timed steps should make none: a sync (an .item(), a pageable copy) stalls the host
    until the GPU drains, and the kernel queue runs dry.
    """
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                c.last_loss = c.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def matmul_flops(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best FLOP/s of an n x n x n matmul over `reps` runs."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)
    best = math.inf
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def detect_accelerator(device: torch.device) -> str:
    if device.type == "cpu":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    for pattern, accelerator in GPU_NAMES:
        if re.search(pattern, name):
            return accelerator
    raise SystemExit(f"unknown GPU {name!r}: give --accelerator (a table entry) or --device-flops")


def summarize(
    c: Contender, tokens_per_step: int, flops_per_token: float, peak: float, measured_peak: float | None
) -> dict[str, Any]:
    step_s = statistics.median(c.round_step_s)
    tps = tokens_per_step / step_s
    return {
        "params": c.params,
        "step_time_s": step_s,
        "best_round_step_time_s": min(c.round_step_s),  # noise only adds time: the least disturbed round
        "tokens_per_second": tps,
        "mfu": flops_per_token * tps / peak,
        "mfu_vs_measured_peak": flops_per_token * tps / measured_peak if measured_peak else None,
        "round_step_times_s": c.round_step_s,
        "cpu_time_per_step_s": statistics.median(c.round_cpu_s),
        "round_cpu_times_s": c.round_cpu_s,
        "final_loss": float(c.last_loss) if c.last_loss is not None else None,
    }


def _process_group(device: torch.device) -> bool:
    """A 1-rank group, as torchrun gives the trainer (ours then runs without DDP, as the trainer does at
    world size 1; modded under DDP, as its record): start one if none is up."""
    if dist.is_initialized():
        return False
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1, timeout=datetime.timedelta(minutes=5)
    )
    return True


def _speedups(ours: Contender, other: Contender, a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    paired = [o2 / o1 for o1, o2 in zip(ours.round_step_s, other.round_step_s, strict=True)]
    return {
        "median": a["tokens_per_second"] / b["tokens_per_second"],
        "paired_median": statistics.median(paired),
        "best_round": b["best_round_step_time_s"] / a["best_round_step_time_s"],
        "cpu_time": b["cpu_time_per_step_s"] / a["cpu_time_per_step_s"],
    }


def default_precision() -> str:
    """`train.precision` when a manifest omits it (the API's default)."""
    return str(TrainSpec.model_fields["precision"].default)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # all: TF32 for whatever stays fp32
    spec = model_spec(args.config, args.activation)
    batch_size = args.batch_size or CONFIGS[args.config][1]
    compile_ours = device.type == "cuda" if args.compile is None else args.compile
    accelerator = args.accelerator or detect_accelerator(device)
    entry = lookup(accelerator)
    if args.device_flops is None and entry is None:
        raise SystemExit(f"unknown accelerator {accelerator!r}: give --device-flops")
    peak = args.device_flops or entry.device_flops
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokens_per_step = batch_size * spec.seq_len
    flops_per_token = training_flops_per_token(spec)
    # On CPU "ours" runs fp32 like the references (like for like); "ours_default" runs the trainer's
    # default precision where that is not fp32 here (bf16 autocast on CPUs with native bf16).
    precision_ours = args.precision if device.type == "cuda" else "fp32"
    default = default_precision()
    default_dtype = autocast_dtype(device, default) if device.type == "cpu" else None

    load_before = _loadavg()
    started_group = _process_group(device)
    workdir = tempfile.TemporaryDirectory(prefix="bench-trainer-")
    contenders: list[Contender] = []
    try:
        tokens, shard_uri = token_stream(spec, batch_size, Path(workdir.name))
        ours_args = dict(
            compile_model=compile_ours,
            optimizer=args.optimizer,
            shard_uri=shard_uri,
            batch_size=batch_size,
            cache_dir=Path(workdir.name),
            ddp=True,
        )
        contenders = [build_ours(spec, device, precision=precision_ours, **ours_args)]
        if default_dtype is not None:
            contenders.append(build_ours(spec, device, precision=default, name="ours_default", **ours_args))
        contenders += [
            build_reference(spec, device, tokens, batch_size),
            build_modded(spec, device, tokens, batch_size, compile_model=device.type == "cuda", ddp=True),
        ]
        for c in contenders:  # warm-up (and compilation) outside the clock
            log(f"warming up {c.name} ({args.warmup} steps)")
            if args.warmup:
                run_steps(c, args.warmup, device)
        host_syncs = {c.name: count_host_syncs(c, 2, device) for c in contenders}
        matmul_n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
        round_peaks: list[float] = []
        round_peaks_default: list[float] = []  # the default precision's matmul dtype (bf16), when it runs
        for r in range(args.rounds):
            if args.matmul_reps:
                round_peaks.append(matmul_flops(device, dtype, matmul_n, args.matmul_reps))
                if default_dtype is not None:
                    round_peaks_default.append(matmul_flops(device, default_dtype, matmul_n, args.matmul_reps))
            for c in contenders:
                wall, cpu = run_steps(c, args.steps, device)
                c.round_step_s.append(wall)
                c.round_cpu_s.append(cpu)
            log(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{c.name} {c.round_step_s[-1] * 1e3:.1f} ms/step" for c in contenders)
            )
    finally:
        for c in contenders:
            c.close()
        workdir.cleanup()
        if started_group:
            dist.destroy_process_group()
    measured_peak = statistics.median(round_peaks) if round_peaks else None
    measured_peak_default = statistics.median(round_peaks_default) if round_peaks_default else None
    by_name = {c.name: c for c in contenders}
    rows = {
        c.name: summarize(
            c,
            tokens_per_step,
            flops_per_token,
            peak,
            measured_peak_default if c.name == "ours_default" else measured_peak,
        )
        for c in contenders
    }
    res: dict[str, Any] = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "loadavg_1min": {"before": load_before, "after": _loadavg()},  # other processes' share of the machine
        "torch": torch.__version__,
        "config": args.config,
        "model": spec.model_dump(by_alias=True, mode="json"),  # ours, as a manifest's spec.model
        "batch_size": batch_size,
        "tokens_per_step": tokens_per_step,
        "dtype": "bfloat16 autocast" if dtype == torch.bfloat16 else "float32",  # ours, reference and modded
        "precision_ours": precision_ours,
        # the trainer's default `train.precision` and what it runs in here; null where that is the fp32 row
        "precision_ours_default": default if default_dtype is not None else None,
        "dtype_ours_default": f"{str(default_dtype).removeprefix('torch.')} autocast" if default_dtype else None,
        "optimizer_ours": args.optimizer,
        "compile_ours": compile_ours,
        "warmup": args.warmup,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "training_flops_per_token": flops_per_token,
        "accelerator": accelerator,
        "peak_flops": peak,
        "measured_peak_flops": measured_peak,
        "measured_peak_flops_default": measured_peak_default,  # the matmul in ours_default's dtype
        "host_syncs_in_2_steps": host_syncs,  # CUDA only (torch.cuda.set_sync_debug_mode); null on CPU
        "measured_peak_matmul": {
            "n": matmul_n,
            "dtype": str(dtype).removeprefix("torch."),
            "round_flops": round_peaks,
            "round_flops_default": round_peaks_default,
        },
        **{name: rows.get(name) for name in NAMES},
    }
    # speedup*: ours / reference, like for like (the headline); speedup_default*: ours at the trainer's
    # default precision / the reference as nanoGPT runs here (fp32 on CPU); *_vs_modded: / modded.
    for mine, prefix in (("ours", "speedup"), ("ours_default", "speedup_default")):
        for other, suffix in (("reference", ""), ("modded", "_vs_modded")):
            ratios = (
                _speedups(by_name[mine], by_name[other], rows[mine], rows[other])
                if mine in rows
                else dict.fromkeys(("median", "paired_median", "best_round", "cpu_time"))
            )
            res[prefix + suffix] = ratios["median"]  # ratio of median tokens/s
            res[f"{prefix}{suffix}_paired_median"] = ratios["paired_median"]
            res[f"{prefix}{suffix}_best_round"] = ratios["best_round"]
            res[f"{prefix}{suffix}_cpu_time"] = ratios["cpu_time"]  # ratio of CPU seconds per step
    return res


def _loadavg() -> float | None:
    """The 1-minute load average (how busy other processes keep the machine), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--config", choices=list(CONFIGS), default=None, help="default: tiny on cpu, gpt2-124m on cuda")
    p.add_argument(
        "--activation",
        choices=["gelu", "relu2"],
        default="relu2",
        help="our MLP activation (modded's is ReLU^2, the reference's GELU; the same FLOPs)",
    )
    p.add_argument(
        "--optimizer",
        choices=["muon", "adamw"],
        default="muon",
        help="our optimizer (modded's is Muon + AdamW, the reference's AdamW)",
    )
    p.add_argument(
        "--precision",
        choices=["bf16", "fp8"],
        default="bf16",
        help="ours on CUDA (fp8: torchao float8 layers; the references stay bf16); on cpu ours runs"
        " fp32 like the references, and again at the trainer's default precision where that is bf16",
    )
    p.add_argument("--batch-size", type=_positive, default=None, help="sequences per step (default per config)")
    p.add_argument("--steps", type=_positive, default=None, help="timed steps per round (default 3 cpu, 20 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 cpu, 10 cuda)")
    p.add_argument(
        "--rounds",
        type=_positive,
        default=None,
        help="alternating measurement rounds (default 21 cpu, 7 cuda; odd gives a true median)",
    )
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile our model and Muon (default: on for cuda, off for cpu); the reference"
        " never, modded on cuda only (as its record)",
    )
    p.add_argument("--accelerator", default=None, help="accelerator table entry for the peak (default: detected)")
    p.add_argument("--device-flops", type=float, default=None, help="peak FLOP/s, overriding the table")
    p.add_argument(
        "--matmul-size", type=_positive, default=None, help="n of the peak matmul (default 2048 cpu, 8192 cuda)"
    )
    p.add_argument("--matmul-reps", type=int, default=2, help="matmuls per round for the measured peak; 0: skip")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available")
    args.config = args.config or ("gpt2-124m" if cuda else "tiny")
    args.steps = args.steps or (20 if cuda else 3)
    args.rounds = args.rounds or (7 if cuda else 21)
    args.warmup = (10 if cuda else 3) if args.warmup is None else args.warmup
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run_benchmark(args)
    print(json.dumps(res, indent=2) if args.json else report(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
