"""Weights & Biases, never required: `online`, `offline` or `disabled` (the default).

Only rank 0 talks to W&B. Offline runs land under the run's working directory and can be
synced later with `wandb sync`. Any W&B failure is reported once and tracking is switched off:
a speedrun never dies because a dashboard is unreachable.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from speedrun_api.spec import SpeedrunJob


class Tracker:
    def __init__(self, job: SpeedrunJob, *, enabled: bool, run_id: str, config: dict[str, Any]) -> None:
        self.run: Any = None
        w = job.spec.tracking.wandb
        mode = os.environ.get("WANDB_MODE") or w.mode
        if not enabled or mode == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(
                project=w.project,
                entity=w.entity,
                name=job.metadata.name,
                id=run_id,
                resume="allow",
                mode=mode,
                config=config,
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as err:  # a dashboard must never stop a speedrun
            print(f"wandb disabled: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            self.run = None

    @property
    def link(self) -> str | None:
        url = getattr(self.run, "url", None) if self.run is not None else None
        return url or None

    def log(self, values: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
