"""Checkpoints in storage: `model_{step:06d}.pt`, `optim_{step:06d}.pt`, `meta_{step:06d}.json`.

The meta file is human-readable (step, loss, data position, training seconds, the resolved
spec, software versions) and written last: a checkpoint is complete when its meta exists, so a
process killed mid-save leaves nothing that a restart would trust. Rank 0 saves; every rank
loads. The data position needs no per-rank state: the loader's position is a pure function of
the step (docs/contracts.md), so resuming on a different world size is exact.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import torch

from speedrun_trainer.data.storage import Storage

PREFIX = "checkpoints/"
_META = re.compile(r"^meta_(\d{6,})\.json$")


@dataclass
class Checkpoint:
    step: int
    meta: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizers: list[dict[str, Any]] | None


def _key(kind: str, step: int, ext: str) -> str:
    return f"{PREFIX}{kind}_{step:06d}.{ext}"


def _to_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save(storage: Storage, step: int, model_state: dict, optim_states: list[dict], meta: dict) -> str:
    """Write one complete checkpoint; returns the meta key."""
    storage.write_bytes(_key("model", step, "pt"), _to_bytes(model_state))
    storage.write_bytes(_key("optim", step, "pt"), _to_bytes(optim_states))
    storage.write_bytes(_key("rng", step, "pt"), _to_bytes(torch.get_rng_state()))
    storage.write_json(_key("meta", step, "json"), {"step": step, **meta})
    return _key("meta", step, "json")


def complete_steps(storage: Storage) -> list[int]:
    """Steps that have a meta file, ascending."""
    steps = []
    for key in storage.list(PREFIX):
        m = _META.match(key.removeprefix(PREFIX))
        if m:
            steps.append(int(m.group(1)))
    return sorted(steps)


def load(storage: Storage, step: int | None = None, *, with_optimizers: bool = True) -> Checkpoint | None:
    """Load the given step, or the newest complete checkpoint; None when there is none."""
    if step is None:
        steps = complete_steps(storage)
        if not steps:
            return None
        step = steps[-1]

    def read(kind: str) -> Any:
        data = storage.read_bytes(_key(kind, step, "pt"))
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)

    meta = storage.read_json(_key("meta", step, "json"))
    optims = read("optim") if with_optimizers else None
    if with_optimizers and storage.exists(_key("rng", step, "pt")):
        torch.set_rng_state(read("rng"))
    return Checkpoint(step=step, meta=meta, model=read("model"), optimizers=optims)
