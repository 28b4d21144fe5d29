"""`python -m speedrun_trainer.train.torchrun`: torchrun whose exit code says "invalid config" (2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from speedrun_trainer.cli.launch import free_port
from speedrun_trainer.train.torchrun import config_path, with_rendezvous_host
from tests.support.helpers import tiny_manifest, write_manifest


def _torchrun(config: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPEEDRUN_STORAGE_URI": (tmp_path / "run").as_uri(), "SPEEDRUN_METRICS_PORT": "0"}
    args = [
        "--standalone",
        "--nproc-per-node=1",
        f"--master-port={free_port()}",
        "--max-restarts=0",
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


def test_invalid_manifest_exits_2_before_any_worker(tmp_path):
    doc = tiny_manifest(**{"spec.model.numLayers": 0})
    res = _torchrun(write_manifest(tmp_path / "bad.yaml", doc), tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("invalid config: spec.model.numLayers:")
    assert "worker rank" not in res.stdout  # no worker was started


def test_worker_config_error_keeps_exit_code_2(tmp_path):
    # valid for the schema; only the trainer finds the byte tokenizer's 257 tokens do not fit
    doc = tiny_manifest(**{"spec.model.vocabSize": 200})
    res = _torchrun(write_manifest(tmp_path / "vocab.yaml", doc), tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("invalid config: spec.model.vocabSize: 200 is smaller than"), last


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
