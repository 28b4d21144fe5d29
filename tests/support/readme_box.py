"""The commands of README.md's "Run it on a cluster" box, as a user copies them.

tests/e2e/test_cluster_readme_box.py runs them, in order, on the control plane;
tests/unit/deploy/test_make_image.py checks without a cluster that they agree with `make image`
and the chart. Both read the box through here, so that a command added to it is run and checked.

    cluster_box()                      # ['make image REGISTRY=...', 'helm install speedrun ...', ...]
    helm_sets(words(command))          # {'image.repository': ..., 'operator.defaultStorageUri': ...}
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tests.support.helpers import ROOT

README = ROOT / "README.md"
HEADING = "## Run it on a cluster"


def cluster_box(readme: Path = README) -> list[str]:
    """The commands of the first bash block under the heading, continuation lines joined."""
    section = readme.read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands: list[str] = []
    pending = ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.strip()[:-1].rstrip() + " "
            continue
        if pending or line.strip():
            commands.append(pending + line.strip())
        pending = ""
    return commands


def words(command: str) -> list[str]:
    """The command's words as the shell splits them, its trailing comment left out."""
    return shlex.split(command, comments=True)


def helm_sets(argv: list[str]) -> dict[str, str]:
    """The values of every `--set a=b,c=d` (or `--set=...`) in a helm command line."""
    values: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg == "--set" and i + 1 < len(argv):
            given = argv[i + 1]
        elif arg.startswith("--set="):
            given = arg.removeprefix("--set=")
        else:
            continue
        for pair in given.split(","):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def option(argv: list[str], *names: str) -> str | None:
    """The value of a command-line option given as `-n X`, `--namespace X` or `--namespace=X`."""
    for i, arg in enumerate(argv):
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None
