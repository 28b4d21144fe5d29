"""`speedrun data fetch` against a local server that answers like the Hugging Face Hub (tests/support/hub_mirror.py).

Each dataset is a small mirror in the hub's layout; the downloads go through huggingface_hub for
real (HF_ENDPOINT, HF_TOKEN, resume after a dropped connection, sizes), then become what a
manifest reads.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from speedrun_trainer.cli.speedrun import main as speedrun
from speedrun_trainer.data.loader import open_dataset
from speedrun_trainer.data.prepare import recorded_dataset
from speedrun_trainer.data.shards import read_shard_file, write_shard
from tests.support.hub_mirror import HubMirror


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubMirror]:
    with HubMirror(tmp_path / "mirror") as mirror:
        monkeypatch.setenv("HF_ENDPOINT", mirror.url)
        monkeypatch.setenv("SPEEDRUN_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield mirror


def _fetch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    code = speedrun(["data", "fetch", *args])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else {}), captured.err


def test_fineweb_shards_resume_after_a_dropped_connection(
    hub: HubMirror, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # small chunks: the bytes before the drop are kept
    rng = np.random.default_rng(0)
    shards = {f"fineweb_val_{0:06d}.bin": rng.integers(0, 50257, 5000)}
    shards.update({f"fineweb_train_{i:06d}.bin": rng.integers(0, 50257, 8000) for i in (1, 2, 3)})
    for name, tokens in shards.items():
        hub.add("kjj0/fineweb10B-gpt2", name, write_shard(tokens))
    dropped = "/datasets/kjj0/fineweb10B-gpt2/resolve/main/fineweb_train_000001.bin"
    hub.cut_once.add(dropped)
    out = tmp_path / "fineweb"
    code, summary, err = _fetch(capsys, "fineweb10b-gpt2", "--out", str(out), "--train-shards", "2")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "fineweb_train_000001.bin",
        "fineweb_train_000002.bin",
        "fineweb_val_000000.bin",
    ]
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"):
        assert read_shard_file(out / name).tolist() == shards[name].tolist()
    assert summary["tokens"]["fineweb_val_000000.bin"] == 5000
    ranged = [r for m, p, r in hub.requests if m == "GET" and p.endswith("fineweb_train_000001.bin") and r]
    assert ranged and ranged[0].startswith("bytes=") and not ranged[0].startswith("bytes=0-")  # resumed
    val = open_dataset(summary["validation"], tokenizer="gpt2", cache_dir=tmp_path / "c")
    assert val.num_tokens == 5000


def _paloma(hub: HubMirror) -> list[str]:
    texts = [f"Document {i}: the quick brown fox jumps over the lazy dog." for i in range(6)]
    lines = "".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(texts))
    hub.add("allenai/paloma", "c4_en/val/val.jsonl.gz", gzip.compress(lines.encode()))
    hub.add("allenai/paloma", "c4_en/test/test.jsonl.gz", gzip.compress(b'{"text": "not this split"}\n'))
    hub.add("allenai/paloma", "wikitext_103/val/val.jsonl.gz", gzip.compress(b'{"text": "nor this source"}\n'))
    return texts


def test_paloma_c4_en_is_gated_tokenized_and_named(
    hub: HubMirror, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = _paloma(hub)
    hub.token = "hf_secret"
    out = tmp_path / "c4"
    code, _, err = _fetch(capsys, "paloma-c4-en", "--out", str(out), "--tokenizer", "byte")
    assert code == 2 and err.count("\n") == 1 and "HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    code, summary, err = _fetch(capsys, "paloma-c4-en", "--out", str(out), "--tokenizer", "byte")
    assert code == 0, err
    assert summary["documents"] == {"train": 0, "val": 6} and summary["dataset"] == "paloma/c4_en"
    assert recorded_dataset(summary["validation"]) == "paloma/c4_en"  # results name C4-EN
    tokens = read_shard_file(out / "val_000000.bin")
    assert bytes(int(t) for t in tokens if t < 256).decode() == "".join(texts)
    paths = {p for m, p, _ in hub.requests if "/resolve/" in p}
    assert paths and all("/c4_en/val/" in p for p in paths)  # only the C4-EN validation split


def test_nanochat_eval_bundle_unpacked(hub: HubMirror, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("eval_bundle/core.yaml", "icl_tasks: []\n")
        z.writestr("eval_bundle/eval_meta_data.csv", "Eval Task,Random baseline\n")
        z.writestr("eval_bundle/eval_data/world_knowledge/arc_easy.jsonl", '{"query": "q"}\n')
    monkeypatch.setenv("SPEEDRUN_EVAL_BUNDLE_URL", hub.add_url_file("eval_bundle.zip", buf.getvalue()))
    code, summary, err = _fetch(capsys, "nanochat-eval-bundle", "--out", str(tmp_path / "nanochat"))
    assert code == 0, err
    assert summary["files"] == 3 and summary["bundle"].endswith("/nanochat/eval_bundle")
    assert (tmp_path / "nanochat" / "eval_bundle" / "core.yaml").read_text() == "icl_tasks: []\n"


def test_errors_are_one_line(hub: HubMirror, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = _fetch(capsys, "marin-fineweb-edu", "--out", str(tmp_path / "x"))
    assert code == 2 and err.count("\n") == 1 and "levanter cache" in err
    code, _, err = _fetch(capsys, "no-such-data", "--out", str(tmp_path / "x"))
    assert code == 2 and "unknown dataset 'no-such-data'" in err and "fineweb10b-gpt2" in err
    code, _, err = _fetch(capsys, "paloma-c4-en", "--out", str(tmp_path / "x"))
    assert code == 2 and "--tokenizer" in err
    with socket.socket() as s:  # a port nothing listens on: the hub is unreachable
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", closed)
    code, _, err = _fetch(capsys, "fineweb10b-gpt2", "--out", str(tmp_path / "x"), "--train-shards", "1")
    assert code == 2 and err.count("\n") == 1 and closed in err and "offline?" in err
    assert speedrun(["data", "fetch", "--list"]) == 0
    assert "paloma-c4-en" in capsys.readouterr().out
