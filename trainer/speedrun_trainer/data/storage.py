"""URIs and object storage: `file://` (or a plain path), `s3://bucket/prefix` and `http(s)://`.

`open_storage(uri)` gives a `Storage` rooted at a prefix; keys are `/`-separated and relative to
it. Every write is one complete object: local files are written to a temporary name beside the
target and `os.replace`d, S3 objects are one PUT (or one multipart upload above 8 MiB), so a
reader never sees half an object.

S3 clients take the endpoint from the argument, else `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`
(path-style addressing whenever an endpoint is given, as MinIO and moto want), and credentials
and retries (`AWS_MAX_ATTEMPTS`, `AWS_RETRY_MODE`) from the standard AWS environment variables.

Every failure the user can cause (missing bucket or key, access denied, nothing listening at the
endpoint, HTTP errors, a glob that matches nothing) is a `DataError` with a one-line message that
names the URI; boto3 tracebacks stay inside.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import io
import json
import os
import re
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

MULTIPART_THRESHOLD = 8 * 1024 * 1024  # boto3's default: above it, upload_fileobj goes multipart
HTTP_TIMEOUT_S = 60
TMP_SUFFIX = ".tmp"


class DataError(Exception):
    """A data or storage problem the user can fix; the message is one line naming the URI."""


def scheme_of(uri: str) -> str:
    """`file` for file:// URIs and plain paths, else the scheme (`s3`, `https`, `builtin`...)."""
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def local_path_of(uri: str) -> Path:
    """The absolute local path of a file:// URI or a plain path (no percent-decoding)."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return Path(os.path.normpath(Path(path).expanduser().absolute()))


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> ("bucket", "some/key")."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise DataError(f"{uri}: no bucket in S3 URI (expected s3://bucket/prefix)")
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


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client (cached per endpoint and credentials; clients are thread-safe)."""
    env = os.environ
    return _cached_client(
        endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_SESSION_TOKEN"),
        env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    )


@functools.lru_cache(maxsize=16)
def _cached_client(endpoint: str | None, key_id: str | None, secret: str | None, token: str | None,
                   region: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}) if endpoint else None
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                    aws_session_token=token)
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


_ACCESS_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}


def _code(e: Any) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _explain(exc: BaseException, uri: str, client: Any = None, bucket: str = "") -> str:
    """One line for a botocore/boto3 exception."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    # boto3's S3UploadFailedError wraps the botocore error that says what happened
    cause = exc.__context__ if isinstance(exc, Boto3Error) and exc.__context__ is not None else exc
    if isinstance(cause, ClientError):
        code = _code(cause)
        if code == "NoSuchBucket":
            return f"{uri}: bucket {bucket or '?'} does not exist"
        if code in _MISSING_CODES:
            if client is not None and bucket and not _bucket_exists(client, bucket):
                return f"{uri}: bucket {bucket} does not exist"
            return f"{uri}: no such object"
        if code in _ACCESS_CODES:
            return f"{uri}: access denied ({code}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        return f"{uri}: S3 error {code}: {cause.response.get('Error', {}).get('Message', '')}".rstrip(": ")
    if isinstance(cause, EndpointConnectionError):
        return f"{uri}: cannot connect to the S3 endpoint ({cause})"
    if isinstance(exc, NoCredentialsError):
        return f"{uri}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    return f"{uri}: {type(exc).__name__}: {exc}".replace("\n", " ")


def _bucket_exists(client: Any, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        return _code(e) not in _MISSING_CODES | {"NoSuchBucket"}
    return True


class Storage:
    """Objects under a root URI. Keys are relative, `/`-separated; `list` returns them sorted."""

    root: str

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> builtins.list[str]:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def download_to(self, key: str, dest: Path) -> None:
        """Copy one object to a local file, atomically (temporary name, then os.replace)."""
        raise NotImplementedError

    def url(self, key: str = "") -> str:
        return f"{self.root.rstrip('/')}/{key}" if key else self.root

    def local_path(self, key: str) -> Path | None:
        return None

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as e:
            raise DataError(f"{self.url(key)}: not valid JSON ({e})") from None

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, (json.dumps(obj, indent=2) + "\n").encode())


class FileStorage(Storage):
    def __init__(self, root: str) -> None:
        self.path = local_path_of(root)
        self.root = f"file://{self.path}"

    def local_path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if ".." in parts:
            raise DataError(f"{self.root}: key {key!r} leaves the storage root")
        return self.path.joinpath(*parts)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise DataError(f"{self.url(key)}: no such file") from None
        except PermissionError:
            raise DataError(f"{self.url(key)}: access denied") from None
        except IsADirectoryError:
            raise DataError(f"{self.url(key)}: is a directory") from None

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self.local_path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key), atomic_file(self.local_path(key)) as f:
            f.write(data)

    def download_to(self, key: str, dest: Path) -> None:
        with self._errors(key), atomic_file(dest) as f, open(self.local_path(key), "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def list(self, prefix: str = "") -> builtins.list[str]:
        start = self.local_path(prefix.rsplit("/", 1)[0] if "/" in prefix else "")  # rglob: [] if absent
        keys = (p.relative_to(self.path).as_posix() for p in start.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not _is_tmp(k))

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.local_path(key).unlink(missing_ok=True)


def _is_tmp(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith(".") and key.endswith(TMP_SUFFIX)


class S3Storage(Storage):
    def __init__(self, root: str, endpoint_url: str | None = None) -> None:
        self.bucket, prefix = split_s3(root)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.client = s3_client(endpoint_url)

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as e:
            raise DataError(_explain(e, self.url(key), self.client, self.bucket)) from None

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        from boto3.s3.transfer import TransferConfig

        with self._errors(key):
            if len(data) < MULTIPART_THRESHOLD:
                self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
            else:
                config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD)
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, self.prefix + key, Config=config)

    def download_to(self, key: str, dest: Path) -> None:
        with self._errors(key), atomic_file(dest) as f:
            self.client.download_fileobj(self.bucket, self.prefix + key, f)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._errors(key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            except ClientError as e:
                if _code(e) in _MISSING_CODES:
                    return False
                raise
        return True

    def etag(self, key: str) -> str:
        with self._errors(key):
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        return f"{head.get('ETag', '')}:{head.get('ContentLength', '')}"

    def list(self, prefix: str = "") -> builtins.list[str]:
        keys: builtins.list[str] = []
        with self._errors(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                keys.extend(obj["Key"][len(self.prefix):] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._errors(key):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def open_storage(uri: str, endpoint_url: str | None = None) -> Storage:
    """A `Storage` rooted at `file:///abs/path`, a plain path or `s3://bucket/prefix`."""
    scheme = scheme_of(uri)
    if scheme == "file":
        return FileStorage(uri)
    if scheme == "s3":
        return S3Storage(uri, endpoint_url)
    raise DataError(f"{uri}: storage must be file://, s3:// or a local path (got {scheme}://)")


def _parent_and_key(uri: str, endpoint_url: str | None) -> tuple[Storage, str]:
    if scheme_of(uri) == "s3":
        bucket, key = split_s3(uri)
        return S3Storage(f"s3://{bucket}", endpoint_url), key
    path = local_path_of(uri)
    return FileStorage(str(path.parent)), path.name


@contextlib.contextmanager
def _http_get(uri: str) -> Iterator[IO[bytes]]:
    try:
        response = urllib.request.urlopen(uri, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise DataError(f"{uri}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(f"{uri}: cannot fetch ({getattr(e, 'reason', e)})") from None
    with response:
        yield response


def fetch_uri(uri: str, endpoint_url: str | None = None) -> bytes:
    """The bytes at a file://, plain-path, s3:// or http(s):// URI."""
    if scheme_of(uri) in ("http", "https"):
        with _http_get(uri) as response:
            return response.read()
    if scheme_of(uri) not in ("file", "s3"):
        raise DataError(f"{uri}: cannot fetch {scheme_of(uri)}:// URIs")
    storage, key = _parent_and_key(uri, endpoint_url)
    return storage.read_bytes(key)


def download_uri(uri: str, dest: Path, endpoint_url: str | None = None) -> None:
    """Copy the object at `uri` to the local file `dest`, atomically, without holding it in memory."""
    if scheme_of(uri) in ("http", "https"):
        with _http_get(uri) as response, atomic_file(dest) as f:
            shutil.copyfileobj(response, f, 1 << 20)
        return
    storage, key = _parent_and_key(uri, endpoint_url)
    storage.download_to(key, dest)


_GLOB = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `?` stay within one path segment, `**` crosses segments (as glob.glob's recursive)."""
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
    return re.compile("".join(_GLOB.get(part, re.escape(part)) for part in parts) + r"\Z")


def expand_uris(pattern: str, endpoint_url: str | None = None) -> list[str]:
    """Expand a glob (`*`, `?`, `**`), a directory or an S3 prefix into sorted URIs.

    A directory or prefix expands to every `*.bin` below it (recursively); a single file or
    object stays itself; http(s):// and builtin:// URIs pass through. Results keep the input's
    form (file:// URIs stay URIs, plain paths stay paths). Nothing matched -> DataError.
    """
    scheme = scheme_of(pattern)
    if scheme == "s3":
        bucket, key = split_s3(pattern)
        storage: Storage = S3Storage(f"s3://{bucket}", endpoint_url)
        base = f"s3://{bucket}/"
    elif scheme == "file":
        storage, key = FileStorage("/"), str(local_path_of(pattern)).lstrip("/")
        base = "file:///" if pattern.startswith("file://") else "/"
    else:
        return [pattern]
    if "*" in key or "?" in key:
        regex = _glob_regex(key)
        keys = [k for k in storage.list(re.split(r"[*?]", key, maxsplit=1)[0]) if regex.match(k)]
    elif key and not key.endswith("/") and storage.exists(key):
        return [pattern]
    else:
        prefix = key.rstrip("/") + "/" if key.strip("/") else ""
        keys = [k for k in storage.list(prefix) if k.endswith(".bin")]
    if not keys:
        raise DataError(f"{pattern}: matches no files (a directory or prefix needs *.bin shards)")
    return [base + k for k in keys]
