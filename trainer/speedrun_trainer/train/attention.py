"""The attention kernel of the GPT, with or without a document mask.

Without a mask, attention is causal over the whole packed row: PyTorch's
`scaled_dot_product_attention(is_causal=True)`, exactly as before the mask existed.

With a document mask (`doc_ids`: the document of each position, `segment_ids(idx, eos_id)`), a
query attends only to keys of its own document: levanter's rule, followed exactly
(stanford-crfm/levanter src/levanter/models/lm_model.py, `LmExample.causal`: "the next token
after an eos token is in a new segment"; segment ids are the cumulative sum of
`tokens[i - 1] == eos_id`, the first token in segment 0, and `AttentionMask.with_segment_ids`
keeps causal & same-segment). So the EOS belongs to the document it ends and attends to it; the
token after it starts a new one. RoPE positions stay absolute within the packed row (0..T-1), as
levanter's are: only the mask changes.

The segment ids are computed by the caller, outside the compiled model (TrainStep, evaluate_loss:
one cumsum on the device, no host read), and passed in: a mask_mod reading a graph *input*
compiles on every backend, where one reading a tensor computed inside the graph does not on CPU
(inductor's C++ FlexAttention template, torch 2.13: "NoValidChoicesError").

Kernels for the mask, chosen by device (`FLEX_DEVICES`):
- CUDA: FlexAttention (`torch.nn.attention.flex_attention`) with a `BlockMask` made from the
  segment ids by `create_block_mask`. The block mask is (B, 1, T/128, T/128) blocks; no T x T
  mask or score matrix is ever materialised, and fully masked blocks (other documents) are
  skipped. FlexAttention is only fast compiled: inside the trainer's `torch.compile(model)` it is
  traced with the model (one graph, no break: tests/unit/trainer/test_compile_graphs.py); called
  eagerly (evaluation runs the plain module) it goes through its own compiled wrapper.
- CPU: SDPA with an explicit boolean (B, 1, T, T) mask. FlexAttention runs on CPU in torch 2.13
  too (eager: a reference implementation that materialises the scores; compiled: inductor's C++
  template, a compile of several seconds per shape), but the CPU runs here are small (T <= a few
  thousand) and the dense mask is exact, simple and compiles with the rest of the model. Both
  kernels give the same outputs (tests/unit/trainer/test_document_mask.py runs the flex path on
  CPU, compiled, against the dense one and against each document scored alone).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

__all__ = ["FLEX_DEVICES", "attend", "document_mask", "segment_ids"]

# Devices whose document mask is a FlexAttention BlockMask; elsewhere a dense boolean mask.
FLEX_DEVICES: tuple[str, ...] = ("cuda",)

# A document mask as the kernels take it: a FlexAttention BlockMask, or a (B, 1, T, T) bool tensor.
DocumentMask = Any


@functools.cache
def _compiled_flex() -> Any:
    """flex_attention compiled on its own, made on first use (torch.compile loads dynamo: seconds).

    Eager calls (evaluation runs the plain module) need it: eager flex_attention is a reference
    implementation that materialises (B, H, T, T) scores. Inside a compiled model the plain
    function is traced instead (`torch.compiler.is_compiling()`), never a nested compile."""
    return torch.compile(flex_attention, dynamic=False)


def segment_ids(idx: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) int32 document index of each position: the number of EOS tokens strictly before it.

    levanter `LmExample.causal`: `eos_mask = roll(tokens, 1) == eos_id`, `eos_mask[0] = False`,
    `segment_ids = cumsum(eos_mask)`; equal to cumsum(is_eos) - is_eos, with no roll or host read.
    """
    is_eos = (idx == eos_id).to(torch.int32)
    return torch.cumsum(is_eos, dim=1, dtype=torch.int32) - is_eos


def document_mask(seg: torch.Tensor) -> DocumentMask:
    """The mask every layer of one forward shares: causal and within the same document (`seg`:
    (B, T) segment ids)."""
    b, t = seg.shape
    if seg.device.type in FLEX_DEVICES:

        def same_document(batch: Any, head: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (q_idx >= kv_idx) & (seg[batch, q_idx] == seg[batch, kv_idx])

        # Compiled mask creation when eager: the eager one evaluates mask_mod over all T x T pairs.
        compile_mask = not torch.compiler.is_compiling()
        return create_block_mask(same_document, b, None, t, t, device=seg.device, _compile=compile_mask)
    causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
    return (causal & (seg[:, :, None] == seg[:, None, :]))[:, None]  # (B, 1, T, T)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask | None, gqa: bool) -> torch.Tensor:
    """Attention of q (B, H, T, d) over k, v (B, K, T, d): causal, or within documents by `mask`."""
    if mask is None:
        if gqa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if isinstance(mask, BlockMask):
        kernel = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
        return kernel(q, k, v, block_mask=mask, enable_gqa=gqa)
    if gqa:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
