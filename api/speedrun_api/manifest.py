"""Load `SpeedrunJob` manifests from YAML/JSON and turn pydantic errors into one line each.

A user mistake never shows a traceback: `load_job` raises `SpecError`, whose `lines` are
`field.path: what is allowed (got ...)` or `file:line: what is wrong`, and the CLI prints each
as `error: <line>` and exits 2. The file is read through `safeyaml` (size, depth and alias
limits, no duplicate keys, one document). `parse_job` is the one validation every side uses (the
CLI, the trainer, the operator): strict types as the CRD has them (no "3" for 3, no true for 1),
camelCase names only, finite numbers within the ranges in `speedrun_api.spec`, a horizon
that resolves within `MAX_STEPS` steps and `MAX_TOKENS` tokens, and a micro-batch whose estimated
peak memory fits the accelerator (memory.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from speedrun_api import safeyaml
from speedrun_api.memory import memory_problem
from speedrun_api.plan import horizon_problem
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
        elif not str(part).isidentifier() or not str(part).isascii():
            out += f"[{_short(str(part))}]"  # an odd key ('', 'a b', 'ü'), quoted
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
            last = str(e["loc"][-1]) if e["loc"] else ""
            camel = to_camel(last)
            hint = f"did you mean {camel}?" if camel != last else "check the spelling"
            msg = f"unknown field (fields are camelCase; {hint})"
        elif e["type"] == "missing":
            msg = "required"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg = f"{msg} (got {_short(e['input'])})"
        lines.append(f"{where or 'manifest'}: {msg}")
    return lines


def _short(value: Any, limit: int = 40) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's 4300-digit str limit
        return f"an integer of about {value.bit_length() * 0.30103:.0f} digits"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_job(doc: Any, source: str = "manifest") -> SpeedrunJob:
    """Validate one manifest (a parsed mapping) exactly as the CRD would, and a bit more."""
    if not isinstance(doc, dict):
        raise SpecError([f"{source}: expected a SpeedrunJob mapping, got {type(doc).__name__}"])
    kind = doc.get("kind", "SpeedrunJob")
    if kind != "SpeedrunJob":
        raise SpecError([f"kind: must be SpeedrunJob (got {_short(kind)})"])
    for key in ("spec", "metadata"):
        if key in doc and not isinstance(doc[key], dict):
            raise SpecError([f"{key}: must be a mapping (got {type(doc[key]).__name__})"])
    try:
        # strict: the CRD's types (no "3" for 3, no true for 1); by_name=False: camelCase only.
        job = SpeedrunJob.model_validate(doc, strict=True, by_name=False)
    except ValidationError as err:
        raise SpecError(format_validation_error(err)) from None
    except RecursionError:
        raise SpecError([f"{source}: nested too deeply"]) from None
    problem = horizon_problem(job) or memory_problem(job)
    if problem:
        raise SpecError([problem])
    return job


def load_job(path: str | Path) -> SpeedrunJob:
    """Read the one SpeedrunJob of a YAML or JSON file."""
    p = Path(path)
    if not p.is_file():
        raise SpecError([f"{path}: no such file"])
    try:
        with p.open("rb") as f:
            data = f.read(safeyaml.MAX_BYTES + 1)
    except OSError as err:
        raise SpecError([f"{path}: cannot read ({err.strerror})"]) from None
    try:
        doc = safeyaml.load_document(data)
    except safeyaml.YamlProblem as err:
        raise SpecError([f"{path}:{err.line}: {err.message}" if err.line else f"{path}: {err.message}"]) from None
    if doc is None:
        raise SpecError([f"{path}: empty file"])
    return parse_job(doc, str(path))


def dumps_job(job: SpeedrunJob) -> str:
    """The resolved manifest as JSON: what the ConfigMap carries and the trainer reads."""
    return strict_json(job.manifest(), indent=2, sort_keys=True)


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON that every parser accepts: NaN and Infinity refused (ValueError), not printed."""
    return json.dumps(value, allow_nan=False, **kwargs)
