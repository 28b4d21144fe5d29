"""Does the micro-batch fit the device? The plan's memory verdict and its refusal.

`memory_problem(job)` is a plan-time refusal like `plan.horizon_problem`: `parse_job` calls it,
so `speedrun plan`, `speedrun run` and the operator's admission all refuse a manifest whose
estimated peak (memory.py) exceeds the accelerator's memory, in one line that names
`spec.train.deviceBatchSize` and the largest value that fits (one that also divides the batch
as the spec's batch rule wants). Only accelerators with a known memory are judged: the table's,
or any with `resources.deviceMemory`. A CPU process shares the host's memory with the data
loaders and other processes, which the plan cannot see: it prints the estimate, no verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from speedrun_api.memory import MemoryEstimate, device_memory, estimate_peak_memory
from speedrun_api.spec import SpeedrunJob


@dataclass(frozen=True)
class MemoryVerdict:
    estimate: MemoryEstimate
    capacity: int | None  # bytes per device; None: not judged

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else self.estimate.total <= self.capacity

    def line(self) -> str:
        """ "fits: 61.2 of 80.0 GB (77%)", "does not fit: ...", or the bare estimate."""
        total = self.estimate.total / 1e9
        if self.capacity is None:
            return f"{total:.1f} GB estimated (no device memory known to judge it by)"
        share = f"{total:.1f} of {self.capacity / 1e9:.1f} GB ({self.estimate.total / self.capacity:.0%})"
        return f"fits: {share}" if self.fits else f"does not fit: {share}"

    def to_dict(self) -> dict:
        return {
            **self.estimate.parts(),
            "total": self.estimate.total,
            "device_memory": self.capacity,
            "fits": self.fits,
            "compiled": self.estimate.compiled,
        }


def memory_verdict(job: SpeedrunJob, device_batch: int | None = None) -> MemoryVerdict:
    return MemoryVerdict(estimate_peak_memory(job, device_batch=device_batch), device_memory(job))


def _divides(job: SpeedrunJob, device_batch: int) -> bool:
    """The spec's batch rule for a candidate deviceBatchSize, at every node count it may run on."""
    r, t = job.spec.resources, job.spec.train
    lo, hi = r.node_range
    return all(t.batch_size % (device_batch * r.procs_per_node * n) == 0 for n in range(lo, hi + 1))


def largest_fitting_batch(job: SpeedrunJob) -> int:
    """The largest deviceBatchSize below the spec's that fits and divides the batch; 0 if none."""
    capacity = device_memory(job)
    if capacity is None:
        return job.spec.train.device_batch_size
    t = job.spec.train
    # Candidates divide batchSize (the batch rule needs at least that): found by trial up to its
    # square root, so a batchSize of 2**24 costs thousands of steps, not millions of estimates.
    divisors = {
        d for k in range(1, math.isqrt(t.batch_size) + 1) if t.batch_size % k == 0 for d in (k, t.batch_size // k)
    }
    for b in sorted((d for d in divisors if d < t.device_batch_size), reverse=True):
        if _divides(job, b) and estimate_peak_memory(job, device_batch=b).total <= capacity:
            return b
    return 0


def memory_problem(job: SpeedrunJob) -> str | None:
    """One error line when the micro-batch cannot fit the device's memory (see the module doc)."""
    verdict = memory_verdict(job)
    if verdict.fits is not False:
        return None
    assert verdict.capacity is not None
    t, est = job.spec.train, verdict.estimate
    need = (
        f"{t.device_batch_size} needs about {est.total / 1e9:.1f} GB per device"
        f" (activations {est.activations / 1e9:.1f} GB) but the device has {verdict.capacity / 1e9:.1f} GB"
    )
    best = largest_fitting_batch(job)
    if best:
        return f"spec.train.deviceBatchSize: {need}; at most {best} fits (gradient accumulation keeps batchSize)"
    return (
        f"spec.train.deviceBatchSize: {need}; even 1 does not fit: use a smaller model or seqLen, or a device"
        " with more memory (resources.accelerator, resources.deviceMemory)"
    )
