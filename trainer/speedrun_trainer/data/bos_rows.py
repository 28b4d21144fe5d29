"""nanochat's BOS-aligned validation rows, built from a token stream by its best-fit packing.

nanochat scores its `val/bpb` on rows that each start at a document's BOS, not on consecutive
windows of the stream: nanochat/dataloader.py `tokenizing_distributed_data_loader_with_state_bos_bestfit`
(karpathy/nanochat at 92d63d4, unchanged since 324e69c) fills each row of T + 1 tokens so:

1. top the buffer up to `buffer_size` (1000) documents, `tokenizer_batch_size` (128) at a time;
2. take the largest buffered document that fits the rest of the row entirely (the first in buffer
   order among equal lengths), and repeat;
3. when none fits, take the shortest (the first among equals), crop it to fill the row exactly,
   and throw its remainder away ("~35% tokens cropped at T=2048").

x is a row's first T tokens, y its last T. Documents there are `tokenizer.encode(text,
prepend=bos)`; in our shards every document is preceded by the tokenizer's separator (for
nanochat's tokenizer `<|bos|>`, data/prepare.py), so a document is a separator and the tokens up
to the next one. `pack_rows` is that loop over (start, length) spans of the stream, with a sorted
index instead of nanochat's linear scan (the same choices; tests/unit/trainer/test_bos_rows.py
checks it against a transcription of nanochat's loop and pins figures from nanochat's code).

Two differences, both about where nanochat's rows would come from rather than how they are made:
nanochat's val split is the last parquet file, each rank packing its own row groups (so its rows
depend on the GPU count), while here one packer reads the whole set in order and row j goes to
rank j % world (the same rows for any world size: those of nanochat on one GPU over this stream).
And nanochat cycles the set forever; here, once the set runs out, packing continues from the
buffer until a row cannot be finished, and the result says `exhausted` (never a repeated document).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from speedrun_trainer.data.loader import TokenDataset

BUFFER_SIZE = 1000  # nanochat dataloader.py: buffer_size=1000
REFILL_DOCS = 128  # nanochat dataloader.py: tokenizer_batch_size=128, the documents one refill adds
Span = tuple[int, int]  # (first stream position, length)


@dataclass(frozen=True)
class BosRows:
    """Rows of `row_len` = seqLen + 1 tokens, each a list of stream spans, plus what packing cost."""

    rows: tuple[tuple[Span, ...], ...]
    row_len: int
    documents_read: int  # documents taken into the buffer
    tokens_read: int  # their tokens
    cropped_tokens: int  # thrown away: the remainders of cropped documents
    exhausted: bool  # the set ran out before the rows asked for were all built

    @property
    def cropped_fraction(self) -> float:
        return self.cropped_tokens / self.tokens_read if self.tokens_read else 0.0


def document_spans(dataset: TokenDataset, bos_id: int, chunk: int = 1 << 24) -> Iterator[Span]:
    """(start, length) of every document of one pass over the stream: a `bos_id` token and what
    follows up to the next one. Tokens before the first `bos_id` belong to no document."""
    n, prev, pos = dataset.num_tokens, None, 0
    while pos < n:
        length = min(chunk, n - pos)
        starts = np.flatnonzero(dataset.tokens(pos, length) == bos_id) + pos
        for s in starts.tolist():
            if prev is not None:
                yield prev, s - prev
            prev = s
        pos += length
    if prev is not None:
        yield prev, n - prev


def pack_rows(
    docs: Iterator[Span], row_len: int, count: int, *, buffer_size: int = BUFFER_SIZE, refill: int = REFILL_DOCS
) -> BosRows:
    """`count` rows of `row_len` tokens packed from `docs` as nanochat's best-fit loop does."""
    keys: list[tuple[int, int]] = []  # (length, arrival order), sorted: the buffer
    starts: dict[int, int] = {}  # arrival order -> stream start
    arrived = tokens_read = cropped = 0
    exhausted = False
    rows: list[tuple[Span, ...]] = []

    def top_up() -> None:
        nonlocal arrived, tokens_read, exhausted
        while len(keys) < buffer_size and not exhausted:
            batch = [d for _, d in zip(range(refill), docs, strict=False)]
            exhausted = len(batch) < refill
            for start, length in batch:
                bisect.insort(keys, (length, arrived))
                starts[arrived] = start
                arrived += 1
                tokens_read += length

    while len(rows) < count:
        row: list[Span] = []
        pos = 0
        while pos < row_len:
            top_up()
            if not keys:
                break
            remaining = row_len - pos
            i = bisect.bisect_right(keys, (remaining, arrived)) - 1  # the largest length that fits
            if i >= 0:
                i = bisect.bisect_left(keys, (keys[i][0], -1))  # its first arrival
                length, order = keys.pop(i)
            else:  # nothing fits: crop the shortest (first arrival among equals)
                length, order = keys.pop(0)
                cropped += length - remaining
                length = remaining
            row.append((starts.pop(order), length))
            pos += length
        if pos < row_len:  # the set ran out mid-row: that row is not nanochat's
            break
        rows.append(tuple(row))
    return BosRows(tuple(rows), row_len, arrived, tokens_read, cropped, exhausted and len(rows) < count)


_CACHE: dict[tuple[str, int, int, int, int], BosRows] = {}


def bos_rows(dataset: TokenDataset, bos_id: int, seq_len: int, count: int) -> BosRows:
    """`count` BOS-aligned rows of the set, packed once per process (every eval point reuses them)."""
    key = (dataset.uri, dataset.num_tokens, bos_id, seq_len, count)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = pack_rows(document_spans(dataset, bos_id), seq_len + 1, count)
    return _CACHE[key]


def row_batch(dataset: TokenDataset, rows: BosRows, indices: range) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) LongTensors of shape (len(indices), seqLen): the rows' first and last seqLen tokens."""
    data = np.stack(
        [np.concatenate([dataset.tokens(start, length) for start, length in rows.rows[j]]) for j in indices]
    )
    return torch.from_numpy(data[:, :-1].copy()), torch.from_numpy(data[:, 1:].copy())
