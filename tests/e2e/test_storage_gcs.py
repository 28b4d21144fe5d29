"""Storage (fsspec) over real GCS: fake-gcs-server, built from its Go module (tests/support/go_tool.py),
on loopback; the checks tests/unit/trainer/test_storage.py runs over file:// and S3, and the run's
lease (`ifGenerationMatch`) that tests/unit/trainer/test_run_lease.py checks on S3.
Without Go, or when the build fails, the tests skip with one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedrun_api.run_contract import RUN_LOCK_FILE
from speedrun_trainer.data.run_lease import Lease
from speedrun_trainer.data.run_lock import Holder, RunLocked
from speedrun_trainer.data.storage import DataError, expand_uris, fetch_uri, open_storage
from tests.support.gcs_server import GcsBucket
from tests.support.storage_checks import check_cached_copy, exercise, one_line

pytestmark = pytest.mark.e2e


def test_gcs_storage_round_trip(gcs_bucket: GcsBucket, tmp_path: Path) -> None:
    storage = open_storage(f"{gcs_bucket.uri}/runs/x/")
    exercise(storage, f"{gcs_bucket.uri}/runs/x")
    assert gcs_bucket.object_names() == ["runs/x/b/one.bin", "runs/x/b/two.bin", "runs/x/meta.json"]
    storage.download_to("b/one.bin", tmp_path / "one.bin")
    assert (tmp_path / "one.bin").read_bytes() == b"1"
    assert fetch_uri(f"{gcs_bucket.uri}/runs/x/meta.json").startswith(b"{")
    assert expand_uris(f"{gcs_bucket.uri}/runs/x/b/*.bin") == [
        f"{gcs_bucket.uri}/runs/x/b/one.bin",
        f"{gcs_bucket.uri}/runs/x/b/two.bin",
    ]
    assert expand_uris(f"{gcs_bucket.uri}/runs") == [
        f"{gcs_bucket.uri}/runs/x/b/one.bin",
        f"{gcs_bucket.uri}/runs/x/b/two.bin",
    ]
    with pytest.raises(DataError) as err:
        storage.read_bytes("missing.bin")
    assert one_line(err) == f"{gcs_bucket.uri}/runs/x/missing.bin: no such object"
    with pytest.raises(DataError) as err:
        open_storage("gs://no-such-bucket-here/p").list()
    assert one_line(err) == "gs://no-such-bucket-here/p: bucket no-such-bucket-here does not exist"


def test_cached_copy_fetches_once_and_again_when_the_object_changes(gcs_bucket: GcsBucket, tmp_path: Path) -> None:
    check_cached_copy(gcs_bucket, tmp_path)


def test_the_runs_lease_on_gcs(gcs_bucket: GcsBucket) -> None:
    storage = open_storage(f"{gcs_bucket.uri}/runs/x")
    first, second, third = (Lease(storage, Holder.here(name)) for name in ("first", "second", "third"))
    first.acquire()  # ifGenerationMatch=0: created where there was none
    assert gcs_bucket.object_names() == [f"runs/x/{RUN_LOCK_FILE}"]
    with pytest.raises(RunLocked, match=r"is being written by pid \d+ on host .*\(run first\)"):
        second.acquire()
    assert first.renew() is True
    seen = second.obj.read()
    assert seen is not None
    # the holder is gone (expired): of two takers that saw the same generation, one wins
    storage.write_bytes(RUN_LOCK_FILE, seen[0].replace(b'"expires_at": ', b'"expires_at": -1, "old": '))
    seen = second.obj.read()
    assert second.try_acquire(seen) is True and third.try_acquire(seen) is False
    assert first.renew() is False and first.lost_to is not None and first.lost_to.run_id == "second"
    first.release()  # lost: leaves the new holder's lease alone
    assert gcs_bucket.object_names() == [f"runs/x/{RUN_LOCK_FILE}"]
    second.release()
    assert gcs_bucket.object_names() == []
