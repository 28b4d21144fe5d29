"""The trainer's Prometheus metric names, and their parser: the contract between trainer and operator.

Rank 0 of the trainer serves these gauges (`speedrun_trainer.train.telemetry`); the operator
scrapes them into `status.progress` and `speedrun run` into its progress bar, both through
`parse_metrics`. Names are pinned in docs/contracts.md.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

METRIC_NAMES = {
    "step": "speedrun_step",
    "total_steps": "speedrun_total_steps",
    "train_loss": "speedrun_train_loss",
    "val_loss": "speedrun_val_loss",
    "val_bpb": "speedrun_val_bpb",
    "tokens_per_second": "speedrun_tokens_per_second",
    "mfu": "speedrun_mfu",
    "eta_seconds": "speedrun_eta_seconds",
    "training_seconds": "speedrun_training_seconds",
}
HELP = {
    "step": "Optimizer steps completed",
    "total_steps": "Optimizer steps in the training horizon",
    "train_loss": "Training loss (nats/token), averaged over ranks",
    "val_loss": "Latest validation loss (nats/token)",
    "val_bpb": "Latest validation bits-per-byte",
    "tokens_per_second": "Training throughput over all ranks (eval and checkpoints excluded)",
    "mfu": "Model FLOPs utilization against the accelerator's peak",
    "eta_seconds": "Estimated training seconds left",
    "training_seconds": "Training wall time so far (eval, checkpointing and logging excluded)",
}


_KEY_BY_NAME = {name: key for key, name in METRIC_NAMES.items()}


def parse_metrics(text: str) -> dict[str, float]:
    """Our gauges out of a Prometheus text exposition, keyed by their short names.

    NaN and infinite values (not measured yet) are left out; other metrics are ignored.
    Used by `speedrun run`'s progress bar and by the operator's progress scrape.
    """
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _KEY_BY_NAME.get(sample.name)
            if key is not None and math.isfinite(sample.value):
                out[key] = float(sample.value)
    return out
