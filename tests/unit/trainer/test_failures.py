"""Which storage failures are transient (exit 1, retried) and which permanent (exit 2), and the
retries with backoff of the reads no client retries (http(s))."""

from __future__ import annotations

import errno
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from speedrun_trainer.data import failures
from speedrun_trainer.data.failures import is_transient, retrying
from speedrun_trainer.data.storage import DataError, fetch_uri, open_storage


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class EndpointConnectionError(Exception):
    """Named like botocore's: nothing listening at the endpoint."""


class NoCredentialsError(Exception):
    """Named like botocore's: no credentials anywhere."""


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (FileNotFoundError("no such key"), False),
        (PermissionError("InvalidAccessKeyId"), False),
        (IsADirectoryError(), False),
        (_Status(404), False),
        (_Status(403), False),
        (_Status(400), False),
        (NoCredentialsError(), False),
        (OSError(errno.EINVAL, "InvalidBucketName"), False),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (_Status(429), True),
        (_Status(503), True),
        (_Status(500), True),
        (OSError(errno.EBUSY, "SlowDown"), True),
        (EndpointConnectionError(), True),
    ],
    ids=repr,
)
def test_transient_or_permanent(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_retrying_retries_transient_failures_with_growing_delays() -> None:
    calls, delays = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError
        return "ok"

    assert retrying(flaky, sleep=delays.append) == "ok"
    assert len(calls) == 3 and len(delays) == 2 and delays[1] > delays[0] / 3  # 0.5 s, then 1 s (+-50%)


def test_retrying_gives_up_at_once_on_a_permanent_failure_and_after_the_last_attempt() -> None:
    delays: list[float] = []
    with pytest.raises(FileNotFoundError):
        retrying(lambda: (_ for _ in ()).throw(FileNotFoundError()), sleep=delays.append)
    assert delays == []
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise TimeoutError

    with pytest.raises(TimeoutError):
        retrying(down, sleep=delays.append)
    assert len(calls) == failures.ATTEMPTS and len(delays) == failures.ATTEMPTS - 1


@pytest.fixture
def flaky_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """(base URL, request log): /busy answers 503 twice, then 200; /gone always 404."""
    monkeypatch.setattr(failures, "FIRST_DELAY", 0.01)
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # fsspec's HTTP filesystem asks with GET (and HEAD for the size)
            seen.append(self.path)
            busy = self.path == "/busy" and seen.count("/busy") <= 2
            status = 404 if self.path == "/gone" else 503 if busy else 200
            body = b"payload" if status == 200 else b""
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_http_reads_are_retried_through_5xx_and_not_through_404(flaky_http) -> None:
    base, seen = flaky_http
    assert fetch_uri(f"{base}/busy") == b"payload"
    assert seen.count("/busy") == 3
    with pytest.raises(DataError) as err:
        fetch_uri(f"{base}/gone")
    assert err.value.transient is False and str(err.value) == f"{base}/gone: HTTP 404 Not Found"
    assert seen.count("/gone") == 1


def test_s3_missing_bucket_is_permanent(s3_bucket) -> None:
    with pytest.raises(DataError) as err:
        open_storage("s3://no-such-bucket-here/p").read_bytes("k")
    assert err.value.transient is False and "bucket no-such-bucket-here does not exist" in str(err.value)


def test_s3_wrong_credentials_are_permanent(s3_bucket) -> None:
    from moto.core.authorization import enable_iam_authentication

    storage = open_storage(f"{s3_bucket.uri}/p")
    with enable_iam_authentication(), pytest.raises(DataError) as err:  # "testing" is no IAM user's key
        storage.write_bytes("k", b"x")
    assert err.value.transient is False
    assert str(err.value) == f"{s3_bucket.uri}/p/k: access denied; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"


def test_s3_connection_refused_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries would only make it slower
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with pytest.raises(DataError) as err:
        open_storage("s3://bucket/p", endpoint_url="http://127.0.0.1:9").read_bytes("k")
    assert err.value.transient is True and str(err.value).startswith("s3://bucket/p/k: cannot connect")
