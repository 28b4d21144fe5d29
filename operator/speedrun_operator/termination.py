"""Reading pods' termination messages: eval results, and why a trainer failed.

The eval pod writes its headline results as one JSON object to its termination log
(`run_contract.TERMINATION_LOG`, docs/contracts.md); the kubelet copies it into the pod status,
where the operator reads it without storage credentials. Trainer pods use FallbackToLogsOnError,
so a failed pod's message is its log tail, whose last line is the trainer's one-line error.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from speedrun_api.status import Results

MAX_DETAIL = 300


def terminated_state(pod: dict[str, Any], container: str) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            return (status.get("state") or {}).get("terminated")
    return None


def parse_results(message: str) -> Results:
    """The eval's termination message -> `Results`; ValueError with one line if unusable."""
    try:
        data = json.loads(message)
    except ValueError:
        raise ValueError(f"not JSON: {message.strip()[:80]!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    try:
        return Results.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from None


def eval_results(pods: list[dict[str, Any]], container: str) -> tuple[Results | None, str | None]:
    """(results, None) from the succeeded eval pod; (None, why) if it left none; (None, None)
    while no pod has succeeded yet."""
    for pod in pods:
        state = terminated_state(pod, container)
        if state is None or state.get("exitCode") != 0:
            continue
        message = state.get("message") or ""
        if not message.strip():
            return None, f"pod {pod['metadata']['name']} left no termination message"
        try:
            return parse_results(message), None
        except ValueError as err:
            return None, f"pod {pod['metadata']['name']}: termination message {err}"
    return None, None


def failure_detail(pods: list[dict[str, Any]], container: str, job_message: str = "") -> str | None:
    """`pod P exited N: <last log line>` for a failed container, if any: the pod the Job's failure
    message names first (the Job controller names the pod that matched a podFailurePolicy FailJob
    rule; an earlier restart's pod may sort before it), else the first in list order."""
    named = [p for p in pods if f"/{p['metadata']['name']} " in job_message]
    for pod in named + [p for p in pods if p not in named]:
        state = terminated_state(pod, container)
        if state is None or not state.get("exitCode"):
            continue
        lines = [line for line in (state.get("message") or "").strip().splitlines() if line.strip()]
        detail = f"pod {pod['metadata']['name']} exited {state['exitCode']}"
        if lines:
            detail += f": {lines[-1].strip()[:MAX_DETAIL]}"
        return detail
    return None
