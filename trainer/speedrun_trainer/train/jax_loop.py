"""The JAX backend's training loop: train/loop.py's `Trainer`, its step run by JAX (train/jax_step.py).

Everything around the step is the torch trainer's own code, so the two backends cannot drift:
the data loader and prefetcher, the LR schedule, the clock rules, the progress and validation
log lines, the Prometheus metrics, W&B, the run lock, checkpoints and the summary. What differs:

- One process per host, using all of its devices (jax_main.py joins the processes); process p
  reads torch rank p's rows with deviceBatchSize x local devices per micro-step, the same data
  position as the torch layout over the same devices (docs/contracts.md).
- The step is asynchronous (JAX dispatch), so the clock waits for the newest step's loss when it
  is read (`JaxTimer`), and the loss meter sums jax scalars and reads them back then (`JaxMeter`).
- In-loop validation and CORE are the torch trainer's evaluation code (loss_eval.py,
  core_eval.py) over `JaxEvalModel`: the GPT's JAX function jitted on process 0's first device
  (a TPU chip), fed and read back as torch CPU tensors; the other processes wait for its verdict.
  Checkpoints are torch state_dicts of the `GPT` (train/checkpoint.py), so the
  torch evaluation loads them unchanged; the optimizer file holds the optax state's leaves.
- `train.clock: modded-nanogpt` warm-up: the steps on dummy data, then parameters and optimizer
  state restored from copies (train/clock_warmup.py's rule, done on the jax state).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.experimental import multihost_utils

from speedrun_api.manifest import ConfigError
from speedrun_api.plan import resolve
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.prefetch import BatchPrefetcher
from speedrun_trainer.train import checkpoint
from speedrun_trainer.train.attention import segment_ids
from speedrun_trainer.train.jax_step import JaxEvalModel, JaxStep, data_mesh
from speedrun_trainer.train.loop import Trainer
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import lr_multiplier
from speedrun_trainer.train.runtime import Dist, log, phase
from speedrun_trainer.train.versions import software_versions


class JaxTimer:
    """Wall seconds of the timed steps since the last read, waiting for the newest step when read."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._steps = 0
        self.last: Any = None

    def start(self) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        self._steps += 1

    def read(self) -> tuple[float, int]:
        if self._t0 is None:
            return 0.0, 0
        jax.block_until_ready(self.last)
        out = (time.perf_counter() - self._t0, self._steps)
        self._t0, self._steps = None, 0
        return out


class JaxMeter:
    """Step losses summed as jax scalars; the loss is replicated, so no reduction across processes."""

    def __init__(self, timer: JaxTimer) -> None:
        self.timer, self.total, self.count = timer, None, 0

    def add(self, loss: jax.Array) -> None:
        self.timer.last = loss
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def read(self) -> float:
        if self.count == 0:
            return float("nan")
        mean = float(np.asarray(self.total.addressable_data(0))) / self.count
        self.total, self.count = None, 0
        return mean


class JaxTrainer(Trainer):
    def __init__(self, job: SpeedrunJob, env: Dist) -> None:
        spec = self.spec = job.spec
        self.job, self.env = job, env  # env: this process, torch on its CPU (evaluation, checkpoints)
        t, m = spec.train, spec.model
        self.num_devices, self.processes = jax.device_count(), jax.process_count()
        per_step = t.device_batch_size * self.num_devices
        if t.batch_size % per_step:
            raise ConfigError(
                f"spec.train.batchSize: {t.batch_size} is not a multiple of deviceBatchSize x devices = {per_step}"
            )
        if t.precision == "fp8":
            raise ConfigError("spec.train.precision: fp8 needs the torch backend; the jax backend trains fp32 or bf16")
        self.accum = t.batch_size // per_step
        self.mesh = data_mesh()
        log(
            f"jax backend: {self.processes} process(es) x {jax.local_device_count()} {jax.default_backend()}"
            f" device(s); precision {t.precision}"
            + (" (bf16 matmuls, fp32 parameters)" if t.precision == "bf16" else "")
        )
        self.plan = resolve(job, nodes=max(1, self.processes))
        self._open_run()
        phase("building the model and its optimizer")
        torch.manual_seed(t.seed)
        gpt = GPT(m)  # the torch module: traced by torchax, and the checkpoints' view (to_torch)
        self.compile = True  # jax.jit, always
        self.train_step = JaxStep(gpt, t.optimizer, self.mesh, t.precision, t.optimizer.max_grad_norm)
        self.model = JaxEvalModel(self.train_step)  # what the loop's validation and CORE score
        self.train_step.document_eos = self.tokenizer.document_end_id() if m.document_mask else None
        self._resume()
        self._lr_now = 0.0
        self._observers(self.num_devices)

    def _load_checkpoint(self, ckpt: checkpoint.Checkpoint) -> None:
        self.train_step.load_torch(ckpt.model)
        self.train_step.load_optimizer_state(ckpt.optimizers or [])

    def _step(self, batches: BatchPrefetcher) -> Any:
        o = self.spec.train.optimizer
        mult = lr_multiplier(self.state.step, self.plan.steps, o.warmup_steps, o.decay, o.min_lr_ratio)
        self._lr_now = o.learning_rate * mult
        eos = self.train_step.document_eos
        doc_ids = None if eos is None else (lambda x: segment_ids(x, eos))
        return self.train_step(batches.next_step(), mult, doc_ids)

    def _prefetcher(self) -> BatchPrefetcher:
        t, local = self.spec.train, jax.local_device_count()
        return BatchPrefetcher(
            self.train_data,
            start_step=self.state.step,
            accum=self.accum,
            rank=jax.process_index(),
            world=self.processes,
            device_batch_size=t.device_batch_size * local,
            batch_size=t.batch_size,
            seq_len=self.spec.model.seq_len,
            device=torch.device("cpu"),
        )

    def _meters(self) -> tuple[JaxTimer, JaxMeter]:  # type: ignore[override]
        timer = JaxTimer()
        return timer, JaxMeter(timer)

    def _lr(self) -> float:
        return self._lr_now

    def _untimed_warm_up(self) -> float:
        """clockWarmupSteps compiled steps on dummy (all-zero) batches, then the state as it was."""
        step, start, steps = self.train_step, time.perf_counter(), self.spec.train.clock_warmup_steps
        params, opt_state = jax.tree.map(jnp.copy, (step.params, step.opt_state))
        rows = self.spec.train.device_batch_size * jax.local_device_count()
        zeros = torch.zeros((rows, self.spec.model.seq_len), dtype=torch.long)
        for _ in range(steps):
            loss = step([(zeros, zeros)] * self.accum, 1.0, None)
        jax.block_until_ready(loss)
        step.params, step.opt_state = params, opt_state
        return time.perf_counter() - start

    def _on_main(self, evaluate: Any) -> bool:
        """`evaluate()` (the torch evaluation code over `JaxEvalModel`) on process 0; its verdict everywhere."""
        verdict = False
        if self.env.is_main:
            verdict = bool(evaluate())
        return bool(multihost_utils.broadcast_one_to_all(np.array(verdict, dtype=np.int32)))

    def _evaluate(self) -> bool:
        return self._on_main(super()._evaluate)

    def _core(self) -> bool:
        return self._on_main(super()._core)

    def _checkpoint(self) -> None:
        model_state = self.train_step.to_torch().state_dict()  # every process: the leaves are replicated
        optim_state = self.train_step.optimizer_state()
        if self.env.is_main:
            meta = {
                "state": asdict(self.state),
                "data_position_sequences": self.state.step * self.spec.train.batch_size,
                "world_size": self.processes,
                "backend": "jax",
                "spec": self.job.manifest(),
                "versions": {**software_versions(), "jax": jax.__version__},
                "saved_at": time.time(),
            }
            checkpoint.save(self.storage, self.state.step, model_state, optim_state, meta)
        multihost_utils.sync_global_devices("checkpoint")

    def summary(self) -> dict:
        return {
            **super().summary(),
            "world_size": self.processes,
            "num_devices": self.num_devices,
            "backend": "jax",
            "jax_platform": jax.default_backend(),
            # the in-loop evaluation's matmuls: bf16 only where the chip honours the precision (a TPU)
            "eval_precision": "bf16"
            if self.spec.train.precision == "bf16" and jax.default_backend() == "tpu"
            else "fp32",
        }
