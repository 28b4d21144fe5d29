"""What DDP sends between processes (train/step.py `data_parallel`).

- every buffer of the GPT is a constant of the spec: two models built under different seeds hold
  the same buffers, training steps leave them unchanged, and FP8 layers add none. That is what makes DDP's
  `broadcast_buffers=False` safe; a buffer that a step changes (BatchNorm's running statistics,
  a step counter) fails here before it could silently drift apart between ranks;
- over 2 gloo processes, the steps broadcast nothing (DDP's per-forward buffer broadcast would
  call `torch.distributed._broadcast_coalesced`, counted here);
- `train.gradReduceDtype: bf16` (torch's bf16_compress_hook) averages the same gradients as the
  fp32 all-reduce within bf16's rounding, and parameters after a few AdamW steps agree within a
  stated tolerance, yet differ (so the hook really ran).

Run: pytest -q tests/unit/trainer/test_data_parallel.py  (CPU, 2 gloo processes, a few seconds)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from speedrun_api.spec_train import ModelSpec, OptimizerSpec
from speedrun_trainer.cli.launch import free_port
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import build_optimizers
from speedrun_trainer.train.step import TrainStep, data_parallel

SPEC = ModelSpec(vocab_size=256, seq_len=32, hidden_dim=64, intermediate_dim=128, num_layers=2, num_heads=2)
STEPS = 3
# Parameters after STEPS AdamW steps at lr 1e-3: Adam's first updates are about lr * sign(grad),
# so a gradient element near zero that bf16 rounds across zero moves its weight by up to 2 * lr
# per step. Measured here: 2.6e-3 at most; two fp32 runs agree exactly.
PARAM_ATOL = 2 * 1e-3 * STEPS


def batches(rank: int, steps: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Different data on each rank (as a sharded loader gives), one micro-batch per step."""
    gen = torch.Generator().manual_seed(100 + rank)
    out = []
    for _ in range(steps):
        tokens = torch.randint(0, SPEC.vocab_size, (4, SPEC.seq_len + 1), generator=gen)
        out.append([(tokens[:, :-1], tokens[:, 1:])])
    return out


def train(model: torch.nn.Module, forward: torch.nn.Module, ddp: torch.nn.Module | None, rank: int) -> None:
    optimizers = build_optimizers(model, OptimizerSpec(name="adamw", learning_rate=1e-3))
    step = TrainStep(model, forward, ddp, optimizers, torch.device("cpu"), "fp32", 1.0)  # type: ignore[arg-type]
    for micro in batches(rank, STEPS):
        step(micro)


def test_every_buffer_is_a_constant_of_the_spec() -> None:
    torch.manual_seed(0)
    model = GPT(SPEC)
    torch.manual_seed(1)
    other = GPT(SPEC)
    before = {name: buf.clone() for name, buf in model.named_buffers()}
    assert before, "the GPT has buffers (the rotary tables): the test below must see them"
    for name, buf in other.named_buffers():  # no buffer depends on the seed (or the rank)
        torch.testing.assert_close(buf, before[name], rtol=0, atol=0, msg=f"buffer {name} depends on the seed")
    train(model, model, None, rank=0)
    after = dict(model.named_buffers())
    assert after.keys() == before.keys()
    for name, buf in before.items():
        torch.testing.assert_close(after[name], buf, rtol=0, atol=0, msg=f"a step changed buffer {name}")


def test_fp8_layers_add_no_buffer() -> None:
    # torchao's Float8Linear with tensorwise (dynamic) scaling keeps no state between steps; a
    # delayed-scaling variant would add amax-history buffers that each rank updates on its own.
    pytest.importorskip("torchao")
    from speedrun_trainer.train.fp8 import convert_to_fp8

    spec = SPEC.model_copy(update={"hidden_dim": 128, "intermediate_dim": 256})  # fp8 needs dims >= 128
    plain, fp8 = GPT(spec), GPT(spec)
    assert convert_to_fp8(fp8)
    assert {n for n, _ in fp8.named_buffers()} == {n for n, _ in plain.named_buffers()}


class CountingBroadcast:
    """`torch.distributed._broadcast_coalesced`, counting its calls."""

    def __init__(self) -> None:
        self.original, self.calls = dist._broadcast_coalesced, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.original(*args, **kwargs)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result: dict[str, object] = {}
        for dtype in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = GPT(SPEC)
            ddp = data_parallel(model, torch.device("cpu"), world, dtype)
            assert ddp is not None
            counting = CountingBroadcast()
            dist._broadcast_coalesced = counting  # what DDP's buffer sync calls before a forward
            try:
                x, y = batches(rank, 1)[0][0]
                ddp(x, y).backward()  # one averaged gradient, kept for the comparison
                grads = {n: p.grad.clone() for n, p in model.named_parameters()}
                local = GPT(SPEC)  # this rank's own gradient, without DDP
                local.load_state_dict(model.state_dict())
                local(x, y).backward()
                model.zero_grad(set_to_none=True)
                train(model, ddp, ddp, rank)
            finally:
                dist._broadcast_coalesced = counting.original
            result[dtype] = {
                "broadcast_buffers": ddp.broadcast_buffers,
                "broadcasts": counting.calls,
                "grads": grads,
                "local_grads": {n: p.grad.clone() for n, p in local.named_parameters()},
                "params": {n: p.detach().clone() for n, p in model.named_parameters()},
            }
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_broadcasts_no_buffers_and_bf16_reduce_agrees_with_fp32(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for res in ranks:
        for dtype in ("fp32", "bf16"):
            assert res[dtype]["broadcast_buffers"] is False
            assert res[dtype]["broadcasts"] == 0, f"{dtype}: DDP broadcast buffers during the steps"
    fp32, bf16 = ranks[0]["fp32"], ranks[0]["bf16"]
    local = [res["fp32"]["local_grads"] for res in ranks]
    for name, g in fp32["grads"].items():
        mean = (local[0][name] + local[1][name]) / 2
        torch.testing.assert_close(g, mean, rtol=1e-5, atol=1e-7)  # fp32: the exact average
        # bf16 (unit roundoff 2^-8): each rank's g rounded, halved, their sum rounded again: within
        # 2 * 2^-8 of the mean magnitude that went in (cancellation leaves no bound relative to the sum).
        scale = (local[0][name].abs() + local[1][name].abs()) / 2
        err = (bf16["grads"][name] - mean).abs()
        assert bool((err <= 2**-7 * scale + 1e-12).all()), f"{name}: bf16 average off by {float(err.max()):.3g}"
    diffs = [float((bf16["params"][n] - p).abs().max()) for n, p in fp32["params"].items()]
    assert max(diffs) <= PARAM_ATOL, f"bf16 and fp32 reductions drifted apart: {max(diffs):.3g}"
    assert max(diffs) > 0, "bf16 gradient reduction left the parameters bit-identical: the hook did not run"
    # every rank holds the same parameters after each reduction
    for dtype in ("fp32", "bf16"):
        for n, p in ranks[0][dtype]["params"].items():
            torch.testing.assert_close(ranks[1][dtype]["params"][n], p, rtol=0, atol=0)
