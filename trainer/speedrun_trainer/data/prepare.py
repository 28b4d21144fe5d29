"""`speedrun data prepare`: tokenize text files into `.bin` shards on any storage.

    speedrun data prepare --tokenizer byte --out s3://bucket/tiny [--val-fraction 0.1] \\
        [--shard-tokens 100000000] [--endpoint-url URL] [--overwrite] corpus.jsonl more.txt
    python -m speedrun_trainer.data.prepare data prepare ...   # the same, without the rest of the CLI

Inputs are file paths or file://, s3://, https:// URIs (globs expand for file:// and s3://): a
`.jsonl` file holds one document per line in its "text" field; any other file is one document.
Each document is preceded by the tokenizer's separator token, or with `--documents levanter`
written as levanter's BatchTokenizer writes Marin's caches: BOS + text + " " + EOS for Llama 3
(`Tokenizer.levanter_document`). Document i (counted over all
inputs in order, from 0) goes to validation when floor((i+1)*f) > floor(i*f) for f = val-fraction:
every (1/f)-th document, deterministic and independent of sharding.

Output under `--out`: `train_000000.bin`, `train_000001.bin`, ... and `val_000000.bin`, ... of
`--shard-tokens` tokens each (the last one shorter; uint16 shards, or uint32 version-2 shards for
vocabularies over 65,536 ids), then `tokenizer_meta.json` (tokenizer name and spec, vocab_size,
eot_id, token_size, document_style, `dataset` (`--dataset NAME`: what evaluation results call this data),
documents and tokens per split, shard names, and `token_bytes`:
the UTF-8 byte length of every token id, the BPB denominator). The metadata is written last:
output is complete when it exists. Train on `<out>/train_*.bin`, validate on `<out>/val_*.bin`.
Writing over a complete earlier output needs `--overwrite`; shards named like ours that this run
did not write (an earlier, longer output; an interrupted run) are deleted.
Local `.jsonl` files are streamed; remote inputs and plain-text documents are read whole.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from speedrun_trainer.data.shards import shard_name, token_size_for, write_shard
from speedrun_trainer.data.storage import (
    DataError,
    Storage,
    expand_uris,
    fetch_uri,
    local_path_of,
    open_storage,
    scheme_of,
)
from speedrun_trainer.data.tokenizer import load_tokenizer

META_KEY = "tokenizer_meta.json"
SPLITS = ("train", "val")
DOCUMENT_STYLES = ("separator", "levanter")
_OUTPUT = re.compile(r"(train|val)_\d{6}\.bin\Z")


def _lines(uri: str, endpoint_url: str | None) -> Iterator[str]:
    """The lines of a text file; local files are streamed, remote ones fetched whole."""
    try:
        if scheme_of(uri) == "file":
            try:
                path = local_path_of(uri)
                opener = gzip.open if path.suffix == ".gz" else open
                with opener(path, "rt", encoding="utf-8") as f:
                    yield from f
            except FileNotFoundError:
                raise DataError(f"{uri}: no such file") from None
            except IsADirectoryError:
                raise DataError(f"{uri}: is a directory; give files or a glob (dir/*.jsonl)") from None
        else:
            yield from fetch_uri(uri, endpoint_url).decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{uri}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"{uri}: a damaged gzip file ({e})") from None


def iter_documents(uri: str, endpoint_url: str | None = None) -> Iterator[str]:
    """The documents of one input file: each jsonl line's "text", or the whole file."""
    if not uri.endswith((".jsonl", ".jsonl.gz")):
        yield "".join(_lines(uri, endpoint_url))
        return
    for lineno, line in enumerate(_lines(uri, endpoint_url), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{uri}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            raise DataError(f'{uri}:{lineno}: expected an object with a string "text" field')
        yield doc["text"]


class ShardWriter:
    """Cuts one split's token stream into shards of exactly `shard_tokens` (the last shorter)."""

    def __init__(self, storage: Storage, split: str, shard_tokens: int, token_size: int = 2) -> None:
        self.storage, self.split, self.shard_tokens = storage, split, shard_tokens
        self.token_size = token_size
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.names: list[str] = []
        self.tokens = 0
        self.documents = 0

    def add(self, tokens: np.ndarray) -> None:
        self.pending.append(tokens)
        self.pending_tokens += len(tokens)
        self.tokens += len(tokens)
        self.documents += 1
        while self.pending_tokens >= self.shard_tokens:
            stream = np.concatenate(self.pending)
            self._write(stream[: self.shard_tokens])
            self.pending = [stream[self.shard_tokens :]]
            self.pending_tokens = len(self.pending[0])

    def close(self) -> None:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_tokens = [], 0

    def _write(self, tokens: np.ndarray) -> None:
        name = shard_name(self.split, len(self.names))
        self.storage.write_bytes(name, write_shard(tokens, token_size=self.token_size))
        self.names.append(name)


def _expand_inputs(inputs: list[str], endpoint_url: str | None) -> list[str]:
    files: list[str] = []
    for item in inputs:
        files.extend(expand_uris(item, endpoint_url) if "*" in item or "?" in item else [item])
    return files


def prepare(
    inputs: list[str],
    out_uri: str,
    tokenizer: str,
    shard_tokens: int = 100_000_000,
    val_fraction: float = 0.0,
    endpoint_url: str | None = None,
    overwrite: bool = False,
    dataset: str | None = None,
    split: str | None = None,
    documents: str = "separator",
) -> dict[str, Any]:
    """Tokenize `inputs` into shards under `out_uri` (see the module docstring); return a summary."""
    if not inputs:
        raise DataError("no input files given")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be >= 1, got {shard_tokens}")
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if documents not in DOCUMENT_STYLES:
        raise DataError(f"documents must be one of {', '.join(DOCUMENT_STYLES)}, got {documents!r}")
    if split not in (None, *SPLITS):
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    tok = load_tokenizer(tokenizer, endpoint_url)
    token_size = token_size_for(tok.vocab_size)  # uint32 (version-2) shards past 65,536 ids
    storage = open_storage(out_uri, endpoint_url)
    if not overwrite and storage.exists(META_KEY):
        raise DataError(f"{storage.url(META_KEY)}: already exists (prepared earlier); pass --overwrite")
    earlier = [k for k in storage.list() if _OUTPUT.match(k)]

    fraction = Fraction(val_fraction).limit_denominator(1_000_000)
    writers = {split: ShardWriter(storage, split, shard_tokens, token_size) for split in SPLITS}
    index = 0
    for uri in _expand_inputs(inputs, endpoint_url):
        for text in iter_documents(uri, endpoint_url):
            is_val = split == "val" if split else int((index + 1) * fraction) > int(index * fraction)
            if documents == "levanter":
                tokens = tok.levanter_document(text)
            else:
                tokens = np.concatenate([[tok.eot_id], tok.encode_array(text)]).astype(np.int64)
            writers["val" if is_val else "train"].add(tokens)
            index += 1
    if val_fraction > 0 and writers["val"].documents == 0:
        raise DataError(
            f"val_fraction {val_fraction} selects none of the {index} documents"
            " (a non-.jsonl file is one document; use .jsonl for many)"
        )
    for writer in writers.values():
        writer.close()

    written = {name for w in writers.values() for name in w.names}
    for key in earlier:
        if key not in written:
            storage.delete(key)  # leftovers of an earlier output or an interrupted run
    summary: dict[str, Any] = {
        "out": storage.url(),
        "tokenizer": tok.name,
        "spec": tok.spec,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "token_size": token_size,
        "dataset": dataset,
        "document_style": documents,
        "shard_tokens": shard_tokens,
        "val_fraction": val_fraction,
        "documents": {s: w.documents for s, w in writers.items()},
        "tokens": {s: w.tokens for s, w in writers.items()},
        "shards": {s: w.names for s, w in writers.items()},
    }
    storage.write_json(META_KEY, {**summary, "token_bytes": tok.token_bytes().tolist()})
    return {**summary, "meta": storage.url(META_KEY)}


def shard_meta(uri: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """The `tokenizer_meta.json` beside `uri`'s shards ({} when there is none or it is unreadable).

    `uri` is what a manifest gives: a directory/prefix, or a glob or file inside one.
    """
    if scheme_of(uri) not in ("file", "s3"):
        return {}
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    folder = uri.rstrip("/").rsplit("/", 1)[0] if ("*" in last or "?" in last or last.endswith(".bin")) else uri
    try:
        storage = open_storage(folder, endpoint_url)
        meta = storage.read_json(META_KEY) if storage.exists(META_KEY) else {}
    except (DataError, OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def recorded_dataset(uri: str, endpoint_url: str | None = None) -> str | None:
    """The dataset name recorded beside `uri`'s shards (`prepare --dataset`, `data fetch`), if any."""
    name = shard_meta(uri, endpoint_url).get("dataset")
    return str(name) if name else None


def tokenizer_mismatch(uri: str, field: str, tokenizer: Any, endpoint_url: str | None = None) -> str | None:
    """A one-line problem when `prepare` wrote `uri`'s shards with another tokenizer than the run's
    (their ids would mean other text), else None."""
    recorded = shard_meta(uri, endpoint_url).get("tokenizer")
    if recorded and recorded != tokenizer.name:
        return (
            f"{field}: {uri} was tokenized with {recorded}, but data.tokenizer is {tokenizer.spec} ({tokenizer.name})"
        )
    return None


def run_prepare(args: argparse.Namespace) -> int:
    """The `data prepare` command: the summary as JSON on stdout; errors one line on stderr, exit 2."""
    try:
        summary = prepare(
            args.files,
            args.out,
            args.tokenizer,
            shard_tokens=args.shard_tokens,
            val_fraction=args.val_fraction,
            endpoint_url=args.endpoint_url,
            overwrite=args.overwrite,
            dataset=args.dataset,
            documents=args.documents,
        )
    except DataError as e:
        print(f"speedrun data prepare: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def register(subparsers: Any) -> Any:
    """Add `data prepare` to the CLI's subparsers; the parsed args carry `func` (args -> exit code).
    Returns the `data` command's own subparsers (`data fetch` joins them)."""
    data = subparsers.add_parser("data", help="prepare or fetch token shards")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    p = commands.add_parser(
        "prepare",
        help="tokenize text files into .bin shards",
        description="Tokenize .txt (one document each) and .jsonl (a 'text' field per line) files "
        "into train_NNNNNN.bin / val_NNNNNN.bin shards and tokenizer_meta.json under --out.",
    )
    p.add_argument("files", nargs="+", metavar="FILES", help="paths or file://, s3://, https:// URIs")
    p.add_argument("--out", required=True, help="output storage: s3://bucket/prefix, file:///path or a path")
    p.add_argument("--tokenizer", default="byte", help="byte | gpt2 | URI of a tokenizers JSON")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of documents for val_*.bin")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output under --out")
    p.add_argument(
        "--dataset",
        default=None,
        help="the dataset's name, recorded in tokenizer_meta.json; results name BPB after it "
        "(paloma/c4_en: eval/paloma/c4_en/bpb-cross-doc, see speedrun_api/metric_definitions.py)",
    )
    p.add_argument(
        "--documents",
        choices=DOCUMENT_STYLES,
        default="separator",
        help="separator: the separator token before each document; levanter: BOS + text + ' ' + EOS"
        " as levanter's BatchTokenizer writes Marin's caches (tokenizers JSON with Llama 3's BOS/EOS)",
    )
    p.set_defaults(func=run_prepare)
    return commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speedrun")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
