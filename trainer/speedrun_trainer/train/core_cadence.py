"""When CORE runs inside the training loop (`spec.eval.core.every`).

The full CORE bundle is many forward passes over thousands of prompts (minutes on a d24), so the
loop runs it on its own cadence, apart from the cheap validation loss of `train.evalEvery`, as
nanochat does: its scripts/base_train.py evaluates val BPB every `--eval-every` 250 steps and CORE
every `--core-metric-every` 2000 steps (defaults) and at the last step, each on its own schedule.

- A CORE target is judged in the loop: CORE every `every` steps (default nanochat's 2000) and at
  the last step, so a run that never reaches the target still ends with its score.
- Any other run: no CORE in the loop unless `every` is given; the evaluation after training (the
  eval pod, `speedrun run`'s evaluation) scores the final checkpoint. With `every`, CORE runs at
  its multiples before the last step and is logged, never stopping training; the last step's
  CORE is the evaluation's.
"""

from __future__ import annotations

from speedrun_api.spec import SpeedrunSpec

# nanochat scripts/base_train.py: `--core-metric-every` defaults to 2000 (`--eval-every` to 250)
NANOCHAT_CORE_EVERY = 2000


def core_target(spec: SpeedrunSpec) -> bool:
    """Whether the run stops on a CORE score (then the loop must judge CORE)."""
    return spec.target is not None and spec.target.metric == "core" and spec.eval.core is not None


def core_every(spec: SpeedrunSpec) -> int:
    """Steps between in-loop CORE evaluations before the last step; 0: none before it."""
    core = spec.eval.core
    if core is None:
        return 0
    if core.every is not None:
        return core.every
    return NANOCHAT_CORE_EVERY if core_target(spec) else 0


def core_due(step: int, total_steps: int, every: int, judged: bool) -> bool:
    """Whether CORE runs after optimizer step `step` (counted from 1) of `total_steps`.

    `judged`: the run has a CORE target, so the last step is scored in the loop too; otherwise the
    evaluation after training scores it and the loop would only repeat the same minutes of work.
    """
    if step >= total_steps:
        return judged
    return every > 0 and step % every == 0
