"""The trainer's step, built as train/loop.py builds it, for the CPU tests of the GPU path.

`build_step` wires a model exactly as `Trainer.__init__` does: `build_optimizers(model, opt,
compile=...)` (Muon's Newton-Schulz compiled per shape when compiling), `torch.compile(model)`,
`data_parallel` around the compiled module when there is more than one rank, and `TrainStep`
over DDP or the compiled module. `run_steps` takes optimizer steps as `Trainer._step` does
(the WSD learning rate set before each); `explain_training_forward` is dynamo's view of the
forward + loss it compiles. Used by test_compile_graphs.py, test_ddp_gloo.py and
test_fp8_emulated.py; tiny shapes (2 layers, hidden 64-128, seq 32, vocab 256) keep the CPU
compiles short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from speedrun_api.spec_train import ModelSpec, OptimizerSpec
from speedrun_trainer.data.loader import TokenDataset
from speedrun_trainer.data.prefetch import BatchPrefetcher
from speedrun_trainer.train.attention import segment_ids
from speedrun_trainer.train.loss_eval import LossEval, evaluate_loss
from speedrun_trainer.train.optim import Muon, build_optimizers, lr_multiplier, set_lr
from speedrun_trainer.train.step import TrainStep, data_parallel

CPU = torch.device("cpu")
DEVICE_BATCH = 2  # sequences per micro-batch
SPEC = ModelSpec(
    vocab_size=256,
    seq_len=32,
    hidden_dim=64,
    intermediate_dim=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    activation="relu2",
    qk_norm=True,
)
MUON = OptimizerSpec(name="muon", learning_rate=0.02, warmup_steps=1, decay=0.5)
ADAMW = OptimizerSpec(name="adamw", learning_rate=3e-3, warmup_steps=1, decay=0.5)
TOTAL_STEPS = 12  # the WSD schedule's horizon in these tests


def bigram_dataset(vocab: int = SPEC.vocab_size, tokens: int = 20_000, seed: int = 0) -> TokenDataset:
    """A stream where each token fixes the next (a random permutation): learnable, so losses fall."""
    rng = np.random.default_rng(seed)
    successor = rng.permutation(vocab)
    out = np.empty(tokens, dtype=np.uint16)
    out[0] = 0
    for i in range(1, tokens):
        out[i] = successor[out[i - 1]]
        if i % 97 == 0:  # restart at a random token now and then: every bigram appears
            out[i] = rng.integers(vocab)
    return TokenDataset([out], "mem://bigram")


def prefetcher(ds: TokenDataset, accum: int, rank: int = 0, world: int = 1, start_step: int = 0) -> BatchPrefetcher:
    """The trainer's batches: global batch DEVICE_BATCH x accum x world, rank r's share."""
    return BatchPrefetcher(
        ds,
        start_step=start_step,
        accum=accum,
        rank=rank,
        world=world,
        device_batch_size=DEVICE_BATCH,
        batch_size=DEVICE_BATCH * accum * world,
        seq_len=SPEC.seq_len,
        device=CPU,
    )


@dataclass
class Built:
    model: nn.Module  # the plain module (what evaluation and checkpoints see)
    runnable: nn.Module  # torch.compile(model), or the model
    step: TrainStep
    optimizers: list[torch.optim.Optimizer]


def build_step(
    model: nn.Module,
    *,
    precision: str,
    compile: bool,
    opt: OptimizerSpec = MUON,
    world: int = 1,
    ns_dtype: torch.dtype | None = None,
    document_eos: int | None = None,
) -> Built:
    """What `Trainer.__init__` builds around `model` (see the module doc). `ns_dtype` overrides
    Muon's Newton-Schulz dtype (the equality tests keep it fp32, as on CPUs without bf16).

    Compiling starts from an empty dynamo cache, as a trainer process does: entries left by other
    tests' models (same code objects) would count against torch's recompile limit, past which
    dynamo silently runs eager, and would hide this model's compiles from the counters. Inductor's
    own cache of compiled kernels stays, so a graph compiled before costs little."""
    if compile:
        torch._dynamo.reset()
    optimizers = build_optimizers(model, opt, compile=compile)
    if ns_dtype is not None:
        for o in optimizers:
            if isinstance(o, Muon):
                o.ns_dtype = ns_dtype
    runnable = torch.compile(model) if compile else model
    ddp = data_parallel(runnable, CPU, world)
    step = TrainStep(model, ddp or runnable, ddp, optimizers, CPU, precision, opt.max_grad_norm)
    step.document_eos = document_eos  # as Trainer sets it from model.documentMask
    return Built(model, runnable, step, optimizers)


def run_steps(built: Built, batches: BatchPrefetcher, first: int, count: int, opt: OptimizerSpec = MUON) -> list[float]:
    """Optimizer steps first .. first+count-1 as `Trainer._step` takes them; their mean losses."""
    losses = []
    for s in range(first, first + count):
        set_lr(built.optimizers, lr_multiplier(s, TOTAL_STEPS, opt.warmup_steps, opt.decay, opt.min_lr_ratio))
        losses.append(float(built.step(batches.next_step())))
    return losses


def explain_training_forward(
    model: nn.Module, document_eos: int | None = None
) -> torch._dynamo.backends.debugging.ExplainOutput:
    """Dynamo's view of `model(x, y)` as TrainStep calls it on CUDA: train mode, bf16 autocast,
    int32 inputs and int64 targets (what the prefetcher hands over); with `document_eos`, the
    segment ids TrainStep passes (model.documentMask)."""
    torch._dynamo.reset()
    model.train()
    x = torch.randint(0, SPEC.vocab_size, (DEVICE_BATCH, SPEC.seq_len), dtype=torch.int32)
    y = torch.randint(0, SPEC.vocab_size, (DEVICE_BATCH, SPEC.seq_len))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if document_eos is None:
            return torch._dynamo.explain(model)(x, y)
        return torch._dynamo.explain(model)(x, y, doc_ids=segment_ids(x, document_eos))


def evaluate_plain(
    model: nn.Module, dataset: TokenDataset, sequences: int, precision: str, document_mask: int | None = None
) -> LossEval:
    """The run's BPB evaluation as `Trainer._evaluate` calls it (the plain module, never the compiled
    one), on the first `sequences` sequences of `dataset`, one byte per token; `document_mask`: the
    EOS id that ends documents (model.documentMask)."""
    return evaluate_loss(
        model,
        dataset,
        np.ones(SPEC.vocab_size, dtype=np.int64),
        tokens=sequences * SPEC.seq_len,
        seq_len=SPEC.seq_len,
        batch_size=DEVICE_BATCH,
        rank=0,
        world_size=1,
        device=CPU,
        precision=precision,
        eval_batch=2 * DEVICE_BATCH,
        document_mask=document_mask,
    )
