"""The figures of bench_control_plane.py, read from what the run left: the apiserver's audit log
(requests per job by verb and resource, apply -> training Job on the apiserver's own timestamps),
the operator's /metrics (handler calls and their time) and /proc (RSS); how each figure grows from
one size to the next; and the printed table.
"""

from __future__ import annotations

import itertools
import json
import re
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from speedrun_api.status import parse_rfc3339


def summary(values: list[float], digits: int) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.5), digits), "p99": round(percentile(values, 0.99), digits)}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def audit_counts(path: Path, offset: int, user: str) -> tuple[Counter[tuple[str, str]], int]:
    """Requests made by `user` in the audit log past byte `offset`, by (verb, resource[/subresource]);
    (counts, new offset)."""
    counts: Counter[tuple[str, str]] = Counter()
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read()
    for line in data.splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") != user:
            continue
        stage, verb = event.get("stage"), event.get("verb", "")
        if (verb == "watch" and stage == "ResponseStarted") or (verb != "watch" and stage == "ResponseComplete"):
            ref = event.get("objectRef") or {}
            resource = "/".join(r for r in (ref.get("resource", "?"), ref.get("subresource")) if r)
            counts[(verb, resource)] += 1
    return counts, offset + len(data)


def job_creations(path: Path, offset: int, user: str, names: list[str]) -> dict[str, float]:
    """SpeedrunJob name -> seconds from its create to the operator's create of its training Job, as
    the apiserver received both (the audit log's requestReceivedTimestamp: no client's clock or lag)."""
    wanted = set(names)
    applied, created = {}, {}
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read()
    for line in data.splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if event.get("verb") != "create" or event.get("stage") != "ResponseComplete":
            continue
        when = parse_rfc3339(event["requestReceivedTimestamp"]).timestamp()
        name = ref.get("name") or ""
        if ref.get("resource") == "speedrunjobs" and name in wanted:
            applied[name] = when
        elif ref.get("resource") == "jobs" and event["user"].get("username") == user and name.endswith("-train"):
            created.setdefault(name.removesuffix("-train"), when)
    return {name: created[name] - applied[name] for name in applied if name in created}


def by_verb(counts: Counter[tuple[str, str]]) -> Counter[str]:
    verbs: Counter[str] = Counter()
    for (verb, _), count in counts.items():
        verbs[verb] += count
    return verbs


def reconcile_metrics(port: int) -> dict[str, tuple[float, float]]:
    """The operator's own histogram speedrun_operator_reconcile_duration_seconds: handler ->
    (calls, seconds in all), read from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = re.match(r'speedrun_operator_reconcile_duration_seconds_(count|sum)\{handler="([^"]+)"\} (\S+)', line)
        if match:
            which, handler, value = match.groups()
            found.setdefault(handler, [0.0, 0.0])[0 if which == "count" else 1] = float(value)
    return {handler: (calls, seconds) for handler, (calls, seconds) in found.items()}


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


GROWTH_FIGURES = {  # what `growth` compares between two sizes: name -> how to read it from a run
    "apply_to_train_job_p50": lambda run: (run["apply_to_train_job_s"] or {}).get("p50"),
    "apply_to_train_job_p99": lambda run: (run["apply_to_train_job_s"] or {}).get("p99"),
    "apply_to_train_pods_p50": lambda run: (run["apply_to_train_pods_s"] or {}).get("p50"),
    "apply_to_train_pods_p99": lambda run: (run["apply_to_train_pods_s"] or {}).get("p99"),
    "requests_per_job": lambda run: run["requests_per_job_total"],
    "operator_rss_mib": lambda run: run["operator_rss_mib"],
    "operator_peak_rss_mib": lambda run: run["operator_peak_rss_mib"],
}


def growth(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How each figure grows from one size to the next, at the same handler threads: (figure at the
    larger N) / (at the smaller)."""
    steps = []
    for threads in dict.fromkeys(run.get("handler_threads") for run in runs):
        same = [run for run in runs if run.get("handler_threads") == threads]
        for small, large in itertools.pairwise(same):
            steps.append({"from": small["n"], "to": large["n"], "handler_threads": threads,
                          "ratios": _ratios(small, large)})  # fmt: skip
    return steps


def side_by_side(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At each size, each handler-thread count against the first one measured (the same run, minutes
    apart): (figure with `threads`) / (figure with the first count)."""
    out = []
    for n in dict.fromkeys(run["n"] for run in runs):
        first, *others = [run for run in runs if run["n"] == n]
        for other in others:
            out.append({"n": n, "threads": other.get("handler_threads"), "against": first.get("handler_threads"),
                        "ratios": _ratios(first, other)})  # fmt: skip
    return out


def _ratios(a_run: dict[str, Any], b_run: dict[str, Any]) -> dict[str, float | None]:
    ratios = {}
    for figure, read in GROWTH_FIGURES.items():
        a, b = read(a_run), read(b_run)
        ratios[figure] = round(b / a, 2) if a and b is not None else None
    return ratios


def print_table(report: dict[str, Any]) -> None:
    print(f"control plane up in {report['control_plane_start_s']} s; load average {report['loadavg_1min']:.1f} "
          f"at the start, {report['loadavg_1min_end']:.1f} at the end; controller-manager QPS "
          f"{report['controller_qps'] or 'default (20, burst 30)'}")  # fmt: skip
    print(f"{'N':>4} {'thr':>3} {'phases':<22} {'req/job':>7}  {'apply->Job p50/p99':>19} "
          f"{'apply->pods p50/p99':>20} {'bare burst p50/p99':>19} {'Job POST p50':>12} {'Job->pod p50':>12} "
          f"{'RSS MiB':>8} {'peak':>6}")  # fmt: skip
    nan = {"p50": float("nan"), "p99": float("nan")}
    for run in report["runs"]:
        job, lat = run["apply_to_train_job_s"] or nan, run["apply_to_train_pods_s"] or nan
        burst = run.get("bare_burst_to_pods_s") or nan
        post, to_pod = run["job_post_round_trip_s"]["p50"], run["job_create_to_pod_s"]["p50"]
        print(
            f"{run['n']:>4} {run.get('handler_threads', ''):>3} {json.dumps(run['phases']):<22} "
            f"{run['requests_per_job_total']:>7}  {job['p50']:>9.3f}/{job['p99']:<9.3f} "
            f"{lat['p50']:>9.3f}/{lat['p99']:<9.3f} {burst['p50']:>9.3f}/{burst['p99']:<9.3f} "
            f"{post:>12.4f} {to_pod:>12.3f} {run['operator_rss_mib']:>8} {run['operator_peak_rss_mib']:>6}"
        )
    for run in report["runs"]:
        at = f"N={run['n']} threads={run.get('handler_threads')}"
        print(f"{at}: requests/job " + ", ".join(f"{k} {v}" for k, v in run["requests_by_resource"].items()))
        calls = ", ".join(f"{h} {c} x {run['handler_mean_ms'][h]} ms" for h, c in run["handler_calls_per_job"].items())
        print(f"{at}: handler calls/job (mean time) {calls}")
    for step in report["side_by_side"]:
        ratios = ", ".join(f"{k} x{v}" for k, v in step["ratios"].items())
        print(f"N={step['n']}: {step['threads']} threads against {step['against']}: {ratios}")
    for step in report["growth"]:
        ratios = ", ".join(f"{k} x{v}" for k, v in step["ratios"].items())
        print(f"growth {step['from']} -> {step['to']} jobs (x{step['to'] / step['from']:g}, "
              f"{step['handler_threads']} threads): {ratios}")  # fmt: skip
