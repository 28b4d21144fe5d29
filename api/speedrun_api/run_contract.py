"""The run's contract between its launchers (the operator's pods, `speedrun run`) and the trainer.

One home for each name both sides use: the files a run keeps under its storage URI, the
termination-log path, the `SPEEDRUN_*` environment the trainer's entry points read, and the one
rule that says where a run's storage is (docs/contracts.md describes them all).
"""

from __future__ import annotations

import os
from pathlib import Path

from speedrun_api.spec import SpeedrunJob

# Files under the run's storage URI.
RESULTS_FILE = "speedrun_results.json"  # the evaluation's results, in Marin's shape
TRAIN_SUMMARY_FILE = "train_summary.json"  # written by rank 0 when training ends; the eval reads it
RUN_IDENTITY_FILE = "run_identity.json"  # the training spec's hash, claimed before the first step
# Who writes the run now (host, pid, run id, since): flock'd on a local path, a lease object with
# a heartbeat on S3/GCS (trainer data/run_lock.py). A run directory of `speedrun run` has one too.
RUN_LOCK_FILE = "run.lock"

# The manifest as JSON, the file both entry points read with --config (`<run dir>/run.json` for
# `speedrun run`; the operator's ConfigMap key, mounted in the pods).
RUN_CONFIG_FILE = "run.json"

# The training entry point the launchers run under torchrun (`-m speedrun_trainer.train`).
TRAIN_MODULE = "speedrun_trainer.train"

# Kubernetes' default terminationMessagePath: the eval pod's headline results go there.
TERMINATION_LOG = "/dev/termination-log"

# The environment the trainer's entry points read, all optional; the launchers set them.
ENV_STORAGE_URI = "SPEEDRUN_STORAGE_URI"  # overrides spec.storage.uri
ENV_CACHE_DIR = "SPEEDRUN_CACHE_DIR"  # where remote shards and hub downloads are cached
ENV_METRICS_PORT = "SPEEDRUN_METRICS_PORT"  # overrides spec.metrics.port
ENV_TERMINATION_LOG = "SPEEDRUN_TERMINATION_LOG"  # where the eval writes its headline (TERMINATION_LOG)
ENV_RUN_DIR = "SPEEDRUN_RUN_DIR"  # `speedrun run`'s run directory: W&B files go under it
ENV_JOB_NAME = "SPEEDRUN_JOB_NAME"  # the SpeedrunJob's name, set in the pods for their logs
ENV_CONFIG_ERROR_FILE = "SPEEDRUN_CONFIG_ERROR_FILE"  # the torchrun wrapper's invalid-config file
ENV_DIE_WITH_PARENT = "SPEEDRUN_DIE_WITH_PARENT"  # "1": agents and workers go when `speedrun run` goes
ENV_EVAL_BUNDLE_URL = "SPEEDRUN_EVAL_BUNDLE_URL"  # overrides where `data fetch` gets the CORE bundle
ENV_RUN_LOCK_HELD = "SPEEDRUN_RUN_LOCK_HELD"  # "1": the launcher holds the run's lock; its workers take none
# "1": the process that started this one ran train/startup_checks.py and every check passed, so
# the trainer does not scan the token ids again (a full read of the data).
ENV_STARTUP_CHECKED = "SPEEDRUN_STARTUP_CHECKED"
ENV_RUN_ID = "SPEEDRUN_RUN_ID"  # the run across restarts (the SpeedrunJob's uid): takes over its own lease

# The start of a log line that says a set-up phase has begun (`phase: loading the data`): the
# torchrun wrapper and rank 0 print them, `speedrun run` shows the newest as its live line until
# the first step (cli/notices.py), and a pod's log reads the same.
PHASE_PREFIX = "phase: "

# Where runs without a storage URI keep their files, relative to the working directory.
LOCAL_RUNS_DIR = "runs"


def resolve_storage_uri(job: SpeedrunJob, *, override: str | None = None, default: str | None) -> str | None:
    """Where the run's checkpoints and results go: `override`, else `spec.storage.uri`, else `default`.

    The override is what the launcher decided (`speedrun run --storage`, or `SPEEDRUN_STORAGE_URI`
    in a trainer process). The default differs by launcher on purpose, so each states its own:
    `speedrun run` keeps a run in its run directory, a trainer started by hand in
    `local_run_root(name)`, the operator under its configured prefix or nowhere (None: a cluster run
    needs storage that every pod can reach).
    """
    return override or job.spec.storage.uri or default


def local_run_root(job_name: str, runs_dir: str | Path = LOCAL_RUNS_DIR) -> Path:
    """`<runs_dir>/<name>`: where a run without a storage URI keeps its files on this machine."""
    return Path(runs_dir) / job_name


def cache_dir() -> Path:
    """`SPEEDRUN_CACHE_DIR`, else `~/.cache/speedrun`: shards and downloads cached per machine."""
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "speedrun")
