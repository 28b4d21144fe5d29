"""The `.bin` token shard format of modded-nanogpt (and nanoGPT's FineWeb scripts).

A shard is a header of 256 little-endian int32 — [0] magic 20240520, [1] version 1, [2] the
token count, the rest zero — followed by exactly that many little-endian uint16 tokens. So a
shard holds token ids below 65536 (GPT-2's 50257 fit; larger vocabularies need another format).

    data = write_shard([50256, 464, 2068])          # bytes, ready for Storage.write_bytes
    tokens = read_shard(data, source="mem")           # np.ndarray[uint16], a view of `data`
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
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN = 65535  # uint16
TOKEN_DTYPE = np.dtype("<u2")
HEADER_DTYPE = np.dtype("<i4")


class ShardError(DataError):
    """A `.bin` shard that is not in the modded-nanogpt format, or tokens that do not fit it."""


def write_shard(tokens: Sequence[int] | np.ndarray) -> bytes:
    """Header + tokens as bytes. Token ids must lie in [0, 65535]."""
    ids = np.asarray(tokens)
    if ids.ndim != 1:
        raise ShardError(f"shard tokens must be one-dimensional, got shape {ids.shape}")
    if ids.size and ids.dtype != TOKEN_DTYPE:
        if not np.issubdtype(ids.dtype, np.integer):
            raise ShardError(f"shard tokens must be integers, got dtype {ids.dtype}")
        bad = np.flatnonzero((ids < 0) | (ids > MAX_TOKEN))
        if bad.size:
            i = int(bad[0])
            raise ShardError(
                f"token id {int(ids[i])} at position {i} does not fit a .bin shard (uint16: 0..{MAX_TOKEN});"
                " vocabularies above 65536 need another format"
            )
    header = np.zeros(HEADER_INTS, dtype=HEADER_DTYPE)
    header[:3] = (MAGIC, VERSION, ids.size)
    return header.tobytes() + ids.astype(TOKEN_DTYPE, copy=False).tobytes()


def parse_header(header: bytes | memoryview, source: str, size: int) -> int:
    """Check a shard's header against its total size in bytes; return its token count."""
    if size < HEADER_BYTES or len(header) < HEADER_BYTES:
        raise ShardError(
            f"{source}: truncated shard: expected a {HEADER_BYTES}-byte header, found {size} bytes"
        )
    magic, version, count = (int(v) for v in np.frombuffer(header, dtype=HEADER_DTYPE, count=3))
    if magic != MAGIC:
        raise ShardError(
            f"{source}: bad magic: expected {MAGIC}, found {magic} (not a modded-nanogpt .bin shard)"
        )
    if version != VERSION:
        raise ShardError(f"{source}: unsupported shard version: expected {VERSION}, found {version}")
    if count < 0:
        raise ShardError(f"{source}: bad token count in header: expected >= 0, found {count}")
    expected = HEADER_BYTES + 2 * count
    if size < expected:
        raise ShardError(
            f"{source}: truncated shard: header says {count} tokens ({expected} bytes), found {size} bytes"
        )
    if size > expected:
        raise ShardError(
            f"{source}: shard size mismatch: header says {count} tokens ({expected} bytes),"
            f" found {size} bytes"
        )
    return count


def read_shard(data: bytes | memoryview, source: str) -> np.ndarray:
    """The tokens of an in-memory shard, as a read-only uint16 view of `data` (no copy)."""
    count = parse_header(data[:HEADER_BYTES], source, len(data))
    return np.frombuffer(data, dtype=TOKEN_DTYPE, count=count, offset=HEADER_BYTES)


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
    count = parse_header(header, source, size)
    if count == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)  # mmap cannot map zero bytes
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))


def shard_name(split: str, index: int) -> str:
    """`train_000000.bin`: the names `prepare` writes and modded-nanogpt's loaders glob for."""
    return f"{split}_{index:06d}.bin"
