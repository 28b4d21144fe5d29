"""A Llama-3-sized vocabulary end to end on CPU: prepare -> uint32 shards -> train -> evaluate.

Marin's runs use a 128,256-token vocabulary; its ids do not fit modded-nanogpt's uint16 shards.
This trains a small GPT with that vocabulary (a synthetic tokenizers JSON of the same size, see
tests/support/llama3_vocab.py) through the real trainer and evaluation entry points, one process each.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from speedrun_trainer.data.builtin import builtin_documents
from speedrun_trainer.data.prepare import prepare
from speedrun_trainer.data.shards import read_shard_file
from tests.support.helpers import tiny_manifest, write_manifest
from tests.support.llama3_vocab import LLAMA3_VOCAB, write_llama3_sized_tokenizer

pytestmark = pytest.mark.e2e


def _run(module: str, config: Path, storage: Path, cache: Path) -> str:
    env = {
        **os.environ,
        "SPEEDRUN_STORAGE_URI": storage.as_uri(),
        "SPEEDRUN_METRICS_PORT": "0",
        "SPEEDRUN_CACHE_DIR": str(cache),
        "SPEEDRUN_TERMINATION_LOG": str(storage / "termination.json"),
        "OMP_NUM_THREADS": "1",
    }
    res = subprocess.run(
        [sys.executable, "-m", module, "--config", str(config)], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout + res.stderr


def test_llama3_sized_vocabulary_trains_and_evaluates_on_cpu(tmp_path: Path) -> None:
    tokenizer = write_llama3_sized_tokenizer(tmp_path / "tokenizer.json")
    docs = tmp_path / "docs.jsonl"
    texts = builtin_documents("builtin://pydoc-topics/val")[:40]
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = tmp_path / "data"
    prepare([str(docs)], data.as_uri(), str(tokenizer), val_fraction=0.25, dataset="pydoc-topics-llama3")
    train = read_shard_file(data / "train_000000.bin")
    assert train.dtype == np.uint32 and int(train.max()) >= 65_536

    doc = tiny_manifest(
        **{
            "spec.model.vocabSize": LLAMA3_VOCAB,
            "spec.model.hiddenDim": 32,
            "spec.model.intermediateDim": 64,
            "spec.model.numLayers": 1,
            "spec.model.tieEmbeddings": True,
            "spec.train.steps": 12,
            "spec.train.clockWarmupSteps": 2,
            "spec.train.checkpointEvery": 0,
            "spec.train.evalEvery": 0,
            "spec.train.optimizer.learningRate": 0.01,
            "spec.train.optimizer.warmupSteps": 0,
            "spec.data": {
                "train": f"{data.as_uri()}/train_*.bin",
                "validation": f"{data.as_uri()}/val_*.bin",
                "tokenizer": str(tokenizer),
            },
            "spec.eval": {"bpb": {"tokens": 2048}},
        }
    )
    config = write_manifest(tmp_path / "job.yaml", doc)
    storage, cache = tmp_path / "run", tmp_path / "cache"
    _run("speedrun_trainer.train", config, storage, cache)
    _run("speedrun_trainer.evaluation", config, storage, cache)

    info = json.loads((storage / "speedrun_results.json").read_text())["runs"][0]["run_info"]
    assert info["model_config"]["vocab_size"] == LLAMA3_VOCAB and info["training_steps"] == 12
    assert info["bpb_dataset"] == "pydoc-topics-llama3" and "eval/paloma/c4_en/bpb" not in info
    bpb = info["eval/pydoc-topics-llama3/bpb"]
    assert math.isfinite(bpb) and bpb < info["initial_bpb"]  # it learned on 128,256-id tokens
    assert info["eval_set"]["tokens_scored"] == 2048 and not info["eval_set"]["exceeded"]
    assert info["warmup_steps"] == 2 and info["training_time"] > 0
