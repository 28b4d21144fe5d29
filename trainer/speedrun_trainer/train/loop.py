"""Training entry point, launched by torchrun on every node:

    torchrun --nnodes=N --nproc-per-node=P --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 \
        -m speedrun_trainer.train --config run.json

Trains the spec's GPT to its horizon or its target (judged on the run's one evaluation set, the
set the headline numbers come from), checkpointing to the run's storage and resuming from the
newest complete checkpoint, so a restarted pod continues the step counter. The clock counts only
optimizer steps, by `train.clock` (speedrun_api.metric_definitions.CLOCK_RULES): nanochat's leaves
out the first `train.clockWarmupSteps` real steps of every process start (compile, warm-up; kept
apart as `warmup_seconds`), as base_train.py does (`if step > 10`); modded-nanogpt's runs that
many untimed steps on dummy data first, restores the state and times every real step
(train/clock_warmup.py).
Rank 0 serves Prometheus metrics and writes the training summary at the end.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist

from speedrun_api.manifest import ConfigError
from speedrun_api.plan import resolve
from speedrun_api.run_contract import TRAIN_SUMMARY_FILE
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.prefetch import BatchPrefetcher
from speedrun_trainer.train import checkpoint, preflight
from speedrun_trainer.train.clock_warmup import warm_up_and_reset
from speedrun_trainer.train.core_cadence import core_due
from speedrun_trainer.train.core_eval import evaluate_run_core
from speedrun_trainer.train.fp8 import check_fp8, convert_to_fp8
from speedrun_trainer.train.loss_eval import eval_precision, evaluate_run_loss
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers, lr_multiplier, set_lr
from speedrun_trainer.train.runtime import (
    Dist,
    autocast_dtype,
    check_device,
    entry_point,
    log,
    phase,
    resolve_compile,
)
from speedrun_trainer.train.step import LossMeter, StepTimer, TrainStep, data_parallel
from speedrun_trainer.train.trainer_base import RunSetup, TrainState, finish_training
from speedrun_trainer.train.versions import software_versions


def _target_reached(job: SpeedrunJob, val_loss: float, val_bpb: float) -> bool:
    t = job.spec.target
    if t is None:
        return False
    if t.metric == "val_loss":
        return val_loss <= t.value
    if t.metric == "val_bpb":
        return val_bpb <= t.value
    return False  # CORE targets: Trainer._core, on its own cadence (train/core_cadence.py)


class Trainer(RunSetup):
    def __init__(self, job: SpeedrunJob, env: Dist) -> None:
        spec = self.spec = job.spec
        self.job, self.env = job, env
        t, m = spec.train, spec.model
        per_step = t.device_batch_size * env.world_size
        if t.batch_size % per_step:
            raise ConfigError(
                f"spec.train.batchSize: {t.batch_size} is not a multiple of deviceBatchSize x world size = {per_step}"
            )
        self.accum = t.batch_size // per_step
        check_device(job, env)
        if t.precision == "fp8":  # refuse where FP8 cannot run: never a silent bf16 run
            check_fp8(spec.resources.accelerator, env.device)
        if t.precision != "fp32":
            dtype = autocast_dtype(env.device, t.precision)
            log(
                f"precision {t.precision}: "
                + (
                    f"{env.device.type} autocast in {str(dtype).removeprefix('torch.')}"
                    if dtype is not None
                    else f"no native bf16 on this {env.device.type}; training in fp32"
                )
            )
        self.plan = resolve(job, nodes=max(1, env.world_size // spec.resources.procs_per_node))
        self._open_run()  # trainer_base.py: storage, tokenizer, data

        phase("building the model and its optimizer")  # torch.optim loads torch._dynamo: seconds
        torch.manual_seed(t.seed)
        self.model = GPT(m).to(env.device)
        if t.precision == "fp8":  # before the optimizers, compile and DDP see the model
            layers = convert_to_fp8(self.model)
            log(
                f"precision fp8: {len(layers)} block matrices train in FP8 (torchao, tensorwise scaling);"
                " LM head, embedding and norms in bf16"
            )
        self.compile = resolve_compile(t.compile, env.device)
        log(
            f"train.compile: {'on' if self.compile else 'off'}"
            + (f" (omitted: the default on {env.device.type})" if t.compile is None else "")
        )
        self.optimizers = build_optimizers(self.model, t.optimizer, compile=self.compile)
        self._resume()  # trainer_base.py: identity, lock, newest checkpoint (_load_checkpoint)
        runnable = torch.compile(self.model) if self.compile else self.model
        self.ddp = data_parallel(runnable, env.device, env.world_size, t.grad_reduce_dtype)
        self.forward = self.ddp or runnable
        self.train_step = TrainStep(
            self.model, self.forward, self.ddp, self.optimizers, env.device, t.precision, t.optimizer.max_grad_norm
        )
        # model.documentMask: training attends within documents, split after the tokenizer's EOS
        self.train_step.document_eos = self.tokenizer.document_end_id() if m.document_mask else None
        self._observers(env.world_size)  # trainer_base.py: metrics endpoint, tracker, FLOPs

    def _load_checkpoint(self, ckpt: checkpoint.Checkpoint) -> None:
        self.model.load_state_dict(ckpt.model)
        for opt, state in zip(self.optimizers, ckpt.optimizers or [], strict=True):
            opt.load_state_dict(state)

    # ---- one optimizer step --------------------------------------------------------------
    def _step(self, batches: BatchPrefetcher) -> torch.Tensor:
        """One optimizer step (train/step.py); the mean loss stays on the device."""
        o = self.spec.train.optimizer
        set_lr(
            self.optimizers, lr_multiplier(self.state.step, self.plan.steps, o.warmup_steps, o.decay, o.min_lr_ratio)
        )
        return self.train_step(batches.next_step())

    def _prefetcher(self) -> BatchPrefetcher:
        t, env = self.spec.train, self.env
        return BatchPrefetcher(
            self.train_data,
            start_step=self.state.step,
            accum=self.accum,
            rank=env.rank,
            world=env.world_size,
            device_batch_size=t.device_batch_size,
            batch_size=t.batch_size,
            seq_len=self.spec.model.seq_len,
            device=env.device,
        )

    # ---- the loop ------------------------------------------------------------------------
    def run(self) -> TrainState:
        st, env, t = self.state, self.env, self.spec.train
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
        if t.clock == "modded-nanogpt" and t.clock_warmup_steps:
            phase(f"untimed warm-up: {t.clock_warmup_steps} steps on dummy data, then the state restored")
            st.warmup_seconds += self._untimed_warm_up()
            st.warmup_steps += t.clock_warmup_steps
        phase("first steps" + (" (compiling the model)" if self.compile and t.clock == "nanochat" else ""))
        batches = self._prefetcher()
        try:
            return self._train_steps(batches)
        finally:
            batches.close()

    def _untimed_warm_up(self) -> float:
        """modded-nanogpt's untimed steps on dummy data, the state restored after; their seconds."""
        return warm_up_and_reset(self.train_step, self.model, self.optimizers, self.spec, self.accum)

    def _train_steps(self, batches: BatchPrefetcher) -> TrainState:
        # No host sync inside a step: the loss is summed on the device and the step clock is
        # CUDA events (train/step.py); both are read only where the loop needs a number.
        st, t = self.state, self.spec.train
        total_steps = self.plan.steps
        timer, meter = self._meters()
        window_seconds, window_steps, session_steps = 0.0, 0, 0
        dropped = t.clock_warmup_steps if t.clock == "nanochat" else 0  # modded-nanogpt: every real step
        while st.step < total_steps:
            timer.start()
            loss = self._step(batches)
            timer.stop()
            meter.add(loss)
            st.step += 1
            session_steps += 1
            last = st.step == total_steps
            log_now = st.step % t.log_every == 0 or last
            eval_now = bool(t.eval_every and st.step % t.eval_every == 0) or last
            checkpoint_now = bool(t.checkpoint_every and st.step % t.checkpoint_every == 0) or last
            core_now = core_due(st.step, total_steps, self.core_every, self.core_judged)
            warmup_done = session_steps == dropped
            if warmup_done or log_now or eval_now or core_now or checkpoint_now:  # the clock is current wherever read
                seconds, steps = timer.read()
                if session_steps <= dropped:  # warm-up: compile, first steps after a (re)start
                    st.warmup_seconds += seconds
                    st.warmup_steps += steps
                else:  # the timer was read at the warm-up's end: these steps all come after it
                    st.training_seconds += seconds
                window_seconds, window_steps = window_seconds + seconds, window_steps + steps
            if log_now:
                self._log_progress(meter.read(), window_seconds, window_steps)
                window_seconds, window_steps = 0.0, 0
            reached = eval_now and self._evaluate()
            if core_now and self._core():
                reached = True
            if reached:
                st.time_to_target_seconds = st.training_seconds
                st.target_reached = True
                log(f"target reached at step {st.step} after {st.training_seconds:.1f}s of training")
                self._checkpoint()
                break
            if checkpoint_now:
                self._checkpoint()
        return st

    def _meters(self) -> tuple[StepTimer, LossMeter]:
        """The step clock and loss meter (the JAX backend's are its own: train/jax_loop.py)."""
        return StepTimer(self.env.device), LossMeter(self.env.device)

    def _lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]  # the scheduled lr of the step just taken

    def _log_progress(self, loss: float, seconds: float, steps: int) -> None:
        """Progress over the last `steps` steps (`seconds` of training): their mean loss, speed, ETA."""
        st = self.state
        st.train_loss = loss
        step_time = seconds / max(steps, 1)
        tps = self.plan.tokens_per_step / step_time
        mfu = self.flops_per_step / step_time / self.peak_flops
        eta = (self.plan.steps - st.step) * step_time
        self.telemetry.set(
            step=st.step,
            train_loss=st.train_loss,
            tokens_per_second=tps,
            mfu=mfu,
            eta_seconds=eta,
            training_seconds=st.training_seconds,
        )
        lr = self._lr()
        self.tracker.log(
            {"train/loss": st.train_loss, "throughput/tokens_per_second": tps, "mfu": mfu, "train/lr": lr}, st.step
        )
        every = max(1, self.plan.steps // 20)  # about 20 log lines per run, whatever logEvery is
        if st.step - self._printed_step >= every or st.step == self.plan.steps:
            self._printed_step = st.step
            log(
                f"step {st.step:>6}/{self.plan.steps} | loss {st.train_loss:.4f} | {tps:,.0f} tok/s"
                f" | mfu {mfu:.1%} | eta {eta:.0f}s"
            )

    def _evaluate(self) -> bool:
        st, env = self.state, self.env
        mask = self.train_step.document_eos  # scored as trained: levanter's BPB needs the mask
        data, tb, bos = self.val_data, self.token_bytes, self.tokenizer.eot_id
        ev = evaluate_run_loss(self.model, self.job, env, data, tb, self.levanter_bytes, mask, bos_id=bos)
        st.val_loss, st.val_bpb = ev.loss, ev.bpb
        point = {"step": st.step, "val_loss": ev.loss, "val_bpb": ev.bpb, "nanochat_bpb": ev.nanochat_bpb}
        st.history.append({**point, "training_seconds": st.training_seconds})  # nanochat's val/bpb too
        self.telemetry.set(val_loss=ev.loss, val_bpb=ev.bpb)
        self.tracker.log({"val/loss": ev.loss, "val/bpb": ev.bpb}, st.step)
        log(
            f"step {st.step:>6}/{self.plan.steps} | val loss {ev.loss:.4f} | val bpb {ev.bpb:.4f}"
            f" on {ev.tokens:,} tokens"
            + (f" | nanochat bpb {ev.nanochat_bpb:.4f} on bos-aligned rows" if ev.bos_sums is not None else "")
        )
        return _target_reached(self.job, ev.loss, ev.bpb)

    def _core(self) -> bool:
        """CORE on `eval.core.every`'s cadence (nanochat's time-to-GPT-2 judges a CORE target so); its
        time is not training time. True when it reaches a CORE target; other runs only log it."""
        st, target = self.state, self.spec.target
        result = evaluate_run_core(self.model, self.job, self.env, self.tokenizer)
        assert result is not None  # called only when spec.eval.core is set
        score = float(result["core_metric"])
        if not (st.history and st.history[-1]["step"] == st.step):  # no validation at this step
            st.history.append({"step": st.step, "training_seconds": st.training_seconds})
        st.history[-1]["core"] = score
        self.tracker.log({"core_metric": score}, st.step)
        goal = f" (target {target.value})" if self.core_judged and target is not None else ""
        log(f"step {st.step:>6}/{self.plan.steps} | CORE {score:.4f}{goal}")
        return self.core_judged and target is not None and score >= target.value

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
        self.storage.write_json(TRAIN_SUMMARY_FILE, self.summary())
        self.tracker.summary({"total_training_time": self.state.training_seconds})

    def summary(self) -> dict:
        """The training summary (`TRAIN_SUMMARY_FILE`) rank 0 writes at the end."""
        st = self.state
        return {
            **asdict(st),
            "total_steps": self.plan.steps,
            "spec_hash": preflight.spec_hash(self.job),
            "tokens": st.step * self.plan.tokens_per_step,
            "tokens_per_second": st.step * self.plan.tokens_per_step / st.training_seconds
            if st.training_seconds
            else None,
            "world_size": self.env.world_size,
            "num_devices": self.env.world_size,
            "eval_precision": eval_precision(self.env.device, self.spec.train.precision),
            "device_flops": self.plan.device_flops,
            "wandb_run_link": self.tracker.link,
            "versions": software_versions(),
        }

    def close(self) -> None:
        self.tracker.finish()
        self.telemetry.close()


def _train(job: SpeedrunJob, env: Dist) -> int:
    print(f"worker rank {env.rank}/{env.world_size} (local rank {env.local_rank}) on {env.device}", flush=True)
    return finish_training(Trainer(job, env))


def main(argv: list[str] | None = None) -> int:
    return entry_point("speedrun_trainer.train", __doc__.splitlines()[0], _train, argv)


if __name__ == "__main__":
    sys.exit(main())
