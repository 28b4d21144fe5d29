"""modded-nanogpt's GPT-2 (124M) training step, re-implemented for bench/bench_trainer.py.

Written here from reading the source of one record, not copied: KellerJordan/modded-nanogpt,
records/track_1_short/2024-10-18_PyTorch25 (the train_gpt2.py printed at the top of that record's
log; 3.28 FineWeb val loss on 8xH100). That record is the speedrun's "modern GPT-2 + Muon" step in
its plainest form; later records add U-net skips, value embeddings, FlexAttention windows, FP8
heads and hand-written kernels, which are recipe changes rather than a different step. Its parts:

- model: token embedding tied to the LM head, no position embedding, no biases; 12 blocks of
  x + attn(rms_norm(x)), x + mlp(rms_norm(x)) with weightless `F.rms_norm`; attention with
  separate q/k/v/o matrices, 6 heads of 128 (so n_head = n_embd / 128 at 124M), QK-norm
  (rms_norm of q and k), rotary embeddings from a bf16 cos/sin cache, and
  `scaled_dot_product_attention(is_causal=True)`; MLP 4x with ReLU^2; the output projections of
  attention and MLP zero-initialised; final rms_norm, logits upcast to fp32 for the cross-entropy.
- optimizers: fused AdamW on the LM head (= the tied embedding) at lr 0.0036, betas (0.9, 0.95),
  no weight decay; Muon on every block matrix at lr 0.1 x 0.0036, momentum 0.95 with Nesterov,
  `zeropower_via_newtonschulz5` (bf16, 5 quintic steps, X <- aX + bAX + cA(AX) with A = X X^T)
  per parameter, the update scaled by sqrt(max(rows, cols)); across ranks, parameter i is
  orthogonalised by rank i % world and a flat bf16 buffer of all updates is all-reduced (summed).
  LambdaLR schedulers stepped after the optimizers (constant 1 here: the bench has no schedule).
- step: bf16 autocast, torch.compile(model), DDP; forward returns the loss only; backward; the
  optimizers; zero_grad. Its loader slices a uint16 token array, converts to int64 on the host
  and copies with `.cuda()` (synchronous, pageable).

On CUDA the bench compiles the model and Newton-Schulz as the record does; on CPU both run
eager, like our trainer's CPU default, and everything is fp32 except Newton-Schulz, which the
record runs in bf16 on every device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

NS_COEFFS = (3.4445, -4.7750, 2.0315)
LEARNING_RATE = 0.0036


@dataclass(frozen=True)
class ModdedConfig:
    vocab_size: int
    n_layer: int
    n_head: int
    n_embd: int


def newtonschulz5(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The record's quintic Newton-Schulz, in bf16, on one 2-D matrix."""
    a, b, c = NS_COEFFS
    x = g.bfloat16()
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        gx = gram @ x
        x = a * x + b * gx + c * gram @ gx
    return x.T if tall else x


class ModdedMuon(torch.optim.Optimizer):
    """The record's Muon: per-parameter loop, rank i % world does parameter i, one flat all-reduce."""

    def __init__(
        self,
        params: list[nn.Parameter],
        lr: float,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        compile_ns: bool = False,
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps))
        self.ns = torch.compile(newtonschulz5) if compile_ns else newtonschulz5
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world = dist.get_world_size() if distributed else 1

    @torch.no_grad()
    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            params = group["params"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.bfloat16)
            offset = 0
            for i, p in enumerate(params):
                if i % self.world == self.rank and p.grad is not None:
                    g = p.grad
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=group["momentum"])
                    g = self.ns(g, steps=group["ns_steps"])
                    g = g * max(g.size(0), g.size(1)) ** 0.5
                    flat[offset : offset + p.numel()] = g.flatten()
                offset += p.numel()
            if self.world > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                p.add_(flat[offset : offset + p.numel()].view_as(p).type_as(p), alpha=-group["lr"])
                offset += p.numel()


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer(
            "inv_freq", 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)), persistent=False
        )
        self.cached: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = x.size(1)
        if self.cached is None or self.cached[0] != t:
            freqs = torch.outer(torch.arange(t, device=x.device).type_as(self.inv_freq), self.inv_freq)
            self.cached = (t, freqs.cos().bfloat16(), freqs.sin().bfloat16())
        return self.cached[1][None, :, None, :], self.cached[2][None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.size(3) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], 3).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModdedConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.c_q, self.c_k, self.c_v, self.c_proj = (nn.Linear(cfg.n_embd, cfg.n_embd, bias=False) for _ in range(4))
        self.c_proj.weight.data.zero_()
        self.rotary = Rotary(self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.size()
        q = self.c_q(x).view(b, t, self.n_head, self.head_dim)
        k = self.c_k(x).view(b, t, self.n_head, self.head_dim)
        v = self.c_v(x).view(b, t, self.n_head, self.head_dim)
        cos, sin = self.rotary(q)
        q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view_as(x))


class MLP(nn.Module):
    def __init__(self, cfg: ModdedConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.c_proj.weight.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModdedConfig) -> None:
        super().__init__()
        self.attn, self.mlp = Attention(cfg), MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(F.rms_norm(x, (x.size(-1),)))
        return x + self.mlp(F.rms_norm(x, (x.size(-1),)))


class ModdedGPT(nn.Module):
    def __init__(self, cfg: ModdedConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied, the head's init (nn.Linear's) wins

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(F.rms_norm(x, (x.size(-1),))).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ModdedLoader:
    """The record's loader over one token array: B*T+1 tokens -> int64 on the host -> device."""

    def __init__(self, tokens: np.ndarray, batch: int, seq_len: int, device: torch.device) -> None:
        self.tokens, self.b, self.t, self.device, self.pos = tokens, batch, seq_len, device, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.b * self.t
        if self.pos + n + 1 > len(self.tokens):
            self.pos = 0
        buf = torch.tensor(self.tokens[self.pos : self.pos + n + 1].astype(np.int32), dtype=torch.long)
        self.pos += n
        return buf[:-1].view(self.b, self.t).to(self.device), buf[1:].view(self.b, self.t).to(self.device)


def modded_optimizers(model: ModdedGPT, compile_ns: bool) -> list[torch.optim.Optimizer]:
    adam = torch.optim.AdamW(
        model.lm_head.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.0, fused=True
    )
    muon = ModdedMuon(list(model.h.parameters()), lr=0.1 * LEARNING_RATE, momentum=0.95, compile_ns=compile_ns)
    return [adam, muon]
