"""`speedrun data prepare`: text files -> shards + tokenizer_meta.json on any storage."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from speedrun_trainer.data.loader import open_dataset
from speedrun_trainer.data.prepare import main, prepare
from speedrun_trainer.data.shards import read_shard
from speedrun_trainer.data.storage import DataError, open_storage
from speedrun_trainer.data.tokenizer import load_tokenizer

DOCS = [f"document {i}: " + "café " * (i % 7) + "x" * (3 * i) for i in range(12)]


@pytest.fixture
def corpus(tmp_path: Path) -> list[str]:
    """Eleven documents in a .jsonl file, then one in a .txt file."""
    jsonl = tmp_path / "in" / "docs.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS[:11])) + "\n\n")
    (tmp_path / "in" / "last.txt").write_text(DOCS[11])
    return [str(jsonl), f"file://{tmp_path}/in/last.txt"]


def _split_documents(tokens: np.ndarray, eot: int) -> list[list[int]]:
    bounds = [*np.flatnonzero(tokens == eot), len(tokens)]
    assert bounds[0] == 0, "every document starts with the separator"
    return [tokens[a + 1 : b].tolist() for a, b in itertools.pairwise(bounds)]


def test_prepare_to_s3_end_to_end(corpus: list[str], s3_bucket, tmp_path: Path) -> None:
    out = f"{s3_bucket.uri}/prepared/tiny"
    summary = prepare(corpus, out, "byte", shard_tokens=200, val_fraction=0.25)
    storage = open_storage(out)
    meta = storage.read_json("tokenizer_meta.json")
    n_train, n_val = meta["tokens"]["train"], meta["tokens"]["val"]
    assert summary["meta"] == f"{out}/tokenizer_meta.json" and summary["tokens"] == meta["tokens"]
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"]) == ("byte", 257, 256)
    assert meta["token_bytes"] == [1] * 256 + [0]
    assert meta["documents"] == {"train": 9, "val": 3}  # documents 3, 7, 11: every 4th
    assert n_train + n_val == sum(len(d.encode()) + 1 for d in DOCS)
    assert meta["shards"]["train"] == [f"train_{i:06d}.bin" for i in range(-(-n_train // 200))]
    assert storage.list() == sorted([*meta["shards"]["train"], *meta["shards"]["val"], "tokenizer_meta.json"])

    streams = {}
    for split in ("train", "val"):
        shards = [read_shard(storage.read_bytes(name), name) for name in meta["shards"][split]]
        assert all(len(s) == 200 for s in shards[:-1]) and 0 < len(shards[-1]) <= 200
        streams[split] = np.concatenate(shards).astype(np.int64)
    val_docs = [DOCS[i] for i in (3, 7, 11)]
    train_docs = [d for d in DOCS if d not in val_docs]
    assert _split_documents(streams["val"], 256) == [list(d.encode()) for d in val_docs]
    assert _split_documents(streams["train"], 256) == [list(d.encode()) for d in train_docs]

    ds = open_dataset(f"{out}/train_*.bin", tokenizer="byte", cache_dir=tmp_path / "cache")
    assert ds.num_tokens == n_train


def test_prepare_with_a_json_tokenizer(corpus: list[str], bpe_tokenizer_json: Path, tmp_path: Path) -> None:
    summary = prepare(corpus, str(tmp_path / "out"), str(bpe_tokenizer_json))
    tok = load_tokenizer(str(bpe_tokenizer_json))
    meta = json.loads((tmp_path / "out" / "tokenizer_meta.json").read_text())
    assert meta["tokenizer"] == tok.name and meta["eot_id"] == tok.eot_id == 0
    tokens = np.fromfile(tmp_path / "out" / "train_000000.bin", dtype="<u2", offset=1024).astype(np.int64)
    assert summary["tokens"]["train"] == len(tokens) and summary["tokens"]["val"] == 0
    assert [tok.decode(d) for d in _split_documents(tokens, tok.eot_id)] == DOCS
    byte_lengths = np.asarray(meta["token_bytes"])
    assert byte_lengths[tokens].sum() == sum(len(d.encode()) for d in DOCS)


def test_cli_prints_summary_and_guards_earlier_output(corpus: list[str], tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "out")
    assert main(["data", "prepare", "--tokenizer", "byte", "--out", out, "--shard-tokens", "100", *corpus]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert len(summary["shards"]["train"]) > 2

    assert main(["data", "prepare", "--out", out, *corpus]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err

    assert main(["data", "prepare", "--out", out, "--overwrite", *corpus]) == 0  # one big shard now
    assert json.loads(capsys.readouterr().out)["shards"]["train"] == ["train_000000.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tokenizer_meta.json", "train_000000.bin"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "OUT", "MISSING.txt"], "MISSING.txt: no such file"),
        (["--out", "OUT", "--val-fraction", "0.5", "ONE.txt"], "selects none of the 1 documents"),
        (["--out", "OUT", "--val-fraction", "1.5", "ONE.txt"], "val_fraction must be in [0, 1)"),
        (["--out", "OUT", "--shard-tokens", "0", "ONE.txt"], "shard_tokens must be >= 1"),
        (["--out", "OUT", "BAD.jsonl"], 'BAD.jsonl:2: expected an object with a string "text" field'),
        (["--out", "OUT", "--tokenizer", "MISSING.json", "ONE.txt"], "MISSING.json: no such file"),
    ],
)
def test_cli_errors_are_one_line_exit_2(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "ONE.txt").write_text("one document")
    (tmp_path / "BAD.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    placeholders = {"OUT", "ONE.txt", "MISSING.txt", "BAD.jsonl", "MISSING.json"}
    args = [str(tmp_path / a) if a in placeholders else a for a in args]
    assert main(["data", "prepare", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("speedrun data prepare: error: ") and err.count("\n") == 1
    assert message in err


def test_prepare_llama3_sized_vocabulary_writes_uint32_shards(tmp_path: Path) -> None:
    from speedrun_trainer.data.shards import read_shard_file
    from speedrun_trainer.data.tokenizer import load_tokenizer
    from tests.support.llama3_vocab import write_llama3_sized_tokenizer

    spec = str(write_llama3_sized_tokenizer(tmp_path / "tokenizer.json"))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"the end of story {i}. Then it ran away."}) + "\n" for i in range(10)))
    out = tmp_path / "out"
    summary = prepare([str(docs)], str(out), spec, val_fraction=0.2, dataset="my/stories")
    meta = json.loads((out / "tokenizer_meta.json").read_text())
    assert meta["vocab_size"] == 128_256 and meta["token_size"] == 4 and meta["dataset"] == "my/stories"
    tokens = read_shard_file(out / "train_000000.bin")
    assert tokens.dtype == np.uint32 and int(tokens.max()) > 65_535
    tok = load_tokenizer(spec)
    assert int(tokens[0]) == tok.eot_id == 128_000  # <|begin_of_text|> separates documents
    assert tok.decode([int(t) for t in tokens[1:]]).startswith("the end of story 0. Then it ran away.")
    assert summary["tokens"]["train"] == len(tokens)


def test_a_directory_as_input_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        prepare([str(tmp_path)], str(tmp_path / "out"), "byte")


def test_shards_of_another_tokenizer_are_named_as_a_config_problem(tmp_path: Path, bpe_tokenizer_json: Path) -> None:
    from speedrun_trainer.data.prepare import recorded_dataset, tokenizer_mismatch

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(4)))
    prepare([str(docs)], str(tmp_path / "out"), "byte", val_fraction=0.5, dataset="my/docs")
    shards = f"{(tmp_path / 'out').as_uri()}/val_*.bin"
    assert tokenizer_mismatch(shards, "spec.eval.bpb.data", load_tokenizer("byte")) is None
    problem = tokenizer_mismatch(shards, "spec.eval.bpb.data", load_tokenizer(str(bpe_tokenizer_json)))
    assert problem is not None and problem.startswith("spec.eval.bpb.data: ") and "tokenized with byte" in problem
    assert recorded_dataset(shards) == "my/docs" and recorded_dataset("builtin://pydoc-topics/val") is None
    assert tokenizer_mismatch(str(tmp_path / "nowhere"), "x", load_tokenizer("byte")) is None  # no meta: no claim


def _byte_level_tokenizer(path: Path, adds_bos: bool, normalizer: dict | None = None) -> Path:
    """256 ByteLevel characters (id = byte) and Llama 3's BOS 256 / EOS 257; optionally a post-processor
    that adds BOS itself, as Llama 3's tokenizer does."""
    from tests.support.llama3_vocab import BYTE_LEVEL, byte_level_bpe, byte_level_chars, special_tokens

    sequence_a = {"Sequence": {"id": "A", "type_id": 0}}
    post = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, sequence_a],
        "pair": [sequence_a, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [256], "tokens": ["<|begin_of_text|>"]}
        },
    }
    doc = byte_level_bpe(
        {c: i for i, c in enumerate(byte_level_chars())},
        [],
        special_tokens(256, ["<|begin_of_text|>", "<|end_of_text|>"]),
        normalizer=normalizer,
        post_processor=post if adds_bos else None,
        decoder=BYTE_LEVEL,
    )
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    ("adds_bos", "expected"),
    [
        # Llama 3 adds BOS itself; levanter appends " " + EOS to the text: "hi" -> BOS h i ' ' EOS
        (True, [256, 104, 105, 32, 257]),
        # a tokenizer that adds nothing: levanter writes "<bos> " + text + " <eos>": BOS ' ' h i ' ' EOS
        (False, [256, 32, 104, 105, 32, 257]),
    ],
)
def test_levanter_documents_by_hand(tmp_path: Path, adds_bos: bool, expected: list[int]) -> None:
    tok = _byte_level_tokenizer(tmp_path / "tok.json", adds_bos)
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "hi"}) + "\n" + json.dumps({"text": "hi"}) + "\n")
    out = tmp_path / "out"
    summary = prepare([str(docs)], out.as_uri(), str(tok), dataset="paloma/c4_en", split="val", documents="levanter")
    assert summary["document_style"] == "levanter"
    assert read_shard((out / "val_000000.bin").read_bytes(), "val").tolist() == expected * 2
    plain = prepare([str(docs)], (tmp_path / "plain").as_uri(), str(tok), split="val")
    assert read_shard((tmp_path / "plain" / "val_000000.bin").read_bytes(), "val").tolist() == [256, 104, 105] * 2
    assert plain["document_style"] == "separator"


def test_levanter_documents_refused_where_not_replicated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs.txt"
    docs.write_text("hi")
    assert main(["data", "prepare", "--out", str(tmp_path / "a"), "--documents", "levanter", str(docs)]) == 2
    assert "levanter-style documents need a tokenizers JSON" in capsys.readouterr().err
    replace = {"type": "Replace", "pattern": {"String": "x"}, "content": "y"}
    tok = _byte_level_tokenizer(tmp_path / "tok.json", True, replace)
    assert (
        main(
            [
                "data",
                "prepare",
                "--out",
                str(tmp_path / "b"),
                "--tokenizer",
                str(tok),
                "--documents",
                "levanter",
                str(docs),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "split long documents" in err
