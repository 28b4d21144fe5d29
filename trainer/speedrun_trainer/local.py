"""`speedrun run FILE`: the manifest's speedrun on this machine, no cluster.

Starts one torchrun agent per "node" of `spec.resources` (each with `procsPerNode` workers),
rendezvousing over loopback with the same c10d flags the operator puts in its pods, then the
evaluation, then prints the results. Progress comes from the trainer's own Prometheus endpoint
(the one the operator scrapes), drawn as a one-line bar. Logs go to `<run dir>/logs/`.
Ctrl-C stops every process group it started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from speedrun_trainer.manifest import dumps_job
from speedrun_trainer.plan import resolve
from speedrun_trainer.progress import ProgressBar, format_results_table, scrape
from speedrun_trainer.spec import SpeedrunJob
from speedrun_trainer.storage import open_storage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_dir(job: SpeedrunJob, runs_dir: str, resume: bool) -> Path:
    base = Path(runs_dir).resolve() / job.metadata.name
    if resume:
        existing = sorted(p for p in base.glob("*") if p.is_dir()) if base.exists() else []
        if existing:
            return existing[-1]
        print(f"no earlier run under {base}; starting a new one", file=sys.stderr)
    return base / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _children_by_parent() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            out.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return out


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; an empty list elsewhere)."""
    children, found, todo = _children_by_parent(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie."""
    if not Path("/proc").is_dir():  # not Linux: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class LocalRun:
    def __init__(self, job: SpeedrunJob, run_dir: Path, storage_uri: str) -> None:
        self.job, self.run_dir, self.storage_uri = job, run_dir, storage_uri
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.config = run_dir / "run.json"
        self.config.write_text(dumps_job(job))
        self.procs: list[subprocess.Popen] = []
        self.metrics_port = free_port()
        r = job.spec.resources
        threads = max(1, (os.cpu_count() or 1) // (r.node_range[1] * r.procs_per_node))
        self.env = {
            **os.environ,
            "SPEEDRUN_STORAGE_URI": storage_uri,
            "SPEEDRUN_METRICS_PORT": str(self.metrics_port),
            "SPEEDRUN_TERMINATION_LOG": str(run_dir / "termination-message.json"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.logs / log_name, "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_training(self) -> list[subprocess.Popen]:
        r, policy = self.job.spec.resources, self.job.spec.run_policy
        lo, hi = r.node_range
        port = free_port()
        run_id = f"{self.job.metadata.name}-{self.run_dir.name}"
        common = [
            f"--nnodes={lo}:{hi}" if lo != hi else f"--nnodes={hi}",
            f"--nproc-per-node={r.procs_per_node}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id={run_id}",
            f"--max-restarts={policy.max_restarts}",
            "--local-addr=127.0.0.1",
            "-m", "speedrun_trainer.train", "--config", str(self.config),
        ]
        return [self._spawn(common, f"train-node-{i}.log") for i in range(hi)]

    def start_eval(self) -> subprocess.Popen:
        args = ["--standalone", f"--nproc-per-node={self.job.spec.resources.procs_per_node}",
                "-m", "speedrun_trainer.evaluate", "--config", str(self.config)]
        return self._spawn(args, "eval.log")

    def wait(self, procs: list[subprocess.Popen], bar: ProgressBar | None) -> int:
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
        """SIGTERM every process we started and their workers, then SIGKILL what is left.

        torchrun starts its workers in sessions of their own, so killing the agent's process
        group is not enough: the whole tree is collected first (from /proc) and signalled.
        """
        tree = {pid for p in self.procs if p.poll() is None for pid in (p.pid, *_descendants(p.pid))}
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 2.0)):
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                for p in self.procs:
                    p.poll()  # reap our direct children
                tree = {pid for pid in tree if _running(pid)}
                if not tree:
                    return
                time.sleep(0.1)

    def tail(self, log_name: str, lines: int = 25) -> str:
        path = self.logs / log_name
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(text[-lines:])


def run_local(job: SpeedrunJob, *, storage_uri: str | None, resume: bool, runs_dir: str) -> int:
    run_dir = _run_dir(job, runs_dir, resume)
    uri = storage_uri or job.spec.storage.uri or run_dir.as_uri()
    plan = resolve(job)
    run = LocalRun(job, run_dir, uri)
    print(
        f"speedrun {job.metadata.name}: {plan.model_size / 1e6:.2f}M params, {plan.steps} steps,"
        f" {plan.nodes} node(s) x {plan.procs_per_node} process(es) on {job.spec.resources.accelerator}\n"
        f"  run dir  {run_dir}\n  storage  {uri}\n  logs     {run.logs}",
        flush=True,
    )
    started = time.monotonic()
    try:
        bar = ProgressBar(plan.steps, stream=sys.stderr)
        code = run.wait(run.start_training(), bar)
        bar.finish()
        if code:
            print(f"training failed (exit {code}); last lines of the rank-0 log:\n{run.tail('train-node-0.log')}",
                  file=sys.stderr)
            return code
        print("evaluating ...", flush=True)
        code = run.wait([run.start_eval()], None)
        if code:
            print(f"evaluation failed (exit {code}):\n{run.tail('eval.log')}", file=sys.stderr)
            return code
    except KeyboardInterrupt:
        run.stop()
        print(f"\nstopped. Continue with: speedrun run <file> --resume (run dir {run_dir})", file=sys.stderr)
        return 130
    storage = open_storage(uri, endpoint_url=job.spec.storage.endpoint_url)
    results = storage.read_json("speedrun_results.json")["runs"][0]["run_info"]
    print(format_results_table(results, storage.url("speedrun_results.json"), time.monotonic() - started))
    (run_dir / "results-summary.json").write_text(json.dumps(results, indent=2))
    return 0
