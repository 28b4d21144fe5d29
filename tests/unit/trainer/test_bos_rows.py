"""nanochat's BOS-aligned validation rows (data/bos_rows.py) against nanochat's own loop.

`nanochat_rows` below transcribes the row loop of karpathy/nanochat nanochat/dataloader.py
`tokenizing_distributed_data_loader_with_state_bos_bestfit` (commit 92d63d4) over lists of token
ids. The PINNED figures were computed once by running that function itself, unmodified, on the
same synthetic stream (its parquet reader replaced by the stream's documents in batches of
`tokenizer_batch_size`, its tokenizer by one that prepends BOS; B=4, T=16, buffer_size=8,
tokenizer_batch_size=3, 10 batches); docs/testing.md says how.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from speedrun_api.manifest import parse_job
from speedrun_trainer.data.bos_rows import document_spans, pack_rows, row_batch
from speedrun_trainer.data.loader import TokenDataset
from speedrun_trainer.train.loss_eval import evaluate_run_loss
from speedrun_trainer.train.model import GPT
from speedrun_trainer.train.runtime import Dist
from tests.support.helpers import tiny_manifest

BOS = 0


def synthetic_texts(n: int) -> list[list[int]]:
    """Document i: (i * 37) % 29 + 1 content tokens, 1 + (i * 5 + k) % 250 (2 to 30 with its BOS)."""
    return [[1 + (i * 5 + k) % 250 for k in range((i * 37) % 29 + 1)] for i in range(n)]


def nanochat_rows(docs: list[list[int]], row_capacity: int, rows: int, buffer_size: int, batch: int) -> list[list[int]]:
    """nanochat dataloader.py's row loop, transcribed (its doc batches: `batch` documents at a time)."""
    batches = (docs[i : i + batch] for i in range(0, len(docs), batch))
    doc_buffer: list[list[int]] = []
    out = []
    for _ in range(rows):
        row: list[int] = []
        pos = 0
        while pos < row_capacity:
            while len(doc_buffer) < buffer_size:
                doc_buffer.extend(next(batches))  # refill_buffer(): raises when the docs run out
            remaining = row_capacity - pos
            best_idx, best_len = -1, 0
            for i, doc in enumerate(doc_buffer):
                if len(doc) <= remaining and len(doc) > best_len:
                    best_idx, best_len = i, len(doc)
            if best_idx >= 0:
                doc = doc_buffer.pop(best_idx)
                row += doc
                pos += len(doc)
            else:
                shortest_idx = min(range(len(doc_buffer)), key=lambda i: len(doc_buffer[i]))
                doc = doc_buffer.pop(shortest_idx)
                row += doc[:remaining]
                pos += remaining
        out.append(row)
    return out


def dataset_of(docs: list[list[int]]) -> TokenDataset:
    return TokenDataset([np.array([t for d in docs for t in d], dtype=np.uint16)], "mem://synthetic")


def our_rows(docs: list[list[int]], row_len: int, count: int, buffer_size: int, batch: int) -> tuple[list, object]:
    ds = dataset_of(docs)
    packed = pack_rows(document_spans(ds, BOS, chunk=37), row_len, count, buffer_size=buffer_size, refill=batch)
    x, y = row_batch(ds, packed, range(len(packed.rows)))
    return torch.cat([x, y[:, -1:]], 1).tolist(), packed


# Printed by nanochat's own tokenizing_distributed_data_loader_with_state_bos_bestfit (see the docstring).
PINNED_ROW0 = [0, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 0, 1, 0, 56]
PINNED_ROW1 = [0, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 0]
PINNED_ROW39 = [0, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141]
PINNED_BOS_PER_ROW = [3, 2, 2, 3, 1, 1, 2, 3, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 3, 2]
PINNED_BOS_PER_ROW += [1, 2, 1, 1, 2, 3, 2, 1, 3, 2, 1, 2, 1, 2, 1, 3, 2, 1, 2, 1]
PINNED_CHECKSUM = 13146079  # sum over rows j, positions k of (j+1)(k+1) x token


def checksum(rows: list[list[int]]) -> int:
    return sum((j + 1) * sum((k + 1) * v for k, v in enumerate(r)) for j, r in enumerate(rows))


def test_rows_match_nanochats_published_loader() -> None:
    docs = [[BOS, *t] for t in synthetic_texts(400)]
    for rows in (nanochat_rows(docs, 17, 40, 8, 3), our_rows(docs, 17, 40, 8, 3)[0]):
        assert len(rows) == 40 and all(len(r) == 17 and r[0] == BOS for r in rows)
        assert (rows[0], rows[1], rows[39]) == (PINNED_ROW0, PINNED_ROW1, PINNED_ROW39)
        assert [r.count(BOS) for r in rows] == PINNED_BOS_PER_ROW
        assert checksum(rows) == PINNED_CHECKSUM


@pytest.mark.parametrize("seed", range(6))
def test_rows_match_the_transcription_on_random_streams(seed: int) -> None:
    rng = random.Random(seed)
    row_len, buffer_size, batch = rng.choice([9, 17, 33]), rng.randint(1, 12), rng.randint(1, 5)
    docs = [[BOS] + [rng.randint(1, 255) for _ in range(rng.randint(0, 3 * row_len))] for _ in range(300)]
    count = 25
    ours, packed = our_rows(docs, row_len, count, buffer_size, batch)
    assert ours == nanochat_rows(docs, row_len, count, buffer_size, batch)
    assert not packed.exhausted
    kept = sum(length for row in packed.rows for _, length in row)
    taken = sum(len(d) for d in docs[: packed.documents_read])
    assert packed.tokens_read == taken
    # every token read is in a row, cropped away, or still in the buffer
    assert kept + packed.cropped_tokens <= taken and kept == count * row_len


def test_the_set_running_out_ends_the_rows_without_repeating() -> None:
    docs = [[BOS, *t] for t in synthetic_texts(12)]
    rows, packed = our_rows(docs, 17, 100, 8, 3)
    assert packed.exhausted and 0 < len(rows) < 100
    assert sum(len(d) for d in docs) >= len(rows) * 17 + packed.cropped_tokens


def test_nanochat_bpb_is_scored_on_bos_aligned_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """With eval.bpb.rows bos-aligned, nanochat_bpb is nanochat's formula over the BOS rows (and
    val_loss stays on the packed rows); `packed` leaves nanochat_bpb on the packed rows."""
    docs = [[BOS, *t] for t in synthetic_texts(600)]
    ds = dataset_of(docs)
    token_bytes = np.ones(264, dtype=np.int64)
    token_bytes[BOS] = 0
    env = Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    results = {}
    for rows in ("packed", "bos-aligned"):
        job = parse_job(tiny_manifest(**{"spec.eval.bpb": {"tokens": 640, "rows": rows}}))
        torch.manual_seed(0)
        model = GPT(job.spec.model)
        results[rows] = evaluate_run_loss(model, job, env, ds, token_bytes, bos_id=BOS)
    packed, aligned = results["packed"], results["bos-aligned"]
    assert (packed.nanochat_rows, aligned.nanochat_rows) == ("packed", "bos-aligned")
    assert aligned.loss == packed.loss and aligned.bpb == packed.bpb  # the other numbers: packed rows
    assert aligned.nanochat_tokens == 10 * 64  # eval.bpb.tokens // seqLen rows of seqLen targets
    # the figure by hand: nanochat loss_eval.py evaluate_bpb over nanochat's rows
    x, y = row_batch(ds, pack_rows(document_spans(ds, BOS), 65, 10), range(10))
    with torch.no_grad():
        losses = model(x, y, reduction="none")
    nbytes = torch.as_tensor(token_bytes)[y]
    expected = float((losses * (nbytes > 0)).sum()) / (math.log(2) * int(nbytes.sum()))
    assert aligned.nanochat_bpb == pytest.approx(expected, rel=1e-6)
    assert packed.nanochat_bpb != pytest.approx(expected, rel=1e-6)
