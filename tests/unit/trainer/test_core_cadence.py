"""CORE's cadence in the training loop (`spec.eval.core.every`, train/core_cadence.py): the pure
decision of which steps score CORE, and the trainer scoring a real (tiny) bundle at those steps only.

Run: pytest -q tests/unit/trainer/test_core_cadence.py  (CPU, a few seconds)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from speedrun_api.manifest import SpecError, parse_job
from speedrun_trainer.train.core_cadence import NANOCHAT_CORE_EVERY, core_due, core_every, core_target
from speedrun_trainer.train.loop import Trainer
from speedrun_trainer.train.runtime import Dist
from tests.support.helpers import tiny_manifest
from tests.unit.trainer.test_core_eval import write_bundle

CORE_TARGET = {"metric": "core", "value": 2.0}  # above CORE's maximum of 1: never reached


def spec_of(core: dict | None, target: dict | None, **changes: object):
    return parse_job(tiny_manifest(**{"spec.eval.core": core, "spec.target": target, **changes})).spec


def due_steps(total: int, every: int, judged: bool) -> list[int]:
    return [s for s in range(1, total + 1) if core_due(s, total, every, judged)]


def test_default_cadence_is_nanochats_for_a_core_target_and_none_otherwise() -> None:
    bundle = {"bundle": "file:///b"}
    assert NANOCHAT_CORE_EVERY == 2000  # nanochat scripts/base_train.py --core-metric-every
    assert core_every(spec_of(bundle, CORE_TARGET)) == 2000 and core_target(spec_of(bundle, CORE_TARGET))
    assert core_every(spec_of(bundle, {"metric": "val_loss", "value": 1.0})) == 0
    assert core_every(spec_of(bundle, None)) == 0 and not core_target(spec_of(bundle, None))
    assert core_every(spec_of(None, None)) == 0
    assert core_every(spec_of({**bundle, "every": 300}, None)) == 300
    assert core_every(spec_of({**bundle, "every": 0}, CORE_TARGET)) == 0


def test_due_steps() -> None:
    assert due_steps(10, 4, judged=True) == [4, 8, 10]  # a CORE target also scores the last step
    assert due_steps(10, 4, judged=False) == [4, 8]  # the evaluation after training scores the last
    assert due_steps(8, 4, judged=False) == [4]
    assert due_steps(10, 0, judged=True) == [10]
    assert due_steps(10, 0, judged=False) == []
    assert due_steps(4000, 2000, judged=True) == [2000, 4000]
    assert due_steps(5000, 2000, judged=True) == [2000, 4000, 5000]


def test_every_is_a_step_count() -> None:
    with pytest.raises(SpecError, match=r"spec\.eval\.core\.every: .*greater than or equal to 0"):
        spec_of({"bundle": "file:///b", "every": -1}, None)


def core_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, core: dict, target: dict | None) -> tuple[list, object]:
    """Train the tiny model 10 steps (validation every 5) with `core` on a real bundle: the steps
    CORE was scored at, from the run's eval history."""
    storage = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    monkeypatch.setenv("SPEEDRUN_STORAGE_URI", storage.as_uri())
    monkeypatch.setenv("SPEEDRUN_METRICS_PORT", "0")
    bundle = tmp_path / "bundle"
    if not bundle.exists():
        write_bundle(bundle)
    changes = {"spec.train.steps": 10, "spec.train.evalEvery": 5, "spec.train.checkpointEvery": 0}
    job = parse_job(
        tiny_manifest(
            **{"spec.eval.core": {"bundle": bundle.as_uri(), "maxPerTask": 2, **core}, "spec.target": target},
            **changes,
            **{"spec.eval.bpb.tokens": 256},
        )
    )
    trainer = Trainer(job, Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu")))
    try:
        state = trainer.run()
    finally:
        trainer.close()
    return [h["step"] for h in state.history if "core" in h], state


def test_trainer_scores_core_at_its_cadence_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps, state = core_steps(tmp_path, monkeypatch, {"every": 4}, CORE_TARGET)
    assert steps == [4, 8, 10] and not state.target_reached
    assert [h["step"] for h in state.history if "val_loss" in h] == [5, 10]  # evalEvery apart from CORE
    steps, state = core_steps(tmp_path, monkeypatch, {"every": 4}, None)  # logged, never stopping
    assert steps == [4, 8] and state.step == 10
    steps, state = core_steps(tmp_path, monkeypatch, {"every": 3}, {"metric": "core", "value": -1.0})
    assert steps == [3] and state.target_reached and state.step == 3  # reached: training stops there
