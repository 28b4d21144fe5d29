"""Ranks follow the pods' completion indices, whatever order torchrun's rendezvous gave the nodes.

Two real torchrun agents (the pods' wrapper, c10d rendezvous on this machine, one worker each,
gloo), as two pods of a training Job: index 0 and index 1. Each advertises its own loopback
address (`--local-addr`, as pods with hostNetwork do with their IP), index 1 the one that sorts
first, so torchrun's rendezvous makes index 1's node its node 0. The workers set torch.distributed
up as the trainer does (`setup_distributed`, train/rank_order.py) and all-gather their indices:
index 0 must hold rank 0, and the process group's order must be the indices' order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helpers import tiny_manifest, write_manifest
from tests.support.torchrun_agents import agents, wait_for

pytestmark = pytest.mark.e2e

TIMEOUT = 180.0  # two agents and two workers importing torch, on 2 busy cores
WORKER = """
import os, sys
import torch.distributed as dist
from speedrun_trainer.train.runtime import setup_distributed, teardown_distributed
torchrun_node = os.environ["GROUP_RANK"]
env = setup_distributed(30)
indices = [None] * env.world_size
dist.all_gather_object(indices, int(os.environ["JOB_COMPLETION_INDEX"]))
print(f"pid {os.getpid()} torchrun node {torchrun_node} rank {env.rank} env {os.environ['RANK']} "
      f"group {os.environ['GROUP_RANK']} indices {indices}", flush=True)
teardown_distributed()
"""


def test_ranks_follow_completion_indices_not_torchruns_node_order(tmp_path: Path) -> None:
    config = write_manifest(tmp_path / "run.yaml", tiny_manifest())
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    # "127.0.0.1" < "127.0.0.2": torchrun's node 0 is index 1's agent.
    addrs = [["--local-addr=127.0.0.2"], ["--local-addr=127.0.0.1"]]
    with agents(tmp_path, worker, config, "order", addrs) as (started, logs):
        for agent, log in zip(started, logs, strict=True):
            assert agent.wait(timeout=TIMEOUT) == 0, log.read_text()[-3000:]
        line = r"torchrun node (\d) rank (\d) env (\d) group (\d) indices (\[.*\])"
        seen = [wait_for(log, line, 1.0).groups() for log in logs]
    assert [s[0] for s in seen] == ["1", "0"], seen  # torchrun ranked the nodes against the indices
    assert [s[1:4] for s in seen] == [("0", "0", "0"), ("1", "1", "1")], seen  # rank = index, env to match
    assert seen[0][4] == seen[1][4] == "[0, 1]", seen  # the process group's order is the indices'
