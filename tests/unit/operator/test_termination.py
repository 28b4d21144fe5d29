"""Termination messages (operator/speedrun_operator/termination.py): the eval pod's results and
a failed pod's last log line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from speedrun_api.status import Results
from speedrun_operator.termination import eval_results, failure_detail, parse_results


def pod(name: str, code: int, message: str | None, container: str = "evaluator") -> dict[str, Any]:
    terminated: dict[str, Any] = {"exitCode": code}
    if message is not None:
        terminated["message"] = message
    return {
        "metadata": {"name": name},
        "status": {"containerStatuses": [{"name": container, "state": {"terminated": terminated}}]},
    }


def test_eval_results_from_the_termination_message() -> None:
    message = json.dumps({"uri": "s3://b/r.json", "bpb": 1.5, "core": None, "valLoss": 2.0, "extraKey": 1})
    results, error = eval_results([pod("e-1", 1, "oom"), pod("e-2", 0, message)], "evaluator")
    assert error is None and results == Results(uri="s3://b/r.json", bpb=1.5, val_loss=2.0)
    assert eval_results([], "evaluator") == (None, None)
    assert eval_results([pod("e", 0, None)], "evaluator")[1] == "pod e left no termination message"
    assert "not JSON" in eval_results([pod("e", 0, "Traceback...")], "evaluator")[1]
    assert "bpb" in eval_results([pod("e", 0, json.dumps({"uri": "x"}))], "evaluator")[1]
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_results("[1, 2]")


def test_failure_detail_is_the_last_log_line() -> None:
    log = "step 1\nTraceback (most recent call last):\n  ...\nspec.train.batchSize: bad\n"
    pods = [pod("t-0", 0, None, "trainer"), pod("t-1", 2, log, "trainer")]
    assert failure_detail(pods, "trainer") == "pod t-1 exited 2: spec.train.batchSize: bad"
    assert failure_detail([pod("t-0", 137, None, "trainer")], "trainer") == "pod t-0 exited 137"
    assert failure_detail([pod("t-0", 0, None, "trainer")], "trainer") is None
    # The pod the Job controller names (its FailJob match) comes first, even after an earlier restart.
    early, matched = pod("t-0-a", 1, "NCCL timeout", "trainer"), pod("t-1-b", 2, "bad config", "trainer")
    rule = "Container trainer for pod ns/t-1-b failed with exit code 2 matching FailJob rule at index 0"
    assert failure_detail([early, matched], "trainer", rule) == "pod t-1-b exited 2: bad config"
    assert failure_detail([early, matched], "trainer") == "pod t-0-a exited 1: NCCL timeout"
