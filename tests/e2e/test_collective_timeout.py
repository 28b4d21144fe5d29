"""A rank that hangs fails its peers at `runPolicy.collectiveTimeoutSeconds`, not torch's 10 minutes.

Two real torchrun agents (the pods' wrapper, `speedrun_trainer.train.torchrun`, c10d rendezvous
on this machine, one worker each, gloo) run a worker that sets torch.distributed up as the trainer
does (`runtime.load_config` + `setup_distributed` with the spec's timeout) and then all-reduces
in a loop, as training steps do. Rank 1's worker is SIGSTOPped: a peer that neither answers nor
closes its sockets (its node lost or partitioned, a hung GPU). Rank 0's worker must fail with
gloo's timeout naming the configured 5 s (5000ms), and its agent exit 1 (the pod fails, the Job
controller stops the others, the gang restarts). No elapsed time is asserted: the reason is.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.helpers import tiny_manifest, write_manifest
from tests.support.torchrun_agents import agents, wait_for

pytestmark = pytest.mark.e2e

START_TIMEOUT = 180.0  # two agents and two workers importing torch, on 2 busy cores
EXIT_TIMEOUT = 180.0  # generous: the 5 s timeout, then the agent's shutdown
WORKER = """
import os, sys, time
import torch, torch.distributed as dist
from speedrun_trainer.train.runtime import load_config, setup_distributed
job = load_config(sys.argv[sys.argv.index("--config") + 1])
env = setup_distributed(job.spec.run_policy.collective_timeout_seconds)
t = torch.ones(1)
dist.all_reduce(t)
print(f"rank {env.rank} pid {os.getpid()}: collectives running", flush=True)
while True:
    dist.all_reduce(t)
    time.sleep(0.05)
"""


def test_a_hung_rank_fails_its_peer_at_the_configured_collective_timeout(tmp_path: Path) -> None:
    config = write_manifest(tmp_path / "run.yaml", tiny_manifest(**{"spec.runPolicy.collectiveTimeoutSeconds": 5}))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    with agents(tmp_path, worker, config, "hang", [[], []]) as (started, logs):
        wait_for(logs[0], r"rank 0 pid \d+: collectives running", START_TIMEOUT)
        hung = int(wait_for(logs[1], r"rank 1 pid (\d+): collectives running", START_TIMEOUT).group(1))
        os.kill(hung, signal.SIGSTOP)  # neither answers nor closes its sockets
        assert started[0].wait(timeout=EXIT_TIMEOUT) == 1, logs[0].read_text()[-3000:]
        text = logs[0].read_text()
        assert "Timed out waiting 5000ms" in text, text[-3000:]  # the configured 5 s, not torch's 600 s
        assert "torchrun: worker 0 of pod index 0 exited 1" in text, text[-3000:]
        os.kill(hung, signal.SIGKILL)
