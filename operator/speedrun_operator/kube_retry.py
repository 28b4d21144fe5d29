"""When the API client retries a request, how long it waits, and how long one attempt may take.

Why retry at all: the apiserver answers 429 (max-in-flight or API Priority and Fairness
throttling) and some 5xx (an etcd leader change, a webhook or aggregated API briefly down) for
requests that succeed a moment later; a reconcile that fails on them waits for kopf's handler
backoff or the next resync. client-go's REST client (k8s.io/client-go/rest/request.go,
`checkWait` and `maxRetries = 10`) retries a 429 or 5xx that carries Retry-After up to 10
times, waiting the seconds the server asked for. This follows it, and also retries a 5xx
without Retry-After (with capped exponential backoff), since a kube-apiserver behind a load
balancer answers 502/503/504 without the header:

- any verb on 429: the apiserver throttles before it handles the request, so nothing landed;
- any verb on 500/502/503/504: a GET, PATCH (a merge patch applied twice is applied once) or
  DELETE is idempotent; a POST that got a 5xx may have landed, so its retry can get 409
  AlreadyExists, which the callers already read as "the object exists" (children.ensure_child
  adopts it, the elector re-reads the Lease). Not a create by `generateName` (an Event): its
  retry would make a second object, so only its 429 is retried;
- a GET whose connection was refused or reset; never a timed-out request (its time is spent),
  and never a write whose answer was lost (it may have landed).

Every wait and every attempt is bounded by the caller's deadline (the leader's renew deadline,
see leader.py): a retry that could not finish before it is not made.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from dataclasses import dataclass

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """client-go's 10 tries; backoff 0.25 s doubling to 8 s without Retry-After; a Retry-After
    above `max_wait` (or past the deadline) ends the retries rather than blocking a handler."""

    max_attempts: int = 10
    base_delay: float = 0.25
    max_delay: float = 8.0
    max_wait: float = 60.0

    def delay(
        self,
        attempt: int,
        method: str,
        status: int,
        retry_after: float | None,
        *,
        refused_or_reset: bool = False,
        may_duplicate: bool = False,
    ) -> float | None:
        """Seconds to wait before attempt `attempt + 1` after attempt `attempt` failed with
        `status` (0: no HTTP answer), or None when that failure is final. `may_duplicate`: a
        request that, landed twice, makes two objects (a create by generateName)."""
        if attempt >= self.max_attempts or (may_duplicate and status != 429):
            return None
        throttled_or_unavailable = status in RETRY_STATUSES or (status >= 500 and retry_after is not None)
        if not (throttled_or_unavailable or (status == 0 and refused_or_reset and method == "GET")):
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_wait else None
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return backoff * (0.8 + 0.4 * random.random())  # jitter: replicas do not retry in step


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (RFC 9110: delay-seconds or an HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def attempt_timeout(request_timeout: float, deadline: float | None, now: float) -> float:
    """How long one attempt may take: the request timeout, cut to the time left before
    `deadline` (a monotonic instant; None or +inf: no deadline; -inf: leadership lost, nothing
    may be sent). 0 or less: do not send it."""
    if deadline is None or deadline == math.inf:
        return request_timeout
    return min(request_timeout, deadline - now)


def wait_fits(delay: float, deadline: float | None, now: float, min_attempt: float = 0.1) -> bool:
    """Whether waiting `delay` still leaves an attempt of at least `min_attempt` s before `deadline`."""
    return deadline is None or now + delay + min_attempt < deadline


DEFAULT_POLICY = RetryPolicy()
