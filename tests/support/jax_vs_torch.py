"""Run inside the JAX venv (tests/support/jax_env.py): the JAX step against the torch trainer's step.

    python jax_vs_torch.py MANIFEST OUT.json STEPS
    python jax_vs_torch.py MANIFEST OUT.json eval-model

Builds the manifest's `GPT` once, copies it, and trains one copy with the torch trainer's
`TrainStep` + `build_optimizers` + `set_lr(lr_multiplier(...))` and the other with `JaxStep`
(train/jax_step.py) over every JAX device of this process, on the same real text batches (the
run's training data and the trainer's own prefetcher), in fp32 (Muon's Newton-Schulz in fp32 on
both sides: torch picks bf16 on a CPU with native bf16, whose rounding differs between the two
implementations); with `model.documentMask`, both attend within documents. Writes both loss
curves, the largest parameter difference at the end, and the loss of the JAX parameters converted
to torch (`to_torch`) on a batch next to JAX's own loss.
`eval-model`: `JaxEvalModel` (what the JAX loop's validation and CORE score) against the torch
`GPT` in eval mode, logits and per-token losses, at widths below, at and past seqLen (CORE's
prompts are not cropped; the JAX side pads them to a bucket).
"""

from __future__ import annotations

import json
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import torch

from speedrun_api.manifest import load_job
from speedrun_api.plan import resolve
from speedrun_trainer.data.prefetch import BatchPrefetcher
from speedrun_trainer.train.attention import segment_ids
from speedrun_trainer.train.jax_step import JaxEvalModel, JaxStep, data_mesh
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers, lr_multiplier, set_lr
from speedrun_trainer.train.startup_checks import open_run_data
from speedrun_trainer.train.step import TrainStep

warnings.filterwarnings("ignore", message="Explicitly requested dtype int64")


def main(manifest: str, out: str, steps: int) -> None:
    job = load_job(manifest)
    spec, o = job.spec, job.spec.train.optimizer
    total = resolve(job).steps
    torch.manual_seed(spec.train.seed)
    torch_model = GPT(spec.model)
    jax_model = GPT(spec.model)
    jax_model.load_state_dict(torch_model.state_dict())
    optimizers = build_optimizers(torch_model, o)
    if o.name == "muon":
        optimizers[0].ns_dtype = torch.float32
    step = TrainStep(torch_model, torch_model, None, optimizers, torch.device("cpu"), "fp32", o.max_grad_norm)
    jstep = JaxStep(jax_model, o, data_mesh(), "fp32", o.max_grad_norm, ns_dtype=jnp.float32)
    run_data = open_run_data(job, scan_token_ids=False)
    data = run_data.train
    eos = run_data.tokenizer.document_end_id() if spec.model.document_mask else None
    step.document_eos = eos  # model.documentMask: both attend within documents
    doc_ids = None if eos is None else (lambda x: segment_ids(x, eos))
    accum = spec.train.batch_size // spec.train.device_batch_size
    batches = BatchPrefetcher(
        data, start_step=0, accum=accum, rank=0, world=1, device_batch_size=spec.train.device_batch_size,
        batch_size=spec.train.batch_size, seq_len=spec.model.seq_len, device=torch.device("cpu"),
    )  # fmt: skip
    torch_losses, jax_losses = [], []
    try:
        for s in range(steps):
            micro = batches.next_step()
            mult = lr_multiplier(s, total, o.warmup_steps, o.decay, o.min_lr_ratio)
            set_lr(optimizers, mult)
            torch_losses.append(float(step(micro)))
            jax_losses.append(float(np.asarray(jstep(micro, mult, doc_ids).addressable_data(0))))
        x, y = batches.next_step()[0]
    finally:
        batches.close()
    converted = jstep.to_torch()
    diff = max(float((converted.state_dict()[k] - v).abs().max()) for k, v in torch_model.state_dict().items())
    with torch.no_grad():
        converted_loss = float(converted(x, y))
    xs = jax.device_put(jnp.asarray(x.numpy()), jstep.replicated)
    ys = jax.device_put(jnp.asarray(y.numpy()), jstep.replicated)
    jax_loss = float(jstep.loss_fn(jstep.params, xs, ys, None))
    result = {
        "devices": jax.device_count(),
        "torch": torch_losses,
        "jax": jax_losses,
        "param_diff": diff,
        "converted_loss": converted_loss,
        "jax_loss": jax_loss,
    }
    with open(out, "w") as f:
        json.dump(result, f)


def eval_model(manifest: str, out: str) -> None:
    spec = load_job(manifest).spec
    torch.manual_seed(spec.train.seed)
    reference = GPT(spec.model).eval()
    copy = GPT(spec.model)
    copy.load_state_dict(reference.state_dict())
    wrapped = JaxEvalModel(JaxStep(copy, spec.train.optimizer, data_mesh(), "fp32", 1.0)).eval()
    g = torch.Generator().manual_seed(3)
    rows = []
    for width in (spec.model.seq_len - 14, spec.model.seq_len, spec.model.seq_len + 33):
        ids = torch.randint(0, 256, (3, width), generator=g)
        targets = torch.roll(ids, -1, -1)
        targets[:, -5:] = -1
        with torch.no_grad():
            logits, jax_logits = reference(ids), wrapped(ids)
            losses, jax_losses = reference(ids, targets, reduction="none"), wrapped(ids, targets, reduction="none")
        rows.append(
            {
                "width": width,
                "shapes": [list(jax_logits.shape), list(jax_losses.shape)],
                "logits": float((logits - jax_logits).abs().max()),
                "losses": float((losses - jax_losses).abs().max()),
            }
        )
    with open(out, "w") as f:
        json.dump({"rows": rows, "training_after": copy.training}, f)


if __name__ == "__main__":
    if sys.argv[3] == "eval-model":
        eval_model(sys.argv[1], sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
