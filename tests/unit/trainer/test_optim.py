"""Unit tests for speedrun_trainer.train.optim: the WSD schedule, Muon, optimizer building, state.

Run: pytest -q tests/unit/trainer/test_optim.py  (CPU, a few seconds)
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from speedrun_api.spec_train import ModelSpec, OptimizerSpec
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.optim import Muon, build_optimizers, lr_multiplier, newton_schulz, set_lr

SPEC = ModelSpec(
    vocab_size=64,
    seq_len=32,
    hidden_dim=64,
    intermediate_dim=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    qk_norm=True,
)


def make_model(seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    return GPT(SPEC.model_copy(update=overrides))


def batch(seed: int = 0, size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, SPEC.vocab_size, (size, SPEC.seq_len + 1), generator=gen)
    return seq[:, :-1], seq[:, 1:]


def train_steps(model: GPT, optimizers: list[torch.optim.Optimizer], steps: int, seed: int = 0) -> list[float]:
    idx, targets = batch(seed)
    losses = []
    for _ in range(steps):
        loss = model(idx, targets)
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


# ---- schedule -------------------------------------------------------------------------------


def test_lr_multiplier_warmup_plateau_warmdown() -> None:
    f = lambda step: lr_multiplier(step, total_steps=100, warmup_steps=10, decay=0.2, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1)  # first update: 1/warmup, small but not zero
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)  # warmup ends at 1
    assert f(10) == f(50) == f(80) == pytest.approx(1.0)  # plateau up to the warmdown start
    assert f(90) == pytest.approx(1 - 0.9 * 0.5)  # halfway down from 1 to 0.1
    assert f(99) == pytest.approx(1 - 0.9 * 19 / 20)  # last update, just above min_lr_ratio
    assert f(100) == pytest.approx(0.1)
    values = [f(s) for s in range(100)]
    assert all(b <= a for a, b in itertools.pairwise(values[80:]))  # monotone warmdown


def test_lr_multiplier_without_warmup_or_decay_is_constant() -> None:
    assert {lr_multiplier(s, 50, 0, 0.0, 0.0) for s in range(50)} == {1.0}


def test_lr_multiplier_overlapping_warmup_and_decay_takes_the_smaller() -> None:
    # 10 steps, warmup 8, decay over the last 5: step 6 is warming (7/8) and decaying (4/5).
    assert lr_multiplier(6, 10, 8, 0.5, 0.0) == pytest.approx(0.8)
    assert lr_multiplier(3, 10, 8, 0.5, 0.0) == pytest.approx(0.5)


def test_set_lr_scales_initial_lr() -> None:
    optimizers = build_optimizers(make_model(), OptimizerSpec(name="muon", learning_rate=0.02))
    set_lr(optimizers, 0.5)
    lrs = sorted({g["lr"] for opt in optimizers for g in opt.param_groups})
    assert lrs == pytest.approx([0.002, 0.01])


# ---- Muon -----------------------------------------------------------------------------------


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=gen))[0]


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_newton_schulz_is_close_to_orthogonal(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(*shape, generator=gen)
    out = newton_schulz(g)
    assert out.shape == g.shape and out.dtype == g.dtype
    sv = torch.linalg.svdvals(out)
    assert sv.min() > 0.5 and sv.max() < 1.5, sv  # quintic NS lands in roughly [0.7, 1.2]
    # The input's own singular values are nowhere near 1: the band is the iteration's doing.
    assert torch.linalg.svdvals(g).max() > 5


def test_newton_schulz_flattens_a_spectrum_spanning_100x() -> None:
    # A square Gaussian matrix has near-zero singular values that five steps cannot lift (by
    # design); a known spectrum from 10 down to 0.1 shows the band instead.
    gen = torch.Generator().manual_seed(0)
    u, v = random_orthogonal(64, gen), random_orthogonal(64, gen)
    g = u @ torch.diag(torch.logspace(1, -1, 64)) @ v.T
    sv = torch.linalg.svdvals(newton_schulz(g))
    assert sv.min() > 0.5 and sv.max() < 1.5, sv


def test_newton_schulz_keeps_singular_vectors() -> None:
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(48, 48, generator=gen)
    u, _, vh = torch.linalg.svd(g)
    # Compared with the exact polar factor U V^T: same directions, loose magnitude.
    cosine = torch.nn.functional.cosine_similarity(newton_schulz(g).flatten(), (u @ vh).flatten(), dim=0)
    assert cosine > 0.95


def test_muon_rejects_non_matrices() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.ones(4))])


def test_muon_update_size_and_weight_decay() -> None:
    p = torch.nn.Parameter(torch.zeros(32, 8))
    opt = Muon([p], lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0)
    p.grad = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    opt.step()
    # Orthogonal update scaled by sqrt(rows/cols) = 2: singular values ~ lr * 2.
    sv = torch.linalg.svdvals(p.detach()) / (0.1 * 2)
    assert sv.min() > 0.5 and sv.max() < 1.5
    q = torch.nn.Parameter(torch.ones(4, 4))
    decay = Muon([q], lr=0.1, weight_decay=0.5)
    q.grad = torch.zeros(4, 4)
    decay.step()
    torch.testing.assert_close(q.detach(), torch.full((4, 4), 0.95))


# ---- build_optimizers -----------------------------------------------------------------------


def test_adamw_groups_decay_only_matrices() -> None:
    model = make_model()
    (opt,) = build_optimizers(model, OptimizerSpec(name="adamw", learning_rate=1e-3, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["name"]: g for g in opt.param_groups}
    assert all(p.ndim >= 2 for p in groups["adam_decay"]["params"])
    assert all(p.ndim == 1 for p in groups["adam_no_decay"]["params"])
    assert groups["adam_decay"]["weight_decay"] == 0.1 and groups["adam_no_decay"]["weight_decay"] == 0
    assert all(g["initial_lr"] == 1e-3 for g in opt.param_groups)
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == model.num_params()


@pytest.mark.parametrize("tie", [False, True])
def test_muon_takes_block_matrices_and_adamw_the_rest(tie: bool) -> None:
    model = make_model(tie_embeddings=tie)
    muon, adam = build_optimizers(model, OptimizerSpec(name="muon", learning_rate=0.02, momentum=0.9))
    assert isinstance(muon, Muon) and isinstance(adam, torch.optim.AdamW)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    block_matrices = {id(p) for p in model.blocks.parameters() if p.ndim == 2}
    assert muon_ids == block_matrices
    adam_ids = {id(p) for g in adam.param_groups for p in g["params"]}
    assert id(model.wte.weight) in adam_ids and id(model.lm_head.weight) in adam_ids
    assert not muon_ids & adam_ids
    assert len(muon_ids | adam_ids) == len(list(model.parameters()))
    assert muon.param_groups[0]["momentum"] == 0.9
    assert muon.param_groups[0]["initial_lr"] == 0.02
    assert [g["initial_lr"] for g in adam.param_groups] == pytest.approx([0.004, 0.004])
    (_, adam2) = build_optimizers(model, OptimizerSpec(name="muon", adam_learning_rate=0.01))
    assert {g["initial_lr"] for g in adam2.param_groups} == {0.01}


@pytest.mark.parametrize(
    "opt_spec",
    [
        OptimizerSpec(name="adamw", learning_rate=1e-2, weight_decay=0.0),
        OptimizerSpec(name="muon", learning_rate=0.05, adam_learning_rate=1e-2, weight_decay=0.0),
    ],
    ids=["adamw", "muon"],
)
def test_overfits_one_batch(opt_spec: OptimizerSpec) -> None:
    model = make_model()
    losses = train_steps(model, build_optimizers(model, opt_spec), steps=30)
    assert losses[0] > 3.5  # ~ln(64) at init
    assert losses[-1] < losses[0] - 1.5, losses


def test_muon_alone_lowers_the_loss() -> None:
    # Only Muon steps: embeddings, head and gains stay at init, so any progress is Muon's.
    model = make_model()
    muon, _ = build_optimizers(model, OptimizerSpec(name="muon", learning_rate=0.02, weight_decay=0.0))
    losses = train_steps(model, [muon], steps=30)
    assert losses[-1] < losses[0] - 0.8, losses


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_state_dict_round_trip(name: str) -> None:
    opt_spec = OptimizerSpec(name=name, learning_rate=0.01)
    model = make_model()
    optimizers = build_optimizers(model, opt_spec)
    train_steps(model, optimizers, steps=2)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opts = [copy.deepcopy(o.state_dict()) for o in optimizers]

    restored = make_model(seed=123)
    restored.load_state_dict(saved_model)
    restored_opts = build_optimizers(restored, opt_spec)
    for opt, state in zip(restored_opts, saved_opts, strict=True):
        opt.load_state_dict(state)
    assert restored_opts[0].state_dict()["state"].keys() == saved_opts[0]["state"].keys()

    # Continuing from the restored state matches continuing from the original exactly.
    train_steps(model, optimizers, steps=2, seed=5)
    train_steps(restored, restored_opts, steps=2, seed=5)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
