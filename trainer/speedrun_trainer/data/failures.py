"""Which storage failures a retry can fix, and the retries with backoff for the reads that need them.

A failure is transient when the same request may succeed later: nothing listening yet, a timeout,
a reset connection, an HTTP 408/429/5xx, S3's SlowDown/ServiceUnavailable/InternalError. It is
permanent when no retry can change the answer: no such file, object or bucket, access denied
(wrong or missing credentials), any other HTTP 4xx. Transient failures end in exit code 1 (the
torchrun agent, or the operator, tries again); permanent ones in exit code 2 (nobody does).

Where the backends already retry, nothing here adds another layer: botocore (S3: connection
errors, throttling and 5xx, exponential backoff) and s3fs around it, gcsfs (GCS: 5xx, 429,
timeouts). fsspec's http(s) filesystem does not retry, so `retrying` wraps those reads.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TRANSIENT_HTTP = frozenset({408, 425, 429})  # and every 5xx
TRANSIENT_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
     errno.ENETUNREACH, errno.EAGAIN, errno.EBUSY, getattr(errno, "EREMOTEIO", 121)}
)  # fmt: skip
# Exception type names of the backends' network failures (botocore's EndpointConnectionError and
# ConnectTimeoutError, aiohttp's ClientConnectorError and ServerTimeoutError, google-auth's
# TransportError...), matched by name so that no backend needs importing to classify its errors.
TRANSIENT_NAMES = ("Connect", "Timeout", "Transport", "Throttl", "SlowDown", "ServiceUnavailable")
PERMANENT_NAMES = ("NoCredentials", "PartialCredentials", "InvalidAccessKey", "SignatureDoesNotMatch")
ATTEMPTS = 4  # one try and three retries: 0.5 s, 1 s, 2 s (each +-50%) apart
FIRST_DELAY = 0.5


def http_status(exc: BaseException) -> int | None:
    """The HTTP status a backend's exception carries (aiohttp: `status`, gcsfs: `code`), if any."""
    for attr in ("status", "code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a retry of the request that raised `exc` may succeed (see the module docstring)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    name = type(exc).__name__
    if any(word in name for word in PERMANENT_NAMES):
        return False
    status = http_status(exc)
    if status is not None:
        return status in TRANSIENT_HTTP or status >= 500
    if isinstance(exc, (TimeoutError, ConnectionError)):  # refused, reset, aborted; asyncio timeouts
        return True
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in TRANSIENT_ERRNOS
    if any(word in name for word in TRANSIENT_NAMES):
        return True
    # Anything else a backend raises (a parser error, a dropped stream, a bug) may pass: a retry
    # is bounded, while calling it permanent could fail a run for good on a hiccup.
    return True


def retrying(call: Callable[[], T], *, attempts: int = ATTEMPTS, sleep: Callable[[float], None] = time.sleep) -> T:
    """`call()`, tried again after a transient failure (exponential backoff with jitter);
    a permanent failure, or the last transient one, is raised as it is."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
            sleep(FIRST_DELAY * 2**attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable: the last attempt returns or raises")
