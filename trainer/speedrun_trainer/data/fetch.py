"""`speedrun data fetch NAME --out URI`: each benchmark's own data, by name, through huggingface_hub.

    speedrun data fetch fineweb10b-gpt2 --out s3://bucket/fineweb10B [--train-shards 8]
    speedrun data fetch paloma-c4-en --out s3://bucket/paloma-c4-en --tokenizer s3://bucket/llama3/tokenizer.json
    speedrun data fetch nanochat-eval-bundle --out s3://bucket/nanochat
    speedrun data fetch --list

- `fineweb10b-gpt2`: modded-nanogpt's FineWeb10B GPT-2 shards, as its data/cached_fineweb10B.py
  downloads them (hub dataset kjj0/fineweb10B-gpt2): `fineweb_val_000000.bin` (the validation
  shard; modded-nanogpt scores its first 10,485,760 tokens, BottleCap its first 1,048,576) and
  `fineweb_train_000001.bin`... (100M tokens each; `--train-shards`, default 8). Copied unchanged;
  every header is checked against its file's size.
- `paloma-c4-en`: Paloma's C4-EN validation split (hub dataset allenai/paloma, at the revision
  Marin pins, `c4_en/val/val*.jsonl.gz`; gated: accept its terms on the hub, set HF_TOKEN),
  tokenized with `--tokenizer` (`--documents levanter`: each document as levanter's BatchTokenizer
  writes it for Marin, BOS + text + " " + EOS) into `val_*.bin` and recorded as dataset `paloma/c4_en` (results file
  its BPB under Marin's key only when every rule of levanter's BPB held: speedrun_api/metric_definitions.py).
- `nanochat-eval-bundle`: nanochat's CORE bundle. nanochat publishes `eval_bundle.zip` on S3, not
  on the hub ($SPEEDRUN_EVAL_BUNDLE_URL overrides the URL); it is downloaded with huggingface_hub's
  resumable HTTP downloader, its size and every member's CRC checked, and unpacked under
  `<out>/eval_bundle/` (give that as `spec.eval.core.bundle`).
- `marin-fineweb-edu`: not fetched: see `MARIN_CACHE_MISSING`.

Downloads honour HF_ENDPOINT (a mirror) and HF_TOKEN, land first in `<SPEEDRUN_CACHE_DIR>/hub`
(an interrupted download resumes from its partial file), show tqdm progress bars
(HF_HUB_DISABLE_PROGRESS_BARS=1 hides them), and have their sizes checked. An unreachable hub is
one line naming the endpoint (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from speedrun_api.run_contract import ENV_EVAL_BUNDLE_URL, cache_dir
from speedrun_trainer.data import prepare as prepare_command
from speedrun_trainer.data.shards import parse_header
from speedrun_trainer.data.storage import DataError, open_storage

FINEWEB_REPO = "kjj0/fineweb10B-gpt2"  # modded-nanogpt data/cached_fineweb10B.py
PALOMA_REPO = "allenai/paloma"
PALOMA_REVISION = "65cd6fc"  # Marin's experiments/paloma.py pins this revision
PALOMA_C4_EN_FILES = "c4_en/val/val*.jsonl.gz"
NANOCHAT_EVAL_BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"  # nanochat
DEFAULT_HUB = "https://huggingface.co"
MARIN_CACHE_MISSING = (
    "marin-fineweb-edu: Marin's pretokenized FineWeb-Edu is a levanter cache (TensorStore zarr3 arrays of"
    " token ids and document offsets, written by levanter's store module); reading it needs tensorstore plus"
    " levanter's layout, which this project does not implement yet. Fetch the text instead and tokenize it with"
    " `speedrun data prepare --tokenizer <llama3 tokenizer.json>`"
)


class FetchError(DataError):
    """A dataset that cannot be fetched; one line naming what and why."""


def cache_root() -> Path:
    return cache_dir() / "hub"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_HUB


def _hub_error(what: str, err: BaseException, source: str | None = None) -> FetchError:
    """One line: what failed, where from, the library's reason, and what to do."""
    if isinstance(err, FetchError):
        return err
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    hint = ""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        hint = "; the dataset is gated: accept its terms on the hub and set HF_TOKEN"
    elif status is None:
        hint = "; offline? set HF_ENDPOINT to a reachable mirror"
    return FetchError(f"{what} from {source or hub_endpoint()}: {type(err).__name__}: {detail}{hint}")


def check_reachable(url: str) -> None:
    """Fail at once, in one line, when nothing answers at `url` (huggingface_hub would retry for ~20 s)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    if constants.HF_HUB_OFFLINE:
        raise FetchError(f"HF_HUB_OFFLINE is set: cannot fetch from {url}")
    try:
        get_session().head(url, timeout=10)
    except Exception as err:  # connection refused, DNS, timeouts: the same advice
        raise _hub_error("cannot connect", err, url) from None


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a hub dataset, downloaded (or resumed) into the cache; its local path."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                repo_id,
                filename,
                repo_type="dataset",
                revision=revision,
                cache_dir=cache_root(),
                endpoint=hub_endpoint(),
                token=os.environ.get("HF_TOKEN") or None,
            )
        )
    except Exception as err:  # huggingface_hub and httpx raise many kinds; all are one line for the user
        raise _hub_error(f"could not download {repo_id}/{filename}", err) from None


def hub_files(repo_id: str, pattern: str, revision: str | None = None) -> list[Path]:
    """The files of a hub dataset matching `pattern`, downloaded into the cache, sorted."""
    from huggingface_hub import snapshot_download

    try:
        root = Path(
            snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                allow_patterns=[pattern],
                cache_dir=cache_root(),
                endpoint=hub_endpoint(),
                token=os.environ.get("HF_TOKEN") or None,
            )
        )
    except Exception as err:
        raise _hub_error(f"could not download {repo_id}/{pattern}", err) from None
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise FetchError(f"{repo_id}@{revision}: no file matches {pattern}")
    return files


def url_file(url: str, name: str) -> Path:
    """A plain HTTPS file through huggingface_hub's resumable downloader; size checked."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import get_session

    dest = cache_root() / "urls" / name
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".incomplete")
    try:
        head = get_session().head(url, follow_redirects=True)
        head.raise_for_status()
        size = int(head.headers["Content-Length"]) if "Content-Length" in head.headers else None
        with open(partial, "ab") as f:
            http_get(url, f, resume_size=f.tell(), expected_size=size, displayed_filename=name)
    except Exception as err:
        raise _hub_error("could not download", err, url) from None
    if size is not None and partial.stat().st_size != size:
        raise FetchError(f"{url}: downloaded {partial.stat().st_size} bytes, expected {size}")
    partial.rename(dest)
    return dest


# ---- the datasets ----------------------------------------------------------------------------


def fetch_fineweb(out: str, args: argparse.Namespace) -> dict[str, Any]:
    names = [f"fineweb_val_{0:06d}.bin"] + [f"fineweb_train_{i:06d}.bin" for i in range(1, args.train_shards + 1)]
    check_reachable(hub_endpoint())
    storage = open_storage(out, args.endpoint_url)
    tokens = {}
    for name in names:
        path = hub_file(FINEWEB_REPO, name)
        with open(path, "rb") as f:
            count, _ = parse_header(f.read(1024), f"{FINEWEB_REPO}/{name}", path.stat().st_size)
        storage.write_bytes(name, path.read_bytes())
        tokens[name] = count
    return {
        "out": storage.url(),
        "dataset": "fineweb10B-gpt2",
        "tokens": tokens,
        "train": storage.url("fineweb_train_*.bin"),
        "validation": storage.url("fineweb_val_*.bin"),
    }


def fetch_paloma_c4_en(out: str, args: argparse.Namespace) -> dict[str, Any]:
    if not args.tokenizer:
        raise FetchError(
            "paloma-c4-en is tokenized on the way: give --tokenizer (byte | gpt2 | tokenizer.json URI;"
            " Marin's runs use Llama 3's)"
        )
    check_reachable(hub_endpoint())
    files = hub_files(PALOMA_REPO, PALOMA_C4_EN_FILES, PALOMA_REVISION)
    summary = prepare_command.prepare(
        [str(p) for p in files],
        out,
        args.tokenizer,
        endpoint_url=args.endpoint_url,
        overwrite=args.overwrite,
        dataset="paloma/c4_en",
        split="val",
        documents=getattr(args, "documents", "separator"),
    )
    return {**summary, "validation": open_storage(out, args.endpoint_url).url("val_*.bin")}


def fetch_eval_bundle(out: str, args: argparse.Namespace) -> dict[str, Any]:
    url = os.environ.get(ENV_EVAL_BUNDLE_URL) or NANOCHAT_EVAL_BUNDLE_URL
    if not (cache_root() / "urls" / "eval_bundle.zip").is_file():
        check_reachable(url)
    path = url_file(url, "eval_bundle.zip")
    try:
        with zipfile.ZipFile(path) as bundle:
            bad = bundle.testzip()
            if bad is not None:
                raise FetchError(f"{url}: member {bad} fails its CRC check (delete {path} and fetch again)")
            storage = open_storage(out, args.endpoint_url)
            members = [m for m in bundle.infolist() if not m.is_dir()]
            for member in members:
                storage.write_bytes(member.filename, bundle.read(member))
    except zipfile.BadZipFile as err:
        raise FetchError(f"{url}: not a zip file ({err}); delete {path} and fetch again") from None
    root = "eval_bundle" if any(m.filename.startswith("eval_bundle/") for m in members) else ""
    return {"out": storage.url(), "files": len(members), "bundle": storage.url(root)}


def fetch_marin_fineweb_edu(out: str, args: argparse.Namespace) -> dict[str, Any]:
    raise FetchError(MARIN_CACHE_MISSING)


@dataclass(frozen=True)
class Source:
    name: str
    what: str
    fetch: Callable[[str, argparse.Namespace], dict[str, Any]]


SOURCES = {
    s.name: s
    for s in (
        Source("fineweb10b-gpt2", f"modded-nanogpt's FineWeb10B GPT-2 .bin shards ({FINEWEB_REPO})", fetch_fineweb),
        Source(
            "paloma-c4-en", f"Paloma C4-EN validation ({PALOMA_REPO}@{PALOMA_REVISION}), tokenized", fetch_paloma_c4_en
        ),
        Source("nanochat-eval-bundle", "nanochat's CORE eval_bundle.zip (22 tasks), unpacked", fetch_eval_bundle),
        Source(
            "marin-fineweb-edu",
            "Marin's pretokenized FineWeb-Edu (a levanter cache): not readable yet",
            fetch_marin_fineweb_edu,
        ),
    )
}


def run_fetch(args: argparse.Namespace) -> int:
    """The `data fetch` command: a JSON summary on stdout; errors one line on stderr, exit 2."""
    if args.list or not args.name:
        print("\n".join(f"{s.name:22} {s.what}" for s in SOURCES.values()))
        return 0 if args.list else 2
    source = SOURCES.get(args.name)
    try:
        if source is None:
            raise FetchError(f"unknown dataset {args.name!r}; known: {', '.join(SOURCES)}")
        if not args.out:
            raise FetchError("give --out URI (file:///path, a path, or s3://bucket/prefix)")
        summary = source.fetch(args.out, args)
    except DataError as e:
        print(f"speedrun data fetch: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def register(commands: Any) -> None:
    p = commands.add_parser(
        "fetch", help="download a benchmark's own data by name (huggingface_hub)", description=__doc__.splitlines()[0]
    )
    p.add_argument("name", nargs="?", metavar="NAME", help=" | ".join(SOURCES))
    p.add_argument("--out", help="output storage: s3://bucket/prefix, file:///path or a path")
    p.add_argument("--list", action="store_true", help="list the datasets that can be fetched")
    p.add_argument("--train-shards", type=int, default=8, help="fineweb10b-gpt2: train shards of 100M tokens (8)")
    p.add_argument("--tokenizer", help="paloma-c4-en: byte | gpt2 | URI of a tokenizers JSON")
    p.add_argument(
        "--documents",
        choices=prepare_command.DOCUMENT_STYLES,
        default="separator",
        help="paloma-c4-en: levanter = BOS + text + ' ' + EOS per document, as Marin's levanter caches",
    )
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint of --out (default: $AWS_ENDPOINT_URL)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier output under --out")
    p.set_defaults(func=run_fetch)


def register_data(subparsers: Any) -> None:
    """`speedrun data prepare` and `speedrun data fetch`."""
    register(prepare_command.register(subparsers))
