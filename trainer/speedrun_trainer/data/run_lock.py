"""One writer per run: the run's lock, held by whatever writes the run's storage.

    with hold_run(storage, Holder.here(run_id="tiny-20261206-072556")):  # data/run_lease.py
        ...  # train, evaluate, write the results

- A local path (file://, and each run directory of `speedrun run`): an exclusive `flock` on
  `<path>/run.lock`. The kernel drops it when the holding process dies, however it dies, so the
  lock of a dead holder is free at once and nothing has to judge whether it is stale. The holder
  writes who it is into the file, for the refusal message. (Over NFS, Linux maps flock to POSIX
  byte-range locks, which the server keeps.)
- S3 and GCS: a lease object of the same name, created and taken over only by conditional
  writes, renewed by a heartbeat (data/run_lease.py, whose `hold_run` picks one or the other).

A second writer gets `RunLocked`, whose message is one line naming the holder (host, pid, since
when); the entry points exit 2 with it: a retry would be refused the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from speedrun_api.run_contract import RUN_LOCK_FILE
from speedrun_trainer.data.storage import DataError

READ_TRIES = 20  # a refused writer may read the file between the holder's truncate and write
READ_PAUSE_S = 0.05


def pid_space() -> str | None:
    """Where a pid names one process: this boot of this kernel and this pid namespace (Linux)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def process_running(pid: int) -> bool:
    """Whether `pid` is a live process here (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass(frozen=True)
class Holder:
    """Who holds a run: what the refusal message names, and what decides whether it is gone."""

    host: str
    pid: int
    run_id: str
    since: float  # epoch seconds
    pid_space: str | None = None
    # The run across restarts (`SPEEDRUN_RUN_ID`, the SpeedrunJob's uid): a later holder with the
    # same key is the same run restarted (a new pod), and takes the lease over at once.
    restart_key: str | None = None

    @classmethod
    def here(cls, run_id: str, restart_key: str | None = None) -> Holder:
        return cls(socket.gethostname(), os.getpid(), run_id, time.time(), pid_space(), restart_key)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "since_utc": dt.datetime.fromtimestamp(self.since, dt.timezone.utc).isoformat()}

    @classmethod
    def from_json(cls, record: Any) -> Holder | None:
        """The holder a lock file or lease records; None for anything unreadable."""
        if not isinstance(record, dict):
            return None
        try:
            pid, since = int(record["pid"]), float(record["since"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(
            host=str(record.get("host", "?")),
            pid=pid,
            run_id=str(record.get("run_id", "?")),
            since=since,
            pid_space=record.get("pid_space") if isinstance(record.get("pid_space"), str) else None,
            restart_key=record.get("restart_key") if isinstance(record.get("restart_key"), str) else None,
        )

    def dead_here(self) -> bool:
        """A process of this machine and pid namespace that is no longer running."""
        return self.pid_space is not None and self.pid_space == pid_space() and not process_running(self.pid)

    def describe(self) -> str:
        since = dt.datetime.fromtimestamp(self.since).strftime("%Y-%m-%d %H:%M:%S")
        return f"pid {self.pid} on host {self.host} since {since} (run {self.run_id})"


class RunLocked(Exception):
    """Another writer holds the run: one line naming it."""

    def __init__(self, where: str, holder: Holder | None, note: str = "") -> None:
        self.where, self.holder = where, holder
        who = holder.describe() if holder is not None else "another process (it has not said who yet)"
        super().__init__(f"{where} is being written by {who}{note}; wait for it to end, or stop it")


def _json_bytes(holder: Holder) -> bytes:
    return (json.dumps(holder.to_json(), indent=2) + "\n").encode()


def _read_holder(path: Path) -> Holder | None:
    for _ in range(READ_TRIES):
        with contextlib.suppress(OSError, ValueError):
            holder = Holder.from_json(json.loads(path.read_bytes()))
            if holder is not None:
                return holder
        time.sleep(READ_PAUSE_S)
    return None


@contextlib.contextmanager
def file_run_lock(directory: Path, holder: Holder) -> Iterator[None]:
    """Hold `<directory>/run.lock` (flock) for the block, or raise `RunLocked` naming its holder.

    The file stays when the lock is released: removing a file that another process may be about
    to lock would let a third lock a new file of the same name beside it."""
    import fcntl

    path = directory / RUN_LOCK_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)  # never inherited by children
    except OSError as err:
        raise DataError(f"{directory}: cannot create the run's lock {RUN_LOCK_FILE} ({err.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(str(directory), _read_holder(path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, _json_bytes(holder), 0)
        yield
    finally:
        os.close(fd)  # drops the flock
