"""The `.bin` token shard format of modded-nanogpt (and nanoGPT's FineWeb scripts), and its wide variant.

A shard is a header of 256 little-endian int32 — [0] magic 20240520, [1] version, [2] the token
count, the rest zero — followed by exactly that many little-endian tokens:
- version 1 (modded-nanogpt's own): uint16 tokens, ids below 65536 (GPT-2's 50257 fit);
- version 2 (ours, for larger vocabularies such as Llama 3's 128,256): header[3] is the token
  size in bytes (2 or 4; 4 = uint32). modded-nanogpt's loaders assert version 1, so they refuse
  a wide shard instead of misreading it.
`write_shard` writes version 1 whenever the ids fit uint16 (unless told `token_size=4`).

    data = write_shard([50256, 464, 2068])          # bytes, ready for Storage.write_bytes
    data = write_shard([128000, 9906], token_size=4)  # a version-2 uint32 shard
    tokens = read_shard(data, source="mem")           # np.ndarray, a view of `data`
    tokens = read_shard_file("train_000000.bin")      # np.memmap: nothing is read until sliced

Every malformed shard raises `ShardError` with one line: the source, what was expected, what
was found.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speedrun_trainer.data.storage import DataError

MAGIC = 20240520
VERSION = 1  # uint16 tokens (modded-nanogpt)
WIDE_VERSION = 2  # header[3] = token size in bytes
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN = 65535  # uint16
MAX_WIDE_TOKEN = 2**32 - 1
TOKEN_DTYPE = np.dtype("<u2")
TOKEN_DTYPES = {2: TOKEN_DTYPE, 4: np.dtype("<u4")}
HEADER_DTYPE = np.dtype("<i4")


def token_size_for(vocab_size: int) -> int:
    """Bytes per token a vocabulary needs: 2 (version 1) up to 65,536 ids, else 4 (version 2)."""
    return 2 if vocab_size <= MAX_TOKEN + 1 else 4


class ShardError(DataError):
    """A `.bin` shard that is not in the modded-nanogpt format, or tokens that do not fit it."""


def write_shard(tokens: Sequence[int] | np.ndarray, token_size: int | None = None) -> bytes:
    """Header + tokens as bytes: version 1 (uint16) when the ids fit and `token_size` is not 4,
    else version 2 with uint32 tokens."""
    ids = np.asarray(tokens)
    if ids.ndim != 1:
        raise ShardError(f"shard tokens must be one-dimensional, got shape {ids.shape}")
    if token_size not in (None, 2, 4):
        raise ShardError(f"token_size must be 2 or 4 bytes, got {token_size}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ShardError(f"shard tokens must be integers, got dtype {ids.dtype}")
    limit = MAX_TOKEN if token_size == 2 else MAX_WIDE_TOKEN
    bad = np.flatnonzero((ids < 0) | (ids > limit)) if ids.size else ids
    if bad.size:
        i = int(bad[0])
        raise ShardError(
            f"token id {int(ids[i])} at position {i} does not fit a .bin shard of {token_size or 4}-byte tokens"
            f" (0..{limit})"
        )
    size = token_size or (2 if not ids.size or int(ids.max()) <= MAX_TOKEN else 4)
    header = np.zeros(HEADER_INTS, dtype=HEADER_DTYPE)
    header[:3] = (MAGIC, VERSION if size == 2 else WIDE_VERSION, ids.size)
    if size == 4:
        header[3] = 4
    return header.tobytes() + ids.astype(TOKEN_DTYPES[size], copy=False).tobytes()


def parse_header(header: bytes | memoryview, source: str, size: int) -> tuple[int, np.dtype]:
    """Check a shard's header against its total size in bytes; return (token count, token dtype)."""
    if size < HEADER_BYTES or len(header) < HEADER_BYTES:
        raise ShardError(f"{source}: truncated shard: expected a {HEADER_BYTES}-byte header, found {size} bytes")
    magic, version, count, width = (int(v) for v in np.frombuffer(header, dtype=HEADER_DTYPE, count=4))
    if magic != MAGIC:
        raise ShardError(f"{source}: bad magic: expected {MAGIC}, found {magic} (not a modded-nanogpt .bin shard)")
    if version == VERSION:
        width = 2
    elif version != WIDE_VERSION:
        raise ShardError(f"{source}: unsupported shard version: expected {VERSION} or {WIDE_VERSION}, found {version}")
    elif width not in TOKEN_DTYPES:
        raise ShardError(f"{source}: bad token size in a version-2 header: expected 2 or 4, found {width}")
    if count < 0:
        raise ShardError(f"{source}: bad token count in header: expected >= 0, found {count}")
    expected = HEADER_BYTES + width * count
    if size < expected:
        raise ShardError(
            f"{source}: truncated shard: header says {count} tokens ({expected} bytes), found {size} bytes"
        )
    if size > expected:
        raise ShardError(
            f"{source}: shard size mismatch: header says {count} tokens ({expected} bytes), found {size} bytes"
        )
    return count, TOKEN_DTYPES[width]


def read_shard(data: bytes | memoryview, source: str) -> np.ndarray:
    """The tokens of an in-memory shard, as a read-only view of `data` (no copy)."""
    count, dtype = parse_header(data[:HEADER_BYTES], source, len(data))
    return np.frombuffer(data, dtype=dtype, count=count, offset=HEADER_BYTES)


def read_shard_file(path: str | os.PathLike[str]) -> np.ndarray:
    """The tokens of a shard file as a read-only `np.memmap` (an empty array for an empty shard)."""
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(f"{source}: no such shard file") from None
    count, dtype = parse_header(header, source, size)
    if count == 0:
        return np.zeros(0, dtype=dtype)  # mmap cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))


def shard_name(split: str, index: int) -> str:
    """`train_000000.bin`: the names `prepare` writes and modded-nanogpt's loaders glob for."""
    return f"{split}_{index:06d}.bin"
