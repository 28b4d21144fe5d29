"""Optimizers and the learning-rate schedule of the trainer.

- `lr_multiplier`: warmup-stable-decay (WSD) schedule as a multiplier of the base rate.
- `Muon` (train/muon.py, re-exported here): momentum + Newton-Schulz orthogonalization for the
  2-D hidden matrices, stacked per shape and split across ranks.
- `build_optimizers`: AdamW alone, or Muon for the hidden matrices + AdamW for the rest.
- `set_lr`: apply a schedule multiplier to every param group's `initial_lr`.

    optimizers = build_optimizers(model, spec.train.optimizer)
    for step in range(total_steps):
        set_lr(optimizers, lr_multiplier(step, total_steps, opt.warmup_steps, opt.decay, opt.min_lr_ratio))
        ...backward...
        for o in optimizers:
            o.step()
        model.zero_grad(set_to_none=True)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from speedrun_api.spec_train import OptimizerSpec
from speedrun_trainer.train.muon import Muon, native_bf16_matmul, newton_schulz

__all__ = ["Muon", "build_optimizers", "lr_multiplier", "newton_schulz", "set_lr"]


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, decay: float, min_lr_ratio: float) -> float:
    """Multiplier for the update made at 0-based `step`.

    Warmup: (step + 1) / warmup_steps, so the first update is small but not wasted and the
    last warmup step runs at 1. Then constant. The last round(decay * total_steps) steps decay
    linearly from 1 towards `min_lr_ratio`, reached at step == total_steps (as Levanter's
    linear decay; the final update runs just above it). If warmup and warmdown overlap, the
    smaller multiplier wins.
    """
    mult = 1.0
    if warmup_steps > 0:
        mult = min(mult, (step + 1) / warmup_steps)
    decay_steps = round(decay * total_steps)
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        progress = min(1.0, (step - decay_start) / decay_steps)
        mult = min(mult, 1.0 - (1.0 - min_lr_ratio) * progress)
    return mult


def _split_params(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices, other >=2-D weights, 1-D gains), each trainable parameter once.

    Hidden matrices are the 2-D weights of the transformer blocks: everything 2-D except
    embeddings and the LM head (found by module type and name, so DDP or torch.compile
    wrappers, which prefix names, do not matter).
    """
    excluded: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or name.rsplit(".", 1)[-1] == "lm_head":
            excluded.update(id(p) for p in module.parameters())
    hidden, other_2d, gains = [], [], []
    for p in model.parameters():  # shared (tied) parameters are yielded once
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            gains.append(p)
        elif p.ndim == 2 and id(p) not in excluded:
            hidden.append(p)
        else:
            other_2d.append(p)
    return hidden, other_2d, gains


def _adamw(groups: list[dict], opt: OptimizerSpec, lr: float) -> torch.optim.AdamW:
    # fused on CUDA and CPU (torch >= 2.4): one kernel per dtype/device group, and its step counts
    # stay tensors (the foreach CPU path reads each back with .item()).
    groups = [dict(g, lr=lr, initial_lr=lr) for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=(opt.beta1, opt.beta2), eps=1e-8, fused=True)


def build_optimizers(model: nn.Module, opt: OptimizerSpec, compile: bool = False) -> list[torch.optim.Optimizer]:
    """The optimizers for `model` as `opt` asks; every param group records `initial_lr`.

    adamw: one AdamW; weight decay on >=2-D weights only (not on norm gains).
    muon: Muon (lr = learningRate, momentum, weight decay) for the blocks' 2-D matrices, and
    AdamW (lr = adamLearningRate or learningRate / 5) for embeddings, LM head and gains.
    `compile`: Muon's Newton-Schulz as one compiled graph per matrix shape (the trainer passes
    its resolved `train.compile`). Newton-Schulz multiplies in bf16 wherever the device does so
    natively (CUDA; CPUs with AVX512-BF16 or AMX), as modded-nanogpt and nanochat run it, fp32 elsewhere.
    """
    hidden, other_2d, gains = _split_params(model)
    no_decay = {"params": gains, "weight_decay": 0.0, "name": "adam_no_decay"}
    if opt.name == "adamw":
        decay = {"params": hidden + other_2d, "weight_decay": opt.weight_decay, "name": "adam_decay"}
        return [_adamw([decay, no_decay], opt, opt.learning_rate)]
    muon = Muon(
        [{"params": hidden, "name": "muon", "initial_lr": opt.learning_rate}],
        lr=opt.learning_rate,
        momentum=opt.momentum,
        weight_decay=opt.weight_decay,
        compile=compile,
        ns_dtype=torch.bfloat16 if hidden and native_bf16_matmul(hidden[0].device) else torch.float32,
    )
    adam_lr = opt.adam_learning_rate or opt.learning_rate / 5
    decay = {"params": other_2d, "weight_decay": opt.weight_decay, "name": "adam_decay"}
    return [muon, _adamw([decay, no_decay], opt, adam_lr)]


def set_lr(optimizers: Iterable[torch.optim.Optimizer], multiplier: float) -> None:
    """Set every param group's lr to its `initial_lr` times `multiplier`."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
