"""Checkpoints in storage: `model_{step:06d}.pt`, `optim_{step:06d}.pt`, `meta_{step:06d}.json`.

The meta file is human-readable (step, loss, data position, training seconds, the resolved
spec, software versions) and written last: a checkpoint is complete when its meta exists, so a
process killed mid-save leaves nothing that a restart would trust. Rank 0 saves; every rank
loads. The data position needs no per-rank state: the loader's position is a pure function of
the step (docs/contracts.md), so resuming on a different world size is exact.

`load()` without a step falls back from the newest complete checkpoint to older ones when one
does not load (a model file truncated or lost after its meta was written, a corrupt pickle):
a restart then retrains from the previous checkpoint instead of failing every retry.
"""

from __future__ import annotations

import io
import re
import sys
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
    """Load the given step, or the newest complete checkpoint that loads; None when there is none."""
    if step is not None:
        return _load_step(storage, step, with_optimizers)
    for candidate in reversed(complete_steps(storage)):
        try:
            return _load_step(storage, candidate, with_optimizers)
        except Exception as err:  # any unreadable part: torch.load raises many kinds
            print(
                f"checkpoint {storage.url(_key('meta', candidate, 'json'))} does not load"
                f" ({type(err).__name__}: {str(err)[:200]}); trying the one before",
                file=sys.stderr,
                flush=True,
            )
    return None


def _load_step(storage: Storage, step: int, with_optimizers: bool) -> Checkpoint:
    def read(kind: str) -> Any:
        data = storage.read_bytes(_key(kind, step, "pt"))
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)

    meta = storage.read_json(_key("meta", step, "json"))
    model = read("model")
    optims = read("optim") if with_optimizers else None
    rng = read("rng") if with_optimizers and storage.exists(_key("rng", step, "pt")) else None
    if rng is not None:  # set only once every part loaded: a failed load leaves the RNG alone
        torch.set_rng_state(rng)
    return Checkpoint(step=step, meta=meta, model=model, optimizers=optims)
