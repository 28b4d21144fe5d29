"""Property test: mutated example manifests through `plan`, `render` and the operator's validation.

Hypothesis (fixed seed, derandomized, no example database) takes a manifest from examples/ and
applies 1-3 mutations drawn from the classes the issue 15 fuzzing found: a value replaced by a
hostile one (huge and negative integers, 400-digit integers, inf/NaN/1e300, strings that look
like numbers or booleans, lists, mappings, None), a key deleted, renamed to snake_case or added
unknown, a sub-tree replaced by a scalar or a list. Half of the cases then go through YAML text,
with a byte-level mutation on top (a byte flipped, a line duplicated, the file cut short), and
are loaded from a file as the CLI loads them.

The rules, for every case:
- `load_job`/`parse_job` either return a job or raise `SpecError` whose lines each read
  `<field path>: <what>` or `<file>:<line>: <what>`, one line, no traceback text;
- a valid job: `plan --json` and `render -o json` produce strictly valid JSON (no NaN/Infinity),
  every count fits int64 and every FLOPs figure is finite;
- the operator's reconcile on the same body writes a status (Failed + Validated=False with the
  same lines for an invalid spec, Pending for a valid one) and raises nothing but
  kopf.PermanentError, whatever the body.
MAX_EXAMPLES cases run in `make test` (at least 500, the issue's floor).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from hypothesis import event, given, seed
from hypothesis import strategies as st

from speedrun_api.manifest import SpecError, load_job, parse_job, strict_json
from speedrun_api.plan import resolve
from speedrun_api.spec_types import INT64_MAX
from speedrun_operator import kube
from speedrun_operator.builders import BuildError, build_all, check_runnable
from speedrun_operator.handlers import reconcile
from speedrun_operator.handlers.operator_startup import OperatorContext
from speedrun_operator.settings import OperatorSettings
from speedrun_trainer.cli.speedrun import plan_json
from tests.support.helpers import EXAMPLES, property_settings

MAX_EXAMPLES = 600
EXAMPLE_DOCS = [yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))]
KEY = r"([A-Za-z_][A-Za-z0-9_]*|\[.*?\])"  # a name, or a [list index] / ['odd key']
FIELD_LINE = re.compile(rf"^{KEY}(\.{KEY}|\[.*?\])*: \S")
FILE_LINE = re.compile(r"^\S+\.yaml(:\d+)?: \S")
SETTINGS = OperatorSettings(default_storage_uri="s3://bucket/runs")

HOSTILE_SCALARS = st.one_of(
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400, 10**18]),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e300, -0.0, 5e-324]),
    st.sampled_from(["", "1e18", "yes", "3", ".inf", "NaN", "cpu", "s3://", "x" * 300, "ü\u2028"]),
    st.text(max_size=8),
    st.booleans(),
    st.none(),
)
HOSTILE = st.one_of(
    HOSTILE_SCALARS,
    st.lists(HOSTILE_SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), HOSTILE_SCALARS, max_size=3),
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


@st.composite
def mutated_manifests(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(draw(st.sampled_from(EXAMPLE_DOCS)))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "snake", "unknown", "wrap"]))
        if op == "replace":
            parent[last] = draw(HOSTILE)
        elif op == "wrap":
            parent[last] = [parent[last]]
        elif op == "delete":
            del parent[last]
        elif isinstance(parent, dict) and op == "snake":
            parent[_snake(str(last))] = parent.pop(last)
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["extra", "batch_size", "Steps", "seqlen"]))] = draw(HOSTILE_SCALARS)
    return doc


@st.composite
def byte_mutation(draw: st.DrawFn) -> tuple[str, int, int]:
    return (
        draw(st.sampled_from(["none", "flip", "duplicate-line", "cut"])),
        draw(st.integers(0, 10**6)),
        draw(st.integers(0, 255)),
    )


def _mutate_bytes(data: bytes, how: tuple[str, int, int]) -> bytes:
    kind, where, value = how
    if kind == "none" or not data:
        return data
    i = where % len(data)
    if kind == "flip":
        return data[:i] + bytes([value]) + data[i + 1 :]
    if kind == "cut":
        return data[:i]
    lines = data.splitlines(keepends=True)
    j = where % len(lines)
    return b"".join([*lines[: j + 1], lines[j], *lines[j + 1 :]])


def _assert_error_lines(err: SpecError, from_file: bool) -> None:
    assert err.lines
    for line in err.lines:
        assert "\n" not in line and "Traceback" not in line and len(line) < 400, line
        assert FIELD_LINE.match(line) or (from_file and FILE_LINE.match(line)), line


def _assert_finite_plan(job: Any) -> None:
    plan = resolve(job)
    out = json.loads(strict_json(plan_json(job, plan)))
    for key in ("model_size", "steps", "total_tokens", "tokens_per_step", "num_devices", "grad_accum_steps"):
        assert isinstance(out[key], int) and 0 <= out[key] <= INT64_MAX, (key, out[key])
    for key in ("model_flops", "model_flops_per_token", "device_flops", "peak_flops"):
        assert math.isfinite(out[key]), (key, out[key])


class FakeClient:
    """Just enough of kube.KubeClient for one reconcile: objects in a dict, patches recorded."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {("SpeedrunJob", body["metadata"]["name"]): body}
        self.status_patches: list[dict[str, Any]] = []

    def get(self, kind: kube.Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind.kind, name))

    def list(self, kind: kube.Kind, namespace: str | None, *selectors: Any, **kw: Any) -> list[Any]:
        return []

    def served(self, kind: kube.Kind) -> bool:
        return False  # no gang scheduling API, no Kueue

    def create(self, kind: kube.Kind, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        json.loads(strict_json(body))  # what goes to the API server is strict JSON
        meta = body["metadata"]
        name = meta.get("name") or meta["generateName"]  # an Event has generateName
        body = {**body, "metadata": {**meta, "uid": f"uid-{kind.kind}-{name}"}}  # as the apiserver assigns
        self.objects[(kind.kind, name)] = body
        return body

    def patch(self, kind: kube.Kind, namespace: str | None, name: str, patch: dict[str, Any], **kw: Any) -> Any:
        json.loads(strict_json(patch))
        if kw.get("subresource") == "status":
            self.status_patches.append(patch["status"])
        return self.objects.get((kind.kind, name))


def _operator_reconcile(doc: dict[str, Any]) -> None:
    body = {**copy.deepcopy(doc), "apiVersion": "speedrun.dev/v1alpha1", "kind": "SpeedrunJob"}
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    body["metadata"] = {**meta, "name": "fuzz", "namespace": "ns", "uid": "u-1", "generation": 1}
    try:  # what the CLI says of what the operator validates (the server prunes other top-level keys)
        parse_job({k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body})
        valid, lines = True, []
    except SpecError as err:
        valid, lines = False, err.lines
    client = FakeClient(body)
    ctx = OperatorContext(settings=SETTINGS, client=client)  # type: ignore[arg-type]
    try:
        status = reconcile._reconcile(ctx, body)
    except kopf.PermanentError as err:
        written = client.status_patches[-1]
        assert written["phase"] == "Failed"
        validated = next(c for c in written["conditions"] if c["type"] == "Validated")
        assert validated["status"] == "False" and validated["message"] == str(err)
        if not valid:
            assert str(err) == "; ".join(lines)
        return
    assert valid, "the operator ran a spec the CLI refuses"
    assert status.phase in ("Pending", "Queued", "Suspended") and client.status_patches


@seed(15)
@property_settings(MAX_EXAMPLES)
@given(doc=mutated_manifests(), via_text=st.booleans(), mutation=byte_mutation())
def test_mutated_manifests_keep_the_rules(doc: dict[str, Any], via_text: bool, mutation: tuple[str, int, int]) -> None:
    if via_text:
        data = _mutate_bytes(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).encode(), mutation)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fuzz.yaml"
            path.write_bytes(data)
            try:
                load_job(path)
            except SpecError as err:
                _assert_error_lines(err, from_file=True)
    try:
        job = parse_job(doc)
    except SpecError as err:
        _assert_error_lines(err, from_file=False)
        event("invalid")
        _operator_reconcile(doc)
        return
    event("valid")
    _assert_finite_plan(job)
    with contextlib.suppress(BuildError):  # render prints a note and renders anyway
        check_runnable(job, SETTINGS)
    json.loads(strict_json({"apiVersion": "v1", "kind": "List", "items": build_all(job, SETTINGS)}))
    _operator_reconcile(doc)


@pytest.mark.parametrize(
    "change",
    [{"spec": [1, 2]}, {"spec": "text"}, {"spec": None}, {"resources": ["gpu"]}, {"resources": 3}],
    ids=["spec-list", "spec-str", "spec-null", "resources-list", "resources-int"],
)
def test_operator_writes_failed_for_a_body_that_is_not_mappings(change: dict[str, Any]) -> None:
    doc = copy.deepcopy(EXAMPLE_DOCS[0])
    if "resources" in change:
        doc["spec"]["resources"] = change["resources"]
    else:
        doc["spec"] = change["spec"]
    _operator_reconcile(doc)  # asserts Failed + Validated=False written, only PermanentError raised
