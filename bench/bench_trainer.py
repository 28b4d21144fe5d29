"""Trainer speed, measured side by side: our GPT + optimizer against a plain nanoGPT-style baseline.

    python bench/bench_trainer.py --device cpu                        # tiny config, fp32
    python bench/bench_trainer.py --device cuda --config gpt2-124m    # bf16 autocast, compile
    python bench/bench_trainer.py --device cpu --json                 # one JSON object on stdout

Both implementations train the same shape (hidden, layers, heads, MLP width, seq len, vocab, tied
head), on the same batches, with the same tokens per step and dtype, for `--steps` steps per
round after `--warmup` steps. Rounds alternate ours, reference, ours, reference, ... so machine
noise hits both; step time and tokens/s are medians over rounds, and the speedup is also given as
the median of per-round ratios and as the ratio of the best rounds. A step is what the trainer does:
forward, backward, grad-norm clip at 1.0, optimizer step, zero_grad. Inside the timed rounds
nothing syncs with the host (no .item(); inputs are copied from pinned memory with
non_blocking=True); the device is synchronized only at round boundaries.

MFU = training FLOPs per token (DESIGN's formula, `flops.training_flops_per_token` of the
equivalent ModelSpec, the same for both) x tokens/s / peak FLOP/s. The peak comes from the
accelerator table (`--accelerator`, detected from the GPU name on CUDA; `cpu` is the nominal
1e11). Each round also times a large matmul in the training dtype, and MFU is reported against
that measured peak too (the median over rounds of each round's best matmul).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from reference_gpt import ReferenceConfig, ReferenceGPT, reference_adamw

from speedrun_api.accelerators import lookup
from speedrun_api.flops import training_flops_per_token
from speedrun_api.spec import ModelSpec, OptimizerSpec
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers, set_lr

# (model shape, batch size). `micro` is the smoke-test size of tests/test_bench.py.
CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "micro": (dict(vocab_size=64, seq_len=32, hidden_dim=32, intermediate_dim=128, num_layers=2, num_heads=2), 2),
    "tiny": (dict(vocab_size=264, seq_len=256, hidden_dim=128, intermediate_dim=512, num_layers=2, num_heads=4), 16),
    "gpt2-124m": (
        dict(vocab_size=50304, seq_len=1024, hidden_dim=768, intermediate_dim=3072, num_layers=12, num_heads=12),
        16,
    ),
}
LR, WEIGHT_DECAY, BETAS, MAX_GRAD_NORM = 6e-4, 0.1, (0.9, 0.95), 1.0
# (pattern in torch.cuda.get_device_name, accelerator table entry)
GPU_NAMES = [(r"H200", "nvidia-h200"), (r"H100", "nvidia-h100-80gb"), (r"A100.*80", "nvidia-a100-80gb"),
             (r"A100", "nvidia-a100-40gb"), (r"\bL4\b", "nvidia-l4"), (r"4090", "rtx-4090")]


@dataclass
class Contender:
    """One implementation under test: its train step and what it measured."""

    name: str
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    params: int
    round_step_s: list[float] = field(default_factory=list)
    last_loss: torch.Tensor | None = None


def model_spec(config: str, activation: str) -> ModelSpec:
    return ModelSpec(**CONFIGS[config][0], activation=activation, tie_embeddings=True)


def reference_config(spec: ModelSpec) -> ReferenceConfig:
    return ReferenceConfig(vocab_size=spec.vocab_size, seq_len=spec.seq_len, n_layer=spec.num_layers,
                           n_head=spec.num_heads, n_embd=spec.hidden_dim, n_inner=spec.intermediate_dim,
                           tie_embeddings=spec.tie_embeddings)


def autocast(device: torch.device) -> torch.autocast:
    """bf16 on CUDA (as the trainer's bf16 precision), disabled (fp32) on CPU (as its fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def build_ours(spec: ModelSpec, device: torch.device, compile_model: bool) -> Contender:
    torch.manual_seed(0)
    model = GPT(spec).to(device)
    opt_spec = OptimizerSpec(name="adamw", learning_rate=LR, weight_decay=WEIGHT_DECAY, beta1=BETAS[0],
                             beta2=BETAS[1], max_grad_norm=MAX_GRAD_NORM)
    optimizers = build_optimizers(model, opt_spec)  # fused AdamW on CUDA, foreach on CPU
    forward = torch.compile(model) if compile_model else model

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        set_lr(optimizers, 1.0)
        with autocast(device):
            loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    return Contender("ours", step, model.num_params())


def build_reference(spec: ModelSpec, device: torch.device) -> Contender:
    torch.manual_seed(0)
    model = ReferenceGPT(reference_config(spec)).to(device)
    optimizer = reference_adamw(model, lr=LR, weight_decay=WEIGHT_DECAY, betas=BETAS)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(device):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return Contender("reference", step, model.num_params())


class Batches:
    """A few fixed random batches on the host (pinned on CUDA), cycled; the same for both."""

    def __init__(self, spec: ModelSpec, batch_size: int, device: torch.device, count: int = 4) -> None:
        gen = torch.Generator().manual_seed(1234)
        seq = torch.randint(0, spec.vocab_size, (count, batch_size, spec.seq_len + 1), generator=gen)
        pin = device.type == "cuda"
        # x and y stored contiguous, so each batch is one pinned block that copies asynchronously.
        self.x = seq[:, :, :-1].contiguous().pin_memory() if pin else seq[:, :, :-1].contiguous()
        self.y = seq[:, :, 1:].contiguous().pin_memory() if pin else seq[:, :, 1:].contiguous()
        self.device, self.count = device, count

    def get(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = i % self.count
        return self.x[j].to(self.device, non_blocking=True), self.y[j].to(self.device, non_blocking=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(c: Contender, batches: Batches, steps: int, device: torch.device) -> float:
    """Seconds per step over `steps` steps, with the device synced only before and after."""
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        c.last_loss = c.step(*batches.get(i))
    sync(device)
    return (time.perf_counter() - t0) / steps


def count_host_syncs(c: Contender, batches: Batches, steps: int, device: torch.device) -> int | None:
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
            for i in range(steps):
                c.last_loss = c.step(*batches.get(i))
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


def summarize(c: Contender, tokens_per_step: int, flops_per_token: float, peak: float,
              measured_peak: float | None) -> dict[str, Any]:
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
        "final_loss": float(c.last_loss) if c.last_loss is not None else None,
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # both: TF32 for whatever stays fp32
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

    load_before = _loadavg()
    batches = Batches(spec, batch_size, device)
    contenders = [build_ours(spec, device, compile_ours), build_reference(spec, device)]
    for c in contenders:  # warm-up (and compilation) outside the clock
        log(f"warming up {c.name} ({args.warmup} steps{', compiling' if c.name == 'ours' and compile_ours else ''})")
        if args.warmup:
            run_steps(c, batches, args.warmup, device)
    host_syncs = {c.name: count_host_syncs(c, batches, 2, device) for c in contenders}
    matmul_n = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    round_peaks: list[float] = []
    for r in range(args.rounds):
        if args.matmul_reps:
            round_peaks.append(matmul_flops(device, dtype, matmul_n, args.matmul_reps))
        for c in contenders:
            c.round_step_s.append(run_steps(c, batches, args.steps, device))
        log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{c.name} {c.round_step_s[-1] * 1e3:.1f} ms/step"
                                                        for c in contenders))
    measured_peak = statistics.median(round_peaks) if round_peaks else None
    ours, ref = (summarize(c, tokens_per_step, flops_per_token, peak, measured_peak) for c in contenders)
    paired = [r / o for o, r in zip(contenders[0].round_step_s, contenders[1].round_step_s, strict=True)]
    return {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "loadavg_1min": {"before": load_before, "after": _loadavg()},  # other processes' share of the machine
        "torch": torch.__version__,
        "config": args.config,
        "model": spec.model_dump(by_alias=True, mode="json"),  # as a manifest's spec.model
        "batch_size": batch_size,
        "tokens_per_step": tokens_per_step,
        "dtype": "bfloat16 autocast" if dtype == torch.bfloat16 else "float32",
        "compile_ours": compile_ours,
        "warmup": args.warmup,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "training_flops_per_token": flops_per_token,
        "accelerator": accelerator,
        "peak_flops": peak,
        "measured_peak_flops": measured_peak,
        "host_syncs_in_2_steps": host_syncs,  # CUDA only (torch.cuda.set_sync_debug_mode); null on CPU
        "measured_peak_matmul": {"n": matmul_n, "dtype": str(dtype).removeprefix("torch."),
                                 "round_flops": round_peaks},
        "ours": ours,
        "reference": ref,
        "speedup": ours["tokens_per_second"] / ref["tokens_per_second"],
        "speedup_paired_median": statistics.median(paired),
        "speedup_best_round": ref["best_round_step_time_s"] / ours["best_round_step_time_s"],
    }


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


def report(res: dict[str, Any]) -> str:
    m = res["measured_peak_flops"]
    lines = [
        f"{res['config']} on {res['device_name']} ({res['device']}, {res['threads']} threads), {res['dtype']},"
        f" {res['tokens_per_step']} tokens/step, {res['rounds']} rounds x {res['steps_per_round']} steps"
        f" (1-min load average {res['loadavg_1min']['before']} -> {res['loadavg_1min']['after']})",
        f"peak: {res['accelerator']} table {res['peak_flops']:.3g} FLOP/s"
        + (f"; measured matmul {m:.3g} FLOP/s" if m else ""),
        f"{'':10} {'params':>11} {'ms/step':>9} {'tokens/s':>11} {'MFU(table)':>11} {'MFU(meas.)':>11}",
    ]
    for name in ("ours", "reference"):
        r = res[name]
        meas = f"{r['mfu_vs_measured_peak']:.1%}" if r["mfu_vs_measured_peak"] is not None else "-"
        lines.append(f"{name:10} {r['params']:>11,} {r['step_time_s'] * 1e3:>9.2f} {r['tokens_per_second']:>11,.0f}"
                     f" {r['mfu']:>11.1%} {meas:>11}")
    if res["device"] == "cuda":
        lines.append(f"host syncs in 2 steps (want 0): {res['host_syncs_in_2_steps']}")
    lines.append(f"speedup (ours / reference tokens/s): {res['speedup']:.2f}x; median of per-round ratios"
                 f" {res['speedup_paired_median']:.2f}x; best rounds {res['speedup_best_round']:.2f}x")
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--config", choices=list(CONFIGS), default=None, help="default: tiny on cpu, gpt2-124m on cuda")
    p.add_argument("--activation", choices=["gelu", "relu2"], default="gelu",
                   help="our MLP activation (the reference is GELU; relu2 has the same FLOPs)")
    p.add_argument("--batch-size", type=_positive, default=None, help="sequences per step (default per config)")
    p.add_argument("--steps", type=_positive, default=None, help="timed steps per round (default 3 cpu, 20 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 cpu, 10 cuda)")
    p.add_argument("--rounds", type=_positive, default=None,
                   help="alternating measurement rounds (default 21 cpu, 7 cuda; odd gives a true median)")
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile our model (default: on for cuda, off for cpu); never the reference")
    p.add_argument("--accelerator", default=None, help="accelerator table entry for the peak (default: detected)")
    p.add_argument("--device-flops", type=float, default=None, help="peak FLOP/s, overriding the table")
    p.add_argument("--matmul-size", type=_positive, default=None,
                   help="n of the peak matmul (default 2048 cpu, 8192 cuda)")
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
