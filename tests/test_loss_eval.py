"""Bits-per-byte: the formula on a hand-computed case, and the distributed evaluation's sums."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speedrun_trainer.evaluation.loss import bits_per_byte, evaluate_loss, score_batch


def test_bits_per_byte_by_hand():
    # three tokens of 1, 2 and 3 bytes, each with loss ln(2) nats = 1 bit: 3 bits / 6 bytes
    assert bits_per_byte(3 * math.log(2), 6) == pytest.approx(0.5)


def test_special_tokens_count_in_neither_sum():
    token_bytes = torch.tensor([1, 2, 3, 0])  # id 3 is a special token
    losses = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    targets = torch.tensor([[0, 1, 2, 3]])
    nats, tokens, nbytes = score_batch(losses, targets, token_bytes)
    assert (nats, tokens, nbytes) == (6.0, 3, 6)


class UniformModel(torch.nn.Module):
    """Assigns every token of a V-sized vocabulary probability 1/V: loss ln V per token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, x, y, reduction="none"):
        return torch.full(y.shape, math.log(self.vocab))


class ListDataset:
    def __init__(self, tokens: np.ndarray) -> None:
        self.tokens = tokens

    def sequences(self, first, count, seq_len):
        xs, ys = [], []
        for j in range(first, first + count):
            idx = (np.arange(seq_len + 1) + j * seq_len) % len(self.tokens)
            chunk = torch.as_tensor(self.tokens[idx].astype(np.int64))
            xs.append(chunk[:-1])
            ys.append(chunk[1:])
        return torch.stack(xs), torch.stack(ys)


def test_uniform_byte_model_scores_eight_bits_per_byte():
    data = ListDataset(np.arange(1000) % 256)
    ev = evaluate_loss(UniformModel(256), data, np.ones(256, dtype=np.int64), tokens=512, seq_len=64,
                       batch_size=4, rank=0, world_size=1, device=torch.device("cpu"), precision="fp32")
    assert ev.bpb == pytest.approx(8.0)
    assert ev.tokens == 512 and ev.bytes == 512


def test_ranks_split_sequences_without_overlap():
    data = ListDataset(np.arange(5000) % 256)
    kwargs = dict(tokens=640, seq_len=64, batch_size=3, device=torch.device("cpu"), precision="fp32")
    parts = [evaluate_loss(UniformModel(256), data, np.ones(256, dtype=np.int64), rank=r, world_size=3, **kwargs)
             for r in range(3)]
    assert sum(p.tokens for p in parts) == 640
