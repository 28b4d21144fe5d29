"""The token stream that training and evaluation read: `.bin` shards from anywhere, as sequences.

    ds = open_dataset("s3://bucket/fineweb/train_*.bin", tokenizer="gpt2", cache_dir=cache)
    x, y = ds.sequences(first=batch_for(step, micro, rank, world, dbs, bs), count=dbs, seq_len=T)

The dataset is the concatenation of its shards in sorted-URI order, read through memmaps. Sequence
j is tokens [j*T, j*T + T + 1) of that stream, taken modulo the stream length, so it repeats in
epochs and a sequence may straddle a shard boundary or the end of an epoch. x is the first T of
those tokens, y the last T (shifted by one). Nothing is random: where a run stands is just the
number of sequences consumed, so resuming, and resuming with another world size, is exact.

Where shards come from (`uri`):
- `builtin://pydoc-topics/train|val`: tokenized once into `cache_dir` (see data.builtin);
- a file:// URI or path: a file, a glob (`*`, `?`, `**`) or a directory (every `*.bin` below it);
- `s3://bucket/prefix/...` or `gs://...`: the same globs and prefixes; each object is downloaded
  once per node into `<cache_dir>/shards/` by fsspec's file cache, which fetches it again when its
  ETag (S3) or generation (GCS) changes (data.storage.cached_copy);
- `https://.../shard.bin`: one shard, downloaded once.
Note a directory that holds both `train_*.bin` and `val_*.bin` (what `prepare` writes) expands
to both: give `.../train_*.bin` and `.../val_*.bin`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speedrun_trainer.data.builtin import is_builtin, materialize_builtin
from speedrun_trainer.data.shards import read_shard_file
from speedrun_trainer.data.storage import DataError, cached_copy, expand_uris, scheme_of
from speedrun_trainer.data.tokenizer import load_tokenizer


def batch_for(step: int, micro: int, rank: int, world: int, device_batch_size: int, batch_size: int) -> int:
    """The index of the first sequence that (step, micro-step, rank) reads.

    Step s consumes sequences [s*batch_size, (s+1)*batch_size). Inside it, micro-step m of rank r
    reads the device_batch_size sequences from s*batch_size + (m*world + r)*device_batch_size:
    micro-step 0 of all ranks first, then micro-step 1, ... so every sequence of the step is read
    exactly once, whatever the world size.
    """
    per_micro = device_batch_size * world
    if batch_size % per_micro:
        raise ValueError(f"batch_size {batch_size} is not a multiple of deviceBatchSize x world {per_micro}")
    if not (0 <= rank < world and 0 <= micro < batch_size // per_micro and step >= 0):
        raise ValueError(
            f"step {step}, micro {micro}, rank {rank} out of range for world {world} and"
            f" {batch_size // per_micro} micro-steps"
        )
    return step * batch_size + (micro * world + rank) * device_batch_size


class TokenDataset:
    """An endless, deterministic token stream over shards (each a 1-D uint16/uint32 array or memmap)."""

    def __init__(self, shards: list[np.ndarray], uri: str) -> None:
        self.uri = uri
        self.shards = [s for s in shards if len(s)]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.num_tokens = int(self.offsets[-1])
        # uint16 unless a shard holds uint32 tokens (vocabularies over 65,536): the raw token type
        # the prefetcher moves to the device.
        wide = any(s.dtype.itemsize > 2 for s in self.shards)
        self.token_dtype = np.dtype(np.uint32) if wide else np.dtype(np.uint16)

    def __repr__(self) -> str:
        return f"TokenDataset({self.uri!r}, shards={len(self.shards)}, tokens={self.num_tokens})"

    def tokens(self, start: int, length: int, dtype: type = np.int64) -> np.ndarray:
        """dtype[length] (int64 unless asked): stream positions start, start+1, ... modulo num_tokens."""
        if self.num_tokens == 0:
            raise DataError(f"{self.uri}: the dataset has no tokens")
        out = np.empty(length, dtype=dtype)
        pos, filled = start % self.num_tokens, 0
        while filled < length:
            i = int(np.searchsorted(self.offsets, pos, side="right")) - 1
            local = pos - int(self.offsets[i])
            take = min(length - filled, len(self.shards[i]) - local)
            out[filled : filled + take] = self.shards[i][local : local + take]
            filled += take
            pos = (pos + take) % self.num_tokens
        return out

    def sequences(self, first: int, count: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), LongTensors of shape (count, seq_len), for sequences first .. first+count-1."""
        if first < 0 or count < 0 or seq_len < 1:
            raise ValueError(f"bad sequence range: first={first}, count={count}, seq_len={seq_len}")
        if self.num_tokens < seq_len + 1:
            raise DataError(f"{self.uri}: has {self.num_tokens} tokens, fewer than seqLen + 1 = {seq_len + 1}")
        buf = self.tokens(first * seq_len, count * seq_len + 1)  # consecutive sequences overlap by 1
        x = buf[:-1].reshape(count, seq_len)
        y = buf[1:].reshape(count, seq_len)
        return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())

    def sequence_tokens(self, first: int, count: int, seq_len: int) -> np.ndarray:
        """The count*seq_len + 1 raw tokens (`token_dtype`) that sequences(first, count, seq_len) is made of."""
        if first < 0 or count < 0 or seq_len < 1:
            raise ValueError(f"bad sequence range: first={first}, count={count}, seq_len={seq_len}")
        if self.num_tokens < seq_len + 1:
            raise DataError(f"{self.uri}: has {self.num_tokens} tokens, fewer than seqLen + 1 = {seq_len + 1}")
        return self.tokens(first * seq_len, count * seq_len + 1, dtype=self.token_dtype)

    def sequences_per_epoch(self, seq_len: int) -> int:
        """How many sequences start within one pass over the stream."""
        return self.num_tokens // seq_len


def _cached_shard(uri: str, cache_dir: Path, endpoint_url: str | None) -> Path:
    """The local path of a shard: local files as they are, remote ones through the node's cache."""
    if scheme_of(uri) not in ("file", "s3", "gs", "http", "https"):
        raise DataError(f"{uri}: shards must be file://, s3://, gs:// or https:// URIs")
    return cached_copy(uri, Path(cache_dir) / "shards", endpoint_url)


def open_dataset(uri: str, *, tokenizer: str, cache_dir: Path, endpoint_url: str | None = None) -> TokenDataset:
    """Resolve `uri` to shards (see the module docstring) and map them; nothing is loaded yet.

    `tokenizer` (a `load_tokenizer` spec) is used only to tokenize builtin:// corpora; shards
    are already tokens, and are not checked against it.
    """
    if is_builtin(uri):
        files = materialize_builtin(uri, load_tokenizer(tokenizer, endpoint_url), Path(cache_dir))
    else:
        files = expand_uris(uri, endpoint_url)
    shards = [read_shard_file(_cached_shard(f, Path(cache_dir), endpoint_url)) for f in files]
    dataset = TokenDataset(shards, uri)
    if dataset.num_tokens == 0:
        raise DataError(f"{uri}: the shards hold no tokens")
    return dataset
