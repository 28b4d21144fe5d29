"""Two processes train what one does: the compiled model under DDP, Muon split across ranks,
gradient accumulation, as the first multi-GPU run will (gloo on CPU standing in for NCCL).

Two gloo ranks, each with half of every global batch (`data.batch_for`: micro-step m of rank r
reads its own sequences) and half the accumulation steps, build the trainer's step exactly as
train/loop.py does (tests/support/train_path.py: `torch.compile(model)`, `data_parallel` around
it, `build_optimizers` with Muon's compiled Newton-Schulz, `TrainStep`), and take STEPS optimizer
steps on the WSD schedule; after the first, under `error_on_recompile` (DDP's `no_sync` on all
but the last micro-batch must not recompile). One process takes the same steps over the full
batch with twice the accumulation. Both in fp32 (Newton-Schulz too), so they agree to rounding:
the mean losses (LossMeter, averaged over ranks) and every parameter on both ranks to 1e-5
relative (measured: 2e-7 absolute at most), and the ranks' parameters are identical. The model
is wide enough that DDPOptimizer splits its compiled graph at a DDP bucket boundary, as on GPUs.

Run: pytest -q tests/unit/trainer/test_ddp_gloo.py  (CPU, 2 processes; ~1 min with a cold inductor cache)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._dynamo.utils import counters

from speedrun_trainer.cli.launch import free_port
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import Muon, lr_multiplier, set_lr
from speedrun_trainer.train.step import LossMeter
from tests.support.train_path import CPU, MUON, SPEC, TOTAL_STEPS, bigram_dataset, build_step, prefetcher

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler (inductor's C++ backend)",
)

# Wide enough (1.7 MB of fp32 parameters) to pass DDP's first bucket (1 MB): torch.compile's
# DDPOptimizer splits the compiled graph there (two graphs, one more than without DDP), as it
# splits any real model's on the GPUs at its buckets (GPT-2 124M: 25 MB buckets of 500 MB).
DDP_SPEC = SPEC.model_copy(update={"hidden_dim": 128, "intermediate_dim": 512})
STEPS = 4
GLOBAL_ACCUM = 4  # micro-batches per optimizer step over all ranks: 2 per rank with 2 ranks
RTOL, ATOL = 1e-5, 1e-6


def train(rank: int, world: int) -> dict[str, Any]:
    """STEPS steps of the trainer's step on `rank` of `world`; losses, parameters, Muon's share."""
    torch.manual_seed(0)
    compiled_before = counters["aot_autograd"]["total"]
    model = GPT(DDP_SPEC)
    built = build_step(model, precision="fp32", compile=True, world=world, ns_dtype=torch.float32)
    batches = prefetcher(bigram_dataset(), accum=GLOBAL_ACCUM // world, rank=rank, world=world)
    meter, losses = LossMeter(CPU), []
    try:
        for s in range(STEPS):
            strict = torch._dynamo.config.patch(error_on_recompile=True) if s else contextlib.nullcontext()
            with strict:
                set_lr(built.optimizers, lr_multiplier(s, TOTAL_STEPS, MUON.warmup_steps, MUON.decay, 0.0))
                meter.add(built.step(batches.next_step()))
            losses.append(meter.read())  # the step's loss averaged over ranks, as the trainer logs it
    finally:
        batches.close()
    muon = next(o for o in built.optimizers if isinstance(o, Muon))
    return {
        "losses": losses,
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "orthogonalized": muon.orthogonalized,
        "ddp": built.step.ddp is not None,
        "compiled_graphs": counters["aot_autograd"]["total"] - compiled_before,
    }


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks on a two-core machine
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(train(rank, world), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_train_what_one_process_does(tmp_path: Path) -> None:
    want = train(0, 1)  # first: the ranks then find its kernels in inductor's on-disk cache
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert not want["ddp"] and all(r["ddp"] for r in ranks)
    # the model's graph split at DDP's bucket boundary: one graph more (Newton-Schulz: 4 either way)
    assert [r["compiled_graphs"] for r in ranks] == [want["compiled_graphs"] + 1] * 2
    assert want["losses"][-1] < want["losses"][0]  # it trains
    # Newton-Schulz split: each rank orthogonalised half of the stacks of 4 (q/o), 4 (k/v), 2 (up), 2 (down).
    assert [r["orthogonalized"] for r in ranks] == [want["orthogonalized"] // 2] * 2
    for r in ranks:
        torch.testing.assert_close(r["losses"], want["losses"], rtol=RTOL, atol=ATOL)
        for name, p in want["params"].items():
            torch.testing.assert_close(r["params"][name], p, rtol=RTOL, atol=ATOL, msg=name)
    for name, p in ranks[0]["params"].items():  # DDP keeps the replicas equal: bit for bit
        assert torch.equal(p, ranks[1]["params"][name]), name
    torch.manual_seed(0)
    moved = max((want["params"][n] - p).abs().max() for n, p in GPT(DDP_SPEC).named_parameters())
    assert moved > 1e-3  # the comparison is of trained weights, not of the initial ones
