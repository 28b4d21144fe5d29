"""The TPU checks of issue 26 in one run of a few minutes on a TPU host, for when one is lent:

    python bench/tpu_device_check.py                   # a TPU VM or GKE TPU pod, in the TPU image / JAX venv
    python bench/tpu_device_check.py --json --out r.json   # tables on stderr, one JSON object on stdout and in r.json
    python bench/tpu_device_check.py --cpu             # CPU smoke: 4 host devices, micro configs (the tests)

Nothing of the JAX backend has run on a real TPU yet (docs/benchmarks.md); this script says what
it does there. Sections, each with its own time budget (device_check_report.run_section), each
printing one table, then the targets:
  1. devices: jax's backend, device kind and count (want `tpu`), the accelerator table's row for
     that kind (its bf16 peak and memory), the processes;
  2. reference: the first losses of the JAX step (train/jax_step.py, fp32 matmuls) against the
     torch trainer's TrainStep (CPU, fp32) from the same initial weights on the same batches;
     want every loss within 1e-4 (tests/e2e/test_jax_backend.py's tolerance on CPU; on a TPU the
     "highest" matmul precision should keep it);
  3. speed: the JAX step in bf16 with Muon for a few timed steps on a small config (`tiny`) and a
     realistic one (GPT-2 124M, bench/contenders.py): tokens/s, MFU against the bf16 peak of the
     table times the devices, and HBM (the device's memory_stats: peak bytes in use, limit).
Data-parallel over every local device (a 1-D mesh, as jax_loop.py); the tokens are random, the
models start from their init; nothing is downloaded. Run it with the JAX venv's Python
(requirements/jax.txt, plus `jax[tpu]` on a TPU host) from the repository root, api/ and
trainer/ on PYTHONPATH (the TPU image has them installed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from device_check_report import run_section, target_lines  # noqa: E402

# Reference tolerance: the CPU tests' (tests/e2e/test_jax_backend.py: 50 fp32 steps within 1e-4).
MAX_LOSS_DIFF = 1e-4
BUDGETS = {"devices": 60, "reference": 120, "speed": 300}  # seconds; 480 in all
# jax's device_kind -> the accelerator table's name (speedrun_api/accelerators.py).
DEVICE_KINDS = {"TPU v4": "tpu-v4", "TPU v5 lite": "tpu-v5e", "TPU v5e": "tpu-v5e", "TPU v5": "tpu-v5p",
                "TPU v5p": "tpu-v5p", "TPU v6 lite": "tpu-v6e", "TPU v6e": "tpu-v6e"}  # fmt: skip


def accelerator_of(kind: str, platform: str) -> str:
    return "cpu" if platform == "cpu" else DEVICE_KINDS.get(kind, "")


def devices(out: dict[str, Any], want: str) -> None:
    import jax

    from speedrun_api.accelerators import lookup

    local = jax.local_devices()
    kind = local[0].device_kind
    name = accelerator_of(kind, jax.default_backend())
    acc = lookup(name) if name else None
    out.update(backend=jax.default_backend(), device_kind=kind, local_devices=len(local),
               devices=jax.device_count(), processes=jax.process_count(), accelerator=name or None,
               peak_flops=acc.device_flops if acc else None, memory_bytes=acc.device_memory if acc else None,
               jax=jax.__version__)  # fmt: skip
    if jax.default_backend() != want:
        raise RuntimeError(f"jax's backend is {jax.default_backend()}, not {want} (JAX_PLATFORMS, libtpu?)")
    if acc is None:
        raise RuntimeError(f"device kind {kind!r} is not in the accelerator table (--accelerator names one)")


def random_batches(spec: Any, rows: int, steps: int, seed: int = 0) -> list[list[tuple[Any, Any]]]:
    """`steps` optimizer steps of one micro-batch each: (inputs, targets) of `rows` random sequences."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        tokens = torch.randint(0, spec.vocab_size, (rows, spec.seq_len + 1), generator=g)
        out.append([(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())])
    return out


def reference(out: dict[str, Any], config: str, steps: int) -> None:
    import jax
    import numpy as np
    import torch
    from contenders import model_spec

    from speedrun_api.spec_train import OptimizerSpec
    from speedrun_trainer.train.jax_step import JaxStep, data_mesh
    from speedrun_trainer.train.model import GPT
    from speedrun_trainer.train.optim import build_optimizers
    from speedrun_trainer.train.step import TrainStep

    spec = model_spec(config, "relu2")
    opt = OptimizerSpec(name="adamw", learning_rate=1e-3, weight_decay=0.1, max_grad_norm=1.0)
    torch.manual_seed(0)
    torch_model = GPT(spec)
    jax_model = GPT(spec)
    jax_model.load_state_dict(torch_model.state_dict())
    step = TrainStep(torch_model, torch_model, None, build_optimizers(torch_model, opt), torch.device("cpu"), "fp32",
                     opt.max_grad_norm)  # fmt: skip
    jstep = JaxStep(jax_model, opt, data_mesh(), "fp32", opt.max_grad_norm)
    batches = random_batches(spec, 2 * jax.device_count(), steps, seed=1)
    torch_losses, jax_losses = [], []
    for micro in batches:
        torch_losses.append(float(step(micro)))
        jax_losses.append(float(np.asarray(jstep(micro, 1.0, None).addressable_data(0))))
        worst = max(abs(a - b) for a, b in zip(torch_losses, jax_losses, strict=True))
        out.update(config=config, torch=torch_losses, jax=jax_losses, max_abs_diff=worst, tolerance=MAX_LOSS_DIFF)


def hbm(device: Any) -> dict[str, Any]:
    stats = device.memory_stats() or {}  # None on CPU
    return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}


def speed(out: dict[str, Any], configs: list[str], steps: int, warmup: int, device_batch: int, peak: float) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from contenders import model_spec

    from speedrun_api.flops import training_flops_per_token
    from speedrun_api.spec_train import OptimizerSpec
    from speedrun_trainer.train.jax_step import JaxStep, data_mesh
    from speedrun_trainer.train.model import GPT

    n = jax.device_count()
    rows: dict[str, Any] = out.setdefault("rows", {})
    for config in configs:
        spec = model_spec(config, "relu2")
        torch.manual_seed(0)
        model = GPT(spec)
        opt = OptimizerSpec(name="muon", learning_rate=0.02, weight_decay=0.0, max_grad_norm=1.0)
        jstep = JaxStep(model, opt, data_mesh(), "bf16", opt.max_grad_norm)
        batch = device_batch * jax.local_device_count()  # this process's rows; global = x processes
        batches = random_batches(spec, batch, 2)
        for i in range(warmup):  # the compile falls here, outside the clock
            jax.block_until_ready(jstep(batches[i % 2], 1.0, None))
        t0 = time.perf_counter()
        for i in range(steps):
            loss = jstep(batches[i % 2], 1.0, None)
        jax.block_until_ready(loss)
        step_s = (time.perf_counter() - t0) / steps
        tokens = batch * jax.process_count() * spec.seq_len
        tps = tokens / step_s
        flops = training_flops_per_token(spec)
        rows[config] = {"params": sum(p.numel() for p in model.parameters()), "global_batch": tokens // spec.seq_len,
                        "seq_len": spec.seq_len, "step_time_s": step_s, "tokens_per_second": tps,
                        "mfu": tps * flops / (peak * n), "loss": float(np.asarray(loss.addressable_data(0))),
                        **hbm(jax.local_devices()[0])}  # fmt: skip
        del jstep, model
        jnp.zeros(()).block_until_ready()


# ---- tables and targets -------------------------------------------------------------------------


def devices_table(s: dict[str, Any]) -> list[str]:
    if "backend" not in s:
        return []
    memory = f", {s['memory_bytes'] / 2**30:.0f} GiB" if s.get("memory_bytes") else ""
    peak = f"{s['peak_flops']:.4g} FLOP/s bf16{memory}" if s.get("peak_flops") else "-"
    here = f"{s['local_devices']} x {s['device_kind']} here, {s['devices']} devices in {s['processes']} process(es)"
    return [f"jax {s['jax']}: backend {s['backend']}, {here}", f"table row: {s['accelerator']} ({peak})"]


def reference_table(s: dict[str, Any]) -> list[str]:
    if "torch" not in s:
        return []
    lines = [f"{s['config']}, AdamW, fp32: step  torch (CPU)      jax        |diff|"]
    for i, (a, b) in enumerate(zip(s["torch"], s["jax"], strict=True)):
        lines.append(f"{'':22}{i + 1:>4}  {a:>11.6f} {b:>11.6f}  {abs(a - b):.2e}")
    lines.append(f"largest |diff| {s['max_abs_diff']:.2e} (want <= {s['tolerance']:g})")
    return lines


def speed_table(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", {})
    if not rows:
        return []
    gib = lambda v: f"{v / 2**30:.2f}" if v is not None else "-"
    head = f"{'params':>8} {'batch':>6} {'ms/step':>9} {'tokens/s':>11} {'MFU':>7} {'HBM peak':>9} {'limit':>7}"
    lines = [f"{'':10} {head}"]
    for name, r in rows.items():
        lines.append(f"{name:10} {r['params'] / 1e6:>7.1f}M {r['global_batch']:>6} {r['step_time_s'] * 1e3:>9.2f} "
                     f"{r['tokens_per_second']:>11,.0f} {r['mfu']:>7.1%} {gib(r['peak_bytes_in_use']):>9} "
                     f"{gib(r['bytes_limit']):>7}")  # fmt: skip
    return [*lines, "(HBM in GiB from the device's memory_stats; '-': not reported, as on CPU)"]


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures to judge. The speed ones are shown, not judged: no TPU figure exists to set a
    target by (docs/benchmarks.md); the largest config run is the one shown."""
    s = res["sections"]
    rows = s["speed"].get("rows", {})
    big = list(rows)[-1] if rows else "largest config"
    row = rows.get(big, {})

    def t(name: str, value: Any, ok: Any = None) -> dict[str, Any]:
        return {"target": name, "value": value, "pass": bool(ok(value)) if ok and value is not None else None}

    seen = s["devices"].get("backend")
    return [
        t("jax sees TPU devices", seen, (lambda v: v == "tpu") if res["want"] == "tpu" else None),
        t("first losses within 1e-4", s["reference"].get("max_abs_diff"), lambda v: v <= MAX_LOSS_DIFF),
        t(f"{big} bf16 tokens/s", row.get("tokens_per_second")),
        t(f"{big} bf16 MFU", row.get("mfu")),
        t(f"{big} HBM peak bytes", row.get("peak_bytes_in_use")),
    ]


# ---- the run ------------------------------------------------------------------------------------


def run(args: argparse.Namespace, emit: Any) -> dict[str, Any]:
    warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")  # torchax's int64 ids
    want = "cpu" if args.cpu else "tpu"
    res: dict[str, Any] = {"want": want, "cpu_smoke": args.cpu, "sections": {}}
    started = time.monotonic()
    peak: list[float] = [0.0]

    def body_devices(o: dict[str, Any], _: float) -> None:
        try:
            devices(o, want)
        finally:
            if args.accelerator:  # the table row named on the command line wins
                from speedrun_api.accelerators import lookup

                acc = lookup(args.accelerator)
                o.update(accelerator=args.accelerator, peak_flops=acc.device_flops, memory_bytes=acc.device_memory)
            peak[0] = o.get("peak_flops") or 0.0

    sections = [
        ("devices", "1. devices", body_devices, devices_table),
        ("reference", "2. reference: JAX step vs the torch trainer's step",
         lambda o, b: reference(o, args.reference_config, args.reference_steps), reference_table),
        ("speed", "3. speed and HBM: the JAX step, bf16, Muon",
         lambda o, b: speed(o, args.configs, args.steps, args.warmup, args.device_batch, peak[0] or 1.0), speed_table),
    ]  # fmt: skip
    for key, title, body, table in sections:
        left = args.total_budget - (time.monotonic() - started)
        t0 = time.monotonic()
        if key == "speed" and not peak[0]:
            out = {"status": "skipped", "reason": "no bf16 peak: the devices section found no table row"}
        elif left < 10:
            out = {"status": "skipped", "reason": f"the run's {args.total_budget:.0f} s are spent"}
        else:
            out = run_section(key, body, min(BUDGETS[key] * args.budget_scale, left))
        out["seconds"] = round(time.monotonic() - t0, 1)
        res["sections"][key] = out
        emit(f"\n== {title} ({out['seconds']} s) ==")
        for line in table(out):
            emit(line)
        if out["status"] != "ok":
            emit(f"{out['status']}: {out['reason']}")
    res["targets"] = targets(res)
    res["seconds"] = round(time.monotonic() - started, 1)
    emit(f"\n== targets (issue 26), {res['seconds']} s in all ==")
    for line in target_lines(res["targets"], "shown, not judged"):
        emit(line)
    return res


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="CPU smoke: 4 host devices, micro configs, a few steps")
    p.add_argument("--json", action="store_true", help="tables on stderr, one JSON object on stdout")
    p.add_argument("--out", type=Path, help="also write the JSON report here")
    p.add_argument("--accelerator", help="the accelerator table's row to use (default: from jax's device kind)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per config (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first, the compile included (default 3)")
    p.add_argument("--device-batch", type=int, default=None, help="sequences per device per step (default 8)")
    p.add_argument("--reference-steps", type=int, default=10)
    p.add_argument("--total-budget", type=float, default=480.0, help="seconds for the whole run")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every section's budget")
    args = p.parse_args(argv)
    args.configs = ["micro"] if args.cpu else ["tiny", "gpt2-124m"]
    args.reference_config = "micro" if args.cpu else "tiny"
    args.steps = args.steps or (2 if args.cpu else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.cpu else 3)
    args.device_batch = args.device_batch or (1 if args.cpu else 8)
    if args.cpu:
        args.reference_steps = min(args.reference_steps, 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cpu:  # before jax loads: its CPU platform with 4 devices, a data-parallel mesh to shard over
        os.environ["JAX_PLATFORMS"] = "cpu"
        flag = "--xla_force_host_platform_device_count=4"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    stream = sys.stderr if args.json else sys.stdout
    res = run(args, lambda line: print(line, file=stream, flush=True))
    text = json.dumps(res, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
