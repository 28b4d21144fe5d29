"""Muon as one stacked update per matrix shape, its Newton-Schulz work split across ranks.

Muon (Keller Jordan, https://kellerjordan.github.io/posts/muon/): momentum, a Nesterov look-ahead,
then the update replaced by the nearest (semi-)orthogonal matrix via a quintic Newton-Schulz
iteration. Per parameter the update is exactly the textbook one:

    buf <- lerp(buf, grad, 1 - momentum)                  # buf = momentum*buf + (1-momentum)*grad
    d   <- lerp(grad, buf, momentum) if nesterov else buf
    p   <- p * (1 - lr * wd) - lr * sqrt(max(1, rows/cols)) * NS5(d)

How it runs (the ideas of nanochat's `MuonAdamW` and modded-nanogpt's distributed Muon, written
here from reading them): one bucket per matrix shape (q/o, k/v, MLP up, MLP down), its directions
stacked into one (N, rows, cols) tensor, Newton-Schulz as batched matmuls (`baddbmm`, the scaling
folded in; one torch.compile'd graph per shape with `compile=True`): a handful of ops per shape
instead of ~40 per parameter. Under torch.distributed rank r orthogonalises its contiguous share
of each stack and one all-gather per shape brings every rank the whole stack; momentum buffers
stay per parameter and identical on every rank, so rank 0's `state_dict` is the whole optimizer.
`ns_dtype` is what the iteration multiplies in: by default bf16 on CUDA (as modded-nanogpt and
nanochat), else fp32; the trainer asks for bf16 on CPUs with native bf16 (`native_bf16_matmul`).

    opt = Muon(hidden_matrices, lr=0.02, momentum=0.95, weight_decay=0.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

from speedrun_trainer.train.runtime import native_bf16_matmul

__all__ = ["Muon", "native_bf16_matmul", "newton_schulz"]

# Quintic Newton-Schulz coefficients from the Muon write-up: they push every singular value
# into roughly [0.7, 1.2] in five steps, which trains as well as exact orthogonalization.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(grad: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximate U V^T of each matrix G = U S V^T in `grad` (rows x cols, or stacked N x rows x cols).

    Multiplies in `dtype`; by default bf16 on CUDA (fast, and the iteration tolerates the noise)
    and fp32 elsewhere. Each matrix is normalised by its own Frobenius norm, so a stack gives
    what one call per matrix does. Returns a tensor of grad's shape and dtype whose singular
    values are near 1.
    """
    if grad.ndim not in (2, 3):
        raise ValueError(f"Newton-Schulz needs a 2-D matrix or a 3-D stack, got shape {tuple(grad.shape)}")
    a, b, c = _NS_COEFFS
    x = grad.to(dtype or (torch.bfloat16 if grad.is_cuda else torch.float32))
    squeeze = x.ndim == 2
    if squeeze:  # baddbmm wants a batch dimension
        x = x.unsqueeze(0)
    transposed = x.size(-2) > x.size(-1)
    if transposed:  # iterate on the wide form: X X^T is then the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram @ gram
        x = torch.baddbmm(x, poly, x, beta=a)  # a * x + poly @ x
    if transposed:
        x = x.mT
    if squeeze:
        x = x.squeeze(0)
    return x.to(grad.dtype)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz, for 2-D weight matrices only (see the module doc).

    `orthogonalized` counts the matrices this rank ran Newton-Schulz on in the last step (under
    torch.distributed, its share only).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        compile: bool = False,
        ns_dtype: torch.dtype | None = None,
    ) -> None:
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"invalid Muon settings: lr={lr}, momentum={momentum}, wd={weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only takes 2-D parameters, got shape {tuple(p.shape)}")
        # dynamic=False: one graph per shape, as there are only a few shapes.
        self._ns: Callable[[torch.Tensor, int, torch.dtype | None], torch.Tensor] = (
            torch.compile(newton_schulz, dynamic=False) if compile else newton_schulz
        )
        self.ns_dtype = ns_dtype  # None: newton_schulz's default (bf16 on CUDA, fp32 elsewhere)
        self.orthogonalized = 0

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = _rank_and_world()
        self.orthogonalized = 0
        for group in self.param_groups:
            buckets: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    buckets.setdefault((tuple(p.shape), p.dtype), []).append(p)
            for params in buckets.values():
                self._update_bucket(group, params, rank, world)
        return loss

    def _update_bucket(self, group: dict, params: list[torch.Tensor], rank: int, world: int) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        bufs = []
        for p, g in zip(params, grads, strict=True):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g)
            bufs.append(state["momentum_buffer"])
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        directions = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
        updates = self._orthogonalize(torch.stack(directions), group["ns_steps"], rank, world)
        rows, cols = params[0].shape
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, list(updates.unbind(0)), alpha=-lr * max(1.0, rows / cols) ** 0.5)

    def _orthogonalize(self, stacked: torch.Tensor, steps: int, rank: int, world: int) -> torch.Tensor:
        """Newton-Schulz of every matrix of `stacked` (N, rows, cols); each rank does its share."""
        n = stacked.size(0)
        if world == 1:
            self.orthogonalized += n
            return self._ns(stacked, steps, self.ns_dtype)
        share = -(-n // world)  # ceil(n / world) matrices per rank; the last ones may be padding
        padded = stacked.new_zeros((share * world, *stacked.shape[1:]))
        padded[:n] = stacked
        mine = padded[rank * share : (rank + 1) * share]
        self.orthogonalized += max(0, min(n - rank * share, share))
        gathered = torch.empty_like(padded)
        dist.all_gather_into_tensor(gathered, self._ns(mine, steps, self.ns_dtype).contiguous())
        return gathered[:n]
