"""FLOPs and parameter accounting against Marin's printed figures and a hand computation."""

from __future__ import annotations

import pytest

from speedrun_api.flops import forward_flops_per_token, param_count, scaling_param_count
from speedrun_api.manifest import load_job
from speedrun_api.plan import resolve
from speedrun_api.spec_train import ModelSpec
from tests.support.helpers import EXAMPLES

# The model of the two by-hand parameter counts below: tied head, QK-norm, gelu (two MLP matrices).
TIED_QK_NORM = ModelSpec(
    vocab_size=10,
    seq_len=8,
    hidden_dim=4,
    intermediate_dim=6,
    num_layers=2,
    num_heads=2,
    activation="gelu",
    tie_embeddings=True,
    qk_norm=True,
)


def test_marin_130m_matches_print_run_info():
    """Seed 002's print_run_info for the 130m config on 1x A100-80G, to 3 significant figures."""
    plan = resolve(load_job(EXAMPLES / "marin-130m.yaml"))
    assert f"{plan.model_size / 1e6:.2f}" == "154.15"
    assert f"{plan.model_flops:.2e}" == "2.11e+18"
    assert f"{plan.device_flops:.2e}" == "3.12e+14"
    assert f"{plan.estimates['mfu=0.5']['hardware_flops']:.2e}" == "4.21e+18"
    assert f"{plan.estimates['mfu=0.2']['hardware_flops']:.2e}" == "1.05e+19"
    assert plan.num_devices == 1


def test_marin_150m_results_file_model_flops():
    """Marin's llama_150m_run results: seq 1024, batch 512, 3000 steps -> 8.95011e17 model FLOPs."""
    m = ModelSpec(
        vocab_size=128256,
        seq_len=1024,
        hidden_dim=512,
        intermediate_dim=1792,
        num_layers=6,
        num_heads=8,
        num_kv_heads=8,
    )
    tokens = 512 * 1024 * 3000
    assert 3 * forward_flops_per_token(m) * tokens == pytest.approx(8.95011054944256e17, rel=1e-12)
    assert param_count(m) == 154147328


def test_forward_flops_by_hand():
    """h=4, i=8, H=2, K=1, d=2, s=3, V=5, L=1, relu2 (two MLP matrices)."""
    m = ModelSpec(
        vocab_size=5,
        seq_len=3,
        hidden_dim=4,
        intermediate_dim=8,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        activation="relu2",
    )
    mlp = 2 * 2 * 4 * 8  # 128
    qkv = 2 * 4 * (2 * 2 + 2 * 1 * 2)  # 64
    out = 2 * 4 * 4  # 32
    attn = (2 * 9 * 2 * 2 + 3 * 9 * 2 + 2 * 9 * 2 * 2) / 3  # (72 + 54 + 72) / 3 = 66
    head = 2 * 4 * 5  # 40
    assert forward_flops_per_token(m) == mlp + qkv + out + attn + head == 330


def test_param_count_tied_and_qk_norm():
    per_layer = 4 * 4 * 4 + 2 * 4 * 6 + 2 * 4 + 2 * 2  # attn, mlp, norms, qk gains
    assert param_count(TIED_QK_NORM) == 10 * 4 + 2 * per_layer + 4


def test_horizons_resolve_to_steps(tmp_path):
    from speedrun_api.manifest import parse_job
    from tests.support.helpers import tiny_manifest

    per_step = 8 * 64
    by_tokens = resolve(parse_job(tiny_manifest(**{"spec.train.steps": None, "spec.train.tokens": 10 * per_step + 1})))
    assert by_tokens.steps == 11
    job = parse_job(tiny_manifest(**{"spec.train.steps": None, "spec.train.paramDataRatio": 20}))
    plan = resolve(job)
    assert plan.steps == -(-20 * plan.scaling_params // per_step)  # nanochat's count, not model_size
    budget = plan.model_flops  # exactly the FLOPs of that many steps
    by_budget = resolve(parse_job(tiny_manifest(**{"spec.train.steps": None, "spec.train.flopsBudget": budget})))
    assert by_budget.steps == plan.steps


def test_horizon_rounding_down_is_nanochats():
    """train.horizonRounding down: nanochat scripts/base_train.py `target_tokens = int(ratio x
    scaling params)`, `num_iterations = target_tokens // total_batch_size`; up: at least the tokens."""
    from speedrun_api.manifest import parse_job
    from tests.support.helpers import tiny_manifest

    per_step = 8 * 64

    def plan(rounding: str, **horizon: object):
        changes = {"spec.train.steps": None, "spec.train.horizonRounding": rounding, **horizon}
        return resolve(parse_job(tiny_manifest(**changes)))

    assert plan("up", **{"spec.train.tokens": 10 * per_step + 1}).steps == 11
    down = plan("down", **{"spec.train.tokens": 10 * per_step + 1})
    assert down.steps == 10 and "(rounded down, as nanochat)" in down.horizon_rule
    assert plan("down", **{"spec.train.tokens": 10 * per_step}).steps == 10
    assert plan("down", **{"spec.train.tokens": per_step - 1}).steps == 1  # never 0 steps
    ratio = plan("down", **{"spec.train.paramDataRatio": 10.5})
    assert ratio.steps == int(10.5 * ratio.scaling_params) // per_step
    assert plan("up", **{"spec.train.paramDataRatio": 10.5}).steps == -(-int(10.5 * ratio.scaling_params) // per_step)
    assert ratio.steps * per_step <= 10.5 * ratio.scaling_params < (ratio.steps + 1) * per_step
    steps = plan("down", **{"spec.train.steps": 7})
    assert steps.steps == 7 and steps.horizon_rule == "steps as given"


def test_scaling_param_count_by_hand():
    """nanochat's count for paramDataRatio: matrices per layer + the lm_head; no embedding, no gains."""
    matrices = 4 * 4 * 4 + 2 * 4 * 6  # q, k, v, o and two MLP matrices
    assert scaling_param_count(TIED_QK_NORM) == 2 * matrices + 10 * 4


def test_nanochat_d24_ratio_uses_fewer_tokens_than_all_parameters():
    """The issue's figure: counting every parameter gives d24 6.9% more tokens than nanochat."""
    plan = resolve(load_job(EXAMPLES / "nanochat-d24.yaml"))
    assert plan.model_size / plan.scaling_params == pytest.approx(1.069, abs=5e-4)
    assert plan.total_tokens == pytest.approx(10.5 * plan.scaling_params, abs=plan.tokens_per_step)
