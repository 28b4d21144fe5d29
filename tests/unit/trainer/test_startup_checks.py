"""What no retry can fix is found before any torchrun agent starts: exit 2, one line naming the
field; a network failure is left to the workers, which retry it (exit 1). One test per row of
the table in docs/errors.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from speedrun_api.manifest import EXIT_INVALID, ConfigError, parse_job
from speedrun_trainer.cli.local import run_local
from speedrun_trainer.data.shards import write_shard
from speedrun_trainer.data.storage import DataError
from speedrun_trainer.train.startup_checks import failure_exit, open_run_data, permanent_problem, startup_verdict
from tests.support.helpers import tiny_manifest, word_tokenizer

VOCAB = 264  # tests/support/helpers.tiny_manifest: the byte tokenizer's 257, padded


def _shard(folder: Path, name: str, tokens: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(write_shard(np.asarray(tokens, dtype=np.uint16)))
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    _shard(tmp_path / "train", "train_000000.bin", rng.integers(0, 256, 4_000))
    _shard(tmp_path / "val", "val_000000.bin", rng.integers(0, 256, 2_000))
    return {"spec.data.train": f"{tmp_path}/train/train_*.bin", "spec.data.validation": f"{tmp_path}/val/val_*.bin"}


def _problem(data: dict[str, str], storage: str, **changes: Any) -> str | None:
    return permanent_problem(parse_job(tiny_manifest(**{**data, **changes})), storage)


# (row id, manifest changes given tmp_path, what the one line starts with, a fragment of it)
PERMANENT_ROWS = [
    ("empty-validation-set", lambda t: {"spec.data.validation": str(_shard(t / "e", "val_000000.bin", []))},
     "spec.data.validation: ", "the shards hold no tokens"),
    ("short-validation-set", lambda t: {"spec.data.validation": str(_shard(t / "s", "val_000000.bin", range(10)))},
     "spec.data.validation: ", "evaluation needs at least spec.model.seqLen + 1 = 65"),
    ("directory-without-shards", lambda t: {"spec.data.validation": str(_write(t / "text" / "notes.txt", b"x").parent)},
     "spec.data.validation: ", "matches no files"),
    ("glob-matching-nothing", lambda t: {"spec.data.train": f"{t}/train/none_*.bin"},
     "spec.data.train: ", "matches no files (a directory or prefix needs *.bin shards)"),
    ("malformed-shard", lambda t: {"spec.data.train": str(_write(t / "bad.bin", b"\0" * 2048))},
     "spec.data.train: ", "bad magic"),
    ("tokenizer-not-json", lambda t: {"spec.data.tokenizer": str(_write(t / "tok.json", b"{not json"))},
     "spec.data.tokenizer: ", "not a tokenizers JSON file"),
    ("tokenizer-not-utf8", lambda t: {"spec.data.tokenizer": str(_write(t / "tok.json", b"\xff\xfe{}"))},
     "spec.data.tokenizer: ", "not a tokenizers JSON file"),
    ("tokenizer-missing", lambda t: {"spec.data.tokenizer": str(t / "absent.json")},
     "spec.data.tokenizer: ", "absent.json: no such file"),
    ("tokenizer-larger-than-vocabSize", lambda t: {"spec.model.vocabSize": 200},
     "spec.model.vocabSize: 200 is smaller than the byte tokenizer's 257", "allowed: 257 or more"),
    ("ids-beyond-the-tokenizer", lambda t: {"spec.data.tokenizer": str(word_tokenizer(t / "v100.json", 100))},
     "spec.data.train: ", "has 100 ids, 0..99 (tokenized with another tokenizer?)"),
    ("ids-beyond-vocabSize", lambda t: {"spec.data.train": str(_shard(t / "w", "train_000000.bin", [300] * 100))},
     "spec.data.train: ", "holds token id 300, but spec.model.vocabSize is 264"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "changes", "starts", "fragment"), PERMANENT_ROWS, ids=[r[0] for r in PERMANENT_ROWS])
def test_permanent_errors_are_one_line_found_before_any_agent(tmp_path, data, row, changes, starts, fragment) -> None:
    problem = _problem(data, (tmp_path / "run").as_uri(), **changes(tmp_path))
    assert problem is not None and problem.startswith(starts) and fragment in problem, problem
    assert "\n" not in problem


def test_local_storage_that_cannot_be_written(tmp_path, data) -> None:
    (tmp_path / "afile").write_text("not a directory")
    problem = _problem(data, str(tmp_path / "afile" / "run"))
    assert problem is not None and problem.startswith("spec.storage.uri: ") and "is not writable" in problem


def test_missing_bucket(tmp_path, data, s3_bucket) -> None:
    problem = _problem(data, "s3://no-such-bucket-here/run", **{"spec.storage.endpointUrl": s3_bucket.endpoint_url})
    assert problem == (
        "spec.storage.uri: s3://no-such-bucket-here/run cannot be written (bucket no-such-bucket-here does not exist)"
    )


def test_wrong_credentials(tmp_path, data, s3_bucket) -> None:
    from moto.core.authorization import enable_iam_authentication

    s3_bucket.client().upload_file(str(tmp_path / "train" / "train_000000.bin"), s3_bucket.name, "d/train_000000.bin")
    changes = {"spec.data.train": f"{s3_bucket.uri}/d/train_*.bin", "spec.storage.endpointUrl": s3_bucket.endpoint_url}
    with enable_iam_authentication():  # the fixture's key "testing" is no IAM user's
        problem = _problem(data, (tmp_path / "run").as_uri(), **changes)
    assert problem == (
        f"spec.data.train: {s3_bucket.uri}/d/train_*.bin: access denied;"
        " check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    )


def test_connection_refused_is_left_to_the_workers_to_retry(tmp_path, data, monkeypatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would only make the test slower
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    assert _problem(data, "s3://bucket/run", **{"spec.storage.endpointUrl": "http://127.0.0.1:9"}) is None


def test_exit_codes() -> None:
    assert failure_exit(ConfigError("spec.x: bad\nmore")) == (EXIT_INVALID, "spec.x: bad")
    assert failure_exit(DataError("s3://b/k: no such object")) == (EXIT_INVALID, "s3://b/k: no such object")
    assert failure_exit(DataError("s3://b/k: cannot connect", transient=True)) == (1, "s3://b/k: cannot connect")


def test_speedrun_run_stops_before_any_agent_with_one_line(tmp_path, data, capsys) -> None:
    job = parse_job(tiny_manifest(**{**data, "spec.data.train": f"{tmp_path}/train/none_*.bin"}))
    assert run_local(job, storage_uri=None, resume=False, runs_dir=str(tmp_path / "runs")) == EXIT_INVALID
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: spec.data.train: ") and "matches no files" in err[0]
    assert not list((tmp_path / "runs").glob("*/*/logs"))  # no agent started


def test_a_passed_check_says_so_and_spares_the_trainer_a_second_scan(tmp_path, data) -> None:
    """startup_verdict tells a pass from a transient failure, so a starter marks only checked runs
    (SPEEDRUN_STARTUP_CHECKED); the trainer then skips the token-id scan, and only that."""
    assert startup_verdict(parse_job(tiny_manifest(**data)), (tmp_path / "run").as_uri()) == (True, None)
    wide_ids = {**data, "spec.data.train": str(_shard(tmp_path / "w", "train_000000.bin", [300] * 100))}
    job = parse_job(tiny_manifest(**wide_ids))
    with pytest.raises(ConfigError, match="holds token id 300"):
        open_run_data(job)
    assert open_run_data(job, scan_token_ids=False).train.num_tokens == 100
    short = parse_job(tiny_manifest(**{**data, "spec.data.validation": str(_shard(tmp_path / "s", "v.bin", [1]))}))
    with pytest.raises(ConfigError, match="evaluation needs at least"):
        open_run_data(short, scan_token_ids=False)
