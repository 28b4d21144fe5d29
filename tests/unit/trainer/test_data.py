"""The token stream: built-in corpus, shard sources, sequence layout and wrap-around."""

from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from speedrun_trainer.data.builtin import builtin_documents, materialize_builtin
from speedrun_trainer.data.loader import TokenDataset, batch_for, open_dataset
from speedrun_trainer.data.shards import read_shard_file, write_shard
from speedrun_trainer.data.storage import DataError, local_path_of, open_storage
from speedrun_trainer.data.tokenizer import load_tokenizer

TRAIN, VAL = "builtin://pydoc-topics/train", "builtin://pydoc-topics/val"


def test_builtin_split_is_fixed_and_disjoint() -> None:
    from pydoc_data.topics import topics

    train, val = builtin_documents(TRAIN), builtin_documents(VAL)
    assert (len(train), len(val)) == (len(topics) - 8, 8)
    assert train + val == [topics[k] for k in sorted(topics)]
    assert val[-1] == topics["yield"]
    assert not set(train) & set(val)


def test_builtin_materialization_is_deterministic(tmp_path: Path) -> None:
    tok = load_tokenizer("byte")
    [uri] = materialize_builtin(VAL, tok, tmp_path / "a")
    path = local_path_of(uri)
    first = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    assert materialize_builtin(VAL, tok, tmp_path / "a") == [uri] and path.stat().st_mtime_ns == mtime
    [other] = materialize_builtin(VAL, tok, tmp_path / "b")
    assert local_path_of(other).read_bytes() == first

    tokens = read_shard_file(path).astype(np.int64)
    docs = builtin_documents(VAL)
    expected = np.concatenate([[256, *d.encode()] for d in docs])
    assert tokens.tolist() == expected.tolist()
    assert (tokens == 256).sum() == len(docs)


def test_builtin_cache_is_keyed_by_tokenizer(tmp_path: Path, bpe_tokenizer_json: Path) -> None:
    [by_byte] = materialize_builtin(VAL, load_tokenizer("byte"), tmp_path)
    [by_bpe] = materialize_builtin(VAL, load_tokenizer(str(bpe_tokenizer_json)), tmp_path)
    assert by_byte != by_bpe
    assert len(read_shard_file(local_path_of(by_bpe))) < len(read_shard_file(local_path_of(by_byte)))


def _materialize(cache_dir: str) -> str:
    return materialize_builtin(TRAIN, load_tokenizer("byte"), Path(cache_dir))[0]


def test_concurrent_materialization(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(4) as pool:
        uris = pool.map(_materialize, [str(tmp_path)] * 4)
    assert len(set(uris)) == 1
    tokens = read_shard_file(local_path_of(uris[0]))
    assert len(tokens) == sum(len(d.encode()) + 1 for d in builtin_documents(TRAIN))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="builtin://pydoc-topics/test: unknown built-in dataset"):
        open_dataset("builtin://pydoc-topics/test", tokenizer="byte", cache_dir=tmp_path)


def _counting(*lengths: int) -> TokenDataset:
    """Shards holding 0, 1, 2, ... consecutively, so a token's value is its stream position."""
    bounds = np.cumsum([0, *lengths])
    return TokenDataset([np.arange(a, b, dtype=np.uint16) for a, b in itertools.pairwise(bounds)], "mem://")


def test_sequences_layout_shift_and_wrap() -> None:
    ds = _counting(10, 0, 13)  # 23 tokens over two shards (and an empty one)
    assert ds.num_tokens == 23
    x, y = ds.sequences(first=3, count=4, seq_len=5)  # positions 15 .. 35: crosses the end of the stream
    assert x.dtype == torch.long and x.shape == y.shape == (4, 5)
    for row, j in enumerate(range(3, 7)):
        assert x[row].tolist() == [(j * 5 + k) % 23 for k in range(5)]
        assert y[row].tolist() == [(j * 5 + k + 1) % 23 for k in range(5)]
    big_x, big_y = ds.sequences(first=0, count=12, seq_len=5)
    assert torch.equal(big_x[3:7], x) and torch.equal(big_y[3:7], y)
    assert torch.equal(ds.sequences(first=3 + 23, count=4, seq_len=5)[0], ds.sequences(3 + 23, 4, 5)[0])
    far_x, _ = ds.sequences(first=1000, count=1, seq_len=5)
    assert far_x[0].tolist() == [(5000 + k) % 23 for k in range(5)]


def test_sequences_need_seq_len_plus_one_tokens() -> None:
    ds = _counting(4)
    assert ds.sequences(0, 2, 3)[1].tolist() == [[1, 2, 3], [0, 1, 2]]
    with pytest.raises(DataError, match=r"^mem://: has 4 tokens, fewer than seqLen \+ 1 = 5"):
        ds.sequences(0, 1, 4)


@pytest.mark.parametrize(("world", "device_batch", "batch"), [(1, 4, 16), (2, 4, 16), (4, 2, 16), (2, 1, 2)])
def test_batch_for_reads_each_sequence_of_a_step_once(world: int, device_batch: int, batch: int) -> None:
    accumulation = batch // (device_batch * world)
    for step in (0, 3):
        read = [
            batch_for(step, m, r, world, device_batch, batch) + i
            for m in range(accumulation)
            for r in range(world)
            for i in range(device_batch)
        ]
        assert sorted(read) == list(range(step * batch, (step + 1) * batch))
    assert batch_for(2, 1, 1, 2, 4, 32) == 2 * 32 + (1 * 2 + 1) * 4


def test_batch_for_rejects_bad_layouts() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        batch_for(0, 0, 0, 3, 4, 16)
    with pytest.raises(ValueError, match="out of range"):
        batch_for(0, 2, 0, 2, 4, 16)


def _shards(storage, pieces: list[list[int]], prefix: str = "train_") -> None:
    for i, tokens in enumerate(pieces):
        storage.write_bytes(f"{prefix}{i:06d}.bin", write_shard(tokens))


def test_open_local_glob_and_directory(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "d"))
    _shards(storage, [[0, 1, 2], [3, 4], [5, 6, 7, 8]])
    for uri in (f"file://{tmp_path}/d/train_*.bin", str(tmp_path / "d")):
        ds = open_dataset(uri, tokenizer="byte", cache_dir=tmp_path / "cache")
        assert ds.num_tokens == 9 and ds.tokens(0, 9).tolist() == list(range(9))
    assert not (tmp_path / "cache").exists(), "local shards must be read in place"
    (tmp_path / "d" / "train_000001.bin").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"train_000001\.bin: truncated shard"):
        open_dataset(str(tmp_path / "d"), tokenizer="byte", cache_dir=tmp_path / "cache")


def test_open_s3_downloads_once_and_refetches_changes(s3_bucket, tmp_path: Path) -> None:
    storage = open_storage(f"{s3_bucket.uri}/data")
    _shards(storage, [list(range(100)), list(range(100, 150))])
    _shards(storage, [[7] * 10], prefix="val_")
    cache = tmp_path / "cache"
    ds = open_dataset(f"{s3_bucket.uri}/data/train_*.bin", tokenizer="byte", cache_dir=cache)
    assert ds.num_tokens == 150 and ds.sequences(0, 1, 149)[1][0].tolist() == list(range(1, 150))
    # fsspec's filecache: one file per object (named by a hash), beside its metadata and our lock
    cached = sorted(p for p in (cache / "shards").iterdir() if p.is_file() and p.name not in ("cache", ".lock"))
    assert len(cached) == 2
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert open_dataset(f"{s3_bucket.uri}/data/train_*.bin", tokenizer="byte", cache_dir=cache).num_tokens == 150
    assert [p.stat().st_mtime_ns for p in cached] == stamps

    storage.write_bytes("train_000001.bin", write_shard([9, 9, 9]))
    ds = open_dataset(f"{s3_bucket.uri}/data/train_*.bin", tokenizer="byte", cache_dir=cache)
    assert ds.num_tokens == 103 and ds.tokens(100, 3).tolist() == [9, 9, 9]
    assert open_dataset(f"{s3_bucket.uri}/data", tokenizer="byte", cache_dir=cache).num_tokens == 113


def test_open_https(http_server, tmp_path: Path) -> None:
    base, root = http_server
    (root / "web_000000.bin").write_bytes(write_shard(list(range(40))))
    ds = open_dataset(f"{base}/web_000000.bin", tokenizer="byte", cache_dir=tmp_path)
    assert ds.tokens(0, 40).tolist() == list(range(40))
    with pytest.raises(DataError, match="HTTP 404"):
        open_dataset(f"{base}/absent.bin", tokenizer="byte", cache_dir=tmp_path)


def test_open_builtin(tmp_path: Path) -> None:
    ds = open_dataset(VAL, tokenizer="byte", cache_dir=tmp_path)
    assert ds.num_tokens == sum(len(d.encode()) + 1 for d in builtin_documents(VAL))
    x, y = ds.sequences(0, 2, 256)
    assert x[0, 0] == 256 and torch.equal(x[:, 1:], y[:, :-1]) and x.max() <= 256
