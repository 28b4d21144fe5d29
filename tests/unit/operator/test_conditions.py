"""Conditions (operator/speedrun_operator/conditions.py): a condition keeps its transition time while
its status holds."""

from __future__ import annotations

from speedrun_operator import conditions as C

NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T01:00:00Z"


def test_set_condition_keeps_transition_time_while_status_holds() -> None:
    conds = C.set_condition([], C.TRAINING, C.TRUE, "Running", "a", NOW, 1)
    conds = C.set_condition(conds, C.TRAINING, C.TRUE, "Running", "b", LATER, 2)
    assert conds[0].last_transition_time == NOW and conds[0].message == "b" and conds[0].observed_generation == 2
    conds = C.set_condition(conds, C.TRAINING, C.FALSE, "TrainingSucceeded", "", LATER, 2)
    assert conds[0].last_transition_time == LATER
