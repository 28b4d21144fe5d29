"""`torchrun`, with the trainer's "invalid config" exit code kept intact.

    python -m speedrun_trainer.train.torchrun --nnodes=2 ... -m speedrun_trainer.train --config run.json

Takes exactly torchrun's arguments. Plain torchrun exits 1 whatever its workers exited with, so a
Kubernetes podFailurePolicy could never tell "this config can never work" (exit 2) from a crash
worth retrying. This wrapper:

1. validates the `--config` manifest before any worker starts (exit 2, one line per problem), and
   for the training module runs the checks that need no worker (train/startup_checks.py: the
   tokenizer, the data, the vocabularies, the storage): a problem no retry can fix exits 2 in
   seconds, with one line, and no agent ever starts (this is the pod's entry point);
2. gives the workers a file (`SPEEDRUN_CONFIG_ERROR_FILE`) where a worker that finds its config
   invalid at run time (world size, a storage that holds another spec's run) writes its one-line
   error, and runs torchrun's agent so that a worker's exit 2 is never restarted
   (train/elastic_agent.py);
3. when torchrun fails and that file says why, prints the error as the last log line (the pod's
   termination message) and exits 2; any other failure exits 1, as torchrun does.

In an Indexed Job's pod (JOB_COMPLETION_INDEX set), the agent of index 0 hosts the c10d store and
the others never do (`is_host` added to `--rdzv-conf`, `with_rendezvous_host`): torch would
otherwise decide by resolving the endpoint's name and comparing it with its own addresses, a
lookup that races the headless Service's EndpointSlice.

With `SPEEDRUN_DIE_WITH_PARENT=1` (`speedrun run` sets it; pods need not), the agent and its
workers ask Linux for SIGTERM when their parent dies (`die_with_parent`), so even a SIGKILLed
`speedrun run` or agent leaves no orphan training processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import os
import signal
import sys
import tempfile
from pathlib import Path

from speedrun_api.manifest import EXIT_INVALID
from speedrun_api.run_contract import (
    ENV_CONFIG_ERROR_FILE,
    ENV_DIE_WITH_PARENT,
    ENV_STARTUP_CHECKED,
    PHASE_PREFIX,
    TRAIN_MODULE,
)

COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in an Indexed Job's pods
PR_SET_PDEATHSIG = 1  # linux/prctl.h
INVALID_CONFIG = "invalid config: "  # how an exit 2's one line starts (the pod's termination message)


def die_with_parent() -> None:
    """With SPEEDRUN_DIE_WITH_PARENT=1 on Linux: SIGTERM this process when its parent exits.

    prctl(PR_SET_PDEATHSIG) is Linux-only; elsewhere `speedrun run`'s own signal handling (and
    torchrun's, which stops its workers on SIGTERM) is what stops the tree."""
    if os.environ.get(ENV_DIE_WITH_PARENT) != "1" or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0 and os.getppid() == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the parent was gone before the request took hold


def config_path(argv: list[str]) -> str | None:
    """The value of the training script's `--config` (after `-m module` or the script)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def entry_module(argv: list[str]) -> str | None:
    """The module torchrun runs (`-m MODULE`), if any."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-m", "--module"):
            return argv[i + 1]
    return None


def with_rendezvous_host(argv: list[str], completion_index: str | None) -> list[str]:
    """torchrun's arguments with `is_host=true|false` in `--rdzv-conf`: index 0 hosts the store.

    Unchanged outside an Indexed Job, for other rendezvous backends, or when `is_host` is given."""
    if completion_index is None or not completion_index.strip().isdigit():
        return list(argv)
    options = argv[: next((i for i, a in enumerate(argv) if a == "-m" or not a.startswith("-")), len(argv))]
    if "--rdzv-backend=c10d" not in (a.replace("_", "-") for a in options):
        return list(argv)
    is_host = f"is_host={'true' if int(completion_index) == 0 else 'false'}"
    out = list(argv)
    for i, arg in enumerate(options):
        key, _, value = arg.partition("=")
        if key.replace("_", "-") == "--rdzv-conf":
            if "is_host=" in value:
                return out
            out[i] = f"{key}={value},{is_host}" if value else f"{key}={is_host}"
            return out
    return [f"--rdzv-conf={is_host}", *out]


def say_phase(text: str) -> None:
    """A set-up phase of this process, as a log line `speedrun run` shows (cli/notices.py).
    Here, not in train/runtime.py: the agent says it before importing torch."""
    print(f"[{dt.datetime.now():%H:%M:%S}] {PHASE_PREFIX}{text}", flush=True)


def report_config_error(message: str) -> bool:
    """Called by a worker before it exits with EXIT_INVALID: hands its one line to this wrapper,
    which prints it once for all the node's workers. False: no wrapper to hand it to."""
    path = os.environ.get(ENV_CONFIG_ERROR_FILE)
    if not path:
        return False
    try:
        Path(path).write_text(message.strip().splitlines()[0] if message.strip() else message)
    except OSError:  # the worker prints it itself
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    config = config_path(argv)
    if config is not None:
        from speedrun_api.manifest import SpecError, load_job

        try:
            job = load_job(config)
        except SpecError as err:
            for line in err.lines:
                print(f"{INVALID_CONFIG}{line}", file=sys.stderr, flush=True)
            return EXIT_INVALID
        if entry_module(argv) == TRAIN_MODULE and os.environ.get(ENV_STARTUP_CHECKED) != "1":
            from speedrun_trainer.train.startup_checks import startup_verdict

            passed, problem = startup_verdict(job)
            if problem is not None:
                print(f"{INVALID_CONFIG}{problem}", file=sys.stderr, flush=True)
                return EXIT_INVALID
            if passed:  # this agent's workers need not read all the data again
                os.environ[ENV_STARTUP_CHECKED] = "1"

    say_phase("torchrun agent: importing torch")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from speedrun_trainer.train.elastic_agent import stop_restarts_on_invalid_config

    argv = with_rendezvous_host(argv, os.environ.get(COMPLETION_INDEX_ENV))
    args = parse_args(argv)
    if not args.standalone:
        say_phase(f"rendezvous of {args.nnodes} node(s) at {args.rdzv_endpoint}")

    with tempfile.TemporaryDirectory(prefix="speedrun-torchrun-") as tmp:
        error_file = Path(tmp) / "config-error"
        os.environ[ENV_CONFIG_ERROR_FILE] = str(error_file)
        try:
            with stop_restarts_on_invalid_config():
                run(args)
        except ChildFailedError as err:
            rank, failure = err.get_first_failure()
            worker = which_worker(rank, failure.local_rank, os.environ.get(COMPLETION_INDEX_ENV))
            if error_file.exists() or failure.exitcode == EXIT_INVALID:
                message = error_file.read_text().strip() if error_file.exists() else f"{worker} exited 2"
                print(f"{INVALID_CONFIG}{message}", file=sys.stderr, flush=True)
                return EXIT_INVALID
            print(f"torchrun: {worker} exited {failure.exitcode}", file=sys.stderr, flush=True)
            return 1
    return 0


def which_worker(rank: int, local_rank: int, index: str | None) -> str:
    """A failed worker as the pod's last line names it: in a training Job's pod by its pod's
    completion index and local rank, since the trainer renumbers torchrun's ranks in index order
    (train/rank_order.py) and torchrun's `rank` is not the one the worker's logs say; else by rank."""
    if index is None:
        return f"worker rank {rank}"
    return f"worker {local_rank} of pod index {index}"


if __name__ == "__main__":
    sys.exit(main())
