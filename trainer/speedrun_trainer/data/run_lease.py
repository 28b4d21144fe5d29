"""The run's lease on object storage (S3, GCS), where no flock reaches (data/run_lock.py), and
`hold_run`, the run's lock on any storage: that flock on a local path, else this lease.

The lease is the object `run.lock` under the run's storage URI: JSON naming its holder (host,
pid, run id, since), this holder's `token`, `renewed_at` and `expires_at`. Every write to it is
conditional, so that of two writers racing for it exactly one wins:

- acquire: create it only where there is none (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`);
- take over a lease whose holder is gone: overwrite it only while it is still the version read
  (S3 `If-Match: <ETag>`, GCS `ifGenerationMatch=<generation>`). Gone means expired (not renewed
  for `ttl` seconds), a dead process of this machine (same boot and pid namespace), or an earlier
  holder of the same run (same `SPEEDRUN_RUN_ID`: a restarted pod of the same SpeedrunJob);
- renew: a heartbeat thread every `ttl / 4`, the same conditional overwrite. A failed condition
  means another writer took it over: `on_lost` runs (by default one line, then SIGTERM to this
  process, which stops a trainer, or `speedrun run` as Ctrl-C would). A storage that cannot be
  reached is tried again at the next beat;
- release: delete it, only while it is still ours.

Expiry compares the holder's clock with the reader's: the TTL (60 s) is far above the skew of
NTP-synced machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from speedrun_api.run_contract import RUN_LOCK_FILE
from speedrun_trainer.data.run_lock import Holder, RunLocked, file_run_lock
from speedrun_trainer.data.storage import DataError, Storage, errors

TTL_SECONDS = 60.0
ATTEMPTS = 8  # reads and conditional writes before giving up on a lease that keeps changing
PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict")  # S3: 412; 409 for a racing write


def _lost_race(err: BaseException) -> bool:
    """A conditional write refused: the object exists, or is no longer the version we read."""
    if isinstance(err, FileExistsError):  # s3fs and gcsfs raise it for a 412
        return True
    response = getattr(err.__cause__, "response", None)  # s3fs keeps botocore's ClientError as the cause
    return isinstance(response, dict) and response.get("Error", {}).get("Code") in PRECONDITION_CODES


class _S3Object:
    """One S3 object read with its ETag, written only under a condition (through s3fs's client)."""

    def __init__(self, storage: Storage, key: str) -> None:
        self.fs, self.uri = storage.fs, storage.url(key)
        self.bucket, self.key = storage.path(key).split("/", 1)

    def read(self) -> tuple[bytes, str] | None:
        from fsspec.asyn import sync

        async def get() -> tuple[bytes, str]:  # one GET: the body and the ETag of the same version
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return await resp["Body"].read(), resp["ETag"]
            finally:
                resp["Body"].close()

        with errors(self.uri, self.fs):
            try:
                return sync(self.fs.loop, get)
            except FileNotFoundError:
                return None

    def put(self, data: bytes, version: str | None) -> str | None:
        """Create (`version` None) or overwrite `version`; the new ETag, or None if the condition failed."""
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        with errors(self.uri, self.fs):
            try:
                out = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition)
            except Exception as err:
                # `If-Match` on an object that is gone is a 404: not the version we read either
                if _lost_race(err) or (version is not None and isinstance(err, FileNotFoundError)):
                    return None
                raise
        return str(out["ETag"])

    def delete(self, version: str) -> None:
        with errors(self.uri, self.fs):
            try:
                self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
            except Exception as err:
                if not (_lost_race(err) or isinstance(err, FileNotFoundError)):
                    raise


class _GcsObject:
    """One GCS object read with its generation, written only under `ifGenerationMatch` (gcsfs)."""

    def __init__(self, storage: Storage, key: str) -> None:
        self.fs, self.uri = storage.fs, storage.url(key)
        self.bucket, self.key = storage.path(key).split("/", 1)

    def read(self) -> tuple[bytes, str] | None:
        with errors(self.uri, self.fs):
            try:
                meta = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, json_out=True)
                generation = str(meta["generation"])
                # That generation's bytes: a newer write in between makes this a 404, read again.
                _, data = self.fs.call("GET", "b/{}/o/{}", self.bucket, self.key, alt="media", generation=generation)
            except FileNotFoundError:
                return None
        return bytes(data), generation

    def put(self, data: bytes, version: str | None) -> str | None:
        upload = self.fs.base.replace("/storage/v1/", "/upload/storage/v1/") + "b/{}/o"
        with errors(self.uri, self.fs):
            try:
                out = self.fs.call(
                    "POST", upload, self.bucket, uploadType="media", name=self.key, data=data, json_out=True,
                    headers={"Content-Type": "application/json"}, ifGenerationMatch=version or "0",
                )  # fmt: skip
            except FileExistsError:  # gcsfs's name for 412 Precondition Failed
                return None
            except FileNotFoundError:  # the generation to match is gone
                if version is None:
                    raise
                return None
        return str(out["generation"])

    def delete(self, version: str) -> None:
        with errors(self.uri, self.fs), contextlib.suppress(FileExistsError, FileNotFoundError):
            self.fs.call("DELETE", "b/{}/o/{}", self.bucket, self.key, ifGenerationMatch=version)


def stop_this_process(lease: Lease) -> None:
    """The default `on_lost`: say so, and stop as SIGTERM stops this process."""
    who = lease.lost_to.describe() if lease.lost_to is not None else "another writer"
    print(f"{lease.where}: the run's lease was taken over by {who}; stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


class Lease:
    """The lease on one run's storage for one holder: `acquire`, `start_heartbeat`, `release`."""

    def __init__(
        self,
        storage: Storage,
        holder: Holder,
        *,
        ttl: float = TTL_SECONDS,
        on_lost: Callable[[Lease], None] | None = None,
    ) -> None:
        if storage.scheme not in ("s3", "gs"):
            raise DataError(f"{storage.url('')}: a lease needs s3:// or gs:// (a local path takes a file lock)")
        self.obj = (_S3Object if storage.scheme == "s3" else _GcsObject)(storage, RUN_LOCK_FILE)
        self.where, self.holder, self.ttl = storage.url(""), holder, ttl
        self.on_lost = on_lost or stop_this_process
        self.token = uuid.uuid4().hex
        self.version: str | None = None  # of the lease object as we last wrote it
        self.lost_to: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self) -> bytes:
        now = time.time()
        body = {**self.holder.to_json(), "token": self.token, "ttl_seconds": self.ttl,
                "renewed_at": now, "expires_at": now + self.ttl}  # fmt: skip
        return (json.dumps(body, indent=2) + "\n").encode()

    def acquire(self) -> None:
        """Take the lease, or raise `RunLocked` naming its live holder."""
        for _ in range(ATTEMPTS):
            if self.try_acquire(self.obj.read()):
                return
        raise DataError(f"{self.obj.uri}: the run's lease changed {ATTEMPTS} times while taking it; try again")

    def try_acquire(self, found: tuple[bytes, str] | None) -> bool:
        """One conditional write against what a read `found`: True if we hold the lease now,
        False if another writer wrote first (read again); `RunLocked` if its holder is alive."""
        if found is None:
            self.version = self.obj.put(self.record(), None)
            return self.version is not None
        record, version = _parse(found[0]), found[1]
        if record.get("token") == self.token:  # our own write, whose reply was lost and retried
            self.version = version
            return True
        holder = Holder.from_json(record)
        if not self._gone(record, holder):
            expires = time.strftime("%H:%M:%S", time.localtime(float(record["expires_at"])))
            raise RunLocked(self.where, holder, f", its lease renewed until {expires}")
        self.version = self.obj.put(self.record(), version)
        return self.version is not None

    def _gone(self, record: dict[str, Any], holder: Holder | None) -> bool:
        expires = record.get("expires_at")
        if holder is None or not isinstance(expires, (int, float)) or time.time() > expires:
            return True  # expired, or not a lease we can read: nobody renews it
        same_run = self.holder.restart_key is not None and holder.restart_key == self.holder.restart_key
        return same_run or holder.dead_here()

    def start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="run-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            if not self.renew():
                self.on_lost(self)
                return

    def renew(self) -> bool:
        """Extend the lease; False when another writer has taken it over (`lost_to` names it)."""
        assert self.version is not None, "renew() before acquire()"
        try:
            version = self.obj.put(self.record(), self.version)
            found = self.obj.read() if version is None else None
            if version is None and found is None:  # deleted under us: nobody else holds it
                version = self.obj.put(self.record(), None)
        except DataError as err:  # unreachable now: still ours unless someone takes it over meanwhile
            print(f"{self.where}: could not renew the run's lease ({err}); trying again", file=sys.stderr, flush=True)
            return True
        if version is None and found is not None and _parse(found[0]).get("token") == self.token:
            version = found[1]  # our own write, whose reply was lost and retried
        if version is None:
            self.lost_to = Holder.from_json(_parse(found[0])) if found is not None else None
            return False
        self.version = version
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.version is not None and self.lost_to is None:
            with contextlib.suppress(DataError):  # unreachable: the lease expires by itself
                self.obj.delete(self.version)
        self.version = None


def _parse(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


@contextlib.contextmanager
def hold_lease(
    storage: Storage, holder: Holder, *, ttl: float = TTL_SECONDS, on_lost: Callable[[Lease], None] | None = None
) -> Iterator[Lease]:
    """Hold the run's lease for the block (renewed in the background), released at its end."""
    lease = Lease(storage, holder, ttl=ttl, on_lost=on_lost)
    lease.acquire()
    lease.start_heartbeat()
    try:
        yield lease
    finally:
        lease.release()


def hold_run(
    storage: Storage, holder: Holder, *, on_lost: Callable[[Lease], None] | None = None
) -> contextlib.AbstractContextManager[Any]:
    """The run's lock on `storage` for a `with` block: a flock on a local path, else a lease
    (`on_lost`: see `Lease`)."""
    local = storage.local_path("")
    if local is not None:
        return file_run_lock(local, holder)
    return hold_lease(storage, holder, on_lost=on_lost)
