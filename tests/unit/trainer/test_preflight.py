"""Bad data and reused storage fail before training, with exit 2; a corrupt newest checkpoint
falls back to the one before; a different spec neither resumes nor publishes over another run.

The trainer and the evaluation run in this process (`main(["--config", ...])`, one process, no
torch.distributed): a few tiny steps each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from speedrun_api.manifest import ConfigError, parse_job
from speedrun_api.run_contract import RUN_IDENTITY_FILE
from speedrun_trainer.data.loader import TokenDataset
from speedrun_trainer.data.shards import write_shard
from speedrun_trainer.data.storage import open_storage
from speedrun_trainer.data.tokenizer import load_tokenizer
from speedrun_trainer.evaluation import evaluate
from speedrun_trainer.train import checkpoint, loop, preflight
from tests.support.helpers import tiny_manifest, word_tokenizer, write_manifest

VOCAB = 264  # tests/support/helpers.tiny_manifest (the byte tokenizer's 257 fit)


def _shards(tmp_path: Path, name: str, tokens: np.ndarray) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}_000000.bin").write_bytes(write_shard(tokens))
    return f"file://{folder}/{name}_*.bin"


def _run(entry: Any, tmp_path: Path, storage: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> int:
    doc = tiny_manifest(
        **{
            "spec.train.steps": 4,
            "spec.train.checkpointEvery": 2,
            "spec.train.evalEvery": 0,
            "spec.eval.bpb.tokens": 256,
            **overrides,
        }
    )
    config = write_manifest(tmp_path / "job.yaml", doc)
    monkeypatch.setenv("SPEEDRUN_STORAGE_URI", storage.as_uri())
    monkeypatch.setenv("SPEEDRUN_METRICS_PORT", "0")
    monkeypatch.setenv("SPEEDRUN_TERMINATION_LOG", str(tmp_path / "termination.log"))
    return int(entry.main(["--config", str(config)]))


@pytest.fixture
def data(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    return {
        "spec.data.train": _shards(tmp_path, "train", rng.integers(0, 256, 20_000).astype(np.uint16)),
        "spec.data.validation": _shards(tmp_path, "val", rng.integers(0, 256, 5_000).astype(np.uint16)),
    }


def test_token_ids_beyond_the_vocabulary_are_an_invalid_config(tmp_path, data, monkeypatch, capsys):
    bad = np.full(5_000, 300, dtype=np.uint16)
    data["spec.data.train"] = _shards(tmp_path, "big", bad)
    assert _run(loop, tmp_path, tmp_path / "run", monkeypatch, **data) == 2
    err = capsys.readouterr().err
    assert f"invalid config: spec.data.train: {data['spec.data.train']} holds token id 300" in err
    assert f"spec.model.vocabSize is {VOCAB}" in err


def test_vocabulary_agreement_three_ways(tmp_path) -> None:
    """Tokenizer <= vocabSize; every id < vocabSize; every id < the tokenizer's size."""
    v100, byte = load_tokenizer(str(word_tokenizer(tmp_path / "v100.json", 100))), load_tokenizer("byte")
    ids_to_255 = TokenDataset([np.arange(256, dtype=np.uint16)], "mem://bytes")

    with pytest.raises(ConfigError, match=r"^spec.model.vocabSize: 200 is smaller than the byte tokenizer's 257"):
        preflight.check_vocabulary(byte, 200)
    preflight.check_vocabulary(v100, VOCAB)
    with pytest.raises(ConfigError, match=r"holds token id 255, but the tokenizer .* has 100 ids, 0\.\.99"):
        preflight.check_token_ids(ids_to_255, "spec.data.train", VOCAB, v100)
    with pytest.raises(ConfigError, match=r"holds token id 255, but spec.model.vocabSize is 200"):
        preflight.check_token_ids(ids_to_255, "spec.data.train", 200)
    preflight.check_token_ids(ids_to_255, "spec.data.train", VOCAB, byte)  # ids 0..255 are bytes
    wide = TokenDataset([np.array([5, 70_000], dtype=np.uint32)], "mem://wide")
    with pytest.raises(ConfigError, match="holds token id 70000"):
        preflight.check_token_ids(wide, "spec.data.train", 2**17, v100)


def test_a_tokenizer_smaller_than_the_shards_ids_is_refused_by_the_trainer(tmp_path, data, monkeypatch, capsys) -> None:
    tokenizer = str(word_tokenizer(tmp_path / "v100.json", 100))
    assert _run(loop, tmp_path, tmp_path / "run", monkeypatch, **data, **{"spec.data.tokenizer": tokenizer}) == 2
    err = capsys.readouterr().err
    assert "invalid config: spec.data.train: " in err and "has 100 ids, 0..99" in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_a_validation_set_shorter_than_a_sequence_fails_before_training(tmp_path, data, monkeypatch, capsys):
    data["spec.data.validation"] = _shards(tmp_path, "short", np.arange(10, dtype=np.uint16))
    assert _run(loop, tmp_path, tmp_path / "run", monkeypatch, **data) == 2
    assert "invalid config: spec.data.validation:" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained


def test_storage_under_a_file_fails_before_training(tmp_path, data, monkeypatch, capsys):
    (tmp_path / "afile").write_text("not a directory")
    assert _run(loop, tmp_path, tmp_path / "afile" / "run", monkeypatch, **data) == 2
    err = capsys.readouterr().err
    assert "invalid config: spec.storage.uri:" in err and "is not writable" in err


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    storage = open_storage(tmp_path.as_uri())
    for step in (2, 4):
        checkpoint.save(storage, step, {"w": torch.full((3,), float(step))}, [{}], {"state": {"step": step}})
    model = tmp_path / "checkpoints" / "model_000004.pt"
    model.write_bytes(model.read_bytes()[:20])  # meta present, model truncated
    ckpt = checkpoint.load(storage)
    assert ckpt is not None and ckpt.step == 2 and ckpt.model["w"].tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(Exception):  # noqa: B017 - a named step is never replaced by another
        checkpoint.load(storage, 4)
    (tmp_path / "checkpoints" / "model_000002.pt").unlink()
    assert checkpoint.load(storage) is None


def test_a_different_spec_neither_resumes_nor_publishes_over_a_run(tmp_path, data, monkeypatch, capsys):
    run = tmp_path / "run"
    assert _run(loop, tmp_path, run, monkeypatch, **data) == 0
    assert _run(evaluate, tmp_path, run, monkeypatch, **data) == 0
    results = (run / "speedrun_results.json").read_text()
    capsys.readouterr()

    other = {**data, "spec.train.optimizer.learningRate": 0.01}
    assert _run(loop, tmp_path, run, monkeypatch, **other) == 2
    err = capsys.readouterr().err
    assert "invalid config: spec.storage.uri:" in err and "spec.train.optimizer.learningRate" in err
    assert _run(evaluate, tmp_path, run, monkeypatch, **other) == 2
    other_job = parse_job(yaml.safe_load((tmp_path / "job.yaml").read_text()))
    assert (run / "speedrun_results.json").read_text() == results  # never overwritten
    identity = json.loads((run / RUN_IDENTITY_FILE).read_text())
    assert identity["spec_hash"] != preflight.spec_hash(other_job)  # still the first run's

    # How often to checkpoint or log does not change what is trained: the same run.
    assert _run(loop, tmp_path, run, monkeypatch, **{**data, "spec.train.checkpointEvery": 1}) == 0

    # A run from before identities were written: its checkpoints' meta still tells.
    (run / RUN_IDENTITY_FILE).unlink()
    assert _run(loop, tmp_path, run, monkeypatch, **other) == 2
    assert "holds checkpoints of another spec" in capsys.readouterr().err
