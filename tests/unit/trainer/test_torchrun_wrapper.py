"""`python -m speedrun_trainer.train.torchrun`: torchrun whose exit code says "invalid config" (2)."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from speedrun_api.run_contract import RUN_IDENTITY_FILE
from speedrun_trainer.cli.launch import free_port
from speedrun_trainer.train.elastic_agent import (
    PROCESS_LOGGER,
    QuietInvalidConfig,
    StopOnInvalidConfig,
    stop_restarts_on_invalid_config,
)
from speedrun_trainer.train.torchrun import config_path, entry_module, which_worker, with_rendezvous_host
from tests.support.helpers import tiny_manifest, write_manifest


def _torchrun(
    config: Path, tmp_path: Path, restarts: int = 0, storage: str | None = None, **env_vars: str
) -> subprocess.CompletedProcess:
    storage = storage or (tmp_path / "run").as_uri()
    env = {**os.environ, "SPEEDRUN_STORAGE_URI": storage, "SPEEDRUN_METRICS_PORT": "0", **env_vars}
    args = [
        "--standalone",
        "--nproc-per-node=1",
        f"--master-port={free_port()}",
        f"--max-restarts={restarts}",
        "-m",
        "speedrun_trainer.train",
        "--config",
        str(config),
    ]
    return subprocess.run(
        [sys.executable, "-m", "speedrun_trainer.train.torchrun", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_config_path_is_the_scripts_config():
    assert config_path(["--nnodes=2", "-m", "x", "--config", "/etc/run.json"]) == "/etc/run.json"
    assert config_path(["-m", "x", "--config=/a.json"]) == "/a.json"
    assert config_path(["-m", "x"]) is None
    assert entry_module(["--nnodes=2", "-m", "speedrun_trainer.train", "--config", "c"]) == "speedrun_trainer.train"
    assert entry_module(["script.py"]) is None


def test_invalid_manifest_exits_2_before_any_worker(tmp_path):
    doc = tiny_manifest(**{"spec.model.numLayers": 0})
    res = _torchrun(write_manifest(tmp_path / "bad.yaml", doc), tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("invalid config: spec.model.numLayers:")
    assert "worker rank" not in res.stdout  # no worker was started


def test_what_needs_no_worker_is_refused_before_the_agent_starts(tmp_path):
    # valid for the schema; the byte tokenizer's 257 tokens do not fit (train/startup_checks.py)
    doc = tiny_manifest(**{"spec.model.vocabSize": 200})
    res = _torchrun(write_manifest(tmp_path / "vocab.yaml", doc), tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [
        "invalid config: spec.model.vocabSize: 200 is smaller than the byte tokenizer's 257"
        " (spec.data.tokenizer: byte); allowed: 257 or more"
    ]
    assert "worker rank" not in res.stdout  # no worker was started


def _attempts(res: subprocess.CompletedProcess) -> int:
    """Worker starts: each says its first phase before anything can fail (train/__main__.py)."""
    return (res.stdout + res.stderr).count("phase: workers started")


def test_a_worker_that_exits_2_is_never_restarted(tmp_path):
    """Only a worker finds this one (the storage holds another spec's run): with 3 restarts
    allowed, the agent still starts the worker once, and torch logs no error line for it."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_IDENTITY_FILE).write_text(json.dumps({"spec_hash": "another-spec"}))
    res = _torchrun(write_manifest(tmp_path / "job.yaml", tiny_manifest()), tmp_path, restarts=3)
    assert res.returncode == 2, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("invalid config: spec.storage.uri: ") and "holds a run of another spec" in last, last
    assert _attempts(res) == 1, res.stdout[-3000:]
    assert "will restart worker group" not in res.stderr
    assert not re.search(r"^E\d{4} .*exitcode", res.stderr, re.M), res.stderr[-3000:]
    assert res.stderr.count("invalid config: ") == 1, res.stderr  # the worker hands its line to the wrapper


def test_a_transient_worker_failure_is_still_restarted(tmp_path):
    """Nothing listens at the storage endpoint: the worker exits 1 and torchrun restarts it."""
    doc = tiny_manifest(**{"spec.storage.endpointUrl": "http://127.0.0.1:9"})
    config = write_manifest(tmp_path / "job.yaml", doc)
    creds = {"AWS_MAX_ATTEMPTS": "1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}
    res = _torchrun(config, tmp_path, restarts=1, storage="s3://bucket/run", **creds)
    assert res.returncode == 1, res.stderr[-3000:]
    assert _attempts(res) == 2, res.stdout[-3000:]
    assert res.stderr.strip().splitlines()[-1] == "torchrun: worker rank 0 exited 1"


def test_torchs_error_line_for_an_exit_2_is_dropped_and_others_kept():
    def record(exitcode: int) -> logging.LogRecord:
        msg = "failed (exitcode: %s) local_rank: %s (pid: %s) of binary: %s"
        return logging.LogRecord(PROCESS_LOGGER, logging.ERROR, "api.py", 1, msg, (exitcode, 0, 1, "x"), None)

    quiet = QuietInvalidConfig()
    assert not quiet.filter(record(2))
    assert quiet.filter(record(1))


def test_the_agent_class_is_swapped_only_inside_the_block():
    import torch.distributed.launcher.api as launcher

    original = launcher.LocalElasticAgent
    with stop_restarts_on_invalid_config():
        assert launcher.LocalElasticAgent is StopOnInvalidConfig
        assert "LocalElasticAgent(" in inspect.getsource(launcher.launch_agent)  # torch still builds it by name
    assert launcher.LocalElasticAgent is original


def test_completion_index_0_hosts_the_rendezvous_store_and_no_other_does() -> None:
    argv = ["--nnodes=3", "--rdzv-backend=c10d", "--rdzv-conf=join_timeout=900", "-m", "x", "--config", "c"]
    assert with_rendezvous_host(argv, "0")[2] == "--rdzv-conf=join_timeout=900,is_host=true"
    assert with_rendezvous_host(argv, "2")[2] == "--rdzv-conf=join_timeout=900,is_host=false"
    assert with_rendezvous_host(argv, None) == argv  # not an Indexed Job's pod: torch decides, as before
    bare = ["--rdzv-backend=c10d", "-m", "x"]
    assert with_rendezvous_host(bare, "1") == ["--rdzv-conf=is_host=false", *bare]
    given = ["--rdzv-backend=c10d", "--rdzv-conf=is_host=true", "-m", "x"]
    assert with_rendezvous_host(given, "1") == given  # an explicit choice is kept
    static = ["--rdzv-backend=static", "-m", "x"]
    assert with_rendezvous_host(static, "0") == static
    assert with_rendezvous_host(["-m", "x", "--rdzv-backend=c10d"], "0") == ["-m", "x", "--rdzv-backend=c10d"]


def test_a_failed_worker_is_named_by_pod_index_in_a_pod_and_by_rank_elsewhere() -> None:
    # In a pod torchrun's rank is not the worker's (train/rank_order.py renumbers by index).
    assert which_worker(5, 1, "2") == "worker 1 of pod index 2"
    assert which_worker(0, 0, None) == "worker rank 0"
