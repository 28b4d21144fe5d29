"""`SpeedrunJob.status`: its pydantic model (the CRD's status schema is generated from it).

The spec's models live in `speedrun_api.spec`; the status is the operator's to write, so its
model lives here. Field names are camelCase on the wire:
phase, conditions (metav1.Condition shape), progress, results, restarts, startTime,
completionTime, observedGeneration, plus `nodes` (what the printer column shows) and the
attempts' bookkeeping of gang restarts (operator/speedrun_operator/lifecycle.py): `disruptions`
(restarts after a preemption or eviction, not counted in `restarts`), `attempt`,
`startupStartTime`, `startupFailures` and `nextAttemptTime` (the restart backoff after attempts that
failed before all ranks joined).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from speedrun_api.run_contract import RESULTS_FILE

Phase = Literal["Pending", "Queued", "Suspended", "Training", "Evaluating", "Succeeded", "Failed"]
PHASES: tuple[str, ...] = ("Pending", "Queued", "Suspended", "Training", "Evaluating", "Succeeded", "Failed")
TERMINAL_PHASES = ("Succeeded", "Failed")
ConditionStatus = Literal["True", "False", "Unknown"]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class StatusBase(BaseModel):
    # extra="ignore": a newer operator may have written fields this one does not know.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(StatusBase):
    """metav1.Condition: the latest observation of one aspect of the job."""

    type: str = Field(description="Validated, Suspended, Training, Evaluated, ResultsPublished, Succeeded, Failed")
    status: ConditionStatus
    reason: str = Field(description="CamelCase machine-readable cause")
    message: str = ""
    last_transition_time: Timestamp = Field(description="When status last changed")
    observed_generation: int | None = None


class Progress(StatusBase):
    """Copied from rank 0's Prometheus endpoint while Training (docs/contracts.md)."""

    step: int | None = None
    total_steps: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_bpb: float | None = None
    tokens_per_second: float | None = None
    mfu: float | None = None
    eta_seconds: float | None = None
    training_seconds: float | None = None
    update_time: Timestamp | None = None


class Results(StatusBase):
    """The headline results: the eval pod's termination message (docs/contracts.md)."""

    uri: str = Field(description=f"Where {RESULTS_FILE} was written")
    bpb: float
    core: float | None = None
    val_loss: float | None = None
    model_flops: float | None = None
    hardware_flops: float | None = None
    training_seconds: float | None = None
    time_to_target_seconds: float | None = None
    wandb_run_link: str | None = Field(None, description="The run's Weights & Biases page, when it was tracked online")
    training_steps: int | None = Field(None, description="Optimizer steps the evaluated checkpoint trained")


class SpeedrunJobStatus(StatusBase):
    phase: Phase | None = None
    nodes: str | None = Field(None, description="Node count, or MIN:MAX for elastic jobs")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress: Progress | None = None
    results: Results | None = None
    restarts: int = Field(
        0, description="Gang restarts counted against runPolicy.maxRestarts: attempts failed after all ranks joined"
    )
    disruptions: int = Field(
        0,
        description=(
            "Gang restarts after a disruption (a pod preempted, evicted or lost with its node: DisruptionTarget), "
            "counted against runPolicy.maxDisruptions, not maxRestarts"
        ),
    )
    attempt: int | None = Field(
        None,
        description=(
            "The current training attempt (label speedrun.dev/attempt of the training Job): one more per gang "
            "restart, counted or not; unset means status.restarts (written by an operator before disruptions)"
        ),
    )
    startup_start_time: Timestamp | None = Field(
        None,
        description=(
            "Set while attempts fail before all ranks joined: when the first of them started. "
            "runPolicy.startupDeadlineSeconds counts from here, so such failures, not counted as restarts, "
            "cannot start the run over and over"
        ),
    )
    startup_failures: int | None = Field(
        None,
        description=(
            "Set while attempts fail before all ranks joined: how many in a row, since startupStartTime. "
            "Each one after the first waits before the next attempt starts, twice as long as the one before"
        ),
    )
    next_attempt_time: Timestamp | None = Field(
        None,
        description=(
            "Set after an attempt failed before all ranks joined: the next attempt's training Job is created "
            "at this time, not before (the restart backoff), or the start-up deadline ends the run first"
        ),
    )
    start_time: Timestamp | None = None
    completion_time: Timestamp | None = None
    observed_generation: int | None = None

    @property
    def current_attempt(self) -> int:
        """The attempt the training Job runs (`attempt`, or `restarts` in a status written before it)."""
        return self.restarts if self.attempt is None else self.attempt

    def wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def read_status(body_status: Any) -> SpeedrunJobStatus:
    """Parse what is on the server; anything unreadable counts as no status at all."""
    if not isinstance(body_status, dict):
        return SpeedrunJobStatus()
    try:
        return SpeedrunJobStatus.model_validate(body_status)
    except ValueError:
        return SpeedrunJobStatus()


def now_rfc3339() -> str:
    return rfc3339(datetime.datetime.now(datetime.timezone.utc))


def rfc3339(at: datetime.datetime) -> str:
    """An aware datetime as a Kubernetes timestamp (metav1.Time: whole seconds, UTC, `Z`)."""
    return at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> datetime.datetime:
    """A Kubernetes timestamp (metav1.Time `...Z`, or MicroTime with fractions) as an aware datetime."""
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
