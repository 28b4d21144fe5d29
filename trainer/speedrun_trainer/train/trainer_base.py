"""What the torch and the JAX trainers share around their steps: the run's state, opening the run,
resuming it, the observers and the end of a training process.

loop.py's `Trainer` (torch) and jax_loop.py's `JaxTrainer` differ in how they build and step the
model; everything here is one code path for both, so a JAX run's storage checks, run lock, resume,
metrics endpoint, W&B run, FLOPs figures and last log lines are the torch run's:

- `TrainState`: what a checkpoint's meta carries besides the weights (the summary is made of it);
- `RunSetup._open_run()`: the run's storage, tokenizer and data, checked (train/preflight.py);
- `RunSetup._resume()`: the newest complete checkpoint, after the identity check and the lock's
  claim; the weights and optimizer state through the trainer's own `_load_checkpoint`;
- `RunSetup._observers(devices)`: the Prometheus endpoint on the main process, the tracker, the
  FLOPs per step and the peak FLOP/s of `devices` devices (MFU);
- `finish_training(trainer)`: run, write the summary, close, and the last two log lines.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from speedrun_api.flops import training_flops_per_token
from speedrun_api.run_contract import ENV_METRICS_PORT, ENV_STARTUP_CHECKED
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.tokenizer import padded_token_bytes
from speedrun_trainer.train import checkpoint, preflight
from speedrun_trainer.train.core_cadence import core_every, core_target
from speedrun_trainer.train.runtime import Dist, log, phase, run_storage
from speedrun_trainer.train.startup_checks import open_run_data
from speedrun_trainer.train.telemetry import Telemetry
from speedrun_trainer.train.tracking import Tracker


@dataclass
class TrainState:
    """What a checkpoint's meta carries besides the weights, and the summary is made of."""

    step: int = 0
    training_seconds: float = 0.0
    warmup_seconds: float = 0.0  # clock warm-up steps, kept out of training_seconds
    warmup_steps: int = 0
    time_to_target_seconds: float | None = None
    target_reached: bool = False
    train_loss: float = math.nan
    val_loss: float | None = None
    val_bpb: float | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    history: list[dict[str, float]] = field(default_factory=list)  # eval points


class RunSetup:
    """The shared parts of a trainer's construction (see the module doc); the trainer sets `job`,
    `spec`, `env` and `plan` first and implements `_load_checkpoint`."""

    job: SpeedrunJob
    env: Dist
    plan: Any
    state: TrainState

    def _open_run(self) -> None:
        job, m = self.job, self.job.spec.model
        self.storage = run_storage(job)
        phase("loading and checking the tokenizer and the data")
        # Tokenizer, data and model agree (train/preflight.py); the token-id scan, a full read of
        # the data, only where no starter of this process ran it already.
        data = open_run_data(job, scan_token_ids=os.environ.get(ENV_STARTUP_CHECKED) != "1")
        self.tokenizer, self.train_data, self.val_data = data.tokenizer, data.train, data.val
        self.token_bytes = padded_token_bytes(self.tokenizer, m.vocab_size)
        self.levanter_bytes = padded_token_bytes(self.tokenizer, m.vocab_size, levanter=True)
        if self.env.is_main:
            preflight.check_writable(self.storage)

    def _resume(self) -> None:
        self.state = TrainState()
        ckpt = checkpoint.load(self.storage)
        preflight.check_identity(self.storage, self.job, ckpt.meta if ckpt is not None else None)
        if self.env.is_main:
            preflight.claim(self.storage, self.job)
        if ckpt is None:
            return
        self._load_checkpoint(ckpt)
        known = TrainState.__dataclass_fields__
        self.state = TrainState(**{k: v for k, v in ckpt.meta.get("state", {}).items() if k in known})
        log(f"resumed from {self.storage.url(f'checkpoints/meta_{ckpt.step:06d}.json')} at step {ckpt.step}")

    def _load_checkpoint(self, ckpt: checkpoint.Checkpoint) -> None:
        """The model's and the optimizers' state from `ckpt` (each backend its own way)."""
        raise NotImplementedError

    def _observers(self, devices: int) -> None:
        job, spec = self.job, self.job.spec
        port = int(os.environ.get(ENV_METRICS_PORT) or spec.metrics.port)
        self.telemetry = Telemetry(port if self.env.is_main else None)
        self.tracker = Tracker(
            job, enabled=self.env.is_main, run_id=self.state.run_id, config={"spec": job.manifest()["spec"]}
        )
        self.flops_per_step = training_flops_per_token(spec.model) * self.plan.tokens_per_step
        self._printed_step = self.state.step
        self.peak_flops = self.plan.device_flops * devices
        self.core_every, self.core_judged = core_every(spec), core_target(spec)


def finish_training(trainer: Any) -> int:
    """Both entry points' end: train, write the summary (main process), close, say so."""
    try:
        trainer.run()
        trainer.write_summary()
    finally:
        trainer.close()
    log(f"training done: step {trainer.state.step}, {trainer.state.training_seconds:.1f}s of training")
    phase("training done; the processes are exiting")  # the runtimes' teardown and exit take seconds
    return 0
