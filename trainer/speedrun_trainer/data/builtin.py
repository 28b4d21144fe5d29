"""Built-in corpora that need no download: `builtin://<corpus>/<split>`.

`builtin://pydoc-topics/train` and `builtin://pydoc-topics/val` are the help topics every Python
installation ships in `pydoc_data.topics.topics` (79 documents, ~466 KB of English about Python:
`speedrun run examples/tiny-cpu.yaml` trains on them without network).

Rules (fixed, so every process and machine with the same Python derives the same tokens):
- documents are taken in sorted-key order, each preceded by the tokenizer's separator token;
- validation is the last ceil(n / 10) documents in that order (8 of 79: `typesmethods` ..
  `yield`, ~38 KB), training the others, so the splits never share a document.

`materialize_builtin` writes the split as one `.bin` shard under
`<cache_dir>/builtin/<corpus>/<split>.<tokenizer>.<text hash>.bin` once and returns its file://
URI. The text hash keeps caches from different Python versions apart. Concurrent callers (the
torchrun processes of one machine) serialize on a file lock and the shard is written to a
temporary name and renamed, so nobody reads a half-written shard.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from speedrun_trainer.data.shards import read_shard_file, token_size_for, write_shard
from speedrun_trainer.data.storage import DataError, atomic_file, file_lock
from speedrun_trainer.data.tokenizer import Tokenizer

SCHEME = "builtin://"
SPLITS = ("train", "val")
VAL_EVERY = 10  # validation = the last ceil(n / VAL_EVERY) documents


def _pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


CORPORA: dict[str, Callable[[], list[str]]] = {"pydoc-topics": _pydoc_topics}


def is_builtin(uri: str) -> bool:
    return uri.startswith(SCHEME)


def parse_builtin(uri: str) -> tuple[str, str]:
    """`builtin://pydoc-topics/val` -> ("pydoc-topics", "val"); DataError for unknown ones."""
    corpus, _, split = uri[len(SCHEME) :].strip("/").partition("/") if is_builtin(uri) else ("", "", "")
    if corpus not in CORPORA or split not in SPLITS:
        known = ", ".join(f"{SCHEME}{c}/{s}" for c in CORPORA for s in SPLITS)
        raise DataError(f"{uri}: unknown built-in dataset (known: {known})")
    return corpus, split


def split_documents(documents: list[str], split: str) -> list[str]:
    """The documents of one split: validation is the last ceil(n / 10), training the rest."""
    n_val = math.ceil(len(documents) / VAL_EVERY)
    return documents[len(documents) - n_val :] if split == "val" else documents[: len(documents) - n_val]


def builtin_documents(uri: str) -> list[str]:
    """The texts of a built-in split, in order."""
    corpus, split = parse_builtin(uri)
    return split_documents(CORPORA[corpus](), split)


def encode_documents(documents: list[str], tokenizer: Tokenizer) -> np.ndarray:
    """Separator + tokens of each document, concatenated (int64)."""
    eot = np.array([tokenizer.eot_id], dtype=np.int64)
    parts = [part for doc in documents for part in (eot, tokenizer.encode_array(doc))]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def materialize_builtin(uri: str, tokenizer: Tokenizer, cache_dir: Path) -> list[str]:
    """Write the split's shard into the cache once; return its file:// URI (a one-element list)."""
    corpus, split = parse_builtin(uri)
    documents = builtin_documents(uri)
    digest = hashlib.sha256("\0".join(documents).encode("utf-8")).hexdigest()[:12]
    path = Path(cache_dir) / "builtin" / corpus / f"{split}.{_safe(tokenizer.name)}.{digest}.bin"
    with file_lock(path.with_name(path.name + ".lock")):
        if not _valid(path):
            data = write_shard(encode_documents(documents, tokenizer), token_size_for(tokenizer.vocab_size))
            with atomic_file(path) as f:
                f.write(data)
    return [f"file://{path}"]


def _valid(path: Path) -> bool:
    """A complete shard exists (a corrupt one, e.g. from a full disk, is rewritten)."""
    if not path.is_file():
        return False
    try:
        read_shard_file(path)
    except DataError:
        return False
    return True
