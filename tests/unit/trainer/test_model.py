"""Unit tests for the GPT in speedrun_trainer.train.model: shapes, causality, losses, parameter count.

Run: pytest -q tests/unit/trainer/test_model.py  (CPU, a few seconds)
"""

from __future__ import annotations

import shutil

import pytest
import torch

from speedrun_api.flops import param_count
from speedrun_api.spec_train import ModelSpec
from speedrun_trainer.train.model import GPT


def tiny_spec(**overrides: object) -> ModelSpec:
    fields: dict[str, object] = dict(
        vocab_size=61, seq_len=16, hidden_dim=32, intermediate_dim=48, num_layers=2, num_heads=4
    )
    fields.update(overrides)
    return ModelSpec(**fields)


def tiny_model(seed: int = 0, **overrides: object) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_spec(**overrides))


def tokens(spec: ModelSpec, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.vocab_size, (batch, spec.seq_len), generator=gen)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation": "relu2"},
        {"activation": "gelu"},
        {"tie_embeddings": True},
        {"qk_norm": True},
        {"num_kv_heads": 2},
        {"num_kv_heads": 1, "qk_norm": True, "tie_embeddings": True, "activation": "relu2"},
        {"num_kv_heads": 2, "activation": "gelu", "tie_embeddings": True},
        {"hidden_dim": 48, "num_heads": 3, "intermediate_dim": 100, "num_layers": 3, "vocab_size": 97},
    ],
)
def test_param_count_matches_flops_accounting(overrides: dict[str, object]) -> None:
    spec = tiny_spec(**overrides)
    model = GPT(spec)
    assert model.num_params() == sum(p.numel() for p in model.parameters()) == param_count(spec)


def test_mlp_matrix_count_follows_activation() -> None:
    silu, relu2 = tiny_spec(activation="silu"), tiny_spec(activation="relu2")
    # SwiGLU has one more h x i matrix per layer than ReLU^2.
    extra = GPT(silu).num_params() - GPT(relu2).num_params()
    assert extra == silu.num_layers * silu.hidden_dim * silu.intermediate_dim


@pytest.mark.parametrize("activation", ["silu", "relu2", "gelu"])
def test_logits_shape_and_dtype(activation: str) -> None:
    model = tiny_model(activation=activation, num_kv_heads=2, qk_norm=True)
    idx = tokens(model.spec, batch=3)
    logits = model(idx)
    assert logits.shape == (3, model.spec.seq_len, model.spec.vocab_size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_shorter_sequences_are_accepted_and_longer_rejected() -> None:
    model = tiny_model()
    assert model(tokens(model.spec)[:, :5]).shape == (2, 5, model.spec.vocab_size)
    with pytest.raises(ValueError, match="seqLen"):
        model(torch.zeros(1, model.spec.seq_len + 1, dtype=torch.long))


@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 1, "qk_norm": True}])
def test_causal_future_tokens_do_not_change_past_logits(overrides: dict[str, object]) -> None:
    model = tiny_model(**overrides)
    idx = tokens(model.spec)
    changed = idx.clone()
    cut = 9
    changed[:, cut:] = (changed[:, cut:] + 1) % model.spec.vocab_size
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :cut], after[:, :cut])
    assert not torch.allclose(before[:, cut:], after[:, cut:])


def test_per_token_losses_average_to_mean_loss() -> None:
    model = tiny_model()
    idx, targets = tokens(model.spec, seed=1), tokens(model.spec, seed=2)
    mean = model(idx, targets)
    per_token = model(idx, targets, reduction="none")
    assert mean.ndim == 0 and per_token.shape == idx.shape
    assert (per_token > 0).all()
    torch.testing.assert_close(per_token.mean(), mean)


def test_ignored_targets_contribute_nothing() -> None:
    model = tiny_model()
    idx, targets = tokens(model.spec, seed=1), tokens(model.spec, seed=2)
    targets[0, :4] = -1
    per_token = model(idx, targets, reduction="none")
    assert (per_token[0, :4] == 0).all()
    torch.testing.assert_close(model(idx, targets), per_token.sum() / (targets != -1).sum())


def test_untrained_loss_is_near_uniform() -> None:
    model = tiny_model()
    loss = model(tokens(model.spec, seed=1), tokens(model.spec, seed=2))
    assert abs(loss.item() - torch.log(torch.tensor(61.0)).item()) < 0.3


def test_tied_embeddings_share_one_tensor() -> None:
    tied, untied = tiny_model(tie_embeddings=True), tiny_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight
    tied(tokens(tied.spec), tokens(tied.spec, seed=2)).backward()
    assert tied.wte.weight.grad is not None and tied.wte.weight.grad.abs().sum() > 0


def test_gqa_has_fewer_kv_weights_and_runs_backward() -> None:
    model = tiny_model(num_kv_heads=2)
    attn = model.blocks[0].attn
    assert attn.c_q.weight.shape == (32, 32)
    assert attn.c_k.weight.shape == attn.c_v.weight.shape == (2 * 8, 32)
    model(tokens(model.spec), tokens(model.spec, seed=2)).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_init_is_deterministic_from_global_seed() -> None:
    a, b, c = tiny_model(seed=3), tiny_model(seed=3), tiny_model(seed=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.wte.weight, c.wte.weight)


def test_rope_buffers_stay_out_of_the_state_dict() -> None:
    keys = tiny_model().state_dict().keys()
    assert not any(k.endswith((".cos", ".sin")) for k in keys)


def test_bf16_autocast_gives_float32_outputs() -> None:
    model = tiny_model(num_kv_heads=2, qk_norm=True)
    idx, targets = tokens(model.spec), tokens(model.spec, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
        loss = model(idx, targets)
    assert logits.dtype == loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss)


def test_invalid_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="numKvHeads"):
        GPT(tiny_spec(num_kv_heads=3))
    with pytest.raises(ValueError, match="even"):
        GPT(tiny_spec(hidden_dim=36, num_heads=4))


@pytest.mark.parametrize("shape", [(16, 256, 128), (4, 32, 4, 32), (3, 7, 768)])
def test_cpu_rms_norm_equals_f_rms_norm_in_values_and_gradients(shape: tuple[int, ...]) -> None:
    from speedrun_trainer.train.model import RMSNorm

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    norm = RMSNorm(shape[-1])
    with torch.no_grad():
        norm.weight.copy_(torch.rand(shape[-1], generator=gen) + 0.5)
    grad_out = torch.randn(*shape, generator=gen)
    y = norm(x)  # eager CPU: the hand-written autograd.Function
    assert y.grad_fn is not None and "RMSNormCPU" in type(y.grad_fn).__name__
    gx, gw = torch.autograd.grad(y, (x, norm.weight), grad_out)
    want = torch.nn.functional.rms_norm(x, (shape[-1],), norm.weight, norm.eps)
    want_gx, want_gw = torch.autograd.grad(want, (x, norm.weight), grad_out)
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(gx, want_gx)
    torch.testing.assert_close(gw, want_gw, rtol=1e-4, atol=1e-4)  # a sum over up to 524k rows


def test_eager_relu_squared_equals_relu_then_square_in_values_and_gradients() -> None:
    from speedrun_trainer.train.model import _ReLUSquared

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 16, 64, generator=gen, requires_grad=True)
    x.data[0, 0, :4] = 0.0  # the kink: both give 0 and gradient 0 there
    grad_out = torch.randn(4, 16, 64, generator=gen)
    y = _ReLUSquared.apply(x)
    (gx,) = torch.autograd.grad(y, x, grad_out)
    want = torch.nn.functional.relu(x).square()
    (want_gx,) = torch.autograd.grad(want, x, grad_out)
    assert torch.equal(y, want) and torch.equal(gx, want_gx)


def test_rope_equals_the_rotation_of_each_pair_and_its_inverse_past_seq_len() -> None:
    from speedrun_trainer.train.model import Rotary

    d, length = 16, 8
    rot = Rotary(d, length, 10000.0)
    gen = torch.Generator().manual_seed(2)
    for t in (length, 2 * length):  # the registered tables, and tables made for a longer input
        x = torch.randn(2, t, 3, d, generator=gen, requires_grad=True)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        angles = torch.outer(torch.arange(t, dtype=torch.float32), inv_freq)[None, :, None, :]
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.chunk(2, dim=-1)
        want = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)  # the textbook pairs
        got = rot(x)
        assert torch.equal(got, want)
        grad_out = torch.randn(got.shape, generator=gen)
        (g_got,) = torch.autograd.grad(got, x, grad_out)
        (g_want,) = torch.autograd.grad(want, x, grad_out)
        torch.testing.assert_close(g_got, g_want)
        # A rotation: each head vector keeps its norm
        torch.testing.assert_close(got.norm(dim=-1), x.norm(dim=-1))


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler (inductor's C++ backend)",
)
def test_compiled_model_on_cpu_equals_eager_in_loss_and_gradients() -> None:
    # `train.compile: true` on a CPU (inductor's C++ backend): the model takes the plain-op paths
    # (F.rms_norm, relu().square()) that the eager CPU Functions replace; both train the same.
    spec = tiny_spec(activation="relu2", qk_norm=True)
    torch.manual_seed(0)
    eager = GPT(spec)
    compiled_src = GPT(spec)
    compiled_src.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_src)
    idx = torch.randint(0, spec.vocab_size, (2, spec.seq_len))
    targets = torch.randint(0, spec.vocab_size, (2, spec.seq_len))
    want = eager(idx, targets)
    got = compiled(idx, targets)
    want.backward()
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled_src.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
