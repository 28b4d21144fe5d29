"""The stacked Muon (train/muon.py) against the textbook per-parameter update, alone and split
over 2 gloo processes; and its op count, which must not grow with the number of layers.

The reference below is the update Muon made before it was stacked (one Newton-Schulz call per
parameter, in a Python loop): the stacked, distributed one must give the same parameters.

Run: pytest -q tests/unit/trainer/test_muon.py  (CPU, ~20 s: the distributed test starts 2 processes)
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
from speedrun_trainer.train.muon import Muon, newton_schulz
from speedrun_trainer.train.optim import build_optimizers

# 3 layers of GQA + SwiGLU: shapes (64,64) x6, (32,64) x6, (128,64) x6, (64,128) x3 - tall, wide, square,
# and bucket sizes that do not divide by 2 ranks.
SPEC = ModelSpec(
    vocab_size=64,
    seq_len=16,
    hidden_dim=64,
    intermediate_dim=128,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    activation="silu",
)
LR, MOMENTUM, WD, STEPS = 0.02, 0.9, 0.1, 3


def reference_step(params: list[torch.Tensor], bufs: list[torch.Tensor], lr: float, momentum: float, wd: float) -> None:
    """The per-parameter Muon update (Nesterov), one Newton-Schulz call per matrix."""
    for p, buf in zip(params, bufs, strict=True):
        buf.lerp_(p.grad, 1 - momentum)
        update = newton_schulz(p.grad.lerp(buf, momentum))
        p.mul_(1 - lr * wd)
        p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)


def hidden_matrices(seed: int = 0) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    model = GPT(SPEC)
    return [p for p in model.blocks.parameters() if p.ndim == 2]


def set_grads(params: list[torch.Tensor], step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def reference_run() -> list[torch.Tensor]:
    params = hidden_matrices()
    bufs = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        for step in range(STEPS):
            set_grads(params, step)
            reference_step(params, bufs, LR, MOMENTUM, WD)
    return [p.detach().clone() for p in params]


def stacked_run() -> tuple[list[torch.Tensor], Muon]:
    params = hidden_matrices()
    opt = Muon(params, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    for step in range(STEPS):
        set_grads(params, step)
        opt.step()
    return [p.detach().clone() for p in params], opt


def assert_params_equal(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        # Batched and single matmuls may round differently in the last bit; nothing more.
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_stacked_newton_schulz_equals_one_call_per_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in [(5, 24, 40), (3, 40, 24)]:
        stack = torch.randn(*shape, generator=gen)
        per_matrix = torch.stack([newton_schulz(m) for m in stack])
        torch.testing.assert_close(newton_schulz(stack), per_matrix, rtol=1e-5, atol=1e-6)


def test_stacked_muon_equals_the_per_parameter_update() -> None:
    want = reference_run()
    got, opt = stacked_run()
    assert_params_equal(got, want)
    assert opt.orthogonalized == len(want)  # one process: every matrix here
    moved = [(g - w0).abs().max() for g, w0 in zip(got, hidden_matrices(), strict=True)]
    assert min(moved) > 1e-3  # the update did something to every matrix


def _distributed_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        got, opt = stacked_run()
        torch.save(
            {"params": got, "orthogonalized": opt.orthogonalized, "state": opt.state_dict()["state"]},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_muon_split_over_two_gloo_ranks_equals_the_per_parameter_update(tmp_path: Path) -> None:
    mp.spawn(_distributed_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    want = reference_run()
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for res in results:
        assert_params_equal(res["params"], want)
    # Each rank orthogonalised only its share: ceil(bucket / 2) per shape, 11 of 21 and 10 of 21.
    # (Buckets 6, 6, 6, 3: rank 0 gets 3+3+3+2, rank 1 gets 3+3+3+1.)
    assert [res["orthogonalized"] for res in results] == [11, 10]
    # Momentum stays whole and identical on every rank, so rank 0's state_dict is the optimizer.
    s0, s1 = (res["state"] for res in results)
    assert s0.keys() == s1.keys() and len(s0) == len(want)
    for k in s0:
        torch.testing.assert_close(s0[k]["momentum_buffer"], s1[k]["momentum_buffer"], rtol=0, atol=0)


def _muon_ops(num_layers: int) -> int:
    """Top-level aten ops of one Muon step over a `num_layers` model's hidden matrices."""
    torch.manual_seed(0)
    model = GPT(SPEC.model_copy(update={"num_layers": num_layers}))
    muon, _ = build_optimizers(model, OptimizerSpec(name="muon", learning_rate=0.02))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    muon.step()  # state initialised outside the count
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        muon.step()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)


def test_muon_step_ops_do_not_grow_with_depth() -> None:
    # One stack per shape: 2 layers and 8 layers make the same ops (4 shapes either way); the
    # per-parameter loop made ~40 per matrix, 4x more at 8 layers than at 2.
    shallow, deep = _muon_ops(2), _muon_ops(8)
    assert shallow == deep, (shallow, deep)
    assert deep < 40 * 4 * 5  # far below one loop body per matrix (8 layers x 5 matrices)


@pytest.mark.parametrize("compile_ns", [False, True], ids=["eager", "compiled"])
def test_muon_single_shape_matches_reference(compile_ns: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(16, 48, generator=gen)) for _ in range(3)]
    ref = [p.detach().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in ref]
    opt = Muon(params, lr=0.05, momentum=0.95, weight_decay=0.0, compile=compile_ns)
    for _ in range(2):
        grads = [torch.randn(16, 48, generator=gen) for _p in params]
        for p, r, g in zip(params, ref, grads, strict=True):
            p.grad, r.grad = g, g.clone()
        opt.step()
        with torch.no_grad():
            reference_step(ref, bufs, 0.05, 0.95, 0.0)
    assert_params_equal([p.detach() for p in params], ref)


def test_newton_schulz_baddbmm_form_and_bf16_stay_orthogonalising() -> None:
    # bf16 (what CUDA and bf16-capable CPUs run) against fp32: the same direction to within bf16's
    # rounding, and singular values no larger than the quintic iteration's band either way.
    gen = torch.Generator().manual_seed(5)
    for shape in [(2, 64, 64), (3, 32, 96), (96, 32)]:
        g = torch.randn(shape, generator=gen)
        fp32 = newton_schulz(g, dtype=torch.float32)
        bf16 = newton_schulz(g, dtype=torch.bfloat16)
        assert bf16.dtype == g.dtype and bf16.shape == g.shape
        cosine = torch.nn.functional.cosine_similarity(fp32.flatten(), bf16.flatten(), dim=0)
        assert cosine > 0.999, cosine
        for out in (fp32, bf16):
            sv = torch.linalg.svdvals(out.float())
            # (a random square matrix has a few tiny singular values that 5 steps only start to lift)
            assert float(sv.median()) > 0.7 and float(sv.max()) < 1.3, sv


def test_build_optimizers_runs_newton_schulz_in_bf16_where_the_cpu_has_it() -> None:
    from speedrun_trainer.train.muon import native_bf16_matmul

    muon, _ = build_optimizers(GPT(SPEC), OptimizerSpec(name="muon", learning_rate=0.02))
    want = torch.bfloat16 if native_bf16_matmul(torch.device("cpu")) else torch.float32
    assert muon.ns_dtype == want
    assert not native_bf16_matmul(torch.device("meta"))
