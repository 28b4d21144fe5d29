"""Validation loss and bits-per-byte, distributed across ranks.

BPB = sum of per-token losses in nats / (ln 2 x sum of UTF-8 bytes of the target tokens), the
byte lengths coming from the tokenizer (`Tokenizer.token_bytes()`). Targets that stand for no
bytes (special tokens such as the document separator) are left out of both sums, as nanochat
does, so BPB is a property of the text alone and comparable across tokenizers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from speedrun_trainer.data.loader import TokenDataset
from speedrun_trainer.data.tokenizer import Tokenizer
from speedrun_trainer.train.runtime import all_reduce_sum, autocast


@dataclass(frozen=True)
class LossEval:
    loss: float  # mean nats per scored token
    bpb: float
    tokens: int  # tokens scored over all ranks
    bytes: int


def padded_token_bytes(tokenizer: Tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes per token id for a model whose vocabulary may be padded past the tokenizer's:
    padding ids stand for no bytes."""
    out = np.zeros(vocab_size, dtype=np.int64)
    out[: tokenizer.vocab_size] = tokenizer.token_bytes()
    return out


def bits_per_byte(sum_nats: float, sum_bytes: int) -> float:
    """The BPB formula itself; see the module docstring."""
    return sum_nats / (math.log(2) * sum_bytes) if sum_bytes else math.nan


def score_batch(losses: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[float, int, int]:
    """(sum of nats, tokens, bytes) over the targets that stand for at least one byte."""
    nbytes = token_bytes[targets]
    counted = nbytes > 0
    return (
        float(losses[counted].double().sum()),
        int(counted.sum()),
        int(nbytes[counted].sum()),
    )


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    dataset: TokenDataset,
    token_bytes: np.ndarray,
    *,
    tokens: int,
    seq_len: int,
    batch_size: int,
    rank: int,
    world_size: int,
    device: torch.device,
    precision: str,
) -> LossEval:
    """Score the first `tokens` tokens of `dataset` (rounded up to whole sequences).

    Sequence j goes to rank j % world_size; the sums are all-reduced, so the result is the same
    for any world size.
    """
    num_seqs = max(1, math.ceil(tokens / seq_len))
    tb = torch.as_tensor(token_bytes, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    nats = 0.0
    count = nbytes = 0
    mine = list(range(rank, num_seqs, world_size))
    for i in range(0, len(mine), batch_size):
        chunk = mine[i : i + batch_size]
        xs, ys = zip(*(dataset.sequences(j, 1, seq_len) for j in chunk), strict=True)
        x = torch.cat(xs).to(device, non_blocking=True)
        y = torch.cat(ys).to(device, non_blocking=True)
        with autocast(device, precision):
            losses = model(x, y, reduction="none")
        a, b, c = score_batch(losses.float(), y, tb)
        nats, count, nbytes = nats + a, count + b, nbytes + c
    if was_training:
        model.train()
    nats, count, nbytes = all_reduce_sum([nats, count, nbytes], device)
    return LossEval(
        loss=nats / count if count else math.nan,
        bpb=bits_per_byte(nats, int(nbytes)),
        tokens=int(count),
        bytes=int(nbytes),
    )
