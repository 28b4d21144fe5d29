"""Checks every storage backend passes (file://, S3 in the unit tier, GCS in the e2e tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedrun_trainer.data.storage import DataError, cached_copy, open_storage
from tests.support.gcs_server import GcsBucket
from tests.support.s3 import S3Bucket


def exercise(storage, expected_root: str) -> None:
    """The same round trip for every backend."""
    assert storage.url() == expected_root
    assert storage.list() == []
    storage.write_bytes("b/two.bin", b"2")
    storage.write_bytes("a.txt", b"hello")
    storage.write_bytes("b/one.bin", b"1")
    storage.write_json("meta.json", {"step": 3, "x": [1.5]})
    assert storage.read_bytes("a.txt") == b"hello"
    assert storage.read_json("meta.json") == {"step": 3, "x": [1.5]}
    assert storage.list() == ["a.txt", "b/one.bin", "b/two.bin", "meta.json"]
    assert storage.list("b/") == ["b/one.bin", "b/two.bin"]
    assert storage.exists("a.txt") and not storage.exists("nope.txt")
    storage.write_bytes("a.txt", b"replaced")
    assert storage.read_bytes("a.txt") == b"replaced"
    storage.delete("a.txt")
    assert not storage.exists("a.txt")
    assert storage.url("b/one.bin") == f"{expected_root}/b/one.bin"


def one_line(err: pytest.ExceptionInfo[DataError]) -> str:
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    assert err.value.__suppress_context__, "the backend's exception would be printed as context"
    return message


def check_cached_copy(bucket: S3Bucket | GcsBucket, tmp_path: Path) -> None:
    """fsspec's filecache: a second open reads the local copy; a new version is fetched again."""
    storage = open_storage(bucket.uri)
    storage.write_bytes("shards/train_000.bin", b"v1" * 1000)
    uri = f"{bucket.uri}/shards/train_000.bin"
    first = cached_copy(uri, tmp_path / "cache")
    assert first.read_bytes() == b"v1" * 1000 and tmp_path / "cache" in first.parents
    assert cached_copy(uri, tmp_path / "cache") == first
    storage.write_bytes("shards/train_000.bin", b"v2" * 1000)
    assert cached_copy(uri, tmp_path / "cache").read_bytes() == b"v2" * 1000
    local = tmp_path / "local.bin"
    local.write_bytes(b"x")
    assert cached_copy(str(local), tmp_path / "cache") == local  # local files are used in place
