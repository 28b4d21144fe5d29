"""The run's lease on S3 (data/run_lease.py) against a real S3 server (moto's, over HTTP): it is
acquired by a conditional create, refused to a second writer with the holder named, taken over
only when its holder is gone (expired, dead here, or the same run restarted) and only by one of
two takers, renewed, lost to a taker, and released. The same over GCS: tests/e2e/test_storage_gcs.py.

The lease is the object moto's server holds; the tests read and plant it with boto3, apart from
the code under test."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from speedrun_api.run_contract import RUN_LOCK_FILE
from speedrun_trainer.data.run_lease import Lease, hold_lease, hold_run
from speedrun_trainer.data.run_lock import Holder, RunLocked, pid_space
from speedrun_trainer.data.storage import open_storage
from tests.support.s3 import S3Bucket

PREFIX = "runs/tiny"


def _lease_object(bucket: S3Bucket) -> dict[str, Any] | None:
    try:
        body = bucket.client().get_object(Bucket=bucket.name, Key=f"{PREFIX}/{RUN_LOCK_FILE}")["Body"].read()
    except bucket.client().exceptions.NoSuchKey:
        return None
    return json.loads(body)


def _plant(bucket: S3Bucket, **fields: Any) -> None:
    """A lease some other writer left behind (by default on another host, expired)."""
    now = time.time()
    record = {"host": "elsewhere", "pid": 4242, "run_id": "old-run", "since": now - 600, "pid_space": None,
              "restart_key": None, "token": "theirs", "ttl_seconds": 60, "renewed_at": now - 120,
              "expires_at": now - 60, **fields}  # fmt: skip
    bucket.client().put_object(Bucket=bucket.name, Key=f"{PREFIX}/{RUN_LOCK_FILE}", Body=json.dumps(record).encode())


def _lease(bucket: S3Bucket, run_id: str, restart_key: str | None = None, **kwargs: Any) -> Lease:
    return Lease(open_storage(f"{bucket.uri}/{PREFIX}"), Holder.here(run_id, restart_key), **kwargs)


def test_acquire_writes_who_holds_the_run_and_release_removes_it(s3_bucket: S3Bucket) -> None:
    lease = _lease(s3_bucket, "first")
    lease.acquire()
    record = _lease_object(s3_bucket)
    assert record is not None
    assert (record["host"], record["pid"], record["run_id"]) == (socket.gethostname(), os.getpid(), "first")
    assert record["since"] <= time.time() < record["expires_at"] and record["token"] == lease.token
    lease.release()
    assert _lease_object(s3_bucket) is None


def test_a_second_writer_is_refused_with_the_holder_named(s3_bucket: S3Bucket) -> None:
    with hold_run(open_storage(f"{s3_bucket.uri}/{PREFIX}"), Holder.here("first")):
        with pytest.raises(RunLocked) as err:
            _lease(s3_bucket, "second").acquire()
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"{s3_bucket.uri}/{PREFIX} is being written by pid {os.getpid()} on host ")
        assert "(run first), its lease renewed until " in message
        assert _lease_object(s3_bucket)["run_id"] == "first"  # untouched by the refused writer
    assert _lease_object(s3_bucket) is None


def test_an_expired_lease_is_taken_over(s3_bucket: S3Bucket) -> None:
    _plant(s3_bucket)
    lease = _lease(s3_bucket, "taker")
    lease.acquire()
    assert _lease_object(s3_bucket)["token"] == lease.token
    lease.release()


def test_a_live_lease_elsewhere_is_refused_until_it_expires(s3_bucket: S3Bucket) -> None:
    _plant(s3_bucket, expires_at=time.time() + 60)
    with pytest.raises(RunLocked, match=r"pid 4242 on host elsewhere .*\(run old-run\)"):
        _lease(s3_bucket, "taker").acquire()


def test_the_lease_of_a_dead_process_of_this_machine_is_taken_over_before_it_expires(s3_bucket: S3Bucket) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its pid names no process
    _plant(s3_bucket, host=socket.gethostname(), pid=dead.pid, pid_space=pid_space(), expires_at=time.time() + 60)
    lease = _lease(s3_bucket, "taker")
    lease.acquire()
    assert _lease_object(s3_bucket)["token"] == lease.token
    lease.release()


def test_the_same_run_restarted_takes_its_lease_over_at_once(s3_bucket: S3Bucket) -> None:
    _plant(s3_bucket, restart_key="uid-1", expires_at=time.time() + 60)
    with pytest.raises(RunLocked):
        _lease(s3_bucket, "another-job", restart_key="uid-2").acquire()
    lease = _lease(s3_bucket, "uid-1", restart_key="uid-1")
    lease.acquire()
    assert _lease_object(s3_bucket)["token"] == lease.token
    lease.release()


def test_of_two_takers_of_one_expired_lease_only_one_wins(s3_bucket: S3Bucket) -> None:
    _plant(s3_bucket)
    first, second = _lease(s3_bucket, "first"), _lease(s3_bucket, "second")
    seen = first.obj.read()
    assert seen == second.obj.read()  # both saw the same expired version
    assert first.try_acquire(seen) is True
    assert second.try_acquire(seen) is False  # its If-Match names a version that is gone
    with pytest.raises(RunLocked, match=r"\(run first\)"):
        second.acquire()
    first.release()


def test_of_two_creators_only_one_wins(s3_bucket: S3Bucket) -> None:
    first, second = _lease(s3_bucket, "first"), _lease(s3_bucket, "second")
    assert first.obj.read() is None and second.obj.read() is None
    assert first.try_acquire(None) is True
    assert second.try_acquire(None) is False  # If-None-Match: * on an object that now exists
    assert _lease_object(s3_bucket)["token"] == first.token
    first.release()


def test_renewal_extends_the_lease_and_a_taken_over_lease_is_lost(s3_bucket: S3Bucket) -> None:
    lease = _lease(s3_bucket, "holder")
    lease.acquire()
    before = _lease_object(s3_bucket)["expires_at"]
    assert lease.renew() is True
    assert _lease_object(s3_bucket)["expires_at"] >= before
    _plant(s3_bucket, run_id="usurper", expires_at=time.time() + 60)  # a taker overwrote it
    assert lease.renew() is False
    assert lease.lost_to is not None and lease.lost_to.run_id == "usurper"
    lease.release()  # not ours any more: left alone
    assert _lease_object(s3_bucket)["run_id"] == "usurper"


def test_the_heartbeat_reports_a_lost_lease(s3_bucket: S3Bucket) -> None:
    lost = threading.Event()
    with hold_lease(open_storage(f"{s3_bucket.uri}/{PREFIX}"), Holder.here("holder"), ttl=0.4,
                    on_lost=lambda _lease: lost.set()):  # fmt: skip
        _plant(s3_bucket, run_id="usurper", expires_at=time.time() + 60)
        assert lost.wait(timeout=30)
    assert _lease_object(s3_bucket)["run_id"] == "usurper"
