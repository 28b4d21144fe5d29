"""Training entry point, launched by torchrun on every node:

    torchrun --nnodes=N --nproc-per-node=P --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \
        -m speedrun_trainer.train --config run.json

Trains the spec's GPT to its horizon (or until the target metric is reached), with gradient
accumulation, DDP (NCCL on GPU, gloo on CPU), bf16 autocast on GPU and optional torch.compile.
Checkpoints go to the run's storage every `checkpointEvery` steps and at the end; on start it
resumes from the newest complete checkpoint, so a restarted pod (or torchrun worker restart)
continues the step counter. The clock counts only the optimizer steps: evaluation,
checkpointing and logging are excluded, and so are the first `train.clockWarmupSteps` steps of
every process start (torch.compile, CUDA warm-up, and again after a resume), whose time is kept
apart as `warmup_seconds` (nanochat scripts/base_train.py: `if step > 10`, steps 0-10 out; modded-nanogpt
times after its warm-up). Targets are judged on the run's one evaluation set (`spec.eval_data`),
the set the headline numbers come from. Rank 0 serves Prometheus metrics and writes
`train_summary.json` at the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from speedrun_api.accelerators import lookup
from speedrun_api.flops import training_flops_per_token
from speedrun_api.manifest import ConfigError
from speedrun_api.plan import resolve
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.loader import batch_for, open_dataset
from speedrun_trainer.data.prepare import tokenizer_mismatch
from speedrun_trainer.data.tokenizer import load_tokenizer
from speedrun_trainer.evaluation.loss import evaluate_loss, padded_token_bytes
from speedrun_trainer.train import checkpoint
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers, lr_multiplier, set_lr
from speedrun_trainer.train.runtime import (
    DeviceError,
    Dist,
    autocast,
    cache_dir,
    entry_point,
    log,
    run_storage,
)
from speedrun_trainer.train.telemetry import Telemetry
from speedrun_trainer.train.tracking import Tracker
from speedrun_trainer.train.versions import software_versions

SUMMARY_KEY = "train_summary.json"


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


def check_device(job: SpeedrunJob, env: Dist) -> None:
    """Refuse to train a GPU or TPU manifest on the host CPU by accident."""
    acc = lookup(job.spec.resources.accelerator)
    if acc is None or acc.kind == "cpu":
        return
    if acc.kind == "tpu":  # no torch_xla path yet: a TPU run can never work with this trainer
        raise ConfigError(f"spec.resources.accelerator: {acc.name} needs a TPU backend (torch_xla), "
                          "which this trainer does not have yet")
    if env.device.type != "cuda":
        raise DeviceError(f"spec.resources.accelerator is {acc.name}, but torch sees no CUDA device here")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _target_reached(job: SpeedrunJob, val_loss: float, val_bpb: float) -> bool:
    t = job.spec.target
    if t is None:
        return False
    if t.metric == "val_loss":
        return val_loss <= t.value
    if t.metric == "val_bpb":
        return val_bpb <= t.value
    return False  # CORE targets: Trainer._core_reached


class Trainer:
    def __init__(self, job: SpeedrunJob, env: Dist) -> None:
        spec = self.spec = job.spec
        self.job, self.env = job, env
        t, m = spec.train, spec.model
        per_step = t.device_batch_size * env.world_size
        if t.batch_size % per_step:
            raise ConfigError(
                f"spec.train.batchSize: {t.batch_size} is not a multiple of deviceBatchSize x world size"
                f" = {per_step}"
            )
        self.accum = t.batch_size // per_step
        check_device(job, env)
        if t.precision == "fp8":
            log("precision fp8: FP8 matmuls are not implemented yet; training with bf16 autocast")
        if t.precision != "fp32" and env.device.type != "cuda":
            log(f"precision {t.precision}: no autocast on {env.device.type}; training in fp32")
        self.plan = resolve(job, nodes=max(1, env.world_size // spec.resources.procs_per_node))
        self.storage = run_storage(job)
        endpoint = spec.storage.endpoint_url
        tok = self.tokenizer = load_tokenizer(spec.data.tokenizer, endpoint_url=endpoint)
        if tok.vocab_size > m.vocab_size:
            raise ConfigError(
                f"spec.model.vocabSize: {m.vocab_size} is smaller than the {tok.name} tokenizer's {tok.vocab_size}"
            )
        self.token_bytes = padded_token_bytes(tok, m.vocab_size)
        data_args = {"tokenizer": spec.data.tokenizer, "cache_dir": cache_dir(), "endpoint_url": endpoint}
        for where, uri in (("spec.data.train", spec.data.train), ("spec.eval.bpb.data", spec.eval_data)):
            if problem := tokenizer_mismatch(uri, where, tok, endpoint):
                raise ConfigError(problem)
        self.train_data = open_dataset(spec.data.train, **data_args)
        self.val_data = open_dataset(spec.eval_data, **data_args)  # the run's one evaluation set

        torch.manual_seed(t.seed)
        self.model = GPT(m).to(env.device)
        self.optimizers = build_optimizers(self.model, t.optimizer)
        self.state = TrainState()
        self._resume()
        runnable = torch.compile(self.model) if t.compile else self.model
        self.ddp = (
            DistributedDataParallel(runnable, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
            if env.world_size > 1
            else None
        )
        self.forward = self.ddp or runnable
        port = int(os.environ.get("SPEEDRUN_METRICS_PORT") or spec.metrics.port)
        self.telemetry = Telemetry(port if env.is_main else None)
        self.tracker = Tracker(
            job, enabled=env.is_main, run_id=self.state.run_id, config={"spec": job.manifest()["spec"]}
        )
        self.flops_per_step = training_flops_per_token(m) * self.plan.tokens_per_step
        self.peak_flops = self.plan.device_flops * env.world_size

    def _resume(self) -> None:
        ckpt = checkpoint.load(self.storage)
        if ckpt is None:
            return
        self.model.load_state_dict(ckpt.model)
        for opt, state in zip(self.optimizers, ckpt.optimizers or [], strict=True):
            opt.load_state_dict(state)
        known = TrainState.__dataclass_fields__
        self.state = TrainState(**{k: v for k, v in ckpt.meta.get("state", {}).items() if k in known})
        log(f"resumed from {self.storage.url(f'checkpoints/meta_{ckpt.step:06d}.json')} at step {ckpt.step}")

    # ---- one optimizer step --------------------------------------------------------------
    def _step(self) -> torch.Tensor:
        t, env, step = self.spec.train, self.env, self.state.step
        o = t.optimizer
        set_lr(self.optimizers, lr_multiplier(step, self.plan.steps, o.warmup_steps, o.decay, o.min_lr_ratio))
        total = torch.zeros((), device=env.device)
        for micro in range(self.accum):
            first = batch_for(step, micro, env.rank, env.world_size, t.device_batch_size, t.batch_size)
            x, y = self.train_data.sequences(first, t.device_batch_size, self.spec.model.seq_len)
            x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
            last = micro == self.accum - 1
            sync_ctx = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync_ctx, autocast(env.device, t.precision):
                loss = self.forward(x, y)
            (loss / self.accum).backward()
            total += loss.detach()
        if o.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.max_grad_norm)
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)
        return total / self.accum

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> TrainState:
        st, t, env = self.state, self.spec.train, self.env
        total_steps = self.plan.steps
        self.telemetry.set(step=st.step, total_steps=total_steps, training_seconds=st.training_seconds)
        if st.step >= total_steps or st.target_reached:
            log(f"nothing to train: the checkpoint is at step {st.step} of {total_steps}")
            return st
        log(
            f"training {self.plan.model_size / 1e6:.2f}M params for {total_steps} steps on {env.world_size}"
            f" process(es) x {self.accum} accumulation step(s), from step {st.step}"
        )
        self.model.train()
        session_seconds, session_steps = 0.0, 0
        while st.step < total_steps:
            _sync(env.device)
            t0 = time.perf_counter()
            loss = self._step()
            _sync(env.device)
            dt = time.perf_counter() - t0
            st.step += 1
            if session_steps < t.clock_warmup_steps:  # warm-up: compile, first steps after a (re)start
                st.warmup_seconds += dt
                st.warmup_steps += 1
            else:
                st.training_seconds += dt
            session_seconds += dt
            session_steps += 1
            last = st.step == total_steps
            if st.step % t.log_every == 0 or last:
                self._log_progress(loss, session_seconds, session_steps)
            if ((t.eval_every and st.step % t.eval_every == 0) or last) and self._evaluate():
                st.time_to_target_seconds = st.training_seconds
                st.target_reached = True
                log(f"target reached at step {st.step} after {st.training_seconds:.1f}s of training")
                self._checkpoint()
                break
            if (t.checkpoint_every and st.step % t.checkpoint_every == 0) or last:
                self._checkpoint()
        return st

    def _log_progress(self, loss: torch.Tensor, seconds: float, steps: int) -> None:
        st, env = self.state, self.env
        if dist.is_initialized():
            dist.all_reduce(loss)
            loss = loss / env.world_size
        st.train_loss = float(loss)
        step_time = seconds / steps
        tps = self.plan.tokens_per_step / step_time
        mfu = self.flops_per_step / step_time / self.peak_flops
        eta = (self.plan.steps - st.step) * step_time
        self.telemetry.set(
            step=st.step, train_loss=st.train_loss, tokens_per_second=tps, mfu=mfu, eta_seconds=eta,
            training_seconds=st.training_seconds,
        )
        lr = self.optimizers[0].param_groups[0]["lr"]  # the scheduled lr of the step just taken
        self.tracker.log({"train/loss": st.train_loss, "throughput/tokens_per_second": tps, "mfu": mfu,
                          "train/lr": lr}, st.step)
        every = max(1, self.plan.steps // 20)
        if st.step % every == 0 or st.step == self.plan.steps:
            log(
                f"step {st.step:>6}/{self.plan.steps} | loss {st.train_loss:.4f} | {tps:,.0f} tok/s"
                f" | mfu {mfu:.1%} | eta {eta:.0f}s"
            )

    def _evaluate(self) -> bool:
        st, env, spec = self.state, self.env, self.spec
        ev = evaluate_loss(
            self.model, self.val_data, self.token_bytes, tokens=spec.eval.bpb.tokens,
            seq_len=spec.model.seq_len, batch_size=spec.train.device_batch_size, rank=env.rank,
            world_size=env.world_size, device=env.device, precision=spec.train.precision,
        )
        st.val_loss, st.val_bpb = ev.loss, ev.bpb
        st.history.append({"step": st.step, "val_loss": ev.loss, "val_bpb": ev.bpb,
                           "training_seconds": st.training_seconds})
        self.telemetry.set(val_loss=ev.loss, val_bpb=ev.bpb)
        self.tracker.log({"val/loss": ev.loss, "val/bpb": ev.bpb}, st.step)
        log(f"step {st.step:>6}/{self.plan.steps} | val loss {ev.loss:.4f} | val bpb {ev.bpb:.4f}")
        target = spec.target
        if target is not None and target.metric == "core" and spec.eval.core is not None:
            return self._core_reached(target.value)
        return _target_reached(self.job, ev.loss, ev.bpb)

    def _core_reached(self, value: float) -> bool:
        """nanochat's time-to-GPT-2: CORE at every eval point; its time is not training time."""
        from speedrun_trainer.evaluation.core import evaluate_core

        core = self.spec.eval.core
        assert core is not None
        result = evaluate_core(
            self.model, self.tokenizer, core.bundle, max_per_task=core.max_per_task, device=self.env.device,
            rank=self.env.rank, world_size=self.env.world_size, endpoint_url=self.spec.storage.endpoint_url,
        )
        score = float(result["core_metric"])
        self.state.history[-1]["core"] = score
        self.tracker.log({"core_metric": score}, self.state.step)
        log(f"step {self.state.step:>6}/{self.plan.steps} | CORE {score:.4f} (target {value})")
        return score >= value

    def _checkpoint(self) -> None:
        if self.env.is_main:
            meta = {
                "state": asdict(self.state),
                "data_position_sequences": self.state.step * self.spec.train.batch_size,
                "world_size": self.env.world_size,
                "spec": self.job.manifest(),
                "versions": software_versions(),
                "saved_at": time.time(),
            }
            states = [o.state_dict() for o in self.optimizers]
            checkpoint.save(self.storage, self.state.step, self.model.state_dict(), states, meta)
        if dist.is_initialized():
            dist.barrier()

    def write_summary(self) -> None:
        if not self.env.is_main:
            return
        st = self.state
        self.storage.write_json(
            SUMMARY_KEY,
            {
                **asdict(st),
                "total_steps": self.plan.steps,
                "tokens": st.step * self.plan.tokens_per_step,
                "tokens_per_second": st.step * self.plan.tokens_per_step / st.training_seconds
                if st.training_seconds else None,
                "world_size": self.env.world_size,
                "num_devices": self.env.world_size,
                "device_flops": self.plan.device_flops,
                "wandb_run_link": self.tracker.link,
                "versions": software_versions(),
            },
        )
        self.tracker.summary({"total_training_time": st.training_seconds})

    def close(self) -> None:
        self.tracker.finish()
        self.telemetry.close()


def _train(job: SpeedrunJob, env: Dist) -> int:
    print(f"worker rank {env.rank}/{env.world_size} (local rank {env.local_rank}) on {env.device}", flush=True)
    trainer = Trainer(job, env)
    try:
        trainer.run()
        trainer.write_summary()
    finally:
        trainer.close()
    log(f"training done: step {trainer.state.step}, {trainer.state.training_seconds:.1f}s of training")
    return 0


def main(argv: list[str] | None = None) -> int:
    return entry_point("speedrun_trainer.train", __doc__.splitlines()[0], _train, argv)


if __name__ == "__main__":
    sys.exit(main())
