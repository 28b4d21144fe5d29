"""Weights & Biases, never required: `online`, `offline` or `disabled` (the default).

Only rank 0 talks to W&B, and says what became of it in one `wandb: ...` log line, which
`speedrun run` shows on screen (cli/notices.py) and a pod's log keeps:

    wandb: online https://wandb.ai/<entity>/<project>/runs/<id>
    wandb: offline, files in <dir> (upload later: wandb sync <dir>)
    wandb: off: <why>          (no wandb package, online without an API key, an init failure)

Files go under the run directory (`SPEEDRUN_RUN_DIR`, set by `speedrun run`), else under the
temporary directory (in pods: the /tmp emptyDir, the root filesystem being read-only), never the
working directory; `WANDB_DIR` overrides both. The evaluation resumes the same run (same id) to
log the final BPB and CORE into its summary. Any W&B failure switches tracking off: a speedrun
never dies because a dashboard is unreachable.
"""

from __future__ import annotations

import netrc
import os
import tempfile
from pathlib import Path
from typing import Any

from speedrun_api.run_contract import ENV_RUN_DIR
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.train.runtime import log

WANDB_HOST = "api.wandb.ai"


def wandb_dir() -> Path:
    """Where W&B writes its files: WANDB_DIR, else the run directory, else the temporary directory."""
    if os.environ.get("WANDB_DIR"):
        return Path(os.environ["WANDB_DIR"])
    return Path(os.environ.get(ENV_RUN_DIR) or tempfile.gettempdir())


def has_api_key() -> bool:
    """An API key W&B would find: WANDB_API_KEY, or a ~/.netrc entry for api.wandb.ai (`wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Tracker:
    def __init__(
        self, job: SpeedrunJob, *, enabled: bool, run_id: str, config: dict[str, Any], job_type: str = "train"
    ) -> None:
        self.run: Any = None
        self.state = "off: disabled"
        w = job.spec.tracking.wandb
        mode = self.mode = os.environ.get("WANDB_MODE") or w.mode
        if not enabled:
            return
        if mode == "disabled":
            self._off("mode disabled (spec.tracking.wandb.mode: online or offline turns it on)")
            return
        if mode == "online" and not has_api_key():
            self._off(
                "mode online but no API key (give spec.tracking.wandb.secretRef a WANDB_API_KEY,"
                " or run `wandb login`); use mode offline to keep the run locally"
            )
            return
        try:
            import wandb
        except ImportError:
            self._off("the wandb package is not installed (pip install 'speedrun-operator[wandb]')")
            return
        directory = wandb_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                project=w.project, entity=w.entity, name=job.metadata.name, id=run_id, resume="allow",
                mode=mode, config=config, dir=str(directory), job_type=job_type,
                settings=wandb.Settings(silent=True, console="off"),
            )  # fmt: skip
        except Exception as err:  # a dashboard must never stop a speedrun
            self._off(f"{type(err).__name__}: {err}".splitlines()[0])
            return
        if mode == "offline":
            run_dir = getattr(self.run, "dir", None)
            files = Path(run_dir).parent if run_dir else directory / "wandb"
            self.state = f"offline, files in {files} (upload later: wandb sync {files})"
        else:
            self.state = f"online {self.link}" if self.link else "online"
        log(f"wandb: {self.state}")

    def _off(self, why: str) -> None:
        self.run = None
        self.state = f"off: {why}"
        log(f"wandb: {self.state}")

    @property
    def link(self) -> str | None:
        """The run's page; offline runs have none (and asking makes wandb print a warning)."""
        if self.run is None or self.mode == "offline":
            return None
        return getattr(self.run, "url", None) or None

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
