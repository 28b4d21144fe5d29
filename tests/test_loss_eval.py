"""The distributed evaluation's sums: every definition from one pass, ranks, and a set too small."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speedrun_trainer.evaluation.definitions import LossSums
from speedrun_trainer.evaluation.loss import evaluate_loss, score_batch


def test_score_batch_keeps_every_sum():
    token_bytes = torch.tensor([1, 2, 3, 0])  # id 3 is a special token
    losses = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    targets = torch.tensor([[0, 1, 2, 3]])
    assert score_batch(losses, targets, token_bytes) == LossSums(
        nats=106.0, tokens=4, nats_with_bytes=6.0, tokens_with_bytes=3, bytes=6, last_nats=100.0, last_bytes=0
    )


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


class SpecialEveryFourth(torch.nn.Module):
    """Loss 1 nat on byte targets, 5 nats on the separator (id 256)."""

    def forward(self, x, y, reduction="none"):
        return torch.where(y == 256, 5.0, 1.0)


def test_definitions_differ_on_special_tokens_by_hand():
    # stream 256,1,2,3, 256,1,2,3, ...: targets of each 4 are 3 one-byte tokens and 1 separator
    data = ListDataset(np.array([256, 1, 2, 3] * 100))
    token_bytes = np.ones(257, dtype=np.int64)
    token_bytes[256] = 0
    ev = evaluate_loss(SpecialEveryFourth(), data, token_bytes, tokens=64, seq_len=16, batch_size=2, rank=0,
                       world_size=1, device=torch.device("cpu"), precision="fp32")
    # 64 targets: 16 separators (5 nats) + 48 bytes (1 nat); 48 bytes. Each of the 4 sequences of 16
    # ends on a separator, the position levanter's causal loss mask drops.
    assert ev.loss == pytest.approx((16 * 5 + 48) / 64)  # modded-nanogpt: all positions
    assert ev.bpb == pytest.approx((12 * 5 + 48) / (math.log(2) * 48))  # levanter: special loss kept
    assert ev.nanochat_bpb == pytest.approx(48 / (math.log(2) * 48))  # nanochat: special out of both


class SizedDataset(ListDataset):
    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def test_eval_tokens_beyond_the_set_are_not_repeated():
    data = SizedDataset(np.arange(200) % 256)  # holds 3 whole sequences of 64 (+1 token)
    ev = evaluate_loss(UniformModel(256), data, np.ones(256, dtype=np.int64), tokens=1024, seq_len=64,
                       batch_size=4, rank=0, world_size=1, device=torch.device("cpu"), precision="fp32")
    assert ev.tokens == 192 and ev.exceeded and ev.set_tokens == 200
    ok = evaluate_loss(UniformModel(256), data, np.ones(256, dtype=np.int64), tokens=128, seq_len=64,
                       batch_size=4, rank=0, world_size=1, device=torch.device("cpu"), precision="fp32")
    assert ok.tokens == 128 and not ok.exceeded


def test_levanter_drops_each_sequences_last_position_by_hand():
    # stream 0..9 repeated, seq 5: sequences' targets are 1..5 and 6..10; each target byte costs 1 + id/10 nats
    class ByTarget(torch.nn.Module):
        def forward(self, x, y, reduction="none"):
            return 1.0 + y.float() / 10

    data = ListDataset(np.arange(100) % 10)
    ev = evaluate_loss(ByTarget(), data, np.arange(10) % 3, tokens=10, seq_len=5, batch_size=2, rank=0,
                       world_size=1, device=torch.device("cpu"), precision="fp32")
    targets = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # the last of each sequence: 5 and 0
    nbytes = {t: t % 3 for t in targets}
    kept = [t for i, t in enumerate(targets) if i % 5 != 4]
    expected = sum(1 + t / 10 for t in kept) / (math.log(2) * sum(nbytes[t] for t in kept))
    assert ev.bpb == pytest.approx(expected)
    assert ev.loss == pytest.approx(sum(1 + t / 10 for t in targets) / 10)
