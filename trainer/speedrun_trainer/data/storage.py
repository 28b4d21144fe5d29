"""URIs and object storage, a thin adapter over fsspec: `file://` (or a plain path), `s3://`
(s3fs), `gs://` (gcsfs) and `http(s)://` (read-only).

`open_storage(uri)` gives a `Storage` rooted at a prefix; keys are `/`-separated and relative to
it. What fsspec does is left to fsspec: the backends, globbing (`expand_uris`), multipart
uploads, and the local cache of remote shards (`cached_copy`: fsspec's `filecache`, which
fetches an object again when its ETag/generation changes). What this module adds:

- one-line errors: every failure the user can cause (missing bucket or key, access denied,
  nothing listening, HTTP errors, a glob that matches nothing) is a `DataError` naming the URI,
  marked `transient` when a retry may fix it (data/failures.py decides; http(s) reads are
  retried with backoff there, S3 and GCS by their own clients);
- complete local writes: fsspec's local files are written in place (or, uncommitted, through
  a temporary file in /tmp, which a rename across filesystems cannot replace atomically), so
  `atomic_file` writes beside the target and `os.replace`s; an object store's PUT is atomic;
- `file_lock`: the processes of one node fetch a shard once (fsspec's cache has no lock);
- configuration from the usual environment: S3 endpoint from the argument, else
  `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (path-style addressing with an endpoint, as MinIO
  and moto want), credentials from `AWS_*`; GCS from Google's default credentials, or
  `STORAGE_EMULATOR_HOST` (anonymous, as fake-gcs-server wants) or the endpoint argument.
Listings are never cached (another process writes checkpoints while we read).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from speedrun_trainer.data.failures import is_transient, retrying

PART_SIZE = 5 * 1024 * 1024  # S3's smallest part
MULTIPART_THRESHOLD = 2 * PART_SIZE  # s3fs uploads objects of two parts or more in parts
TMP_SUFFIX = ".tmp"
REMOTE = ("s3", "gs", "http", "https")
EXTRAS = {"s3": ("s3fs", "train"), "gs": ("gcsfs", "gcs"), "http": ("aiohttp", "train"), "https": ("aiohttp", "train")}


class DataError(Exception):
    """A data or storage problem; the message is one line naming the URI. `transient`: a retry may
    fix it (a network failure: exit code 1); else only the user can (exit code 2)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def scheme_of(uri: str) -> str:
    """`file` for file:// URIs and plain paths, else the scheme (`s3`, `gs`, `https`, `builtin`...)."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def local_path_of(uri: str) -> Path:
    """The absolute local path of a file:// URI or a plain path (no percent-decoding)."""
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def split_bucket(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` (or gs://) -> ("bucket", "some/key")."""
    scheme = scheme_of(uri)
    bucket, _, key = uri[len(scheme) + 3 :].partition("/")
    if not bucket:
        raise DataError(f"{uri}: no bucket in the URI (expected {scheme}://bucket/prefix)")
    return bucket, key


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write `path` through a temporary file that replaces it only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock between the processes of one machine (so a node fetches a shard once)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- fsspec filesystems -----------------------------------------------------------------------


def fs_options(scheme: str, endpoint_url: str | None = None) -> dict[str, Any]:
    """The fsspec constructor options for a scheme, from the argument and the environment."""
    env = os.environ
    if scheme == "s3":
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        options: dict[str, Any] = {
            "key": env.get("AWS_ACCESS_KEY_ID"), "secret": env.get("AWS_SECRET_ACCESS_KEY"),
            "token": env.get("AWS_SESSION_TOKEN"), "endpoint_url": endpoint,
            "client_kwargs": {"region_name": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"},
        }  # fmt: skip
        if endpoint:
            options["config_kwargs"] = {"s3": {"addressing_style": "path"}}
        return options
    if scheme == "gs":
        emulator = env.get("STORAGE_EMULATOR_HOST")
        endpoint = endpoint_url or emulator or None
        return {"endpoint_url": endpoint, "token": "anon" if endpoint else None,
                "project": env.get("GOOGLE_CLOUD_PROJECT") or "speedrun"}  # fmt: skip
    return {}


def filesystem(scheme: str, endpoint_url: str | None = None) -> Any:
    """The fsspec filesystem of a scheme (cached per configuration; fsspec's are thread-safe)."""
    options = fs_options(scheme, endpoint_url)
    return _cached_fs(scheme, json.dumps(options, sort_keys=True))


@functools.lru_cache(maxsize=16)
def _cached_fs(scheme: str, options_json: str) -> Any:
    import fsspec

    options = json.loads(options_json)
    if scheme in ("s3", "gs"):
        options["use_listings_cache"] = False
    try:
        if scheme == "gs":
            # gcsfs's default class (gcsfs>=2025, "experimental ZB/HNS support") first asks a gRPC
            # API for the bucket's type, which emulators lack (a 60 s timeout per bucket); the JSON
            # API of the core class reads and writes every kind of bucket.
            from gcsfs.core import GCSFileSystem

            return GCSFileSystem(skip_instance_cache=True, **options)
        return fsspec.filesystem(scheme, skip_instance_cache=True, **options)
    except ImportError:
        package, extra = EXTRAS.get(scheme, (scheme, "train"))
        raise DataError(f"{scheme}:// needs the {package} package (pip install 'speedrun-operator[{extra}]')") from None


def explain(exc: BaseException, uri: str, fs: Any = None) -> str:
    """One line for whatever fsspec or its backend raised (`fs`: to ask whether a bucket exists)."""
    scheme = scheme_of(uri)
    if isinstance(exc, DataError):
        return str(exc)
    if isinstance(exc, FileNotFoundError):
        if scheme in ("s3", "gs"):
            bucket = split_bucket(uri)[0]
            if "bucket" in str(exc).lower() or (fs is not None and not _bucket_exists(fs, bucket)):
                return f"{uri}: bucket {bucket} does not exist"
        if scheme in ("http", "https"):
            return f"{uri}: HTTP 404 Not Found"
        return f"{uri}: no such object" if scheme in REMOTE else f"{uri}: no such file"
    if isinstance(exc, PermissionError):
        hint = {"s3": "; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
                "gs": "; check GOOGLE_APPLICATION_CREDENTIALS"}.get(scheme_of(uri), "")  # fmt: skip
        return f"{uri}: access denied{hint}"
    if isinstance(exc, IsADirectoryError):
        return f"{uri}: is a directory"
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int) and scheme_of(uri) in ("http", "https"):
        return f"{uri}: HTTP {status} {getattr(exc, 'message', '')}".rstrip()
    text = str(exc).splitlines()[0] if str(exc) else ""
    if any(word in f"{type(exc).__name__} {text}" for word in ("Connect", "connect", "Connection")):
        return f"{uri}: cannot connect ({text or type(exc).__name__})"
    return f"{uri}: {type(exc).__name__}: {text}".rstrip(": ")


def _bucket_exists(fs: Any, bucket: str) -> bool:
    try:
        return bool(fs.exists(bucket))
    except Exception:  # cannot tell: say "no such object", not "no such bucket"
        return True


@contextlib.contextmanager
def errors(uri: str, fs: Any = None) -> Iterator[None]:
    """Turn any storage failure inside the block into a one-line DataError naming `uri`."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # the backends raise many types (botocore, aiohttp, google-auth, OS)
        raise DataError(explain(exc, uri, fs), transient=is_transient(exc)) from None


# ---- Storage --------------------------------------------------------------------------------


class Storage:
    """Objects under a root URI. Keys are relative, `/`-separated; `list` returns them sorted."""

    def __init__(self, root: str, endpoint_url: str | None = None) -> None:
        self.scheme = scheme_of(root)
        if self.scheme not in ("file", "s3", "gs"):
            raise DataError(f"{root}: storage must be file://, s3://, gs:// or a local path (got {self.scheme}://)")
        self.fs = filesystem(self.scheme, endpoint_url)
        if self.scheme == "file":
            self.base = str(local_path_of(root))
            self.root = f"file://{self.base}"
        else:
            bucket, prefix = split_bucket(root)
            self.base = f"{bucket}/{prefix.strip('/')}".rstrip("/")
            self.root = f"{self.scheme}://{self.base}"

    def path(self, key: str) -> str:
        parts = [p for p in key.split("/") if p]
        if ".." in parts:
            raise DataError(f"{self.root}: key {key!r} leaves the storage root")
        return "/".join([self.base, *parts]) if parts else self.base

    def url(self, key: str = "") -> str:
        return f"{self.root.rstrip('/')}/{key}" if key else self.root

    def local_path(self, key: str) -> Path | None:
        return Path(self.path(key)) if self.scheme == "file" else None

    def read_bytes(self, key: str) -> bytes:
        with errors(self.url(key), self.fs):
            return bytes(self.fs.cat_file(self.path(key)))

    def write_bytes(self, key: str, data: bytes) -> None:
        with errors(self.url(key), self.fs):
            if self.scheme == "file":
                with atomic_file(Path(self.path(key))) as f:
                    f.write(data)
            elif self.scheme == "s3":
                self.fs.pipe_file(self.path(key), data, chunksize=PART_SIZE)
            else:
                self.fs.pipe_file(self.path(key), data)

    def download_to(self, key: str, dest: Path) -> None:
        """Copy one object to a local file, atomically, without holding it in memory."""
        with errors(self.url(key), self.fs), atomic_file(dest) as f, self.fs.open(self.path(key), "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    def exists(self, key: str) -> bool:
        with errors(self.url(key), self.fs):
            return bool(self.fs.isfile(self.path(key)))

    def version(self, key: str) -> str:
        """What changes when the object does: ETag (S3), generation (GCS), mtime (files); and the size."""
        with errors(self.url(key), self.fs):
            info = self.fs.info(self.path(key))
        stamp = info.get("ETag") or info.get("generation") or info.get("mtime") or ""
        return f"{stamp}:{info.get('size', '')}"

    def list(self, prefix: str = "") -> builtins.list[str]:
        start = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        with errors(self.url(prefix), self.fs):
            found = _find(self.fs, self.path(start), self.url(prefix))
        keys = (p[len(self.base) + 1 :] for p in found if p.startswith(self.base + "/"))
        return sorted(k for k in keys if k.startswith(prefix) and not _is_tmp(k))

    def delete(self, key: str) -> None:
        with errors(self.url(key), self.fs), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as e:
            raise DataError(f"{self.url(key)}: not valid JSON ({e})") from None

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, (json.dumps(obj, indent=2) + "\n").encode())


class FileStorage(Storage):
    def __init__(self, root: str) -> None:
        super().__init__(root if scheme_of(root) == "file" else f"file://{root}")


def _find(fs: Any, path: str, uri: str) -> builtins.list[str]:
    """Every file below `path`; none for a missing directory or prefix, an error for a missing bucket."""
    try:
        found = list(fs.find(path))
    except FileNotFoundError:
        found = []
    if not found and scheme_of(uri) in ("s3", "gs") and not _bucket_exists(fs, path.split("/", 1)[0]):
        raise DataError(f"{uri}: bucket {split_bucket(uri)[0]} does not exist") from None
    return found


def _is_tmp(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith(".") and key.endswith(TMP_SUFFIX)


def open_storage(uri: str, endpoint_url: str | None = None) -> Storage:
    """A `Storage` rooted at `file:///abs/path`, a plain path, `s3://bucket/prefix` or `gs://bucket/prefix`."""
    return Storage(uri, endpoint_url)


# ---- single URIs ------------------------------------------------------------------------------


def _fs_and_path(uri: str, endpoint_url: str | None) -> tuple[Any, str]:
    scheme = scheme_of(uri)
    if scheme not in ("file", *REMOTE):
        raise DataError(f"{uri}: cannot fetch {scheme}:// URIs (file://, s3://, gs://, http(s)://)")
    if scheme == "file":
        return filesystem("file"), str(local_path_of(uri))
    if scheme in ("s3", "gs"):
        bucket, key = split_bucket(uri)
        return filesystem(scheme, endpoint_url), f"{bucket}/{key}"
    return filesystem(scheme), uri


def fetch_uri(uri: str, endpoint_url: str | None = None) -> bytes:
    """The bytes at a file://, plain-path, s3://, gs:// or http(s):// URI."""
    fs, path = _fs_and_path(uri, endpoint_url)
    with errors(uri, fs):
        if scheme_of(uri) in ("http", "https"):  # fsspec's HTTP filesystem does not retry
            return retrying(lambda: bytes(fs.cat_file(path)))
        return bytes(fs.cat_file(path))


def cached_copy(uri: str, cache_dir: Path, endpoint_url: str | None = None) -> Path:
    """A local path of a remote object through fsspec's `filecache` under `cache_dir` (fetched once
    per node: other processes wait on a lock; fetched again when the object's version changes)."""
    scheme = scheme_of(uri)
    if scheme == "file":
        return local_path_of(uri)
    from fsspec.implementations.cached import WholeFileCacheFileSystem

    fs, path = _fs_and_path(uri, endpoint_url)
    cache = Path(cache_dir)
    with file_lock(cache / ".lock"), errors(uri, fs):
        cached = WholeFileCacheFileSystem(fs=fs, cache_storage=str(cache), check_files=True,
                                          skip_instance_cache=True)  # fmt: skip

        def local_name() -> Path:
            with cached.open(path, "rb") as f:
                return Path(f.name)

        # fsspec's HTTP filesystem does not retry; the S3 and GCS clients do.
        return retrying(local_name) if scheme in ("http", "https") else local_name()


def expand_uris(pattern: str, endpoint_url: str | None = None) -> list[str]:
    """Expand a glob (`*`, `?`, `**`; fsspec's), a directory or a bucket prefix into sorted URIs.

    A directory or prefix expands to every `*.bin` below it (recursively); a single file or
    object stays itself; http(s):// and builtin:// URIs pass through. Results keep the input's
    form (file:// URIs stay URIs, plain paths stay paths). Nothing matched -> DataError.
    """
    scheme = scheme_of(pattern)
    if scheme not in ("file", "s3", "gs"):
        return [pattern]
    fs, path = _fs_and_path(pattern, endpoint_url)
    with errors(pattern, fs):
        if any(c in path for c in "*?["):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
            if not found and scheme in ("s3", "gs") and not _bucket_exists(fs, path.split("/", 1)[0]):
                raise DataError(f"{pattern}: bucket {path.split('/', 1)[0]} does not exist") from None
        elif fs.isfile(path):
            return [pattern]
        else:
            found = [p for p in _find(fs, path.rstrip("/"), pattern) if p.endswith(".bin")]
    if not found:
        raise DataError(f"{pattern}: matches no files (a directory or prefix needs *.bin shards)") from None
    if scheme == "file":
        base = "file://" if pattern.startswith("file://") else ""
        return sorted(base + p for p in found)
    return sorted(f"{scheme}://{p.lstrip('/')}" for p in found)
