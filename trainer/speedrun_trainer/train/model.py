"""The GPT the trainer trains: a decoder-only transformer built from a `ModelSpec`.

Pre-norm blocks (RMSNorm with a learnable gain) of causal self-attention and an MLP, a final
norm, and an LM head that may share the token embedding's weight. Attention uses rotary
position embeddings (RoPE), grouped-query attention (GQA: `numKvHeads` key/value heads shared
by groups of query heads), optional QK-norm, and PyTorch's `scaled_dot_product_attention`;
with a document mask (`doc_ids`), attention stays within the documents of a packed row,
positions staying absolute (train/attention.py: levanter's rule, FlexAttention on GPUs).
The MLP is SwiGLU (`silu`, three matrices), ReLU^2 (`relu2`) or GELU (`gelu`), two matrices.
No biases anywhere, so the parameter count equals `speedrun_api.flops.param_count(spec)`.

    model = GPT(spec)
    logits = model(idx)                                   # (B, T, V) float32
    loss = model(idx, targets)                            # scalar, mean over non-ignored tokens
    per_token = model(idx, targets, reduction="none")    # (B, T) nats, 0 where targets == -1
    masked = model(idx, targets, doc_ids=segment_ids(idx, eos_id))   # attention within documents

Works in fp32, under `torch.autocast(..., dtype=torch.bfloat16)`, `torch.compile` and DDP. With
targets, the LM head and the loss run in row chunks (train/cross_entropy.py), so the full
(B, T, V) fp32 logits are never materialised.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speedrun_api.spec_train import ModelSpec
from speedrun_trainer.train.attention import DocumentMask, attend, document_mask
from speedrun_trainer.train.cross_entropy import IGNORE_INDEX, chunked_token_losses, linear_cross_entropy

# `enable_gqa` arrived in torch 2.5; before that, key/value heads are repeated by hand.
_SDPA_HAS_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)

__all__ = ["GPT", "IGNORE_INDEX"]


class _RMSNormCPU(torch.autograd.Function):
    """RMSNorm with a gain and a hand-written backward, for eager CPU runs.

    torch 2.13 has no fused CPU kernel for `F.rms_norm`: it runs as pow, mean, add, rsqrt and two
    multiplies, and autograd differentiates each. Saving x_hat and 1/rms and writing the backward
    out (dx = rstd * (g - x_hat * mean(g * x_hat)), g = dy * w) takes about half the time on the
    shapes of the CPU configs; equal to `F.rms_norm` up to rounding (tests/unit/trainer/test_model.py).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True).add_(eps))
        x_hat = x * rstd
        ctx.save_for_backward(x_hat, rstd, weight)  # type: ignore[attr-defined]
        return x_hat * weight

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x_hat, rstd, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_w = (grad_out * x_hat).reshape(-1, x_hat.size(-1)).sum(0) if ctx.needs_input_grad[1] else None  # type: ignore[attr-defined]
        g = grad_out * weight
        grad_x = (g - x_hat * (g * x_hat).mean(-1, keepdim=True)).mul_(rstd)
        return grad_x, grad_w, None


class _ReLUSquared(torch.autograd.Function):
    """relu(x)^2 as one autograd node for eager runs: saves r = relu(x), backward grad * (r + r).

    Autograd of `F.relu(x).square()` runs pow's backward (grad * 2 * r) and then relu's
    (threshold_backward), one more pass over the (B, T, intermediateDim) activations each way; the
    same values (tests/unit/trainer/test_model.py).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        r = torch.relu(x)
        ctx.save_for_backward(r)  # type: ignore[attr-defined]
        return r * r

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (r,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad_out * (r + r)


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learnable gain (initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == self.weight.dtype and not torch.compiler.is_compiling():
            return _RMSNormCPU.apply(x, self.weight, self.eps)
        # The gain follows the activation's dtype (bf16 under autocast) so the fused kernel applies;
        # under torch.compile inductor fuses the norm itself.
        return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.eps)


class Rotary(nn.Module):
    """Rotary position embedding; cos/sin are precomputed for `max_len` positions."""

    def __init__(self, head_dim: int, max_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        cos, sin = self._tables(max_len)
        # Non-persistent: derived from the spec, so they stay out of checkpoints.
        self.register_buffer("cos", cos, persistent=False)  # (1, L, 1, d)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-width tables (1, length, 1, d): cos = [cos, cos], sin = [sin, -sin] over the two halves."""
        positions = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
        angles = torch.outer(positions, self.inv_freq)  # (length, d/2)
        cos, sin = angles.cos(), angles.sin()
        return torch.cat((cos, cos), -1)[None, :, None, :], torch.cat((sin, -sin), -1)[None, :, None, :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, T, nh, d); rotate the pairs (x[..., i], x[..., i + d/2]):
        # (x1 cos + x2 sin, x2 cos - x1 sin) = x * [cos, cos] + [x2, x1] * [sin, -sin], in 4 ops, not 7.
        t = x.size(1)
        # Past seqLen (evaluation only: CORE prompts are never cropped) the tables are computed for
        # this call; the registered buffers never change shape (DDP and compiled graphs keep them).
        cos, sin = (self.cos, self.sin) if t <= self.cos.size(1) else self._tables(t)
        cos, sin = cos[:, :t].to(x.dtype), sin[:, :t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE, GQA and optional QK-norm."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, d = spec.hidden_dim, spec.head_dim
        self.n_head, self.n_kv_head, self.head_dim = spec.num_heads, spec.kv_heads, d
        self.c_q = nn.Linear(h, self.n_head * d, bias=False)
        self.c_k = nn.Linear(h, self.n_kv_head * d, bias=False)
        self.c_v = nn.Linear(h, self.n_kv_head * d, bias=False)
        self.c_proj = nn.Linear(self.n_head * d, h, bias=False)
        self.q_norm = RMSNorm(d) if spec.qk_norm else None
        self.k_norm = RMSNorm(d) if spec.qk_norm else None
        self.rotary = Rotary(d, spec.seq_len, spec.rope_theta)

    def forward(self, x: torch.Tensor, mask: DocumentMask | None = None) -> torch.Tensor:
        b, t, c = x.size()
        q = self.c_q(x).view(b, t, self.n_head, self.head_dim)  # (B, T, H, d)
        k = self.c_k(x).view(b, t, self.n_kv_head, self.head_dim)  # (B, T, K, d)
        v = self.c_v(x).view(b, t, self.n_kv_head, self.head_dim)  # (B, T, K, d)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(q), self.rotary(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, d)
        gqa = self.n_kv_head != self.n_head
        if gqa and not _SDPA_HAS_GQA:
            repeat = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            gqa = False
        y = attend(q, k, v, mask, gqa)  # (B, H, T, d)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, H*d)
        return self.c_proj(y)


class MLP(nn.Module):
    """SwiGLU (silu: gate, up, down) or a plain two-matrix MLP with ReLU^2 or GELU."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        h, i = spec.hidden_dim, spec.intermediate_dim
        self.activation = spec.activation
        self.c_gate = nn.Linear(h, i, bias=False) if spec.glu else None
        self.c_up = nn.Linear(h, i, bias=False)
        self.c_proj = nn.Linear(i, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.c_up(x)  # (B, T, i)
        if self.c_gate is not None:
            hidden = F.silu(self.c_gate(x)) * up
        elif self.activation == "relu2":
            # eager: one autograd node (relu, square; backward 2r * grad); compiled: inductor fuses it
            hidden = F.relu(up).square() if torch.compiler.is_compiling() else _ReLUSquared.apply(up)
        else:
            hidden = F.gelu(up)
        return self.c_proj(hidden)  # (B, T, h)


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(spec.hidden_dim)
        self.attn = CausalSelfAttention(spec)
        self.mlp_norm = RMSNorm(spec.hidden_dim)
        self.mlp = MLP(spec)

    def forward(self, x: torch.Tensor, mask: DocumentMask | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Token embedding, `numLayers` blocks, final norm, LM head (tied to the embedding if asked)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.hidden_dim % spec.num_heads or spec.head_dim % 2:
            raise ValueError(f"hiddenDim {spec.hidden_dim} / numHeads {spec.num_heads} must be an even int")
        if spec.num_heads % spec.kv_heads:
            raise ValueError(f"numHeads {spec.num_heads} is not a multiple of numKvHeads {spec.kv_heads}")
        self.spec = spec
        self.wte = nn.Embedding(spec.vocab_size, spec.hidden_dim)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.num_layers))
        self.norm_f = RMSNorm(spec.hidden_dim)
        self.lm_head = nn.Linear(spec.hidden_dim, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deterministic given the global torch seed: N(0, 0.02) matrices, residual outputs
        scaled by 1/sqrt(2 * numLayers) (GPT-2), gains at 1."""
        residual_std = 0.02 / math.sqrt(2 * self.spec.num_layers)
        for name, p in self.named_parameters():  # tied weights appear once
            if p.ndim < 2:
                nn.init.ones_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=residual_std)
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Parameters counted once each (a tied head adds nothing)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        reduction: str = "mean",
        doc_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, V) float32 without targets; otherwise the cross-entropy in nats:
        a scalar mean ("mean") or per-token losses (B, T) ("none"), ignoring targets == -1.
        `doc_ids`: (B, T) document index of each position (`attention.segment_ids(idx, eos_id)`:
        a new document after each EOS); attention then stays within documents. None: causal."""
        b, t = idx.size()
        if t > self.spec.seq_len and self.training:  # evaluation may go further (RoPE extends), training not
            raise ValueError(f"sequence length {t} exceeds seqLen {self.spec.seq_len}")
        mask = None if doc_ids is None else document_mask(doc_ids)  # shared by all layers
        x = self.wte(idx)  # (B, T, h)
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm_f(x)
        if targets is None:
            return self.lm_head(x).float()  # (B, T, V)
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        # The loss never materialises the full fp32 logits: rows go through the head in chunks
        # (train/cross_entropy.py). The mean path makes its gradients chunk by chunk, too.
        x, flat_targets = x.reshape(b * t, -1), targets.reshape(b * t)
        if reduction == "mean":
            return linear_cross_entropy(x, self.lm_head.weight, flat_targets)
        return chunked_token_losses(x, self.lm_head, flat_targets).view(b, t)
