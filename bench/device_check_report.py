"""The tables bench/device_check.py prints, one per section, and issue 24's targets judged on its
figures (a JSON-ready list: target, value, pass; pass is null where the figure was not taken or
the run was not on CUDA, the targets being GPU figures). Also what the GPU and the TPU checks
(bench/tpu_device_check.py) share: sections run under a time budget, whose failure or overrun is
reported instead of hiding the others' figures (`run_section`), and the targets' lines.

    for line in speed_tables(res["sections"]["speed"]): print(line)
    targets(res)   # [{"target": "ours bf16 MFU >= 45%", "value": 0.47, "pass": True}, ...]
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any


class OverBudget(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise OverBudget in this (main) thread once `seconds` have passed; a long C call (a compile)
    ends first. Not on platforms without SIGALRM: then sections run to their end."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise OverBudget(f"over its {seconds:.3g} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(key: str, body: Callable[[dict[str, Any], float], None], budget: float) -> dict[str, Any]:
    """`body(out, budget)` within `budget` seconds: out["status"] ok, or skipped (over its budget)
    or failed with a one-line reason; what it measured before stays in `out`."""
    out: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        with time_limit(budget):
            body(out, budget)
        out["status"] = "ok"
    except (OverBudget, subprocess.TimeoutExpired) as err:
        out.update(status="skipped", reason=f"{key} ran {time.monotonic() - t0:.0f} s: {err}")
    except Exception as err:  # one section failing must not hide the others' figures
        out.update(status="failed", reason=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
    return out


def target_lines(found: list[dict[str, Any]], unjudged: str) -> list[str]:
    """One line per target: its value and PASS / FAIL, or why it was not judged."""
    lines = []
    for t in found:
        verdict = {True: "PASS", False: "FAIL", None: unjudged if t["value"] is not None else "not measured"}
        value = t["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"  {t['target']:30} {shown:>10}  {verdict[t['pass']]}")
    return lines


# Issue 24's targets, on one H100: ours >= 45% MFU in bf16 and within 1.1x of modded's step time,
# fp8 faster than bf16, the memory estimate within 10% of the measured peak, no host sync in a step.
MIN_MFU, MAX_STEP_RATIO, MAX_MEMORY_ERROR = 0.45, 1.1, 0.10


def speed_tables(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", {})
    if not rows:
        return [f"fp8: skipped: {s['fp8_skipped']}"] if "fp8_skipped" in s else []
    lines = [f"{s.get('config')} on {s.get('accelerator')}: peak {s.get('peak_flops', 0):.4g} FLOP/s (bf16 table)"]
    lines.append(f"{'':12} {'ms/step':>9} {'tokens/s':>11} {'MFU':>7}")
    for name, r in rows.items():
        lines.append(f"{name:12} {r['step_time_s'] * 1e3:>9.2f} {r['tokens_per_second']:>11,.0f} {r['mfu']:>7.1%}")
    if "step_ratio_ours_vs_modded" in s:
        lines.append(f"step time ours bf16 / modded bf16: {s['step_ratio_ours_vs_modded']:.3f}x (want <= 1.1)")
    if "fp8_speedup" in s:
        lines.append(f"fp8 speedup (ours bf16 step / ours fp8 step): {s['fp8_speedup']:.3f}x (want > 1)")
    elif "fp8_skipped" in s:
        lines.append(f"fp8: skipped: {s['fp8_skipped']}")
    return lines


def memory_table(s: dict[str, Any]) -> list[str]:
    gib = 2**30
    if "layers" not in s:
        return []
    lines = [f"nanochat d24 slice: {s.get('layers')} layers, device batch {s.get('device_batch')}, seq 2048, bf16"]
    if s.get("out_of_memory_at_layers"):
        lines.append(f"out of memory at {s['out_of_memory_at_layers']} layers; measured the thinner slice")
    est = s.get("estimated_bytes")
    lines.append(f"estimated peak: {est / gib:.2f} GiB" if est else f"estimated peak: {s.get('estimate_note')}")
    if "measured_bytes" in s:
        lines.append(
            f"measured peak:  {s['measured_bytes'] / gib:.2f} GiB allocated"
            f" ({s['measured_reserved_bytes'] / gib:.2f} GiB reserved)"
        )
    else:
        lines.append(f"measured peak: {s.get('measured_note')}")
    if "estimate_error" in s:
        lines.append(f"estimate / measured - 1: {s['estimate_error']:+.1%} (want within 10%)")
    return lines


def host_sync_table(s: dict[str, Any]) -> list[str]:
    if "profiler_counts" not in s:
        return []
    lines = [f"torch.profiler over {s['steps']} of our steps (want 0 each){'':6} training thread  other threads"]
    lines += [f"  {name:52} {n:>8} {s['other_threads'][name]:>14}" for name, n in s["profiler_counts"].items()]
    lines += [f"  called from: {key} x{n}" for key, n in s["called_from"].items()]
    warn = s.get("sync_debug_warnings")
    lines.append(
        "torch.cuda.set_sync_debug_mode('warn'): "
        + (f"{warn} warnings (want 0)" if warn is not None else "skipped: CUDA only")
    )
    return lines


def gpu_tests_table(s: dict[str, Any]) -> list[str]:
    if "command" not in s:
        return []
    return [f"python {s['command']}: exit {s['returncode']}", f"  {s['summary']}", *s["failed"]]


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue-24 target with its figure and pass/fail; None where the figure was not taken."""
    s = res["sections"]
    rows = s["speed"].get("rows", {})
    syncs = s["host_syncs"]
    counted = syncs.get("profiler_counts")

    def t(name: str, value: Any, ok: Callable[[Any], bool]) -> dict[str, Any]:
        # The targets are GPU figures: on CPU (--smoke) the values are shown, never judged.
        judged = value is not None and res["device"] == "cuda"
        return {"target": name, "value": value, "pass": bool(ok(value)) if judged else None}

    err = s["memory"].get("estimate_error")
    return [
        t("ours bf16 MFU >= 45%", rows.get("ours_bf16", {}).get("mfu"), lambda v: v >= MIN_MFU),
        t("step ours / modded <= 1.1", s["speed"].get("step_ratio_ours_vs_modded"), lambda v: v <= MAX_STEP_RATIO),
        t("fp8 faster than bf16", s["speed"].get("fp8_speedup"), lambda v: v > 1),
        t("memory estimate within 10%", err, lambda v: abs(v) <= MAX_MEMORY_ERROR),
        t("host syncs in a step == 0", sum(counted.values()) if counted else None, lambda v: v == 0),
        t("gpu tests pass", s["gpu_tests"].get("returncode"), lambda v: v == 0),
    ]
