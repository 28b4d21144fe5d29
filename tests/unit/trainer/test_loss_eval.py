"""The distributed evaluation's sums: every definition from one pass, ranks, and a set too small."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speedrun_api.metric_definitions import LossSums, levanter_bpb
from speedrun_trainer.train.loss_eval import evaluate_loss, score_batch


def test_score_batch_keeps_every_sum():
    token_bytes = torch.tensor([1, 2, 3, 0])  # id 3 is a special token
    losses = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    targets = torch.tensor([[0, 1, 2, 3]])
    assert score_batch(losses, targets, token_bytes) == LossSums(
        nats=106.0, tokens=4, nats_with_bytes=6.0, tokens_with_bytes=3, bytes=6
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


def evaluate(data, *, tokens, model=None, token_bytes=None, **settings):
    """evaluate_loss on one CPU rank in fp32; unless told otherwise, the uniform model over 256 one-byte
    tokens, sequences of 64, batches of 4."""
    defaults = dict(seq_len=64, batch_size=4, rank=0, world_size=1, device=torch.device("cpu"), precision="fp32")
    return evaluate_loss(
        UniformModel(256) if model is None else model,
        data,
        np.ones(256, dtype=np.int64) if token_bytes is None else token_bytes,
        tokens=tokens,
        **(defaults | settings),
    )


def test_uniform_byte_model_scores_eight_bits_per_byte():
    data = ListDataset(np.arange(1000) % 256)
    ev = evaluate(data, tokens=512)
    assert ev.bpb == pytest.approx(8.0)
    assert ev.tokens == 512 and ev.bytes == 512


def test_ranks_split_sequences_without_overlap():
    data = ListDataset(np.arange(5000) % 256)
    parts = [evaluate(data, tokens=640, batch_size=3, rank=r, world_size=3) for r in range(3)]
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
    ev = evaluate(data, tokens=64, model=SpecialEveryFourth(), token_bytes=token_bytes, seq_len=16, batch_size=2)
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
    ev = evaluate(data, tokens=1024)
    assert ev.tokens == 192 and ev.exceeded and ev.set_tokens == 200
    ok = evaluate(data, tokens=128)
    assert ok.tokens == 128 and not ok.exceeded


def test_levanter_drops_each_sequences_last_position_by_hand():
    # stream 0..9 repeated, seq 5: sequences' targets are 1..5 and 6..10; each target byte costs 1 + id/10 nats
    class ByTarget(torch.nn.Module):
        def forward(self, x, y, reduction="none"):
            return 1.0 + y.float() / 10

    data = ListDataset(np.arange(100) % 10)
    ev = evaluate(data, tokens=10, model=ByTarget(), token_bytes=np.arange(10) % 3, seq_len=5, batch_size=2)
    targets = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]  # the last of each sequence: 5 and 0
    nbytes = {t: t % 3 for t in targets}
    kept = [t for i, t in enumerate(targets) if i % 5 != 4]
    expected = sum(1 + t / 10 for t in kept) / (math.log(2) * sum(nbytes[t] for t in kept))
    assert ev.bpb == pytest.approx(expected)
    assert ev.loss == pytest.approx(sum(1 + t / 10 for t in targets) / 10)


class CostByTarget(torch.nn.Module):
    """Each target costs 1 + id/10 nats."""

    def forward(self, x, y, reduction="none"):
        return 1.0 + y.float() / 10


# Marin-style documents: BOS (9) + tokens + EOS (8), specials of 0 bytes; ids 1, 2, 3 stand for 1, 2, 3 bytes.
MARIN_DOCS = np.array([9, 1, 2, 8, 9, 3, 3, 3, 1, 8, 9, 2, 8] * 2)
MARIN_BYTES = np.array([0, 1, 2, 3, 0, 0, 0, 0, 0, 0])


def test_levanter_averages_per_batch_bpbs_weighted_by_tokens_by_hand():
    # seqLen 4, 5 sequences (documents cross their boundaries), levanter eval batch 2: batches of 2, 2, 1 sequences.
    # seq  inputs        targets       kept by the causal mask   nats            bytes
    # 0    9 1 2 8       1 2 8 9       1 2 8                     1.1+1.2+1.8=4.1  3
    # 1    9 3 3 3       3 3 3 1       3 3 3                     3.9              9
    # 2    1 8 9 2       8 9 2 8       8 9 2                     1.8+1.9+1.2=4.9  2
    # 3    8 9 1 2       9 1 2 8       9 1 2                     4.2              3
    # 4    8 9 3 3       9 3 3 3       9 3 3                     4.5              6
    # batch (nats, tokens, bytes): (8.0, 6, 12), (9.1, 6, 5), (4.5, 3, 6)
    # levanter: (6 x 8.0/12 + 6 x 9.1/5 + 3 x 4.5/6) / 15 / ln 2 = 17.17 / 15 / ln 2
    marin = dict(tokens=20, model=CostByTarget(), token_bytes=MARIN_BYTES, seq_len=4, batch_size=1, eval_batch=2)
    ev = evaluate(ListDataset(MARIN_DOCS), **marin)
    assert [(round(n, 6), t, b) for n, t, b in ev.levanter_batches] == [(8.0, 6, 12), (9.1, 6, 5), (4.5, 3, 6)]
    assert ev.bpb == pytest.approx(17.17 / 15 / math.log(2))
    assert ev.bpb != pytest.approx(21.6 / 23 / math.log(2))  # not global sums over global bytes
    # Global batches, whichever rank scored a sequence: three ranks' per-batch sums add up to the same.
    parts = [evaluate(ListDataset(MARIN_DOCS), **marin, rank=r, world_size=3) for r in range(3)]
    summed = [
        tuple(sum(x) for x in zip(*rows, strict=True))
        for rows in zip(*(p.levanter_batches for p in parts), strict=True)
    ]
    assert levanter_bpb(summed) == pytest.approx(ev.bpb)


def test_levanter_batch_without_bytes_divides_by_one():
    # eval.py: `this_loss / max(this_bytes, 1)`; a batch of special tokens only still weighs its tokens.
    assert levanter_bpb([(2.0, 3, 0), (1.0, 1, 4)]) == pytest.approx((3 * 2.0 + 1 * 0.25) / 4 / math.log(2))
    assert math.isnan(levanter_bpb([(0.0, 0, 0)]))  # padding only


def test_exceeding_the_set_warns_once_per_process(capsys):
    data = SizedDataset(np.arange(333) % 256)
    for _ in range(3):  # in-loop evaluations
        evaluate(data, tokens=4096)
    err = capsys.readouterr()
    assert (err.out + err.err).count("exceeds the evaluation set") == 1
