"""A real Google Cloud Storage emulator for the gs:// tests: fake-gcs-server, built from its Go
module (tests/support/go_tool.py) and run on loopback with an in-memory backend.

    def test_x(gcs_bucket): ...   # in tests/e2e, whose conftest.py imports both fixtures

`gcs_server` (session) starts it and sets nothing; `gcs_bucket` creates a new bucket through the
JSON API and sets STORAGE_EMULATOR_HOST for the test, which gcsfs (and so our storage) honours.
Without Go or a build, the tests that use it skip with one line.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from speedrun_trainer.cli.launch import free_port
from tests.support import go_tool

_numbers = itertools.count()


@dataclass
class GcsBucket:
    name: str
    endpoint: str

    @property
    def uri(self) -> str:
        return f"gs://{self.name}"

    def object_names(self) -> list[str]:
        with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b/{self.name}/o", timeout=10) as resp:
            return sorted(item["name"] for item in json.load(resp).get("items", []))


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[str]:
    try:
        binary = go_tool.tool_path("fake-gcs-server")
    except go_tool.GoToolUnavailable as err:
        pytest.skip(f"no GCS emulator: {err}")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
         "-public-host", f"127.0.0.1:{port}", "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.skip(f"fake-gcs-server did not start: {err.strip()[:200]}")
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def gcs_bucket(gcs_server: str, monkeypatch: pytest.MonkeyPatch) -> GcsBucket:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    bucket = GcsBucket(f"test-{os.getpid()}-{next(_numbers)}", gcs_server)
    request = urllib.request.Request(
        f"{gcs_server}/storage/v1/b?project=speedrun", data=json.dumps({"name": bucket.name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=10).close()
    return bucket
