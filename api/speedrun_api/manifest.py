"""Load `SpeedrunJob` manifests from YAML/JSON and turn pydantic errors into one line each.

A user mistake never shows a traceback: `load_job` raises `SpecError`, whose `lines` are
`field.path: what is wrong (what is allowed)`, and the CLI prints them and exits 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from speedrun_api.spec import SpeedrunJob

EXIT_INVALID = 2  # CLI exit code for invalid input; also the trainer's "invalid config" code


class ConfigError(Exception):
    """A config problem found only at run time (world size, tokenizer): one line, exit code 2."""


class SpecError(Exception):
    """Invalid manifest: one human-readable line per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "literal[", "constrained-")):
            continue  # pydantic's internal validator names say nothing to a user
        else:
            out += ("." if out else "") + str(part)
    return out


def format_validation_error(err: ValidationError) -> list[str]:
    lines: list[str] = []
    for e in err.errors(include_url=False):
        where, msg = _loc(e["loc"]), e["msg"]
        if e["type"] == "value_error":
            # Our own cross-field rules: messages already start with their field path.
            for line in msg.removeprefix("Value error, ").splitlines():
                lines.append(line if line.startswith("spec") or not where else f"{where}: {line}")
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; fields are camelCase)"
        elif e["type"] == "missing":
            msg = "required"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{where or 'manifest'}: {msg}")
    return lines


def parse_job(doc: Any, source: str = "manifest") -> SpeedrunJob:
    if not isinstance(doc, dict):
        raise SpecError([f"{source}: expected a SpeedrunJob mapping, got {type(doc).__name__}"])
    kind = doc.get("kind", "SpeedrunJob")
    if kind != "SpeedrunJob":
        raise SpecError([f"kind: must be SpeedrunJob (got {kind!r})"])
    try:
        return SpeedrunJob.model_validate(doc)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None


def load_job(path: str | Path) -> SpeedrunJob:
    """Read one SpeedrunJob from a YAML or JSON file (the first SpeedrunJob document)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError([f"{path}: no such file"])
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError([f"{where}: not valid YAML ({getattr(err, 'problem', err)})"]) from None
    if not docs:
        raise SpecError([f"{path}: empty file"])
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind", "SpeedrunJob") == "SpeedrunJob"]
    return parse_job(jobs[0] if jobs else docs[0], str(path))


def dumps_job(job: SpeedrunJob) -> str:
    """The resolved manifest as JSON: what the ConfigMap carries and the trainer reads."""
    return json.dumps(job.manifest(), indent=2, sort_keys=True)
