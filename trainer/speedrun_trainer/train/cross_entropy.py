"""Linear + cross-entropy in row chunks: the LM head's loss without the full fp32 logits.

The plain way, `F.cross_entropy(lm_head(x).float(), y)`, materialises (tokens x vocab) logits in
fp32 and keeps them for the backward: 6.6 GB at 32 x 1024 tokens and GPT-2's 50,304 vocabulary.
Here the rows go through in chunks of `chunk_rows`: each chunk's logits are made, reduced to
the loss, turned at once into the chunk's gradients (softmax - one-hot), multiplied into the
gradients of x and of the head's weight, and freed. Only x's gradient (tokens x hidden) and
the weight's (vocab x hidden, fp32) are kept for the backward, which scales them by the
incoming gradient. This is the "fused linear cross-entropy" of Liger-Kernel and similar,
written as a plain `torch.autograd.Function` (it traces under torch.compile).

    loss = linear_cross_entropy(x, lm_head.weight, targets)                 # mean over targets != -1
    per_token = chunked_token_losses(x, lm_head, targets)                   # (N,) nats, 0 where ignored

Dtypes follow what autocast would do to `lm_head(x)`: under an enabled autocast the matmuls run
in its dtype (bf16) and the logits are upcast to fp32 before the softmax; otherwise in x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -1
# 4096 rows x 50,304 vocab x 4 bytes = 0.8 GB of fp32 logits at a time (instead of 6.6 GB at 32k tokens).
DEFAULT_CHUNK_ROWS = 4096


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class _LinearCrossEntropySum(torch.autograd.Function):
    """sum_i CE(x_i W^T, t_i) over rows with t_i != IGNORE_INDEX; gradients made in the forward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_rows: int,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        w = weight.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        with torch.autocast(x.device.type, enabled=False):
            for start in range(0, x.size(0), chunk_rows):
                xc = x[start : start + chunk_rows].to(compute_dtype)  # (c, h)
                tc = targets[start : start + chunk_rows]  # (c,)
                keep = tc != IGNORE_INDEX
                safe = tc.clamp_min(0).unsqueeze(1)  # ignored rows pick class 0, then are masked out
                logits = (xc @ w.mT).float()  # (c, V)
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, safe).squeeze(1)
                total += ((lse - picked) * keep).sum()
                if grad_x is None and grad_w is None:
                    del logits  # before the next chunk's are made: one chunk of logits alive at a time
                    continue
                dlogits = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
                dlogits.scatter_add_(1, safe, torch.full_like(picked, -1.0).unsqueeze(1))
                dlogits.mul_(keep.unsqueeze(1))
                d = dlogits.to(compute_dtype)
                if grad_x is not None:
                    grad_x[start : start + chunk_rows] = (d @ w).to(x.dtype)  # (c, h)
                if grad_w is not None:
                    grad_w += (d.mT @ xc).float()  # (V, h)
                del logits, dlogits, d  # else held while the next chunk's logits are made (0.8 GB at GPT-2's vocab)
        ctx.save_for_backward(grad_x, grad_w)  # type: ignore[attr-defined]
        ctx.weight_dtype = weight.dtype  # type: ignore[attr-defined]
        return total

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_total: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        grad_x, grad_w = ctx.saved_tensors  # type: ignore[attr-defined]
        gx = grad_x * grad_total.to(grad_x.dtype) if grad_x is not None else None
        gw = (grad_w * grad_total).to(ctx.weight_dtype) if grad_w is not None else None  # type: ignore[attr-defined]
        return gx, gw, None, None, None


def linear_cross_entropy(
    x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> torch.Tensor:
    """Mean cross-entropy (nats) of logits x @ weight^T against `targets`, ignoring IGNORE_INDEX.

    x: (N, h); weight: (V, h); targets: (N,) integer. Equal (to rounding) in value and gradients
    to `F.cross_entropy((x @ weight.T).float(), targets, ignore_index=-1)`; with every target
    ignored it returns 0 where that returns NaN.
    """
    if x.ndim != 2 or weight.ndim != 2 or targets.shape != x.shape[:1]:
        raise ValueError(
            f"expected x (N, h), weight (V, h), targets (N,); got {tuple(x.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    targets = targets.long()
    total = _LinearCrossEntropySum.apply(x, weight, targets, chunk_rows, _compute_dtype(x))
    return total / (targets != IGNORE_INDEX).sum().clamp_min(1)


def chunked_token_losses(
    x: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> torch.Tensor:
    """Per-row cross-entropy (N,) in nats, 0 where targets == IGNORE_INDEX, a chunk of logits at a time.

    For evaluation: the head runs as a module (so autocast applies as it does to `head(x)`); with
    gradients enabled each chunk's logits are kept for the backward as usual.
    """
    targets = targets.long()
    out = [
        F.cross_entropy(
            head(x[s : s + chunk_rows]).float(),
            targets[s : s + chunk_rows],
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        for s in range(0, x.size(0), chunk_rows)
    ]
    return torch.cat(out) if out else x.new_zeros(0, dtype=torch.float32)
