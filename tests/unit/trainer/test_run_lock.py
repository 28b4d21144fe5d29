"""One writer per run on a local path: the flock on `run.lock` (data/run_lock.py), the trainer's
rank 0 taking it (train/runtime.py), and `speedrun run`'s run directories (cli/run_dirs.py).
The lease on S3 is tests/unit/trainer/test_run_lease.py."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from speedrun_api.manifest import parse_job
from speedrun_api.run_contract import ENV_RUN_LOCK_HELD, RUN_LOCK_FILE
from speedrun_trainer.cli import run_dirs
from speedrun_trainer.cli.local import run_local
from speedrun_trainer.data.run_lock import Holder, RunLocked, file_run_lock
from speedrun_trainer.train import loop
from speedrun_trainer.train.runtime import Dist, run_writer
from tests.support.helpers import tiny_manifest, write_manifest

HOLD = """
import sys
from pathlib import Path
from speedrun_trainer.data.run_lock import Holder, file_run_lock
with file_run_lock(Path(sys.argv[1]), Holder.here(sys.argv[2])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
"""


@contextlib.contextmanager
def holder_process(directory: Path, run_id: str = "the-first-run"):
    """Another process holding `directory`'s lock until the block ends (or the test kills it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), run_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
        proc.wait(timeout=30)


def test_a_second_process_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    with holder_process(tmp_path) as proc:
        with pytest.raises(RunLocked) as err, file_run_lock(tmp_path, Holder.here("the-second-run")):
            pass
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"{tmp_path} is being written by pid {proc.pid} on host {socket.gethostname()}")
        assert "since " in message and "(run the-first-run)" in message
        since = dt.datetime.strptime(message.split("since ")[1][:19], "%Y-%m-%d %H:%M:%S")
        assert abs((dt.datetime.now() - since).total_seconds()) < 600
    with file_run_lock(tmp_path, Holder.here("the-second-run")):  # released when it ended
        assert json.loads((tmp_path / RUN_LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    with holder_process(tmp_path) as proc:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with file_run_lock(tmp_path, Holder.here("after-the-kill")):
            record = json.loads((tmp_path / RUN_LOCK_FILE).read_text())
            assert (record["pid"], record["run_id"]) == (os.getpid(), "after-the-kill")


def test_a_lock_is_held_against_this_process_too_and_released_at_the_end(tmp_path: Path) -> None:
    with (
        file_run_lock(tmp_path, Holder.here("one")),
        pytest.raises(RunLocked, match=rf"pid {os.getpid()} .*\(run one\)"),
        file_run_lock(tmp_path, Holder.here("two")),
    ):
        pass
    with file_run_lock(tmp_path, Holder.here("two")):
        pass


def _job(tmp_path: Path) -> tuple[Path, object]:
    doc = tiny_manifest(**{"spec.train.steps": 2, "spec.eval.bpb.tokens": 256})
    return write_manifest(tmp_path / "job.yaml", doc), parse_job(doc)


def test_the_trainers_rank_0_is_refused_a_held_storage(tmp_path, monkeypatch, capsys) -> None:
    config, _ = _job(tmp_path)
    storage = tmp_path / "storage"
    monkeypatch.setenv("SPEEDRUN_STORAGE_URI", storage.as_uri())
    monkeypatch.setenv("SPEEDRUN_METRICS_PORT", "0")
    monkeypatch.delenv(ENV_RUN_LOCK_HELD, raising=False)
    with holder_process(storage) as proc:
        assert loop.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"is being written by pid {proc.pid}" in err[0]
    assert not (storage / "checkpoints").exists()  # nothing trained, nothing written


def test_workers_under_a_launcher_that_holds_the_lock_take_none(tmp_path, monkeypatch) -> None:
    _, job = _job(tmp_path)
    monkeypatch.setenv("SPEEDRUN_STORAGE_URI", tmp_path.as_uri())
    rank0 = Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    with file_run_lock(tmp_path, Holder.here("the-launcher")):
        monkeypatch.setenv(ENV_RUN_LOCK_HELD, "1")
        with run_writer(job, rank0):  # the launcher's lock covers it
            pass
        monkeypatch.delenv(ENV_RUN_LOCK_HELD)
        with pytest.raises(RunLocked, match=r"\(run the-launcher\)"), run_writer(job, rank0):
            pass


class _SameSecond(dt.datetime):
    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _SameSecond:
        return cls(2026, 12, 6, 7, 25, 56)


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch) -> None:
    _, job = _job(tmp_path)
    monkeypatch.setattr(run_dirs, "dt", SimpleNamespace(datetime=_SameSecond))
    with contextlib.ExitStack() as held:
        made = [run_dirs.new_run_dir(job, str(tmp_path), held) for _ in range(3)]
        assert [p.name for p in made] == ["20261206-072556", "20261206-072556-2", "20261206-072556-3"]
        for path in made:  # each held by its run
            with pytest.raises(RunLocked), file_run_lock(path, Holder.here("x")):
                pass
        for path in made[:2]:  # these two started their runs; the third never did
            (path / "run.json").write_text("{}")
    assert run_dirs.newest_run_dir(made[0].parent) == made[1]
    assert not made[2].exists()


def test_a_new_run_refused_its_storage_exits_2_and_leaves_no_directory(tmp_path, capsys) -> None:
    _, job = _job(tmp_path)
    storage = tmp_path / "shared"
    with holder_process(storage) as proc:
        assert run_local(job, storage_uri=storage.as_uri(), resume=False, runs_dir=str(tmp_path / "runs")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"speedrun run: {storage} is being written by pid {proc.pid}")
    assert list((tmp_path / "runs" / "test-tiny").iterdir()) == []


def test_resume_takes_the_newest_directory_and_is_refused_while_it_is_held(tmp_path, capsys) -> None:
    _, job = _job(tmp_path)
    base = tmp_path / "test-tiny"
    assert run_dirs.last_run_dir(job, str(tmp_path)) is None
    assert capsys.readouterr().err == f"no earlier run under {base}; starting a new one\n"
    for name in ("20261206-072555", "20261206-072556-2", "20261206-072556-10", "20261206-072556"):
        (base / name).mkdir(parents=True)
    newest = base / "20261206-072556-10"
    assert run_dirs.last_run_dir(job, str(tmp_path)) == newest
    with contextlib.ExitStack() as held:
        run_dirs.hold_run_dir(job, newest, held)
        with contextlib.ExitStack() as second, pytest.raises(RunLocked, match=rf"^{newest} is being written"):
            run_dirs.hold_run_dir(job, newest, second)
    with contextlib.ExitStack() as held:  # released: resumable again
        run_dirs.hold_run_dir(job, newest, held)
