"""A synthetic tokenizers JSON of Llama 3's size: 128,000 byte-level BPE tokens + 256 specials.

Llama 3's own tokenizer (Marin's `marin-tokenizer`) cannot be downloaded here, so tests build one
of the same shape: the 256 ByteLevel characters (ids 0-255, in byte order), every two-character
token (65,536 merges), then three-character tokens over common characters until 128,000 ids,
then `<|begin_of_text|>` = 128000, `<|end_of_text|>` = 128001 and reserved specials up to 128255
(Llama 3's layout). Real text encodes to ids above 65,535, so it needs the uint32 shards.

    path = write_llama3_sized_tokenizer(tmp_path / "tokenizer.json")

Its pieces (`byte_level_chars`, `special_tokens`, `byte_level_bpe`) build smaller tokenizers of the
same kind.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

LLAMA3_VOCAB = 128_256
REGULAR_TOKENS = 128_000
COMMON = "Ġ" + "etaoinshrdlucmfwypvbgkjqxz" + "ETAOINSHRDLUCM" + ".,Ċ'-"  # Ġ is a space, Ċ a newline
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def byte_level_chars() -> list[str]:
    """GPT-2's ByteLevel alphabet: the character standing for byte b, for b = 0..255."""
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    chars = {b: chr(b) for b in visible}
    hidden = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + n) for n, b in enumerate(hidden)})
    return [chars[b] for b in range(256)]


def special_tokens(first_id: int, names: list[str]) -> list[dict]:
    """tokenizers' `added_tokens` entries: `names` as special tokens, numbered from `first_id`."""
    return [
        {
            "id": first_id + i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, name in enumerate(names)
    ]


def byte_level_bpe(vocab: dict[str, int], merges: list[list[str]], added_tokens: list[dict], **fields: object) -> dict:
    """A tokenizers JSON: a BPE model between a ByteLevel pre-tokenizer and decoder; `fields` replace
    its top-level entries (`normalizer`, `post_processor`, `decoder`, ...)."""
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": BYTE_LEVEL,
        "post_processor": None,
        "decoder": {**BYTE_LEVEL, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }
    unknown = fields.keys() - doc.keys()
    assert not unknown, f"not a top-level entry of a tokenizers JSON: {sorted(unknown)}"
    return doc | fields


def llama3_sized_tokenizer() -> dict:
    alphabet = byte_level_chars()
    vocab: dict[str, int] = {c: i for i, c in enumerate(alphabet)}
    merges: list[list[str]] = []
    for a, b in itertools.product(alphabet, repeat=2):
        vocab[a + b] = len(vocab)
        merges.append([a, b])
    for a, b, c in itertools.product(COMMON, repeat=3):
        if len(vocab) == REGULAR_TOKENS:
            break
        vocab[a + b + c] = len(vocab)
        merges.append([a + b, c])
    assert len(vocab) == REGULAR_TOKENS, len(vocab)
    names = ["<|begin_of_text|>", "<|end_of_text|>"] + [
        f"<|reserved_special_token_{i}|>" for i in range(LLAMA3_VOCAB - REGULAR_TOKENS - 2)
    ]
    return byte_level_bpe(vocab, merges, special_tokens(REGULAR_TOKENS, names))


def write_llama3_sized_tokenizer(path: Path) -> Path:
    path.write_text(json.dumps(llama3_sized_tokenizer()))
    return path
