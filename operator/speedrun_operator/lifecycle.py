"""The SpeedrunJob state machine: what was observed -> the next status (pure, no API calls).

    Pending -> [Queued | Suspended] -> Training -> Evaluating -> Succeeded
        any step can end in Failed (invalid spec, training or eval failure, unreadable results)

`job_state` reads a batch/v1 Job as Kubernetes 1.31+ writes its end: the Job controller first
adds `FailureTarget` or `SuccessCriteriaMet`, terminates the remaining pods, and only then adds
`Failed` or `Complete` (pkg/controller/job/job_controller.go, `jobFinishedCondition` then
`trackJobStatusAndRemoveFinalizers`); the outcome is decided at the first of them.
`train_state` adds the gang restart's view: a Job of an earlier attempt (label
`speedrun.dev/attempt` below `status.restarts`) or one being deleted is being Replaced.
`next_status` combines both Jobs' states with the current status and returns the new status plus
the Event for a phase change or a gang restart, if any. A training failure that a restart may fix
(a pod failed) restarts the whole group as the next attempt (`status.attempt`); the handlers then
delete the failed attempt's Job and create the next. Only what the job did is counted:
- a failure after all ranks joined (the attempt reached Training): once in `status.restarts`,
  until `runPolicy.maxRestarts` (`GangRestart`);
- a disruption (a pod preempted, evicted or lost with its node, disruptions.py): in
  `status.disruptions`, until `runPolicy.maxDisruptions` (`GangRestartAfterDisruption`);
- a failure before all ranks joined: not counted (`GangRestartBeforeStart`); the start-up
  deadline bounds such attempts, as it keeps running across them (`status.startupStartTime`), and
  each one after the first in a row (`status.startupFailures`) waits before the next attempt, 10 s
  doubled per failure up to 300 s (restart_backoff.py): until `status.nextAttemptTime` the handlers
  create no Job, and a deadline that passes meanwhile fails the run, with no attempt started.
Every attempt starts Pending: its pods' reasons are shown and its start-up deadline applies.
The handlers do the observing and the writing; everything that decides lives here, table-tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from speedrun_api.status import TERMINAL_PHASES, Progress, Results, SpeedrunJobStatus
from speedrun_operator import conditions as C
from speedrun_operator import labels as L
from speedrun_operator import restart_backoff
from speedrun_operator.disruptions import Disruption
from speedrun_operator.pod_startup import PodsWaiting, startup_failure

JobPhase = Literal["Missing", "Replacing", "Suspended", "Pending", "Running", "Succeeded", "Failed"]
FAILED_TYPES = ("FailureTarget", "Failed")  # FailureTarget first (1.31+), Failed once pods are gone
SUCCEEDED_TYPES = ("SuccessCriteriaMet", "Complete")


@dataclass(frozen=True)
class JobState:
    phase: JobPhase
    reason: str = ""
    message: str = ""
    ready: int = 0
    succeeded: int = 0


MISSING = JobState("Missing")


def job_state(job: dict[str, Any] | None) -> JobState:
    if job is None:
        return MISSING
    status = job.get("status") or {}
    ready, active = status.get("ready", 0), status.get("active", 0)
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in FAILED_TYPES:
            return JobState("Failed", cond.get("reason", ""), cond.get("message", ""))
        if cond.get("type") in SUCCEEDED_TYPES:
            return JobState("Succeeded")
    if (job.get("spec") or {}).get("suspend") and not active:
        return JobState("Suspended")
    succeeded = status.get("succeeded", 0)
    if ready:
        return JobState("Running", ready=ready, succeeded=succeeded)
    return JobState("Pending", succeeded=succeeded)


def job_attempt(job: dict[str, Any], default: int) -> int:
    """The training attempt a Job runs; `default` for a Job made before attempts were labelled."""
    value = ((job.get("metadata") or {}).get("labels") or {}).get(L.LABEL_ATTEMPT, "")
    return int(value) if value.isdigit() else default


def train_state(job: dict[str, Any] | None, attempt: int) -> JobState:
    """The training Job's state for attempt `attempt` (= status.restarts)."""
    if job is None:
        return MISSING
    if job["metadata"].get("deletionTimestamp") or job_attempt(job, attempt) < attempt:
        return JobState("Replacing")
    return job_state(job)


@dataclass(frozen=True)
class Observation:
    generation: int
    nodes: str
    now: str
    spec_error: str | None = None
    suspend_requested: bool = False
    queued: bool = False
    queue_detail: str | None = None  # why Kueue has not admitted the Job yet (kueue.py)
    train: JobState = MISSING
    evaluation: JobState = MISSING
    results: Results | None = None
    results_error: str | None = None
    failure_detail: str | None = None
    rejected: str | None = None  # the apiserver's message refusing a child (422/400)
    min_ready: int = 1  # pods that must run for the rendezvous to form (pod_startup.py)
    waiting: PodsWaiting | None = None  # why the training pods are not all running yet
    startup_failure: str | None = None  # the start-up deadline passed: the Failed message
    startup_deadline: int = 3600  # runPolicy.startupDeadlineSeconds: bounds the restart backoff's wait
    max_restarts: int = 0
    disruption: Disruption | None = None  # the failed training Job's pod was preempted/evicted/lost
    max_disruptions: int = 20
    train_started: str | None = None  # the training Job's status.startTime (this attempt's start)


@dataclass(frozen=True)
class Transition:
    """A phase change, posted as a Kubernetes Event on the SpeedrunJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def training_finished(status: SpeedrunJobStatus) -> bool:
    cond = C.find(status.conditions, C.TRAINING)
    return cond is not None and cond.reason == C.REASON_TRAINING_SUCCEEDED


def is_settled(status: SpeedrunJobStatus, generation: int) -> bool:
    """Nothing left to do: succeeded, or failed for a reason a spec edit cannot fix."""
    if status.phase == "Succeeded":
        return True
    if status.phase != "Failed":
        return False
    failed = C.find(status.conditions, C.FAILED)
    retry_on_edit = failed is not None and failed.reason in C.RETRY_ON_EDIT_REASONS
    return not (retry_on_edit and (status.observed_generation or 0) < generation)


class _StatusDraft:
    """The next status while `next_status` drafts it: conditions, phase, reason, and an Event."""

    def __init__(self, current: SpeedrunJobStatus, seen: Observation) -> None:
        self.status = current.model_copy(deep=True)
        self.seen = seen
        self.phase = current.phase or "Pending"
        self.reason = C.REASON_PENDING
        self.message = ""
        self.event: Transition | None = None  # an Event besides phase changes: gang restart, pending reason

    def cond(self, type_: str, status: Literal["True", "False", "Unknown"], reason: str, message: str) -> None:
        self.status.conditions = C.set_condition(
            self.status.conditions, type_, status, reason, message, self.seen.now, self.seen.generation
        )

    def move(self, phase: str, reason: str, message: str) -> None:
        self.phase, self.reason, self.message = phase, reason, message

    def fail(self, reason: str, message: str) -> None:
        self.status.next_attempt_time = None  # no next attempt
        self.cond(C.FAILED, C.TRUE, reason, message)
        self.move("Failed", reason, message)


def next_status(current: SpeedrunJobStatus, seen: Observation) -> tuple[SpeedrunJobStatus, Transition | None]:
    draft = _StatusDraft(current, seen)
    draft.status.observed_generation = seen.generation
    draft.status.nodes = seen.nodes
    if seen.spec_error is not None:
        draft.cond(C.VALIDATED, C.FALSE, C.REASON_INVALID_SPEC, seen.spec_error)
        draft.fail(C.REASON_INVALID_SPEC, seen.spec_error)
    else:
        draft.cond(C.VALIDATED, C.TRUE, C.REASON_VALID, "the spec is valid")
        if C.find(draft.status.conditions, C.FAILED) is not None and draft.phase == "Failed":
            draft.status.conditions = C.remove_condition(draft.status.conditions, C.FAILED)  # a fixed spec runs
            draft.status.completion_time = None
        _suspension(draft)
        if seen.rejected is not None:
            draft.fail(C.REASON_CHILD_REJECTED, seen.rejected)
        elif training_finished(draft.status) or seen.train.phase == "Succeeded":
            _evaluation(draft)
        else:
            _training(draft)
    if draft.phase in TERMINAL_PHASES:
        draft.status.completion_time = draft.status.completion_time or seen.now
    changed = draft.phase != current.phase
    draft.status.phase = draft.phase  # type: ignore[assignment]
    if not changed or draft.event is not None:
        return draft.status, draft.event
    kind: Literal["Normal", "Warning"] = "Warning" if draft.phase == "Failed" else "Normal"
    return draft.status, Transition(
        kind, draft.reason, f"{draft.phase}: {draft.message}" if draft.message else draft.phase
    )


def _suspension(draft: _StatusDraft) -> None:
    if draft.seen.suspend_requested:
        draft.cond(C.SUSPENDED, C.TRUE, C.REASON_SUSPENDED_BY_USER, "runPolicy.suspend is true")
    elif C.is_true(draft.status.conditions, C.SUSPENDED):
        draft.cond(C.SUSPENDED, C.FALSE, C.REASON_RESUMED, "runPolicy.suspend is false")


def _training(draft: _StatusDraft) -> None:
    t, seen = draft.seen.train, draft.seen
    if t.phase == "Suspended" or (t.phase == "Running" and t.ready + t.succeeded >= seen.min_ready):
        _startup_over(draft.status)  # trained, or resumed: the next start-up has its own deadline
    if t.phase not in ("Missing", "Replacing", "Failed"):
        draft.status.next_attempt_time = None  # the next attempt's Job exists: its wait is over
    if t.phase == "Failed" and (t.reason in C.RESTARTABLE_JOB_FAILURES or seen.disruption is not None):
        _restart(draft)
    elif t.phase == "Failed":
        reason = C.JOB_FAILURE_REASONS.get(t.reason, C.REASON_TRAINING_FAILED)
        message = "; ".join(m for m in (t.message, seen.failure_detail) if m) or t.reason
        draft.cond(C.TRAINING, C.FALSE, reason, message)
        draft.fail(reason, message)
    elif t.phase == "Replacing":
        old = C.find(draft.status.conditions, C.TRAINING)
        if old is None or old.reason not in C.RESTART_REASONS:  # the restart's own words stay
            message = f"attempt {draft.status.current_attempt}: the failed attempt's pods are stopping"
            draft.cond(C.TRAINING, C.FALSE, C.REASON_RESTARTING, message)
    elif t.phase == "Running" and t.ready + t.succeeded >= seen.min_ready:
        # The rendezvous can form: every pod it waits for runs (or has already finished).
        draft.status.start_time = draft.status.start_time or seen.now
        draft.cond(C.TRAINING, C.TRUE, C.REASON_RUNNING, f"{t.ready} of {seen.nodes} training pods ready")
        draft.move("Training", C.REASON_RUNNING, f"{t.ready} training pods ready")
    elif t.phase == "Suspended" and seen.suspend_requested:
        draft.cond(C.TRAINING, C.FALSE, C.REASON_SUSPENDED_BY_USER, "the training Job is suspended")
        draft.move("Suspended", C.REASON_SUSPENDED_BY_USER, "the training Job is suspended")
    elif t.phase == "Suspended" and seen.queued:
        detail = seen.queue_detail or "waiting for Kueue to admit the training Job"
        draft.cond(C.TRAINING, C.FALSE, C.REASON_QUEUED, detail)
        draft.move("Queued", C.REASON_QUEUED, "waiting for Kueue to admit the training Job")
    elif draft.phase == "Training" and draft.status.start_time:
        # This attempt's ranks all joined; a pod is being replaced (its failure fails the Job).
        draft.cond(C.TRAINING, C.TRUE, C.REASON_RUNNING, "training pods are being replaced")
    elif t.phase == "Missing" and restart_backoff.deadline_passed(draft.status, seen.startup_deadline, seen.now):
        # The start-up deadline ended while the next attempt waited (restart_backoff.py): none starts.
        old = C.find(draft.status.conditions, C.TRAINING)
        last = f"; last failure: {old.message}" if old is not None and old.message else ""
        message = startup_failure(seen.startup_deadline, None, 0, seen.min_ready) + last
        _fail_training(draft, C.REASON_STARTUP_DEADLINE, message)
    elif seen.startup_failure is not None:
        draft.cond(C.TRAINING, C.FALSE, C.REASON_STARTUP_DEADLINE, seen.startup_failure)
        draft.fail(C.REASON_STARTUP_DEADLINE, seen.startup_failure)
    else:
        _pending(draft)


def _pending(draft: _StatusDraft) -> None:
    """Pending: how many pods are ready, and the scheduler's or kubelet's reason for the others;
    a new problem reason (Unschedulable, ErrImagePull, ...) is posted as a Warning Event."""
    t, waiting = draft.seen.train, draft.seen.waiting
    message = f"{t.ready} of {draft.seen.nodes} training pods ready"
    reason = C.REASON_PENDING
    if waiting is not None:
        message = f"{message}; {waiting.describe()}"
        reason = waiting.reason if waiting.problem else C.REASON_PENDING
    old = C.find(draft.status.conditions, C.TRAINING)
    if reason == C.REASON_PENDING and old is not None and old.reason in C.RESTART_REASONS:
        # The next attempt's pods are starting normally: the condition still says why it restarted.
        draft.move("Pending", old.reason, old.message)
        return
    if reason != C.REASON_PENDING and (old is None or old.reason != reason):
        draft.event = Transition("Warning", reason, f"Pending: {message}")
    draft.cond(C.TRAINING, C.FALSE, reason, message)
    draft.move("Pending", reason, message)


def _restart(draft: _StatusDraft) -> None:
    """One failure of the group: restart all of it as the next attempt, or fail past a limit.
    What is counted depends on the cause (the module's docstring); the next attempt starts Pending."""
    t, seen, status = draft.seen.train, draft.seen, draft.status
    attempt = status.current_attempt
    cause = "; ".join(m for m in (seen.failure_detail, t.message) if m) or t.reason
    nodes = f"all {seen.nodes} nodes restart from the last checkpoint"
    if seen.disruption is not None:
        what = seen.disruption.describe()
        if status.disruptions >= seen.max_disruptions:
            message = (
                f"training was disrupted {status.disruptions + 1} times and runPolicy.maxDisruptions is "
                f"{seen.max_disruptions}; last: {what}"
            )
            _fail_training(draft, C.REASON_MAX_DISRUPTIONS, message)
            return
        status.disruptions += 1
        _startup_over(status)  # the next attempt's start-up has its own deadline
        message = (
            f"disruption {status.disruptions} of {seen.max_disruptions} (runPolicy.maxDisruptions; not counted in "
            f"runPolicy.maxRestarts): {what}; {nodes}"
        )
        reason, event = C.REASON_DISRUPTED, C.EVENT_GANG_RESTART_AFTER_DISRUPTION
    elif draft.phase != "Training":  # the attempt failed before all its ranks joined
        if seen.startup_failure is not None:
            _fail_training(draft, C.REASON_STARTUP_DEADLINE, f"{seen.startup_failure}; last failure: {cause}")
            return
        since = status.startup_start_time = status.startup_start_time or seen.train_started or seen.now
        failures = status.startup_failures = (status.startup_failures or 0) + 1
        after, cut_short = restart_backoff.next_attempt(seen.now, failures, since, seen.startup_deadline)
        status.next_attempt_time = after
        message = (
            f"attempt {attempt} failed before all {seen.nodes} nodes joined; "
            f"{restart_backoff.describe(seen.now, failures, after, cut_short)} (not counted in "
            f"runPolicy.maxRestarts; runPolicy.startupDeadlineSeconds counts from {since}): {cause}"
        )
        reason, event = C.REASON_FAILED_BEFORE_START, C.EVENT_GANG_RESTART_BEFORE_START
    else:
        if status.restarts >= seen.max_restarts:
            message = (
                f"training failed {status.restarts + 1} times and runPolicy.maxRestarts is {seen.max_restarts}; "
                f"last failure: {cause}"
            )
            _fail_training(draft, C.REASON_MAX_RESTARTS, message)
            return
        status.restarts += 1
        _startup_over(status)
        message = f"restart {status.restarts} of {seen.max_restarts} (runPolicy.maxRestarts): {nodes} after: {cause}"
        reason, event = C.REASON_RESTARTING, C.EVENT_GANG_RESTART
    status.attempt = attempt + 1
    _stale_progress(draft)
    draft.cond(C.TRAINING, C.FALSE, reason, message)
    draft.move("Pending", reason, message)
    draft.event = Transition("Warning", event, message)


def _startup_over(status: SpeedrunJobStatus) -> None:
    """The run's ranks all joined (or it resumed, or restarts counted): the start-up deadline and
    the restart backoff start over with the next failure before start."""
    status.startup_start_time = status.startup_failures = status.next_attempt_time = None


def _fail_training(draft: _StatusDraft, reason: str, message: str) -> None:
    draft.cond(C.TRAINING, C.FALSE, reason, message)
    draft.fail(reason, message)


def _stale_progress(draft: _StatusDraft) -> None:
    """A new attempt: the last scrape's step and losses stay (dated by updateTime: where the run
    was), its rates and ETA go (nothing trains until the next attempt runs and is scraped)."""
    progress = draft.status.progress
    if progress is not None:
        rates = {"tokens_per_second": None, "mfu": None, "eta_seconds": None}
        draft.status.progress = progress.model_copy(update=rates)


def _final_progress(draft: _StatusDraft, results: Results) -> None:
    """The periodic progress scrape samples rank 0 every few seconds and may have missed the last steps;
    the evaluated checkpoint's step is the truth once the run is done."""
    if results.training_steps is None:
        return
    progress = draft.status.progress or Progress()
    draft.status.progress = progress.model_copy(
        update={"step": results.training_steps, "eta_seconds": 0.0, "update_time": draft.seen.now}
    )


def _evaluation(draft: _StatusDraft) -> None:
    e, seen = draft.seen.evaluation, draft.seen
    draft.cond(C.TRAINING, C.FALSE, C.REASON_TRAINING_SUCCEEDED, "the training Job completed")
    if e.phase == "Failed":
        message = "; ".join(m for m in (e.message, seen.failure_detail) if m) or e.reason
        draft.cond(C.EVALUATED, C.FALSE, C.REASON_EVALUATION_FAILED, message)
        draft.fail(C.REASON_EVALUATION_FAILED, message)
    elif e.phase == "Succeeded" and seen.results is not None:
        draft.status.results = seen.results
        _final_progress(draft, seen.results)
        draft.cond(C.EVALUATED, C.TRUE, C.REASON_EVALUATION_SUCCEEDED, "the eval Job completed")
        draft.cond(C.RESULTS_PUBLISHED, C.TRUE, C.REASON_RESULTS_READ, f"results at {seen.results.uri}")
        draft.cond(C.SUCCEEDED, C.TRUE, C.REASON_EVALUATION_SUCCEEDED, f"bpb {seen.results.bpb:.4f}")
        draft.move(
            "Succeeded", C.REASON_EVALUATION_SUCCEEDED, f"bpb {seen.results.bpb:.4f}, results at {seen.results.uri}"
        )
    elif e.phase == "Succeeded" and seen.results_error is not None:
        draft.cond(C.EVALUATED, C.TRUE, C.REASON_EVALUATION_SUCCEEDED, "the eval Job completed")
        draft.cond(C.RESULTS_PUBLISHED, C.FALSE, C.REASON_RESULTS_UNREADABLE, seen.results_error)
        draft.fail(C.REASON_RESULTS_UNREADABLE, seen.results_error)
    elif e.phase == "Suspended" and seen.suspend_requested:
        draft.cond(C.EVALUATED, C.FALSE, C.REASON_SUSPENDED_BY_USER, "the eval Job is suspended")
        draft.move("Suspended", C.REASON_SUSPENDED_BY_USER, "the eval Job is suspended")
    else:
        draft.cond(C.EVALUATED, C.UNKNOWN, C.REASON_EVALUATING, "the eval Job is scoring the final checkpoint")
        draft.move("Evaluating", C.REASON_TRAINING_SUCCEEDED, "training completed; evaluating")
