"""`speedrun run` on a run only the workers can find broken: exit 2, one line, one attempt.

The storage holds another spec's run (train/preflight.py `check_identity`, which every rank runs
before the first step): the launcher's checks pass, two torchrun agents start with
`--max-restarts=3` (the manifest's runPolicy.maxRestarts), both workers exit 2, and neither agent
starts them again (train/elastic_agent.py). Before, the agents tried 4 times (86-140 s) and the
screen showed the last 25 lines of the log, torch's error lines among them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from speedrun_api.run_contract import PHASE_PREFIX, RUN_IDENTITY_FILE
from tests.support.helpers import tiny_manifest, write_manifest

pytestmark = pytest.mark.e2e


def test_a_permanent_error_found_by_the_workers_stops_after_one_attempt(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / RUN_IDENTITY_FILE).write_text(json.dumps({"spec_hash": "another-spec"}))
    doc = tiny_manifest(**{"spec.runPolicy.maxRestarts": 3})
    manifest = write_manifest(tmp_path / "job.yaml", doc)
    res = subprocess.run(
        [sys.executable, "-m", "speedrun_trainer.cli", "run", str(manifest), "--runs-dir", str(tmp_path / "runs"),
         "--storage", storage.as_uri()],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    # In a pipe, the set-up phases print as plain `phase: ...` lines (cli/live_display.py): progress,
    # not the error, which is one line.
    lines = [line for line in res.stderr.strip().splitlines() if not line.startswith(PHASE_PREFIX)]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: spec.storage.uri: {storage.as_uri()} holds a run of another spec"), lines[0]

    [logs] = (tmp_path / "runs" / "test-tiny").glob("*/logs")
    text = {log.name: log.read_text() for log in sorted(logs.glob("train-node-*.log"))}
    assert sorted(text) == ["train-node-0.log", "train-node-1.log"]
    ranks = re.findall(r"worker rank (\d)/2", "".join(text.values()))
    assert ranks and len(ranks) == len(set(ranks)), ranks  # each worker started once: no restart
    for name, t in text.items():
        assert "will restart worker group" not in t, name
        assert not re.search(r"^E\d{4} .*exitcode", t, re.M), t[-3000:]
