"""Go tools the tests use, built from their Go modules and cached outside the repository.

Some test tools ship no wheel or Debian package these machines can reach, but are Go programs the
Go module proxy serves: `go install MODULE@VERSION` builds them. Built once per machine into
`~/.cache/speedrun/go-bin/<name>@<version>/` (override with SPEEDRUN_GO_TOOLS), with
GOTOOLCHAIN=local (never download another Go) and at low priority (the CPUs are shared). A
missing `go`, or a failing build, raises GoToolUnavailable with one line the tests skip on.

    python tests/support/go_tool.py helm-docs          # build if needed, print the binary's path
    python tests/support/go_tool.py fake-gcs-server

Pinned tools:
    helm-docs        renders the chart README's values table from values.yaml's `# --` comments
    fake-gcs-server  a Google Cloud Storage emulator (JSON API) for the gs:// storage tests
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("SPEEDRUN_GO_TOOLS", Path.home() / ".cache" / "speedrun" / "go-bin"))
BUILD_TIMEOUT_S = 1800  # a cold module cache on a busy 2-core machine


@dataclass(frozen=True)
class GoTool:
    name: str
    package: str  # the main package to `go install`
    version: str


TOOLS = {
    t.name: t
    for t in (
        GoTool("helm-docs", "github.com/norwoodj/helm-docs/cmd/helm-docs", "v1.14.2"),
        GoTool("fake-gcs-server", "github.com/fsouza/fake-gcs-server", "v1.56.1"),
    )
}


class GoToolUnavailable(RuntimeError):
    """No Go toolchain, or the build failed; the message says which in one line."""


def tool_path(name: str, cache_dir: Path = CACHE_DIR) -> Path:
    """The cached binary of a pinned tool, building it on first use."""
    tool = TOOLS[name]
    target_dir = cache_dir / f"{tool.name}@{tool.version}"
    binary = target_dir / tool.name
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    go = shutil.which("go")
    if go is None:
        raise GoToolUnavailable(f"{name}: no `go` on PATH to build {tool.package}@{tool.version}")
    # Build into a scratch GOBIN and rename, so a concurrent run never sees half a binary.
    scratch = cache_dir / f".{tool.name}@{tool.version}.{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOBIN": str(scratch), "CGO_ENABLED": "0"}
    cmd = ["nice", "-n", "10", go, "install", f"{tool.package}@{tool.version}"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as err:
        shutil.rmtree(scratch, ignore_errors=True)
        raise GoToolUnavailable(f"{name}: `go install` took over {BUILD_TIMEOUT_S} s") from err
    built = scratch / tool.name
    if proc.returncode != 0 or not built.is_file():
        shutil.rmtree(scratch, ignore_errors=True)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise GoToolUnavailable(f"{name}: go install {tool.package}@{tool.version} failed: {tail[0]}")
    target_dir.mkdir(parents=True, exist_ok=True)
    os.replace(built, binary)
    shutil.rmtree(scratch, ignore_errors=True)
    return binary


if __name__ == "__main__":
    print(tool_path(sys.argv[1] if len(sys.argv) > 1 else "helm-docs"))
