"""Storage (fsspec) over file:// and real S3 (moto's server over HTTP), URI fetching, fsspec's
globbing and its file cache. The same checks over real GCS (an emulator built from Go) are
tests/e2e/test_storage_gcs.py."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from speedrun_trainer.data.storage import (
    MULTIPART_THRESHOLD,
    DataError,
    FileStorage,
    expand_uris,
    explain,
    fetch_uri,
    open_storage,
)
from tests.support.storage_checks import check_cached_copy, exercise, one_line


@pytest.mark.parametrize("form", ["file-uri", "plain-path"])
def test_file_storage_round_trip(tmp_path: Path, form: str) -> None:
    root = tmp_path / "runs" / "x"
    storage = open_storage(f"file://{root}" if form == "file-uri" else str(root))
    exercise(storage, f"file://{root}")
    assert storage.local_path("b/one.bin") == root / "b" / "one.bin"
    assert not [p for p in root.rglob("*") if p.name.startswith(".")], "temporary files left behind"


def test_file_storage_skips_temporaries_and_refuses_escapes(tmp_path: Path) -> None:
    storage = FileStorage(str(tmp_path))
    (tmp_path / ".model.pt.0123abcd.tmp").write_bytes(b"half")
    assert storage.list() == []
    with pytest.raises(DataError, match="leaves the storage root"):
        storage.read_bytes("../etc/passwd")
    with pytest.raises(DataError, match=f"file://{tmp_path}/missing.json: no such file"):
        storage.read_json("missing.json")


@pytest.mark.parametrize("explicit_endpoint", [True, False])
def test_s3_storage_round_trip(s3_bucket, explicit_endpoint: bool, monkeypatch) -> None:
    if explicit_endpoint:
        monkeypatch.delenv("AWS_ENDPOINT_URL")
    endpoint = s3_bucket.endpoint_url if explicit_endpoint else None
    storage = open_storage(f"{s3_bucket.uri}/runs/x/", endpoint_url=endpoint)
    exercise(storage, f"{s3_bucket.uri}/runs/x")
    assert storage.local_path("b/one.bin") is None
    keys = [o["Key"] for o in s3_bucket.client().list_objects_v2(Bucket=s3_bucket.name)["Contents"]]
    assert sorted(keys) == ["runs/x/b/one.bin", "runs/x/b/two.bin", "runs/x/meta.json"]


def test_s3_large_object_goes_multipart(s3_bucket, tmp_path: Path) -> None:
    data = os.urandom(MULTIPART_THRESHOLD + 1024 * 1024)
    storage = open_storage(s3_bucket.uri)
    storage.write_bytes("big.bin", data)
    etag = s3_bucket.client().head_object(Bucket=s3_bucket.name, Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-3"), f"expected a 3-part multipart ETag (5+5+1 MiB), got {etag}"
    assert storage.read_bytes("big.bin") == data
    storage.download_to("big.bin", tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == data


def test_s3_errors_name_the_uri(s3_bucket, tmp_path: Path) -> None:
    storage = open_storage(f"{s3_bucket.uri}/p")
    with pytest.raises(DataError) as err:
        storage.read_bytes("missing.bin")
    assert one_line(err) == f"{s3_bucket.uri}/p/missing.bin: no such object"
    assert not storage.exists("missing.bin")

    gone = open_storage("s3://no-such-bucket-here/p")
    for action in (lambda: gone.read_bytes("k"), lambda: gone.list(), lambda: gone.download_to("k", tmp_path / "k")):
        with pytest.raises(DataError) as err:
            action()
        assert "s3://no-such-bucket-here/p" in one_line(err)
        assert "bucket no-such-bucket-here does not exist" in str(err.value)
    with pytest.raises(DataError, match="does not exist"):  # a multipart upload into no bucket
        gone.write_bytes("big", b"\0" * (MULTIPART_THRESHOLD + 1))


def test_s3_connection_refused(monkeypatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    storage = open_storage("s3://bucket/p", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(DataError) as err:
        storage.read_bytes("k")
    assert one_line(err).startswith("s3://bucket/p/k: cannot connect")


def test_access_denied_message() -> None:
    """s3fs and gcsfs turn 403s into PermissionError."""
    assert explain(PermissionError("Access Denied"), "s3://b/k") == (
        "s3://b/k: access denied; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    )
    assert explain(PermissionError(), "gs://b/k") == "gs://b/k: access denied; check GOOGLE_APPLICATION_CREDENTIALS"


def test_cached_copy_fetches_once_and_again_when_the_object_changes(s3_bucket, tmp_path: Path) -> None:
    check_cached_copy(s3_bucket, tmp_path)


def test_fetch_uri_everywhere(tmp_path: Path, s3_bucket, http_server) -> None:
    (tmp_path / "f.txt").write_bytes(b"local")
    assert fetch_uri(f"file://{tmp_path}/f.txt") == b"local"
    assert fetch_uri(str(tmp_path / "f.txt")) == b"local"
    open_storage(s3_bucket.uri).write_bytes("d/f.txt", b"remote")
    assert fetch_uri(f"{s3_bucket.uri}/d/f.txt") == b"remote"
    base, root = http_server
    (root / "page.txt").write_bytes(b"web")
    assert fetch_uri(f"{base}/page.txt") == b"web"
    with pytest.raises(DataError, match=f"^{base}/absent.txt: HTTP 404 "):
        fetch_uri(f"{base}/absent.txt")
    with pytest.raises(DataError, match="no such file"):
        fetch_uri(str(tmp_path / "absent.txt"))


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_expand_local(tmp_path: Path) -> None:
    _touch(tmp_path, "d/train_001.bin", "d/train_000.bin", "d/val_000.bin", "d/notes.txt", "d/sub/x.bin")
    d = tmp_path / "d"
    assert expand_uris(f"file://{d}/train_*.bin") == [f"file://{d}/train_000.bin", f"file://{d}/train_001.bin"]
    assert expand_uris(f"{d}/*_000.bin") == [f"{d}/train_000.bin", f"{d}/val_000.bin"]
    assert expand_uris(f"{d}/**/*.bin") == [
        f"{d}/sub/x.bin",
        f"{d}/train_000.bin",
        f"{d}/train_001.bin",
        f"{d}/val_000.bin",
    ]
    assert expand_uris(f"file://{d}") == [
        f"file://{d}/{n}" for n in ("sub/x.bin", "train_000.bin", "train_001.bin", "val_000.bin")
    ]
    assert expand_uris(f"{d}/notes.txt") == [f"{d}/notes.txt"]
    for pattern in (f"file://{d}/none_*.bin", f"{d}/missing.bin", f"file://{tmp_path}/empty"):
        with pytest.raises(DataError, match=f"^{re.escape(pattern)}: matches no files"):
            expand_uris(pattern)


def test_expand_s3(s3_bucket) -> None:
    storage = open_storage(s3_bucket.uri)
    for key in ("d/train_001.bin", "d/train_000.bin", "d/val_000.bin", "d/notes.txt", "d/sub/x.bin", "dx.bin"):
        storage.write_bytes(key, b"x")
    b = s3_bucket.uri
    assert expand_uris(f"{b}/d/train_*.bin") == [f"{b}/d/train_000.bin", f"{b}/d/train_001.bin"]
    assert expand_uris(f"{b}/d/*.bin") == [f"{b}/d/train_000.bin", f"{b}/d/train_001.bin", f"{b}/d/val_000.bin"]
    assert expand_uris(f"{b}/d/**/*.bin") == [
        f"{b}/d/sub/x.bin",
        f"{b}/d/train_000.bin",
        f"{b}/d/train_001.bin",
        f"{b}/d/val_000.bin",
    ]
    everything_in_d = [f"{b}/d/{n}" for n in ("sub/x.bin", "train_000.bin", "train_001.bin", "val_000.bin")]
    assert expand_uris(f"{b}/d") == everything_in_d  # a prefix is a directory: dx.bin is not in it
    assert expand_uris(f"{b}/d/") == everything_in_d
    assert expand_uris(f"{b}/d/notes.txt") == [f"{b}/d/notes.txt"]
    with pytest.raises(DataError, match=f"^{re.escape(b)}/d/none_\\*\\.bin: matches no files"):
        expand_uris(f"{b}/d/none_*.bin")
    with pytest.raises(DataError, match="bucket no-such-bucket-here does not exist"):
        expand_uris("s3://no-such-bucket-here/d/*.bin")
