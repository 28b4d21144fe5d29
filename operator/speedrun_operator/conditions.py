"""Typed condition types and reasons, and metav1.Condition bookkeeping.

Constants, not strings scattered over handlers (jobset style). `set_condition` keeps
`lastTransitionTime` when the status does not change, as metav1.Condition requires, so
repeated reconciles of the same state leave the conditions untouched.
"""

from __future__ import annotations

from speedrun_api.status import Condition, ConditionStatus

# Types.
VALIDATED = "Validated"
SUSPENDED = "Suspended"
TRAINING = "Training"
EVALUATED = "Evaluated"
RESULTS_PUBLISHED = "ResultsPublished"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TYPES = (VALIDATED, SUSPENDED, TRAINING, EVALUATED, RESULTS_PUBLISHED, SUCCEEDED, FAILED)

TRUE: ConditionStatus = "True"
FALSE: ConditionStatus = "False"
UNKNOWN: ConditionStatus = "Unknown"

# Reasons.
REASON_VALID = "Valid"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_SUSPENDED_BY_USER = "SuspendedByUser"
REASON_RESUMED = "Resumed"
REASON_PENDING = "PodsPending"
REASON_QUEUED = "WaitingForAdmission"
REASON_RUNNING = "Running"
REASON_TRAINING_SUCCEEDED = "TrainingSucceeded"
REASON_EVALUATING = "Evaluating"
REASON_EVALUATION_SUCCEEDED = "EvaluationSucceeded"
REASON_EVALUATION_FAILED = "EvaluationFailed"
REASON_RESULTS_READ = "ResultsRead"
REASON_RESULTS_UNREADABLE = "ResultsUnreadable"
REASON_INVALID_CONFIG = "InvalidConfig"  # the trainer exited with EXIT_INVALID
REASON_BACKOFF_LIMIT = "BackoffLimitExceeded"
REASON_DEADLINE = "DeadlineExceeded"
REASON_TRAINING_FAILED = "TrainingFailed"
REASON_CHILD_REJECTED = "ChildRejected"  # the apiserver refused a child (422/400): its message
REASON_STARTUP_DEADLINE = "StartupDeadlineExceeded"  # pods never all ready within startupDeadlineSeconds
# A spec edit may cure these: a Failed job with one of them runs again on a new generation.
RETRY_ON_EDIT_REASONS = (REASON_INVALID_SPEC, REASON_CHILD_REJECTED)
REASON_RESTARTING = "Restarting"  # a gang restart: the failed attempt's Job is being replaced
REASON_MAX_RESTARTS = "MaxRestartsExceeded"
EVENT_GANG_RESTART = "GangRestart"
# A gang restart after a pod was preempted, evicted or lost with its node (disruptions.py): not
# counted against maxRestarts, but against maxDisruptions.
REASON_DISRUPTED = "Disrupted"
REASON_MAX_DISRUPTIONS = "MaxDisruptionsExceeded"
EVENT_GANG_RESTART_AFTER_DISRUPTION = "GangRestartAfterDisruption"
# A gang restart of an attempt that failed before all its ranks had joined: not counted, bounded
# by the start-up deadline, which keeps running across such attempts.
REASON_FAILED_BEFORE_START = "FailedBeforeStart"
EVENT_GANG_RESTART_BEFORE_START = "GangRestartBeforeStart"
RESTART_REASONS = (REASON_RESTARTING, REASON_DISRUPTED, REASON_FAILED_BEFORE_START)

# Job failure reasons (batch/v1) that a gang restart may fix: a pod failed (the training Job has
# backoffLimit 0). PodFailurePolicy (the trainer's invalid-config exit code) and DeadlineExceeded
# (runPolicy.activeDeadlineSeconds) are final.
RESTARTABLE_JOB_FAILURES = frozenset({"BackoffLimitExceeded"})

# Job condition reasons (batch/v1) -> ours.
JOB_FAILURE_REASONS = {
    "PodFailurePolicy": REASON_INVALID_CONFIG,
    "BackoffLimitExceeded": REASON_BACKOFF_LIMIT,
    "DeadlineExceeded": REASON_DEADLINE,
}


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    c = find(conditions, type_)
    return c is not None and c.status == TRUE


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[Condition]:
    """A new list with `type_` set; lastTransitionTime moves only when the status changes."""
    old = find(conditions, type_)
    since = old.last_transition_time if old is not None and old.status == status else now
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    kept = [c for c in conditions if c.type != type_]
    return sorted([*kept, new], key=lambda c: TYPES.index(c.type) if c.type in TYPES else len(TYPES))


def remove_condition(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.type != type_]
