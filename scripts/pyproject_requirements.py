"""Print pyproject.toml's dependencies as a requirements file, for layered Docker builds.

    python scripts/pyproject_requirements.py pyproject.toml                 # base: the operator image
    python scripts/pyproject_requirements.py pyproject.toml train --exclude torch   # the trainer's rest

The Dockerfile installs these in a layer of their own (rebuilt only when pyproject.toml
changes), then the package itself with `pip install --no-deps`. torch is excluded from the
trainer's list because it comes first, from the PyTorch index chosen by a build argument.
Needs Python 3.11+ (tomllib) or pip's vendored tomli.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (e.g. an Ubuntu 22.04 CUDA base image)
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]


def requirement_name(requirement: str) -> str:
    """`kubernetes>=29,<37  # why` -> `kubernetes` (PEP 503 normalized)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str], exclude: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    found = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no optional-dependencies group {extra!r}")
        found += optional[extra]
    skip = {requirement_name(name) for name in exclude}
    return [r for r in found if requirement_name(r) not in skip]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", nargs="*", help="optional-dependencies groups to add")
    parser.add_argument("--exclude", action="append", default=[], help="leave this package out (repeatable)")
    args = parser.parse_args(argv)
    print("\n".join(requirements(args.pyproject, args.extras, args.exclude)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
