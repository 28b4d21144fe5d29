"""The text table bench_trainer.py prints: one row per contender, labelled with the precision it ran
in, then each speedup four ways (median tokens/s, paired per-round median, best rounds, CPU time).

    print(report(run_benchmark(args)))       # what `python bench/bench_trainer.py` prints
    labels(res)["ours_default"]               # "ours bf16 (default)" on a CPU with native bf16

Rows: `ours` at the like-for-like precision (fp32 on CPU, `--precision` on CUDA), `ours_default`
(CPU only, where the trainer's default `train.precision` is not fp32 there: bf16 autocast on CPUs
that multiply bf16 natively), `reference` and `modded` as nanoGPT and modded-nanogpt run on the
device (fp32 on CPU, bf16 autocast on CUDA). A ratio names both rows it divides; the like-for-like
one is `speedup`, the trainer's default against nanoGPT as it runs is `speedup_default`.
"""

from __future__ import annotations

from typing import Any

NAMES = ("ours", "ours_default", "reference", "modded")


def labels(res: dict[str, Any]) -> dict[str, str]:
    """Each contender's row label, naming the precision it ran in (the ratios compare these)."""
    refs = "bf16" if res["dtype"].startswith("bfloat16") else "fp32"
    out = {"ours": f"ours {res['precision_ours']}", "reference": f"reference {refs}", "modded": f"modded {refs}"}
    if res["precision_ours_default"]:
        out["ours_default"] = f"ours {res['precision_ours_default']} (default)"
    return out


def report(res: dict[str, Any]) -> str:
    m, md = res["measured_peak_flops"], res["measured_peak_flops_default"]
    label = labels(res)
    lines = [
        f"{res['config']} on {res['device_name']} ({res['device']}, {res['threads']} threads), {res['dtype']},"
        f" {res['tokens_per_step']} tokens/step, {res['rounds']} rounds x {res['steps_per_round']} steps"
        f" (1-min load average {res['loadavg_1min']['before']} -> {res['loadavg_1min']['after']})",
        f"peak: {res['accelerator']} table {res['peak_flops']:.3g} FLOP/s"
        + (f"; measured matmul {m:.3g} FLOP/s ({res['measured_peak_matmul']['dtype']})" if m else "")
        + (f", {md:.3g} FLOP/s (bf16)" if md else ""),
        f"{'':22} {'params':>9} {'ms/step':>9} {'tokens/s':>9} {'MFU(table)':>11} {'MFU(meas.)':>11}"
        f" {'CPU ms/step':>12}",
    ]
    for name in NAMES:
        r = res[name]
        if r is None:
            continue
        meas = f"{r['mfu_vs_measured_peak']:.1%}" if r["mfu_vs_measured_peak"] is not None else "-"
        lines.append(
            f"{label[name]:22} {r['params']:>9,} {r['step_time_s'] * 1e3:>9.2f}"
            f" {r['tokens_per_second']:>9,.0f} {r['mfu']:>11.1%} {meas:>11}"
            f" {r['cpu_time_per_step_s'] * 1e3:>12.2f}"
        )
    if res["device"] == "cuda":
        lines.append(f"host syncs in 2 steps (want 0): {res['host_syncs_in_2_steps']}")
    if res["precision_ours_default"]:
        lines.append(
            f"(default) = the trainer's default train.precision, {res['precision_ours_default']}: here"
            f" {res['dtype_ours_default']}; the references run as nanoGPT runs on {res['device']}:"
            f" {label['reference'].split()[-1]}"
        )
    elif res["device"] == "cpu":
        lines.append("the trainer's default precision trains in fp32 on this CPU (no native bf16): row ours fp32")
    pairs = [("speedup", "ours", "reference", "like for like"), ("speedup_vs_modded", "ours", "modded", "")]
    if res["precision_ours_default"]:
        pairs += [
            ("speedup_default", "ours_default", "reference", "the trainer's default vs nanoGPT as it runs"),
            ("speedup_default_vs_modded", "ours_default", "modded", ""),
        ]
    for key, mine, other, note in pairs:
        lines.append(
            f"speedup {label[mine]} / {label[other]}{f' ({note})' if note else ''}: {res[key]:.2f}x"
            f" tokens/s; median of per-round ratios {res[key + '_paired_median']:.2f}x; best rounds"
            f" {res[key + '_best_round']:.2f}x; CPU time {res[key + '_cpu_time']:.2f}x"
        )
    return "\n".join(lines)
