"""The run's tokenizer and data, opened and checked against each other; the same checks before any
torchrun agent starts; and which failures are permanent (exit 2) or worth a retry (exit 1).

    data = open_run_data(job)                  # the trainer: tokenizer, train and evaluation sets
    problem = permanent_problem(job)           # `speedrun run` and the torchrun wrapper, before agents
    code, line = failure_exit(err)             # 2 and "field: what is wrong" for what no retry fixes

What no retry can fix ends as exit code 2 with one line naming the field and what is allowed:
the manifest, a tokenizer that cannot be loaded, a vocabulary that disagrees (train/preflight.py),
data that is not there (no such file, object or bucket, a glob or directory without shards, an
empty or too short set, a malformed shard), credentials the store refuses, a storage that cannot
be written. Found here, before the elastic agent starts, it costs seconds and no restart; found
by a worker, the torchrun wrapper stops the agent from restarting it (train/torchrun.py).
Network failures (nothing listening, timeouts, 5xx, throttling) stay exit code 1: retried where
they happen (data/failures.py), then by torchrun's restarts and the operator's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from speedrun_api.manifest import EXIT_INVALID, ConfigError
from speedrun_api.run_contract import ENV_STORAGE_URI, cache_dir, local_run_root, resolve_storage_uri
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.loader import TokenDataset, open_dataset
from speedrun_trainer.data.prepare import tokenizer_mismatch
from speedrun_trainer.data.storage import DataError, open_storage
from speedrun_trainer.data.tokenizer import Tokenizer, load_tokenizer
from speedrun_trainer.train import preflight

EXIT_RETRY = 1  # worth another try: torchrun's restarts, the operator's gang restarts


@dataclass(frozen=True)
class RunData:
    tokenizer: Tokenizer
    train: TokenDataset
    val: TokenDataset  # the run's one evaluation set (spec.eval.bpb.data, else spec.data.validation)


@contextlib.contextmanager
def in_field(field: str) -> Iterator[None]:
    """A DataError raised inside the block names the manifest field it came from."""
    try:
        yield
    except DataError as err:
        raise type(err)(f"{field}: {err}", transient=err.transient) from None


def open_run_data(job: SpeedrunJob, scan_token_ids: bool = True) -> RunData:
    """The tokenizer and both token sets, checked against each other and the model; raises
    ConfigError or DataError (train/preflight.py has the vocabulary and length checks).
    `scan_token_ids=False` skips the one check that reads all the data, for a process whose
    starter already ran it (ENV_STARTUP_CHECKED)."""
    spec, model = job.spec, job.spec.model
    endpoint = spec.storage.endpoint_url
    with in_field("spec.data.tokenizer"):
        tokenizer = load_tokenizer(spec.data.tokenizer, endpoint_url=endpoint)
    preflight.check_vocabulary(tokenizer, model.vocab_size)
    val_field = "spec.eval.bpb.data" if spec.eval.bpb.data else "spec.data.validation"
    datasets = []
    for field, uri in (("spec.data.train", spec.data.train), (val_field, spec.eval_data)):
        with in_field(field):
            if problem := tokenizer_mismatch(uri, field, tokenizer, endpoint):
                raise ConfigError(problem)
            datasets.append(
                open_dataset(uri, tokenizer=spec.data.tokenizer, cache_dir=cache_dir(), endpoint_url=endpoint)
            )
        if scan_token_ids:
            preflight.check_token_ids(datasets[-1], field, model.vocab_size, tokenizer)
    train, val = datasets
    preflight.check_validation_length(val, model.seq_len, val_field)
    return RunData(tokenizer, train, val)


def run_storage_uri(job: SpeedrunJob) -> str:
    """What the launcher set (SPEEDRUN_STORAGE_URI), else spec.storage.uri, else `runs/<name>` here."""
    default = str(local_run_root(job.metadata.name))
    uri = resolve_storage_uri(job, override=os.environ.get(ENV_STORAGE_URI), default=default)
    assert uri is not None  # the default is never None
    return uri


def check_before_start(job: SpeedrunJob, storage_uri: str | None = None) -> None:
    """Everything a training run checks before its first step that needs no torch.distributed:
    the tokenizer, the data and their vocabularies, and a write to the run's storage."""
    open_run_data(job)
    with in_field("spec.storage.uri"):
        storage = open_storage(storage_uri or run_storage_uri(job), endpoint_url=job.spec.storage.endpoint_url)
    preflight.check_writable(storage)


def failure_exit(err: BaseException) -> tuple[int, str]:
    """(exit code, one line) for a ConfigError or DataError: 1 for a transient DataError, else 2."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, DataError) and err.transient:
        return EXIT_RETRY, line
    return EXIT_INVALID, line


def startup_verdict(job: SpeedrunJob, storage_uri: str | None = None) -> tuple[bool, str | None]:
    """(every check of `check_before_start` passed, the one line of a problem no retry can fix);
    a transient failure is neither: it is left to the workers, which retry it."""
    try:
        check_before_start(job, storage_uri)
    except (ConfigError, DataError) as err:
        code, line = failure_exit(err)
        return False, (line if code == EXIT_INVALID else None)
    return True, None


def permanent_problem(job: SpeedrunJob, storage_uri: str | None = None) -> str | None:
    """The one line of a problem found by `check_before_start` that no retry can fix, else None."""
    return startup_verdict(job, storage_uri)[1]
