"""Training progress: scrape rank 0's Prometheus endpoint and map it onto status.progress.

Rank 0 of the trainer serves gauges without labels (docs/contracts.md); while the job is
Training, the operator's scrape pool (handlers/scrape.py) polls
`http://<rank-0 pod IP>:<spec.metrics.port>/metrics` and copies the values it finds. Parsing
uses prometheus_client's text parser, so any valid exposition (comments, other metrics,
`_created` samples) is fine.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import urllib.parse
from typing import Any

from speedrun_api.status import Progress
from speedrun_api.trainer_metrics import METRIC_NAMES, parse_metrics

SCRAPE_TIMEOUT = 3.0

# Trainer gauge -> status.progress field: the trainer's own names (speedrun_trainer.train.telemetry),
# whose short keys are the snake_case fields of `Progress`.
METRIC_FIELDS: dict[str, str] = {name: field for field, name in METRIC_NAMES.items()}
INTEGER_FIELDS = ("step", "total_steps")


def parse_progress(text: str) -> dict[str, Any]:
    """Exposition text -> {field: value} for the gauges present; NaN and inf are skipped."""
    return {k: int(v) if k in INTEGER_FIELDS else v for k, v in parse_metrics(text).items()}


def progress_from(values: dict[str, Any], now: str) -> Progress:
    return Progress(**values, update_time=now)


def metrics_url(pod: dict[str, Any], port: int) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}/metrics"


def fetch(url: str, timeout: float = SCRAPE_TIMEOUT) -> str:
    """The body at `url`, within `timeout` seconds in all. A socket timeout bounds each read only: a
    target that accepts and then sends a byte now and then (or a half-open path through a proxy)
    would hold the caller for ever, so a timer shuts the socket down once the whole scrape is late."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    late = threading.Event()

    def cut_off() -> None:
        late.set()
        with contextlib.suppress(OSError):
            if conn.sock is not None:
                conn.sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, cut_off)
    timer.daemon = True
    timer.start()
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        body = response.read()
    except http.client.HTTPException as err:
        raise OSError(f"{type(err).__name__}: {err}") from None
    finally:
        timer.cancel()
        conn.close()
    if late.is_set():
        raise TimeoutError(f"no whole answer within {timeout} s")
    if response.status != 200:
        raise OSError(f"HTTP {response.status} {response.reason}")
    return body.decode("utf-8", errors="replace")
