"""Tokenizers: round trips, separators, and token byte lengths that add up to the text's bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speedrun_trainer.data.storage import DataError, open_storage
from speedrun_trainer.data.tokenizer import (
    ByteTokenizer,
    JsonTokenizer,
    TiktokenTokenizer,
    TokenizerError,
    byte_level_alphabet,
    load_tokenizer,
)

TEXTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\nand newlines\r\n",
    "Unicode: café, naïve, 日本語, emoji 🚀🧪, math ∑∫, NBSP\u00a0soft\u00adhyphen",
    "control \x00\x01\x7f bytes and DEL",
    "",
]


def _assert_bytes_add_up(tok, text: str) -> None:
    ids = tok.encode(text)
    lengths = tok.token_bytes()
    assert lengths.dtype == np.int64 and lengths.shape == (tok.vocab_size,)
    assert int(lengths[ids].sum()) == len(text.encode("utf-8")), text


@pytest.mark.parametrize("text", TEXTS)
def test_byte_tokenizer(text: str) -> None:
    tok = load_tokenizer("byte")
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("byte", 257, 256)
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.encode_array(text).tolist() == tok.encode(text)
    assert tok.decode(tok.encode(text)) == text
    _assert_bytes_add_up(tok, text)
    lengths = tok.token_bytes()
    assert lengths[256] == 0 and (lengths[:256] == 1).all()


def test_byte_level_alphabet_matches_the_tokenizers_library() -> None:
    from tokenizers import pre_tokenizers

    alphabet = byte_level_alphabet()
    assert sorted(alphabet.values()) == list(range(256))
    assert set(alphabet) == set(pre_tokenizers.ByteLevel.alphabet())
    assert alphabet["Ġ"] == ord(" ") and alphabet["Ċ"] == ord("\n") and alphabet["A"] == ord("A")


@pytest.mark.parametrize("text", TEXTS)
def test_json_byte_level_bpe(bpe_tokenizer_json: Path, text: str) -> None:
    tok = load_tokenizer(str(bpe_tokenizer_json))
    assert tok.name.startswith("json-") and tok.vocab_size == 400
    assert tok.eot_id == 0  # <|endoftext|>, the only special token
    assert tok.token_bytes()[tok.eot_id] == 0
    assert max(tok.token_bytes()) > 1, "the BPE learned no merges"
    assert tok.decode(tok.encode(text)) == text
    _assert_bytes_add_up(tok, text)


def test_json_token_bytes_on_a_real_corpus(bpe_tokenizer_json: Path) -> None:
    from speedrun_trainer.data.builtin import builtin_documents

    tok = load_tokenizer(f"file://{bpe_tokenizer_json}")
    text = "\n".join(builtin_documents("builtin://pydoc-topics/train")[:5])
    ids = tok.encode(text)
    assert len(ids) < len(text.encode()) * 0.8, "expected compression from merges"
    _assert_bytes_add_up(tok, text)


def test_json_tokenizer_from_s3(bpe_tokenizer_json: Path, s3_bucket) -> None:
    open_storage(s3_bucket.uri).write_bytes("tok/tokenizer.json", bpe_tokenizer_json.read_bytes())
    tok = load_tokenizer(f"{s3_bucket.uri}/tok/tokenizer.json")
    assert tok.name == load_tokenizer(str(bpe_tokenizer_json)).name  # named by content, not location
    assert tok.encode("hello") == load_tokenizer(str(bpe_tokenizer_json)).encode("hello")


def _train(tmp_path: Path, specials: list[str]) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["some text to learn from"] * 3, trainer)
    path = tmp_path / f"tok{len(specials)}.json"
    tok.save(str(path))
    return path


def test_json_separator_choice(tmp_path: Path) -> None:
    bos = JsonTokenizer(str(_train(tmp_path, ["<pad>", "<|bos|>"])))
    assert bos.eot_id == bos.tok.token_to_id("<|bos|>") == 1
    first = JsonTokenizer(str(_train(tmp_path, ["<unk>", "<pad>", "<mask>"])))
    assert first.eot_id == 0 and set(first.token_bytes()[:3]) == {0}
    with pytest.raises(TokenizerError, match="no special token to separate documents"):
        JsonTokenizer(str(_train(tmp_path, [])))


def test_json_errors_name_the_uri(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.json: no such file"):
        load_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(TokenizerError, match=f"{bad}: not a tokenizers JSON file"):
        load_tokenizer(str(bad))


def test_gpt2_unavailable_is_one_clear_line(monkeypatch) -> None:
    import tiktoken

    def offline(name: str) -> None:
        raise ConnectionError("HTTPSConnectionPool(host='openaipublic.blob.core.windows.net'): failed\nmore")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerError) as err:
        TiktokenTokenizer("gpt2")
    message = str(err.value)
    assert "\n" not in message and "TIKTOKEN_CACHE_DIR" in message and message.startswith("gpt2: ")
    assert err.value.transient  # a download: the network may come back (exit 1, retried)


@pytest.fixture(scope="module")
def gpt2():
    try:
        return load_tokenizer("gpt2")
    except TokenizerError:
        pytest.skip("gpt2 BPE file not available (no network, no TIKTOKEN_CACHE_DIR)")


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2(gpt2, text: str) -> None:
    tok = gpt2
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.encode("<|endoftext|>") != [50256], "text must be encoded literally"
    assert tok.decode(tok.encode(text)) == text
    _assert_bytes_add_up(tok, text)
    assert tok.token_bytes()[50256] == 0


def test_tiktoken_token_bytes_offline(monkeypatch) -> None:
    """The tiktoken path, checked on a small hand-made encoding (the GPT-2 file cannot be fetched)."""
    import tiktoken

    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({m: 256 + j for j, m in enumerate([b"th", b"the", b" the", b"in", "é".encode()])})
    mini = tiktoken.Encoding(
        "mini",
        pat_str=r"""'s|'t| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 300},
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: mini)
    tok = TiktokenTokenizer("mini")
    assert (tok.vocab_size, tok.eot_id) == (301, 300)
    lengths = tok.token_bytes()
    assert lengths[256:261].tolist() == [2, 3, 4, 2, 2]
    assert lengths[261:301].sum() == 0  # holes and the special token
    for text in [*TEXTS, "in the theory of <|endoftext|> café"]:
        _assert_bytes_add_up(tok, text)
    assert tok.encode("in the")[:2] == [259, 258]


def test_levanter_byte_count_decodes_after_a_dot():
    """levanter hf_utils.py byte_length_of_token: len(decode([".", id]).encode()) - 1, 0 for special
    ids. A byte that is not whole UTF-8 decodes to U+FFFD: 3 bytes where the exact count is 1 (the
    e2e tier checks JSON tokenizers against levanter's own function)."""
    tok = ByteTokenizer()
    table = tok.levanter_token_bytes()
    assert table[ord("a")] == 1 and table[0xC3] == 3 and table[0xFF] == 3 and table[tok.eot_id] == 0
    assert (tok.token_bytes()[:256] == 1).all()
