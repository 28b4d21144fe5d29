"""The modded-nanogpt `.bin` shard format and its uint32 variant: round trips and every malformed header."""

from __future__ import annotations

import numpy as np
import pytest

from speedrun_trainer.data.shards import (
    HEADER_BYTES,
    MAGIC,
    ShardError,
    read_shard,
    read_shard_file,
    shard_name,
    token_size_for,
    write_shard,
)
from speedrun_trainer.data.storage import DataError


def _header(magic: int = MAGIC, version: int = 1, count: int = 3) -> bytes:
    header = np.zeros(256, dtype="<i4")
    header[:3] = (magic, version, count)
    return header.tobytes()


def test_layout_is_the_modded_nanogpt_one() -> None:
    data = write_shard([1, 2, 65535])
    assert len(data) == HEADER_BYTES + 3 * 2
    assert np.frombuffer(data[:HEADER_BYTES], "<i4")[:4].tolist() == [20240520, 1, 3, 0]
    assert np.frombuffer(data[HEADER_BYTES:], "<u2").tolist() == [1, 2, 65535]


@pytest.mark.parametrize("tokens", [[], [0], list(range(1000)), np.arange(50257, dtype=np.int64)])
def test_round_trip_bytes_and_file(tokens, tmp_path) -> None:
    data = write_shard(tokens)
    expected = np.asarray(tokens, dtype=np.int64)
    from_bytes = read_shard(data, "mem")
    assert from_bytes.dtype == np.uint16
    assert from_bytes.astype(np.int64).tolist() == expected.tolist()
    path = tmp_path / "s.bin"
    path.write_bytes(data)
    from_file = read_shard_file(path)
    assert from_file.dtype == np.uint16
    assert from_file.astype(np.int64).tolist() == expected.tolist()
    if len(expected):
        assert isinstance(from_file, np.memmap)


def test_read_shard_accepts_memoryview() -> None:
    assert read_shard(memoryview(write_shard([7, 8])), "mv").tolist() == [7, 8]


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (b"\x00" * 100, ["truncated", "1024-byte header", "found 100 bytes"]),
        (_header(magic=12345) + b"\x00" * 6, ["bad magic", "expected 20240520", "found 12345"]),
        (_header(version=7) + b"\x00" * 6, ["version", "expected 1 or 2", "found 7"]),
        (_header(version=2) + b"\x00" * 6, ["token size", "expected 2 or 4", "found 0"]),
        (_header(count=3) + b"\x00" * 4, ["truncated", "3 tokens (1030 bytes)", "found 1028 bytes"]),
        (_header(count=3) + b"\x00" * 8, ["size mismatch", "3 tokens (1030 bytes)", "found 1032 bytes"]),
        (_header(count=-1), ["token count", "found -1"]),
    ],
)
def test_header_errors_name_source_expected_and_found(data: bytes, fragments: list[str], tmp_path) -> None:
    with pytest.raises(ShardError) as err:
        read_shard(data, "s3://b/shard.bin")
    message = str(err.value)
    assert message.startswith("s3://b/shard.bin: ") and "\n" not in message
    for fragment in fragments:
        assert fragment in message
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    with pytest.raises(ShardError, match=r"bad\.bin: "):
        read_shard_file(path)


def test_shard_errors_are_data_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="no such shard file"):
        read_shard_file(tmp_path / "missing.bin")


@pytest.mark.parametrize(("tokens", "bad", "position"), [([1, 65536, 2], 65536, 1), ([5, -1], -1, 1)])
def test_tokens_outside_uint16_are_rejected_when_two_bytes_are_asked_for(
    tokens: list[int], bad: int, position: int
) -> None:
    with pytest.raises(ShardError, match=f"token id {bad} at position {position} does not fit"):
        write_shard(tokens, token_size=2)


def test_wide_shards_hold_llama3_ids(tmp_path) -> None:
    ids = [128000, 9906, 65536, 0, 128255]
    data = write_shard(ids)  # ids past uint16: a version-2 shard of uint32 tokens
    assert len(data) == HEADER_BYTES + 4 * len(ids)
    assert np.frombuffer(data[:HEADER_BYTES], "<i4")[:4].tolist() == [20240520, 2, 5, 4]
    assert read_shard(data, "mem").dtype == np.uint32 and read_shard(data, "mem").tolist() == ids
    path = tmp_path / "wide.bin"
    path.write_bytes(data)
    assert read_shard_file(path).tolist() == ids
    forced = write_shard([1, 2], token_size=4)  # a whole prepared output stays one width
    assert read_shard(forced, "mem").dtype == np.uint32 and read_shard(forced, "mem").tolist() == [1, 2]
    with pytest.raises(ShardError, match="token id -3"):
        write_shard([-3])
    assert token_size_for(65536) == 2 and token_size_for(65537) == 4 and token_size_for(128256) == 4


def test_non_integer_tokens_are_rejected() -> None:
    with pytest.raises(ShardError, match="integers"):
        write_shard(np.array([1.5, 2.0]))


def test_shard_name() -> None:
    assert shard_name("train", 3) == "train_000003.bin"
