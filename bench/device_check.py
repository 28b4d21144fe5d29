"""The GPU checks of issue 24 in one run of a few minutes on a lent machine, side by side:

    python bench/device_check.py                # from the repo root, in the venv; < 8 min on one H100
    python bench/device_check.py --json         # the tables on stderr, one JSON object on stdout
    python bench/device_check.py --smoke        # CPU: micro config, a few steps (tests/unit/test_bench.py)

Sections, each with its own time budget (a section past it stops with "skipped: ..."), each
printing one table, then the targets:
  1. speed: our training step (the trainer's TrainStep, bench/contenders.py) against the
     modded-nanogpt re-implementation at GPT-2 124M, bf16, compiled: tokens/s, MFU against the
     accelerator table's bf16 peak (989e12 on H100), and the step-time ratio;
  2. fp8: ours in bf16 against ours in fp8 (torchao), the same rounds;
  3. memory: the planner's estimate (speedrun_api.memory) against the measured peak of 3 real
     compiled steps of a nanochat-d24 slice (the example at device batch 16, one GPU);
  4. host syncs: torch.profiler over a few of our steps, counting cudaStreamSynchronize,
     cudaDeviceSynchronize, aten::item and aten::_local_scalar_dense inside them (want 0 in the
     training thread; each with the op that called it), and torch's sync debug mode ("warn") over
     as many steps. On CPU the count is shown but means no sync: fused AdamW reads its scalars
     with .item() there, with no device to wait for;
  5. gpu tests: `pytest -m gpu tests/unit` and its summary line.
They run in the order 1+2, 4, 3, 5: 4 profiles section 1's compiled step, which is then freed so
that 3 measures the d24 slice's peak alone.
Nothing is built or downloaded: the tokens are random and the models start from their init.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from bench_trainer import _process_group, count_host_syncs, detect_accelerator, run_steps, summarize, sync
from contenders import CONFIGS, Contender, build_modded, build_ours, model_spec, token_stream
from device_check_report import (
    gpu_tests_table,
    host_sync_table,
    memory_table,
    run_section,
    speed_tables,
    target_lines,
    targets,
)

from speedrun_api.accelerators import lookup
from speedrun_api.flops import training_flops_per_token
from speedrun_api.manifest import parse_job
from speedrun_api.spec import SpeedrunJob

ROOT = Path(__file__).resolve().parents[1]
STEP_MARK = "device_check.step"
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item", "aten::_local_scalar_dense")
BUDGETS = {"speed": 240, "memory": 110, "host_syncs": 30, "gpu_tests": 90}  # seconds; 470 in all


def free_device(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- 1 + 2: speed (ours vs modded, bf16 vs fp8) --------------------------------------------------


def fp8_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "fp8 needs CUDA"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return f"fp8 needs compute capability >= 8.9, this GPU has {torch.cuda.get_device_capability(device)}"
    try:
        import torchao.float8  # noqa: F401
    except ImportError:
        return "torchao is not installed (the fp8 extra)"
    return None


def speed(args: argparse.Namespace, device: torch.device, workdir: Path, out: dict[str, Any]) -> None:
    """Ours bf16, modded and ours fp8 in alternating rounds (machine noise hits all alike)."""
    spec = model_spec(args.config, "relu2")
    batch = CONFIGS[args.config][1]
    compile_on = device.type == "cuda"
    tokens, uri = token_stream(spec, batch, workdir)
    ours_args = dict(
        compile_model=compile_on, optimizer="muon", shard_uri=uri, batch_size=batch, cache_dir=workdir, ddp=True
    )
    accelerator = detect_accelerator(device)
    peak = lookup(accelerator).device_flops
    flops = training_flops_per_token(spec)
    out.update(config=args.config, accelerator=accelerator, peak_flops=peak, tokens_per_step=batch * spec.seq_len)
    contenders: list[Contender] = []
    try:
        contenders.append(build_ours(spec, device, precision="bf16", name="ours_bf16", **ours_args))
        contenders.append(build_modded(spec, device, tokens, batch, compile_model=compile_on, ddp=True))
        if (why := fp8_unavailable(device)) is None:
            contenders.append(build_ours(spec, device, precision="fp8", name="ours_fp8", **ours_args))
        else:
            out["fp8_skipped"] = why
        for c in contenders:
            run_steps(c, args.warmup, device)  # compilation falls here, outside the clock
        out["_ours"] = contenders[0]  # for the host-sync section (also after a stop part-way); not in the JSON
        for _ in range(args.rounds):
            for c in contenders:
                wall, cpu = run_steps(c, args.steps, device)
                c.round_step_s.append(wall)
                c.round_cpu_s.append(cpu)
            rows = {c.name: summarize(c, batch * spec.seq_len, flops, peak, None) for c in contenders}
            out["rows"] = {k: {f: v[f] for f in ("step_time_s", "tokens_per_second", "mfu")} for k, v in rows.items()}
            out["rounds_done"] = len(contenders[0].round_step_s)
            ms = {k: v["step_time_s"] for k, v in rows.items()}  # ratios so far: kept if the budget stops us
            out["step_ratio_ours_vs_modded"] = ms["ours_bf16"] / ms["modded"]
            if "ours_fp8" in ms:
                out["fp8_speedup"] = ms["ours_bf16"] / ms["ours_fp8"]
    finally:
        for c in contenders if "_ours" not in out else contenders[1:]:
            c.close()


# ---- 3: memory, estimated vs measured -----------------------------------------------------------


def d24_job(layers: int, device_batch: int) -> SpeedrunJob:
    """examples/nanochat-d24.yaml on one GPU at `device_batch` (one micro-batch per step), `layers` deep."""
    doc = yaml.safe_load((ROOT / "examples" / "nanochat-d24.yaml").read_text())
    doc["spec"]["model"]["numLayers"] = layers
    doc["spec"]["train"].update(batchSize=device_batch, deviceBatchSize=device_batch)
    doc["spec"]["resources"].update(nodes=1, procsPerNode=1)
    return parse_job(doc)


def estimate(job: SpeedrunJob) -> tuple[int | None, str | None]:
    """The planner's estimate of one process's peak tensor bytes (`MemoryEstimate.allocated`: no
    margin, what `torch.cuda.max_memory_allocated()` measures); (None, why) where there is none."""
    try:
        from speedrun_api.memory import estimate_peak_memory
    except ImportError as err:
        return None, f"estimator not available ({err})"
    return int(estimate_peak_memory(job, world_size=1).allocated), None


def memory(args: argparse.Namespace, device: torch.device, workdir: Path, out: dict[str, Any]) -> None:
    layers = args.memory_layers
    while True:
        job = d24_job(layers, args.memory_batch)
        out.update(layers=layers, device_batch=args.memory_batch, params=None)
        out["estimated_bytes"], out["estimate_note"] = estimate(job)
        if device.type != "cuda":
            out["measured_note"] = "skipped: torch.cuda.max_memory_allocated needs CUDA"
            return
        free_device(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)  # ~0: the speed section's models are gone
        spec, c = job.spec.model, None
        try:
            _, uri = token_stream(spec, args.memory_batch, workdir)
            c = build_ours(
                spec,
                device,
                compile_model=True,
                optimizer=job.spec.train.optimizer.name,
                precision=job.spec.train.precision,
                shard_uri=uri,
                batch_size=args.memory_batch,
                cache_dir=workdir,
                ddp=False,
            )
            run_steps(c, 3, device)  # the first step allocates the optimizer states
            out.update(
                params=c.params,
                allocated_before_bytes=before,
                measured_bytes=torch.cuda.max_memory_allocated(device) - before,
                measured_reserved_bytes=torch.cuda.max_memory_reserved(device),
            )
            if out["estimated_bytes"]:
                out["estimate_error"] = out["estimated_bytes"] / out["measured_bytes"] - 1
            return
        except torch.OutOfMemoryError:
            out.setdefault("out_of_memory_at_layers", []).append(layers)
            if layers <= 2:
                raise
            layers //= 2  # a thinner slice of d24, same width, batch and sequence length
        finally:
            if c is not None:
                c.close()
            del c
            free_device(device)


# ---- 4: host syncs in our step ------------------------------------------------------------------


def host_syncs(args: argparse.Namespace, device: torch.device, ours: Contender | None, out: dict[str, Any]) -> None:
    if ours is None:
        raise RuntimeError("no step of ours to profile (the speed section did not finish)")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            with torch.profiler.record_function(STEP_MARK):
                ours.last_loss = ours.step()
    sync(device)  # outside the steps: the round boundary
    events = prof.events()
    steps = [e for e in events if e.name == STEP_MARK]
    thread = steps[0].thread if steps else None

    def in_step(e: Any) -> bool:
        return any(s.time_range.start <= e.time_range.start <= s.time_range.end for s in steps)

    counts, other_threads, where = dict.fromkeys(SYNC_EVENTS, 0), dict.fromkeys(SYNC_EVENTS, 0), {}
    for e in events:
        if e.name in counts and in_step(e):
            (counts if e.thread == thread else other_threads)[e.name] += 1
            key = f"{e.name} <- {e.cpu_parent.name if e.cpu_parent else '?'}"
            where[key] = where.get(key, 0) + 1
    out.update(steps=args.profile_steps, profiler_counts=counts, other_threads=other_threads, called_from=where)
    out["sync_debug_warnings"] = count_host_syncs(ours, args.profile_steps, device)  # None on CPU


# ---- 5: the gpu-marked tests --------------------------------------------------------------------


def gpu_tests(args: argparse.Namespace, device: torch.device, out: dict[str, Any], budget: float) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/unit"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(budget - 5, 10))
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else done.stderr[-300:]
    out.update(command=" ".join(cmd[1:]), returncode=done.returncode, summary=summary)
    out["failed"] = [line for line in lines if line.startswith(("FAILED", "ERROR"))]


# ---- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, emit: Callable[[str], None]) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    res: dict[str, Any] = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "sections": {},
    }
    started = time.monotonic()
    started_group = _process_group(device)
    workdir = tempfile.TemporaryDirectory(prefix="device-check-")
    ours: list[Contender | None] = [None]
    work = Path(workdir.name)
    sections: list[tuple[str, str, Callable[[dict[str, Any], float], None], Callable[..., list[str]]]] = [
        ("speed", "1+2. speed: ours vs modded (bf16), ours bf16 vs fp8",
         lambda o, b: speed(args, device, work, o), speed_tables),
        ("host_syncs", "4. host syncs inside our step",
         lambda o, b: host_syncs(args, device, ours[0], o), host_sync_table),
        ("memory", "3. memory: estimated vs measured peak", lambda o, b: memory(args, device, work, o), memory_table),
        ("gpu_tests", "5. gpu-marked tests", lambda o, b: gpu_tests(args, device, o, b), gpu_tests_table),
    ]  # fmt: skip
    try:
        for key, title, body, table in sections:
            out: dict[str, Any] = {}
            budget = BUDGETS[key] * args.budget_scale
            left = args.total_budget - (time.monotonic() - started)
            t0 = time.monotonic()
            if key == "gpu_tests" and device.type != "cuda":
                out.update(status="skipped", reason="no CUDA here: every gpu-marked test would skip")
            elif left < 10:
                out.update(status="skipped", reason=f"the run's {args.total_budget:.0f} s are spent")
            else:
                out = run_section(key, body, min(budget, left))
            if key == "speed":
                ours[0] = out.pop("_ours", None)
            if key == "host_syncs" and ours[0] is not None:  # before memory: its peak is one model's
                ours[0].close()
                ours[0] = None
                free_device(device)
            out["seconds"] = round(time.monotonic() - t0, 1)
            res["sections"][key] = out
            emit(f"\n== {title} ({out['seconds']} s) ==")
            for line in table(out):  # what was measured, also of a section stopped part-way
                emit(line)
            if out["status"] != "ok":
                emit(f"{out['status']}: {out['reason']}")
    finally:
        if ours[0] is not None:
            ours[0].close()
        workdir.cleanup()
        if started_group:
            torch.distributed.destroy_process_group()
    res["targets"] = targets(res)
    res["seconds"] = round(time.monotonic() - started, 1)
    emit(f"\n== targets (issue 24), {res['seconds']} s in all ==")
    for line in target_lines(res["targets"], "not judged: not CUDA"):
        emit(line)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU, micro config, a few steps; CUDA-only parts skipped")
    p.add_argument("--json", action="store_true", help="tables on stderr, one JSON object on stdout")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds of the speed section (default 5)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, compile included (default 10)")
    p.add_argument("--memory-layers", type=int, default=24, help="d24 slice depth (halved on out-of-memory)")
    p.add_argument("--memory-batch", type=int, default=16, help="d24 slice device batch")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--total-budget", type=float, default=480.0, help="seconds for the whole run")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every section's budget")
    args = p.parse_args(argv)
    args.config = "micro" if args.smoke else "gpt2-124m"
    args.rounds = args.rounds or (2 if args.smoke else 5)
    args.steps = args.steps or (2 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 10)
    if args.smoke:
        args.profile_steps = min(args.profile_steps, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stream = sys.stderr if args.json else sys.stdout
    res = run(args, lambda line: print(line, file=stream, flush=True))
    if args.json:
        print(json.dumps(res, indent=2, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
