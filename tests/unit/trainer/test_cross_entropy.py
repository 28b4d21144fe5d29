"""The chunked linear cross-entropy (train/cross_entropy.py) equals the plain one, in loss and in
gradients; and the GPT's loss, which goes through it, equals the loss of its own logits.

Run: pytest -q tests/unit/trainer/test_cross_entropy.py  (CPU, a few seconds)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speedrun_api.spec_train import ModelSpec
from speedrun_trainer.train.cross_entropy import IGNORE_INDEX, chunked_token_losses, linear_cross_entropy
from speedrun_trainer.train.model import GPT


def inputs(n: int = 50, h: int = 24, v: int = 70, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=gen, requires_grad=True)
    w = (torch.randn(v, h, generator=gen) * 0.3).requires_grad_()
    t = torch.randint(0, v, (n,), generator=gen)
    t[::7] = IGNORE_INDEX  # some ignored positions
    return x, w, t


def plain(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy((x @ w.T).float(), t, ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("chunk_rows", [1, 7, 16, 50, 4096])
def test_loss_and_gradients_equal_the_plain_cross_entropy(chunk_rows: int) -> None:
    x, w, t = inputs()
    want = plain(x, w, t)
    want_gx, want_gw = torch.autograd.grad(want * 3.0, (x, w))  # a non-unit upstream gradient
    got = linear_cross_entropy(x, w, t, chunk_rows=chunk_rows)
    got_gx, got_gw = torch.autograd.grad(got * 3.0, (x, w))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_gx, want_gx)
    torch.testing.assert_close(got_gw, want_gw)


def test_only_the_needed_gradients_and_no_grad() -> None:
    x, w, t = inputs()
    w.requires_grad_(False)
    (gx,) = torch.autograd.grad(linear_cross_entropy(x, w, t, chunk_rows=8), (x,))
    torch.testing.assert_close(gx, torch.autograd.grad(plain(x, w, t), (x,))[0])
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(x, w, t, chunk_rows=8), plain(x, w, t))


def test_bf16_autocast_matches_the_plain_path_under_autocast() -> None:
    x, w, t = inputs(n=64, h=32, v=96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = plain(x, w, t)
        got = linear_cross_entropy(x, w, t, chunk_rows=16)
    want_gx, want_gw = torch.autograd.grad(want, (x, w))
    got_gx, got_gw = torch.autograd.grad(got, (x, w))
    assert got.dtype == torch.float32 and got_gw.dtype == w.dtype and got_gx.dtype == x.dtype
    # Both multiply in bf16; they may round chunk sums differently, nothing more.
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got_gx, want_gx, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(got_gw, want_gw, rtol=2e-2, atol=2e-3)


def test_bad_shapes_are_refused() -> None:
    x, w, t = inputs()
    with pytest.raises(ValueError, match="expected x"):
        linear_cross_entropy(x, w, t[:-1])
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(x, w, t, chunk_rows=0)


def test_chunked_token_losses_equal_per_token_cross_entropy() -> None:
    x, w, t = inputs()
    head = torch.nn.Linear(w.size(1), w.size(0), bias=False)
    with torch.no_grad():
        head.weight.copy_(w)
        want = F.cross_entropy(head(x).float(), t, ignore_index=IGNORE_INDEX, reduction="none")
        got = chunked_token_losses(x, head, t, chunk_rows=9)
    torch.testing.assert_close(got, want)
    assert (got[t == IGNORE_INDEX] == 0).all()


@pytest.mark.parametrize("tie", [False, True])
def test_gpt_loss_and_grads_equal_the_loss_of_its_logits(tie: bool) -> None:
    spec = ModelSpec(
        vocab_size=80, seq_len=16, hidden_dim=32, intermediate_dim=64, num_layers=2, num_heads=2, tie_embeddings=tie
    )
    torch.manual_seed(0)
    model = GPT(spec)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 80, (3, 16), generator=gen)
    targets = torch.randint(0, 80, (3, 16), generator=gen)
    targets[0, :4] = IGNORE_INDEX
    loss = model(idx, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    logits = model(idx)  # (B, T, V) fp32, the plain path
    want = F.cross_entropy(logits.view(-1, 80), targets.view(-1), ignore_index=IGNORE_INDEX)
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(loss, want)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)
    per_token = model(idx, targets, reduction="none")
    torch.testing.assert_close(per_token.sum() / (targets != IGNORE_INDEX).sum(), want)
