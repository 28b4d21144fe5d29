"""The player protocol without a cluster: tests/cluster/players.py's PodPlayers and the player
program (tests/support/player_program.py) as a local process, as the player image runs it.

The cluster tests see a player only through the kubelet (its exit code, log and termination
message); here each verb is checked directly, so a broken protocol fails in a second, not after
a real node's timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from speedrun_trainer.cli.launch import free_port
from tests.cluster.players import URL_ENV, PodPlayers
from tests.support import player_program

PROGRAM = Path(player_program.__file__)


@pytest.fixture
def players() -> Iterator[PodPlayers]:
    served = PodPlayers("127.0.0.1").start()
    try:
        yield served
    finally:
        served.close()


def until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_player(tmp_path: Path, pod: str, url: str, index: str = "0") -> subprocess.Popen[str]:
    env = {**os.environ, URL_ENV: url, "POD_NAME": pod, "JOB_COMPLETION_INDEX": index,
           "SPEEDRUN_TERMINATION_LOG": str(tmp_path / f"{pod}.termination-log")}  # fmt: skip
    argv = [sys.executable, str(PROGRAM), "-m", "speedrun_trainer.train.torchrun", "--nnodes=2"]  # ignored
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def test_a_played_rank_0_serves_its_gauges_and_exits_as_told(players: PodPlayers, tmp_path: Path) -> None:
    port = free_port()
    players.play("run-train-", metrics_port=port, exposition="speedrun_step 42\n")
    proc = start_player(tmp_path, "run-train-0-abcde", players.url)
    try:
        until(lambda: players.playing("run-train-"), "the player's start")
        assert until(lambda: scrape(port), "rank 0's gauges") == "speedrun_step 42\n"
        assert players.finish("run-train-", code=3, message='{"bpb": 1.5}', log="world size 3") == ["run-train-0-abcde"]
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 3, out
    assert out.splitlines() == ["player started 0", "world size 3"]
    assert (tmp_path / "run-train-0-abcde.termination-log").read_text() == '{"bpb": 1.5}'
    assert players.playing("run-train-") == []


def test_only_rank_0_serves_and_later_pods_wait_for_their_own_finish(players: PodPlayers, tmp_path: Path) -> None:
    port = free_port()
    players.play("run-train-", metrics_port=port, exposition="speedrun_step 1\n")
    rank1 = start_player(tmp_path, "run-train-1-aaaaa", players.url, index="1")
    try:
        until(lambda: players.playing("run-train-"), "rank 1's start")
        assert scrape(port) == ""  # rank 1 serves nothing
        assert players.finish("run-train-") == ["run-train-1-aaaaa"]
        assert rank1.wait(timeout=30) == 0
        later = start_player(tmp_path, "run-train-1-bbbbb", players.url, index="1")  # the Job's replacement
        try:
            until(lambda: players.playing("run-train-"), "the replacement's start")
            assert later.poll() is None  # not asked yet: it keeps running
            assert players.finish("run-train-1-bbbbb", code=1) == ["run-train-1-bbbbb"]
            assert later.wait(timeout=30) == 1
        finally:
            later.kill()
    finally:
        rank1.kill()
    assert not (tmp_path / "run-train-1-bbbbb.termination-log").exists()  # no message: none written


def test_a_pod_not_played_runs_until_sigterm(players: PodPlayers, tmp_path: Path) -> None:
    players.play("other-", namespace="elsewhere")
    proc = start_player(tmp_path, "long-train-0-abcde", players.url)
    try:
        line = until(lambda: proc.stdout and proc.stdout.readline(), "the player's first line")
        assert "is not played; running until SIGTERM" in line
        assert proc.poll() is None and players.playing("") == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()


def test_the_namespace_is_the_kubelets_first_search_domain(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search speedruns-life.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.0.0.10\n")
    assert player_program.namespace(resolv) == "speedruns-life"
    resolv.write_text("search example.com\nnameserver 1.1.1.1\n")
    assert player_program.namespace(resolv) == ""
    assert player_program.namespace(tmp_path / "absent") == ""


def test_a_namespaced_part_plays_only_that_namespaces_pods(players: PodPlayers) -> None:
    players.play("run-", namespace="ns-a")
    assert players.part_of("run-train-0-x", "ns-b") is None
    assert players.part_of("run-train-0-x", "ns-a") is not None
    assert players.part_of("run-train-1-x", "") is not None  # a player that could not tell its namespace
    players.clear()
    assert players.part_of("run-train-2-x", "ns-a") is None
    assert players.playing("run-") == ["run-train-0-x", "run-train-1-x"]
