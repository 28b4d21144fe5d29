"""torch's elastic agent, except that a worker's "invalid config" exit (2) is never restarted.

torchrun restarts a failed worker group up to `--max-restarts` times whatever the workers exited
with, so a config that can never work ran 4 times locally (86-140 s) before it failed, and torch
logged an error line (`E... api.py] failed (exitcode: 2) ...`) for every attempt. The wrapper
(train/torchrun.py) runs torchrun with `StopOnInvalidConfig` as its agent:

- when the group fails and a worker exited `EXIT_INVALID`, it spends the remaining restarts, so
  torch's own loop (`SimpleElasticAgent._invoke_run`) stops the workers and returns FAILED at once;
  torch uses the same lever itself for workers wedged in the kernel (local_elastic_agent.py,
  "disabling restarts");
- `QuietInvalidConfig` drops torch's error record for such an exit: the worker's one line says
  what is wrong, and the wrapper prints it last. (Its warning that it stops the node's other
  workers stays: torch logs it before it logs which worker failed and how.)

Any other failure (exit 1, a signal) is restarted as torchrun always does. torch's launcher builds
its agent inside `launch_agent` with no way to choose the class, so `stop_restarts_on_invalid_config`
swaps the class in `torch.distributed.launcher.api` for the wrapper's process (and puts it back);
tests/unit/trainer/test_torchrun_wrapper.py fails if a torch upgrade changes that.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from torch.distributed.elastic.agent.server.api import RunResult, WorkerGroup
from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

from speedrun_api.manifest import EXIT_INVALID

# The logger of torch's process contexts, which logs "failed (exitcode: N) local_rank: ..." at ERROR.
PROCESS_LOGGER = "torch.distributed.elastic.multiprocessing.api"


def invalid_config_exit(result: RunResult) -> bool:
    """Whether a failed worker group has a worker that exited with the invalid-config code."""
    return result.is_failed() and any(f.exitcode == EXIT_INVALID for f in result.failures.values())


class StopOnInvalidConfig(LocalElasticAgent):
    """LocalElasticAgent that gives up at once when a worker exits EXIT_INVALID."""

    def _monitor_workers(self, worker_group: WorkerGroup) -> RunResult:
        result = super()._monitor_workers(worker_group)
        if invalid_config_exit(result):
            self._remaining_restarts = 0  # _invoke_run then stops the workers and returns FAILED
        return result


class QuietInvalidConfig(logging.Filter):
    """Drops torch's ERROR record of a worker that exited EXIT_INVALID (its own line says why)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args: Any = record.args
        exited_invalid = isinstance(args, tuple) and bool(args) and args[0] == EXIT_INVALID
        return not (record.levelno >= logging.ERROR and "exitcode" in str(record.msg) and exited_invalid)


@contextlib.contextmanager
def stop_restarts_on_invalid_config() -> Iterator[None]:
    """Within the block, torch's launcher runs `StopOnInvalidConfig` and logs no exit-2 errors."""
    import torch.distributed.launcher.api as launcher

    quiet = QuietInvalidConfig()
    process_logger = logging.getLogger(PROCESS_LOGGER)
    original = launcher.LocalElasticAgent
    launcher.LocalElasticAgent = StopOnInvalidConfig  # type: ignore[misc]
    process_logger.addFilter(quiet)
    try:
        yield
    finally:
        launcher.LocalElasticAgent = original  # type: ignore[misc]
        process_logger.removeFilter(quiet)
