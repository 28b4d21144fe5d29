"""`speedrun run FILE`: the manifest's speedrun on this machine, no cluster.

Starts one torchrun agent per "node" of `spec.resources` (each with `procsPerNode` workers; or,
with `--launcher torchx`, the same as a torchx `dist.ddp` app on its local_cwd scheduler),
rendezvousing over loopback with the same c10d flags the operator puts in its pods, then the
evaluation, then prints the results. Progress comes from the trainer's own Prometheus endpoint
(the one the operator scrapes), drawn as one live line (cli/live_display.py); what the nodes' logs
say that a user must see (resumed step, W&B, warnings) shows above it once (cli/notices.py).
Logs go to `<run dir>/logs/`. `--resume` of a run that already finished says so and does
nothing, unless `--force` asks to evaluate it again. This process is the run's one writer: it
holds the run directory's lock, and its storage's, until it exits (cli/run_dirs.py); a second
`speedrun run` of the same run exits 2 with one line naming it.
An error no retry can fix (train/startup_checks.py) is one line on stderr and exit 2: found
before any agent starts where no worker is needed to find it, else after the workers' one
attempt (the agents do not restart a worker that exited 2).
Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop every process it started and exit 128 + the
signal number; the agents and their workers also get SIGTERM from the kernel if this process is
SIGKILLed (`ENV_DIE_WITH_PARENT`, train/torchrun.py). A process killed by a signal is
reported as such ("killed by signal 9 (SIGKILL)", exit 128 + 9), not as a wrapped exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from speedrun_api.manifest import EXIT_INVALID, ConfigError, dumps_job
from speedrun_api.plan import resolve
from speedrun_api.run_contract import (
    ENV_DIE_WITH_PARENT,
    ENV_METRICS_PORT,
    ENV_RUN_DIR,
    ENV_RUN_LOCK_HELD,
    ENV_STARTUP_CHECKED,
    ENV_STORAGE_URI,
    ENV_TERMINATION_LOG,
    RESULTS_FILE,
    RUN_CONFIG_FILE,
    resolve_storage_uri,
)
from speedrun_api.spec import SpeedrunJob, train_backend
from speedrun_trainer.cli.launch import (
    JAX_MODULE,
    TorchxApp,
    free_port,
    jax_process_env,
    missing_jax,
    stop_process_trees,
)
from speedrun_trainer.cli.live_display import LiveDisplay, RunScreen, scrape
from speedrun_trainer.cli.notices import LogWatcher
from speedrun_trainer.cli.results_table import fit_rows, format_results_table, text_width
from speedrun_trainer.cli.run_dirs import hold_run_dir, hold_storage, last_run_dir, new_run_dir, run_id
from speedrun_trainer.data.run_lock import RunLocked
from speedrun_trainer.data.storage import DataError, open_storage
from speedrun_trainer.train.startup_checks import startup_verdict
from speedrun_trainer.train.torchrun import INVALID_CONFIG

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Stopped` in the main thread while the run is going."""
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def describe_exit(code: int) -> tuple[str, int]:
    """(what happened, the exit code to pass on): a negative Popen code is a signal."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else "?"
        return f"killed by signal {-code} ({name})", 128 - code
    return f"exit {code}", code


class LocalRun:
    def __init__(self, job: SpeedrunJob, run_dir: Path, storage_uri: str, checked: bool = False) -> None:
        self.job, self.run_dir, self.storage_uri = job, run_dir, storage_uri
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.config = run_dir / RUN_CONFIG_FILE
        self.config.write_text(dumps_job(job))
        self.procs: list[subprocess.Popen] = []
        self.metrics_port = free_port()
        r = job.spec.resources
        threads = max(1, (os.cpu_count() or 1) // (r.node_range[1] * r.procs_per_node))
        given = {**os.environ, **job.spec.env}  # the spec's own over this shell's
        self.env = {
            **given,  # no name of spec.env is set below but OMP_NUM_THREADS (api run_env.py refuses them)
            ENV_STORAGE_URI: storage_uri,
            ENV_RUN_DIR: str(run_dir),  # W&B files go under it (train/tracking.py)
            ENV_METRICS_PORT: str(self.metrics_port),
            ENV_TERMINATION_LOG: str(run_dir / "termination-message.json"),
            "OMP_NUM_THREADS": given.get("OMP_NUM_THREADS", str(threads)),
            "PYTHONUNBUFFERED": "1",
            ENV_DIE_WITH_PARENT: "1",
            ENV_RUN_LOCK_HELD: "1",  # this process holds the run's lock for its trainers and eval
            **({ENV_STARTUP_CHECKED: "1"} if checked else {}),  # every startup check passed here
        }

    def _spawn(
        self, args: list[str], log_name: str, module: str = "speedrun_trainer.train.torchrun", env: dict | None = None
    ) -> subprocess.Popen:
        """One torchrun agent (`python -m speedrun_trainer.train.torchrun`), or another `module`, in a
        session of its own."""
        log = open(self.logs / log_name, "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_training(self, launcher: str = "torchrun") -> list[subprocess.Popen | TorchxApp]:
        r, policy = self.job.spec.resources, self.job.spec.run_policy
        lo, hi = r.node_range
        port = free_port()
        if train_backend(self.job.spec) == "jax":  # one jax_main process per node (cli/launch.py)
            return [
                self._spawn(
                    ["--config", str(self.config)],
                    f"train-node-{i}.log",
                    JAX_MODULE,
                    jax_process_env(self.job, self.env, port, i),
                )
                for i in range(hi)
            ]
        if launcher == "torchx":
            app = TorchxApp(
                module="speedrun_trainer.train",
                args=["--config", str(self.config)],
                nodes=f"{lo}:{hi}" if lo != hi else str(hi),
                procs_per_node=r.procs_per_node,
                env={
                    k: v
                    for k, v in self.env.items()
                    if k.startswith(("SPEEDRUN_", "AWS_", "WANDB_", "OMP_")) or k in self.job.spec.env
                },
                max_retries=policy.max_restarts,
                rdzv_port=port,
                log_dir=self.logs / "torchx",
            )
            self.procs.append(app)
            return [app]
        common = [
            f"--nnodes={lo}:{hi}" if lo != hi else f"--nnodes={hi}",
            f"--nproc-per-node={r.procs_per_node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id={run_id(self.job, self.run_dir)}",
            f"--max-restarts={policy.max_restarts}",
            "--local-addr=127.0.0.1",
            "-m",
            "speedrun_trainer.train",
            "--config",
            str(self.config),
        ]
        return [self._spawn(common, f"train-node-{i}.log") for i in range(hi)]

    def start_eval(self) -> subprocess.Popen:
        args = [
            "--standalone",
            f"--nproc-per-node={self.job.spec.resources.procs_per_node}",
            "-m",
            "speedrun_trainer.evaluation",
            "--config",
            str(self.config),
        ]
        return self._spawn(args, "eval.log")

    def wait(self, procs: list[subprocess.Popen | TorchxApp], bar: RunScreen | None) -> int:
        """Wait for all; the first failure stops the rest. Returns the first non-zero code or 0."""
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                self.stop()
                return failed[0]
            if all(c == 0 for c in codes):
                return 0
            if bar is not None:
                bar.update(scrape(f"http://127.0.0.1:{self.metrics_port}/metrics"))
            time.sleep(0.5)

    def stop(self) -> None:
        for sig in (*STOP_SIGNALS, signal.SIGINT):  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        for proc in self.procs:
            if isinstance(proc, TorchxApp):
                proc.cancel()
        stop_process_trees([p for p in self.procs if isinstance(p, subprocess.Popen)])

    def config_error(self, logs: str) -> str | None:
        """Why a process exited 2: the last `invalid config:` line its torchrun wrapper wrote in
        the first of the `logs` (a glob) that holds one."""
        for log in sorted(self.logs.glob(logs)):
            found = [line for line in log.read_text(errors="replace").splitlines() if line.startswith(INVALID_CONFIG)]
            if found:
                return found[-1].removeprefix(INVALID_CONFIG)
        return None

    def tail(self, log_name: str, lines: int = 25) -> str:
        path = self.logs / log_name
        apps = [p for p in self.procs if isinstance(p, TorchxApp)]
        if apps and log_name.startswith("train-node-"):
            path = apps[0].node_log(int(log_name.removeprefix("train-node-").removesuffix(".log"))) or path
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(text[-lines:])


FINISHED_MARKER = "results-summary.json"  # written by run_local when a run has its results


def run_local(
    job: SpeedrunJob,
    *,
    storage_uri: str | None,
    resume: bool,
    runs_dir: str,
    launcher: str = "torchrun",
    force: bool = False,
) -> int:
    if train_backend(job.spec) == "jax":  # no jax here, or a launcher that cannot start it: one line
        problem = missing_jax() or (
            "--launcher torchx: spec.train.backend jax runs only with the default launcher"
            if launcher == "torchx"
            else None
        )
        if problem is not None:
            print(f"speedrun run: {problem}", file=sys.stderr)
            return EXIT_INVALID
    with contextlib.ExitStack() as held:  # the run's locks, held until this function returns
        try:
            run_dir = last_run_dir(job, runs_dir) if resume else None
            if run_dir is not None and (run_dir / FINISHED_MARKER).exists() and not force:
                print(
                    f"speedrun {job.metadata.name}: the run in {run_dir} already finished (results in"
                    f" {run_dir / FINISHED_MARKER}); nothing to do. --force evaluates it again and overwrites"
                    " its results; without --resume a new run starts.",
                    file=sys.stderr,
                )
                return 0
            if run_dir is not None:
                hold_run_dir(job, run_dir, held)
            else:
                run_dir = new_run_dir(job, runs_dir, held)
            uri = resolve_storage_uri(job, override=storage_uri, default=run_dir.as_uri())
            assert uri is not None  # the default is never None
            hold_storage(job, run_dir, uri, held)
            # What no retry can fix fails here, in seconds, before any torchrun agent starts.
            checked, problem = startup_verdict(job, uri)
            if problem is not None:
                print(f"error: {problem}", file=sys.stderr)
                return EXIT_INVALID
        except (RunLocked, ConfigError) as err:  # usage errors: a retry would be refused the same way
            print(f"speedrun run: {err}", file=sys.stderr)
            return EXIT_INVALID
        except DataError as err:
            print(f"speedrun run: {err}", file=sys.stderr)
            return 1
        return _run(job, run_dir, uri, launcher, checked)


def _run(job: SpeedrunJob, run_dir: Path, uri: str, launcher: str, checked: bool) -> int:
    """Train, evaluate and print the results of a run whose locks this process holds."""
    plan = resolve(job)
    run = LocalRun(job, run_dir, uri, checked)
    width = text_width()
    title = (
        f"speedrun {job.metadata.name}: {plan.model_size / 1e6:.2f}M params, {plan.steps} steps,"
        f" {plan.nodes} node(s) x {plan.procs_per_node} process(es) on {job.spec.resources.accelerator}"
    )
    header = fit_rows([("run dir", str(run_dir)), ("storage", uri), ("logs", str(run.logs))], width)
    print("\n".join([*textwrap.wrap(title, width, break_on_hyphens=False), *header]), flush=True)
    started = time.monotonic()
    screen = RunScreen(LiveDisplay(plan.steps, stream=sys.stderr), LogWatcher(run.logs, skip_existing=True))
    nodes, procs = job.spec.resources.node_range[1], job.spec.resources.procs_per_node
    if train_backend(job.spec) == "jax":
        screen.note("phase", f"starting {nodes} jax_main process(es), joined by jax.distributed")
    elif launcher == "torchx":
        screen.note("phase", f"starting a torchx dist.ddp app: {nodes} node(s) x {procs} process(es)")
    else:
        screen.note("phase", f"starting {nodes} torchrun agent(s), {procs} process(es) each")
    try:
        with stop_signals_raise():
            code = run.wait(run.start_training(launcher), screen)
            screen.finish()
            if code == EXIT_INVALID and (problem := run.config_error("train-node-*.log")) is not None:
                print(f"error: {problem}", file=sys.stderr)  # one line: no retry can fix it
                return code
            if code:
                what, code = describe_exit(code)
                print(
                    f"training failed ({what}); last lines of the rank-0 log:\n{run.tail('train-node-0.log')}",
                    file=sys.stderr,
                )
                return code
            screen.note("phase", "starting the evaluation")
            code = run.wait([run.start_eval()], screen)
            screen.finish()
            if code == EXIT_INVALID and (problem := run.config_error("eval.log")) is not None:
                print(f"error: {problem}", file=sys.stderr)
                return code
            if code:
                what, code = describe_exit(code)
                print(f"evaluation failed ({what}):\n{run.tail('eval.log')}", file=sys.stderr)
                return code
    except (KeyboardInterrupt, Stopped) as err:
        screen.finish()
        run.stop()
        signum = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
        print(
            f"\nstopped ({signal.Signals(signum).name}). Continue with: speedrun run <file> --resume"
            f" (run dir {run_dir})",
            file=sys.stderr,
        )
        return 128 + signum
    storage = open_storage(uri, endpoint_url=job.spec.storage.endpoint_url)
    results = storage.read_json(RESULTS_FILE)["runs"][0]["run_info"]
    (run_dir / FINISHED_MARKER).write_text(json.dumps(results, indent=2))
    seconds = time.monotonic() - started
    print(format_results_table(results, storage.url(RESULTS_FILE), seconds, width, run_dir / FINISHED_MARKER))
    return 0
