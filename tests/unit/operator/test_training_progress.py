"""Rank 0's progress (operator/speedrun_operator/progress.py): the metrics URL of a pod and the
contract's gauges read from its Prometheus exposition."""

from __future__ import annotations

import socket
import threading

import pytest

from speedrun_operator.training_progress import fetch, metrics_url, parse_progress

EXPOSITION = """\
# HELP speedrun_step Optimizer steps done
# TYPE speedrun_step gauge
speedrun_step 120.0
# TYPE speedrun_total_steps gauge
speedrun_total_steps 300.0
# TYPE speedrun_train_loss gauge
speedrun_train_loss 3.125
# TYPE speedrun_val_loss gauge
speedrun_val_loss NaN
# TYPE speedrun_tokens_per_second gauge
speedrun_tokens_per_second 5.5e5
# TYPE speedrun_mfu gauge
speedrun_mfu 0.42
# TYPE speedrun_eta_seconds gauge
speedrun_eta_seconds 61
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.0
"""


def test_parse_progress_maps_the_contract_gauges() -> None:
    assert parse_progress(EXPOSITION) == {
        "step": 120,
        "total_steps": 300,
        "train_loss": 3.125,
        "tokens_per_second": 550000.0,
        "mfu": 0.42,
        "eta_seconds": 61.0,
    }
    assert parse_progress("") == {}


def test_metrics_url() -> None:
    assert metrics_url({"status": {"podIP": "10.0.0.7"}}, 9400) == "http://10.0.0.7:9400/metrics"
    assert metrics_url({"status": {"podIP": "fd00::7"}}, 9400) == "http://[fd00::7]:9400/metrics"
    assert metrics_url({"status": {}}, 9400) is None


def test_fetch_cuts_off_a_target_that_trickles() -> None:
    """Each read returns within the socket timeout, so only a deadline for the whole scrape ends it
    (the target completes its answer after 10 cut-off times: a fetch without one returns it)."""
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def trickle() -> None:
        conn, _ = server.accept()
        with conn:
            try:
                conn.recv(65536)  # the request (unread, the close would reset the connection)
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(400):
                    if done.wait(0.05):
                        return
                    conn.sendall(b"a")
                conn.sendall(b"\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                return

    threading.Thread(target=trickle, daemon=True).start()
    try:
        with pytest.raises(OSError):  # TimeoutError, or the connection the cut-off broke
            fetch(f"http://127.0.0.1:{server.getsockname()[1]}/metrics", timeout=2.0)
    finally:
        done.set()
        server.close()
