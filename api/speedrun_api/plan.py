"""The resolved plan of a run: Marin's `print_run_info`, as data.

`resolve(job)` turns a manifest into every derived number a run needs: the training horizon
in steps, gradient-accumulation steps, tokens, parameters, FLOPs, devices and device peak, and
estimates of hardware FLOPs and wall time at an assumed MFU. `speedrun plan` prints it, the
trainer trains by it, and the results file records it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from speedrun_api.accelerators import lookup
from speedrun_api.flops import forward_flops_per_token, param_count, scaling_param_count, training_flops_per_token
from speedrun_api.spec import HORIZONS, SpeedrunJob
from speedrun_api.spec_types import MAX_STEPS, MAX_TOKENS
from speedrun_api.tpu import devices_per_node

ASSUMED_MFUS = (0.5, 0.2)


@dataclass(frozen=True)
class Plan:
    name: str
    model_size: int
    scaling_params: int  # nanochat's count (matrices + lm_head): what paramDataRatio multiplies
    steps: int
    horizon_rule: str  # how the given horizon became steps (horizon_rule())
    tokens_per_step: int
    total_tokens: int
    model_flops_per_token: float  # forward, as Marin
    model_flops: float
    nodes: int
    min_nodes: int
    max_nodes: int
    procs_per_node: int
    devices_per_node: int  # procsPerNode, or a TPU host's chips (one JAX process drives them all)
    num_devices: int
    accelerator: str
    device_flops: float
    peak_flops: float  # device_flops * num_devices
    grad_accum_steps: int
    estimates: dict[str, dict[str, float]]  # "mfu=0.5" -> {hardware_flops, seconds}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def horizon_steps(job: SpeedrunJob) -> int:
    """The training horizon in optimizer steps, from whichever of the four was given.

    A tokens or paramDataRatio horizon is rounded by `train.horizonRounding`: "up" (at least the
    tokens asked for) or "down", nanochat's rule (scripts/base_train.py: `target_tokens =
    int(args.target_param_data_ratio * num_scaling_params)`, then `num_iterations = target_tokens
    // total_batch_size`). A flopsBudget always rounds down (never past the budget); steps are
    taken as given (modded-nanogpt and BottleCap fix `num_iterations`). `horizon_rule` says which.
    """
    t, m = job.spec.train, job.spec.model
    tokens_per_step = t.batch_size * m.seq_len
    if t.steps is not None:
        return t.steps
    if t.tokens is not None or t.param_data_ratio is not None:
        tokens = t.tokens if t.tokens is not None else t.param_data_ratio * scaling_param_count(m)
        if t.horizon_rounding == "down":  # nanochat: int() the tokens, then floor-divide
            return max(1, int(tokens) // tokens_per_step)
        return max(1, math.ceil(tokens / tokens_per_step))
    assert t.flops_budget is not None  # the spec guarantees exactly one horizon
    return max(1, math.floor(t.flops_budget / (training_flops_per_token(m) * tokens_per_step)))


def horizon_rule(job: SpeedrunJob) -> str:
    """How `horizon_steps` turned the given horizon into steps, for the plan and the results."""
    t = job.spec.train
    if t.steps is not None:
        return "steps as given"
    if t.flops_budget is not None:
        return "flopsBudget / (FLOPs per step), rounded down"
    given = "tokens" if t.tokens is not None else "paramDataRatio tokens"
    if t.horizon_rounding == "down":  # nanochat scripts/base_train.py
        return f"{given} // tokens per step (rounded down, as nanochat)"
    return f"{given} / tokens per step (rounded up)"


def horizon_problem(job: SpeedrunJob) -> str | None:
    """One error line when the horizon resolves past MAX_STEPS steps or MAX_TOKENS tokens (a
    tiny model with a huge flopsBudget): every count the plan and the trainer derive then fits
    int64 and every FLOPs figure stays finite."""
    t = job.spec.train
    given = [
        h
        for h, v in zip(HORIZONS, (t.steps, t.tokens, t.param_data_ratio, t.flops_budget), strict=True)
        if v is not None
    ]
    steps = horizon_steps(job)
    tokens = steps * t.batch_size * job.spec.model.seq_len
    if steps <= MAX_STEPS and tokens <= MAX_TOKENS:
        return None
    return (
        f"spec.train.{given[0]}: resolves to {steps:.3g} steps of {t.batch_size * job.spec.model.seq_len:,} tokens;"
        f" at most {MAX_STEPS:.0e} steps and {MAX_TOKENS:.0e} tokens"
    )


def device_flops(job: SpeedrunJob) -> float:
    r = job.spec.resources
    if r.device_flops is not None:
        return r.device_flops
    acc = lookup(r.accelerator)
    assert acc is not None  # the spec guarantees a known accelerator or deviceFlops
    return acc.device_flops


def grad_accum_steps(job: SpeedrunJob, world_size: int) -> int:
    t = job.spec.train
    return t.batch_size // (t.device_batch_size * world_size)


def resolve(job: SpeedrunJob, nodes: int | None = None) -> Plan:
    """Resolve a job; `nodes` is the node count in use (elastic jobs), default the maximum."""
    spec = job.spec
    m, r = spec.model, spec.resources
    lo, hi = r.node_range
    n = nodes or hi
    steps = horizon_steps(job)
    tokens_per_step = spec.train.batch_size * m.seq_len
    total_tokens = steps * tokens_per_step
    mflops = training_flops_per_token(m) * total_tokens
    devices = n * devices_per_node(r)  # TPU: chips, the devices JAX shards the batch over
    dflops = device_flops(job)
    peak = dflops * devices
    estimates = {f"mfu={mfu}": {"hardware_flops": mflops / mfu, "seconds": mflops / mfu / peak} for mfu in ASSUMED_MFUS}
    return Plan(
        name=job.metadata.name,
        model_size=param_count(m),
        scaling_params=scaling_param_count(m),
        steps=steps,
        horizon_rule=horizon_rule(job),
        tokens_per_step=tokens_per_step,
        total_tokens=total_tokens,
        model_flops_per_token=forward_flops_per_token(m),
        model_flops=mflops,
        nodes=n,
        min_nodes=lo,
        max_nodes=hi,
        procs_per_node=r.procs_per_node,
        devices_per_node=devices_per_node(r),
        num_devices=devices,
        accelerator=r.accelerator,
        device_flops=dflops,
        peak_flops=peak,
        grad_accum_steps=grad_accum_steps(job, devices),
        estimates=estimates,
    )
