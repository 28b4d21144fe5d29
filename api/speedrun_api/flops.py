"""FLOPs and parameter accounting, exactly as Marin/levanter count them.

With h hidden, i intermediate, H heads, K kv heads, d = h/H head dim, s seq len, V vocab,
L layers and m = 3 MLP matrices for SwiGLU (2 otherwise), the forward FLOPs per token are

    L * [2*m*h*i + 2*h*(H*d + 2*K*d) + 2*h^2 + (2*s^2*H*d + 3*s^2*H + 2*s^2*d*H) / s] + 2*h*V

and model FLOPs = 3 * forward-per-token * tokens (backward = 2x forward). Marin's
`model_flops_per_token` is the *forward* figure; we keep that name and meaning.

Two parameter counts: `param_count` is every parameter (Marin's `model_size`); `scaling_param_count`
is nanochat's count for `--target-param-data-ratio`, the transformer matrices plus the lm_head
(nanochat scripts/base_train.py: `num_scaling_params()["transformer_matrices"] + ["lm_head"]`),
without the token embedding and the norm gains. `train.paramDataRatio` uses nanochat's.
"""

from __future__ import annotations

from speedrun_api.spec_train import ModelSpec


def forward_flops_per_token(m: ModelSpec) -> float:
    h, i, big_h, k, s, v = m.hidden_dim, m.intermediate_dim, m.num_heads, m.kv_heads, m.seq_len, m.vocab_size
    d = m.head_dim
    mlp_mats = 3 if m.glu else 2
    mlp = 2 * mlp_mats * h * i
    qkv = 2 * h * (big_h * d + 2 * k * d)
    out_proj = 2 * h * h
    attn = (2 * s * s * big_h * d + 3 * s * s * big_h + 2 * s * s * d * big_h) / s
    return m.num_layers * (mlp + qkv + out_proj + attn) + 2 * h * v


def training_flops_per_token(m: ModelSpec) -> float:
    return 3 * forward_flops_per_token(m)


def model_flops(m: ModelSpec, tokens: int) -> float:
    return training_flops_per_token(m) * tokens


def param_count(m: ModelSpec) -> int:
    """Embedding + LM head (once if tied) + per layer (attention, MLP, 2 norms) + final norm.

    QK-norm adds two head-dim gains per layer.
    """
    h, i, d, k = m.hidden_dim, m.intermediate_dim, m.head_dim, m.kv_heads
    attn = h * (m.num_heads * d) + 2 * h * (k * d) + h * h
    mlp = (3 if m.glu else 2) * h * i
    norms = 2 * h + (2 * d if m.qk_norm else 0)
    embed = m.vocab_size * h * (1 if m.tie_embeddings else 2)
    return embed + m.num_layers * (attn + mlp + norms) + h


def scaling_param_count(m: ModelSpec) -> int:
    """nanochat's count for the param-data ratio: per-layer attention and MLP matrices + the lm_head.

    The lm_head counts even when tied (nanochat's model is untied; its head is V x h either way).
    """
    h, i, d, k = m.hidden_dim, m.intermediate_dim, m.head_dim, m.kv_heads
    attn = h * (m.num_heads * d) + 2 * h * (k * d) + h * h
    mlp = (3 if m.glu else 2) * h * i
    return m.num_layers * (attn + mlp) + m.vocab_size * h
