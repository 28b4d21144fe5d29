"""Small manifest builders shared by the tests (not fixtures: plain functions), and the property
tests' Hypothesis settings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TEST_DATA = ROOT / "tests" / "data"


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def tiny_manifest(**overrides: Any) -> dict[str, Any]:
    """A very small CPU job (seconds to train); dotted keys override, e.g. {"train.steps": 5}."""
    doc = copy.deepcopy(example("tiny-cpu.yaml"))
    doc["metadata"]["name"] = "test-tiny"
    spec = doc["spec"]
    spec["model"].update({"seqLen": 64, "hiddenDim": 64, "intermediateDim": 128, "numHeads": 2, "numKvHeads": 1})
    spec["train"].update({"batchSize": 8, "deviceBatchSize": 4, "steps": 20, "checkpointEvery": 10, "evalEvery": 10})
    spec["eval"] = {"bpb": {"tokens": 4096}}
    return with_changes(doc, **overrides)


def with_changes(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Apply dotted-path changes in place ({"spec.train.steps": 5}); None deletes the key."""
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return doc


def write_manifest(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def property_settings(max_examples: int) -> Any:
    """Hypothesis settings of our property tests: derandomized, no example database, no deadline
    (cases vary by orders of magnitude), function-scoped fixtures allowed (each case resets them)."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


def word_tokenizer(path: Path, size: int) -> Path:
    """A tokenizers JSON of `size` ids: words w0.. and <|endoftext|> last (the separator)."""
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel(vocab={f"w{i}": i for i in range(size - 1)}, unk_token="w0"))
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(path))
    return path
