"""`speedrun run`'s run directories: named by their start, never shared, held by one writer.

`<runs dir>/<name>/<YYYYMMDD-HHMMSS>`, or `<YYYYMMDD-HHMMSS>-2`, `-3`... for runs started in the
same second: a new run creates its directory exclusively (`mkdir` fails on an existing one) and
takes the next suffix, so two runs never share one. Directories sort by start (`run_order`),
which is how `--resume` picks the newest.

The process that runs it holds the directory's lock (data/run_lock.py) from the moment it has
one until it exits, and the lock of its storage when that is elsewhere (`--storage`,
`spec.storage.uri`): a second `speedrun run --resume` of the same run, or of another run with the
same storage, is refused with one line naming the holder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import re
import sys
from pathlib import Path

from speedrun_api.run_contract import RUN_LOCK_FILE, local_run_root
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.run_lease import hold_run
from speedrun_trainer.data.run_lock import Holder, RunLocked, file_run_lock
from speedrun_trainer.data.storage import DataError, open_storage

RUN_DIR_NAME = re.compile(r"^(\d{8}-\d{6})(?:-(\d+))?$")


def run_order(path: Path) -> tuple[str, int]:
    """Sort key: start second, then the suffix of a run started in the same second."""
    m = RUN_DIR_NAME.match(path.name)
    return (m.group(1), int(m.group(2) or 1)) if m else (path.name, 0)


def newest_run_dir(base: Path) -> Path | None:
    dirs = [p for p in base.iterdir() if p.is_dir()] if base.is_dir() else []
    return max(dirs, key=run_order, default=None)


def run_id(job: SpeedrunJob, run_dir: Path) -> str:
    """The run's name in the rendezvous and in its lock: `<name>-<run dir>`."""
    return f"{job.metadata.name}-{run_dir.name}"


def new_run_dir(job: SpeedrunJob, runs_dir: str, held: contextlib.ExitStack) -> Path:
    """A new run directory, created exclusively, its lock held until `held` closes."""
    base = local_run_root(job.metadata.name, Path(runs_dir).resolve())
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"--runs-dir: cannot create {base} ({err.strerror})") from None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = base / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        try:
            held.enter_context(file_run_lock(path, Holder.here(run_id(job, path))))
        except RunLocked:  # a --resume took this newest directory first: that run is its now
            continue
        held.callback(_remove_if_unused, path)  # before the lock goes: a --resume must not pick it
        return path
    raise AssertionError("unreachable")


def _remove_if_unused(path: Path) -> None:
    """A new run directory that never started a run (refused its storage's lock, say): gone, so
    that `--resume` picks the run before it rather than an empty one."""
    with contextlib.suppress(OSError):
        if {p.name for p in path.iterdir()} <= {RUN_LOCK_FILE}:
            (path / RUN_LOCK_FILE).unlink(missing_ok=True)
            path.rmdir()


def last_run_dir(job: SpeedrunJob, runs_dir: str) -> Path | None:
    """What `--resume` continues: the newest run directory, or None (saying a new run starts)."""
    base = local_run_root(job.metadata.name, Path(runs_dir).resolve())
    newest = newest_run_dir(base)
    if newest is None:
        print(f"no earlier run under {base}; starting a new one", file=sys.stderr)
    return newest


def hold_run_dir(job: SpeedrunJob, run_dir: Path, held: contextlib.ExitStack) -> None:
    """An existing run directory's lock, held until `held` closes; `RunLocked` if another has it."""
    held.enter_context(file_run_lock(run_dir, Holder.here(run_id(job, run_dir))))


def hold_storage(job: SpeedrunJob, run_dir: Path, uri: str, held: contextlib.ExitStack) -> None:
    """The lock of the run's storage too, when it is not the run directory (whose lock is held)."""
    from speedrun_trainer.train.preflight import check_writable

    storage = open_storage(uri, endpoint_url=job.spec.storage.endpoint_url)
    local = storage.local_path("")
    if local is not None and local.exists() and local.samefile(run_dir):
        return
    if local is not None:
        check_writable(storage)  # as the trainer would: a local path that cannot be written is invalid
    held.enter_context(hold_run(storage, Holder.here(run_id(job, run_dir))))
