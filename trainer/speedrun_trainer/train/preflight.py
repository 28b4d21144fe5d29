"""Checks before the first step, so what can never work fails in seconds with exit 2, not later.

- The run's identity: `run_identity.json` in the run's storage holds a hash of the
  training-relevant spec (model, train, data, target, and eval when a target is set; not
  checkpointEvery/logEvery, which do not change what is trained). A run whose storage already
  holds another spec's identity, or whose newest checkpoint was saved under another spec, is
  refused: resuming would train the old run's weights under the new spec, and the evaluation
  would publish the new spec with the old numbers.
  The evaluation refuses the same way (`check_published`), so a results file is never written by
  a run that trained nothing under a different spec.
- The vocabulary, three ways: the tokenizer fits `spec.model.vocabSize` (a larger tokenizer
  produces ids the embedding lacks); every token id in the data is below `vocabSize` (else an
  IndexError mid-run) and below the tokenizer's size (ids the tokenizer never produces mean the
  shards were tokenized with another one: training would run on them, and BPB would count their
  bytes with the wrong table). An evaluation set of at least seqLen + 1 tokens (else the
  evaluation fails only after training).
- The storage takes a write (a probe object, deleted again). A local path that cannot be written
  (its parent is a file, no permission, read-only) is a config error; a remote store's failure
  stays a `DataError`, transient (exit 1) or not (no bucket, access denied: exit 2).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import numpy as np

from speedrun_api.manifest import ConfigError
from speedrun_api.run_contract import RUN_IDENTITY_FILE
from speedrun_api.spec import SpeedrunJob
from speedrun_trainer.data.loader import TokenDataset
from speedrun_trainer.data.storage import DataError, Storage, scheme_of
from speedrun_trainer.data.tokenizer import Tokenizer

TRAINING_FIELDS = ("model", "train", "data", "target")
NOT_TRAINING = {"train": ("checkpointEvery", "logEvery")}  # how often to save or log: same weights
SCAN_CHUNK = 1 << 24  # tokens per np.max call: bounded memory on any shard size


def training_spec(job: SpeedrunJob) -> dict[str, Any]:
    """The part of the spec that decides the trained weights (wire names, defaults left out, so
    a field added later with a default does not change the identity of existing runs)."""
    spec = job.spec.model_dump(by_alias=True, exclude_defaults=True, exclude_none=True, mode="json")
    out = {k: spec[k] for k in TRAINING_FIELDS if k in spec}
    if job.spec.target is not None and "eval" in spec:  # the evaluation set decides when training stops
        out["eval"] = spec["eval"]
    for section, keys in NOT_TRAINING.items():
        for key in keys:
            out.get(section, {}).pop(key, None)
    return out


def spec_hash(job: SpeedrunJob) -> str:
    canonical = json.dumps(training_spec(job), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, path: str = "spec") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _differences(old.get(k), new.get(k), f"{path}.{k}")]
    return [] if old == new else [path]


def _refuse(storage: Storage, what: str, stored: dict[str, Any] | None, job: SpeedrunJob) -> ConfigError:
    changed = _differences(stored, training_spec(job)) if stored is not None else []
    fields = f" ({', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''} differ)" if changed else ""
    return ConfigError(
        f"spec.storage.uri: {storage.url('')} holds {what} of another spec{fields}; give this spec a storage"
        " URI of its own (or delete the old run) instead of resuming or overwriting it"
    )


def check_identity(storage: Storage, job: SpeedrunJob, newest_checkpoint_meta: dict[str, Any] | None) -> None:
    """Refuse a storage that belongs to another spec's run (every rank; reads only)."""
    if storage.exists(RUN_IDENTITY_FILE):
        stored = storage.read_json(RUN_IDENTITY_FILE)
        if stored.get("spec_hash") != spec_hash(job):
            raise _refuse(storage, "a run", stored.get("training_spec"), job)
    elif newest_checkpoint_meta is not None and isinstance(newest_checkpoint_meta.get("spec"), dict):
        # A run from before identities were written: its checkpoint's meta carries the whole spec.
        try:
            old = SpeedrunJob.model_validate(newest_checkpoint_meta["spec"])
        except ValueError:
            return
        if spec_hash(old) != spec_hash(job):
            raise _refuse(storage, "checkpoints", training_spec(old), job)


def claim(storage: Storage, job: SpeedrunJob) -> None:
    """Rank 0: record this spec as the run's identity (after `check_identity` passed)."""
    if not storage.exists(RUN_IDENTITY_FILE):
        storage.write_json(RUN_IDENTITY_FILE, {"spec_hash": spec_hash(job), "training_spec": training_spec(job)})


def check_published(storage: Storage, job: SpeedrunJob, summary: dict[str, Any]) -> None:
    """The evaluation: the training summary must come from this spec's training."""
    trained = summary.get("spec_hash")
    if trained is None and storage.exists(RUN_IDENTITY_FILE):
        trained = storage.read_json(RUN_IDENTITY_FILE).get("spec_hash")
    if trained is not None and trained != spec_hash(job):
        identity = storage.read_json(RUN_IDENTITY_FILE) if storage.exists(RUN_IDENTITY_FILE) else {}
        raise _refuse(storage, "the training of a run", identity.get("training_spec"), job)


def check_writable(storage: Storage) -> None:
    """Write and delete a probe object; raises ConfigError (local) or DataError (remote)."""
    key = f".write-probe-{uuid.uuid4().hex[:8]}"
    try:
        storage.write_bytes(key, b"")
        storage.delete(key)
    except (OSError, DataError) as err:
        if scheme_of(storage.url("")) == "file":  # a local path: the spec names a place that cannot work
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise ConfigError(f"spec.storage.uri: {storage.url('')} is not writable ({reason})") from None
        reason = str(err).removeprefix(f"{storage.url(key)}: ")
        transient = isinstance(err, DataError) and err.transient
        raise DataError(
            f"spec.storage.uri: {storage.url('')} cannot be written ({reason})", transient=transient
        ) from None


def check_vocabulary(tokenizer: Tokenizer, vocab_size: int) -> None:
    """The tokenizer's ids all have a row in the embedding."""
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(
            f"spec.model.vocabSize: {vocab_size} is smaller than the {tokenizer.name} tokenizer's"
            f" {tokenizer.vocab_size} (spec.data.tokenizer: {tokenizer.spec}); allowed: {tokenizer.vocab_size} or more"
        )


def highest_token_id(dataset: TokenDataset, stop_at: int) -> int:
    """The largest token id in the data (-1 when empty), or the first chunk's maximum that reaches
    `stop_at` (no need to read on). Shards whose dtype cannot hold `stop_at` are not read."""
    top = -1
    for shard in dataset.shards:
        if np.issubdtype(shard.dtype, np.integer) and stop_at > np.iinfo(shard.dtype).max:
            continue
        for start in range(0, len(shard), SCAN_CHUNK):
            top = max(top, int(np.max(shard[start : start + SCAN_CHUNK])))
            if top >= stop_at:
                return top
    return top


def check_token_ids(dataset: TokenDataset, field: str, vocab_size: int, tokenizer: Tokenizer | None = None) -> None:
    """Every token id below vocab_size and below the tokenizer's size (when given)."""
    limit = min(vocab_size, tokenizer.vocab_size) if tokenizer is not None else vocab_size
    top = highest_token_id(dataset, limit)
    if top >= vocab_size:
        raise ConfigError(
            f"{field}: {dataset.uri} holds token id {top}, but spec.model.vocabSize is {vocab_size}"
            " (tokenized with another tokenizer?)"
        )
    if tokenizer is not None and top >= tokenizer.vocab_size:
        raise ConfigError(
            f"{field}: {dataset.uri} holds token id {top}, but the tokenizer (spec.data.tokenizer:"
            f" {tokenizer.spec}) has {tokenizer.vocab_size} ids, 0..{tokenizer.vocab_size - 1}"
            " (tokenized with another tokenizer?)"
        )


def check_validation_length(dataset: TokenDataset, seq_len: int, field: str) -> None:
    if dataset.num_tokens < seq_len + 1:
        raise ConfigError(
            f"{field}: {dataset.uri} has {dataset.num_tokens} tokens; evaluation needs at least"
            f" spec.model.seqLen + 1 = {seq_len + 1}"
        )
