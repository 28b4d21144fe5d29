"""What `speedrun run` shows: the live line (rich), the notices from the nodes' logs, and the
one-line endings (a finished run resumed, a broken pipe, no kubeconfig).

The tmux test runs the display in a real terminal of 80 columns (tmux's own screen, captured
with its scrollback, wrapped lines joined) and checks that a set-up phase shows before the
progress, that progress is one line redrawn in place, never a new line per update, that nothing
wraps, and that each notice shows once. It skips with one line when tmux is not installed.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from speedrun_trainer.cli.live_display import LiveDisplay, RunScreen, human_eta
from speedrun_trainer.cli.notices import LogWatcher, Notice, classify
from speedrun_trainer.cli.speedrun import main
from speedrun_trainer.train.runtime import phase
from speedrun_trainer.train.torchrun import say_phase
from tests.support.helpers import ROOT, tiny_manifest, write_manifest
from tests.support.tmux_screen import screen_of

METRICS = {"step": 150, "train_loss": 2.54321, "tokens_per_second": 10252.0, "eta_seconds": 106.0, "val_bpb": 2.163}


# ---- notices -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind", "text"),
    [
        ("[17:23:50] resumed from file:///r/checkpoints/meta_000010.json at step 10", "resumed",
         "resumed from step 10 (file:///r/checkpoints/meta_000010.json)"),
        ("[17:23:44] wandb: online https://wandb.ai/me/speedrun/runs/abc", "wandb",
         "W&B online https://wandb.ai/me/speedrun/runs/abc"),
        ("[rank1]: speedrun_trainer.train: no CUDA device for nvidia-h100-80gb", "warning",
         "speedrun_trainer.train: no CUDA device for nvidia-h100-80gb"),
        ("/x/torch/utils.py:12: UserWarning: something odd", "warning", "UserWarning: something odd"),
        ("[17:23:40] phase: rendezvous of 2 node(s) at 127.0.0.1:29400", "phase",
         "rendezvous of 2 node(s) at 127.0.0.1:29400"),
        ("[17:23:50] step    200/300 | val loss 1.6739 | val bpb 2.4148 on 32,768 tokens", "eval",
         "in-loop eval at step 200/300: val loss 1.6739, bpb 2.4148 on 32,768 tokens"),
    ],
)  # fmt: skip
def test_log_lines_that_make_notices(line: str, kind: str, text: str) -> None:
    notice = classify(line)
    assert notice is not None and (notice.kind, notice.text) == (kind, text)


# An invalid-config line ends the run: `speedrun run` prints it as its one last line, not as a notice.
@pytest.mark.parametrize(
    "line",
    ["[17:23:50] step 10/300 | loss 3.2", "/x.py:1: FutureWarning: old", "", "   ", "[0]:invalid config: spec.x: 5"],
)
def test_ordinary_lines_make_none(line: str) -> None:
    assert classify(line) is None


def test_wandbs_own_warnings_are_warnings_not_its_state() -> None:
    notice = classify("wandb: WARNING Step must only increase in log calls")
    assert notice is not None and notice.kind == "warning"
    assert notice.text == "W&B warning: Step must only increase in log calls"


def test_watcher_shows_each_warning_once_across_ranks_and_reads_only_what_is_new(tmp_path: Path) -> None:
    (tmp_path / "torchx" / "0").mkdir(parents=True)
    node0, node1 = tmp_path / "train-node-0.log", tmp_path / "torchx" / "0" / "combined.log"
    error = "speedrun_trainer.train: no CUDA device"
    node0.write_text(f"[rank0]: {error}\n[rank1]: {error}\n")
    node1.write_text(f"[rank2]: {error}\n[rank3]: {error}\n[12:00:00] wandb: off: mode disab")  # a partial line
    watcher = LogWatcher(tmp_path)
    assert [n.text for n in watcher.poll()] == [error]
    with node1.open("a") as f:
        f.write("led\n")
    assert [n.text for n in watcher.poll()] == ["W&B off: mode disabled"]
    assert watcher.poll() == []


# ---- the display -------------------------------------------------------------------------------


def test_the_trainers_log_lines_make_the_notices_the_screen_reads(capsys: pytest.CaptureFixture) -> None:
    """The trainer's own printers, not a copy of their format: a phase and an in-loop evaluation."""
    phase("loading the data")
    say_phase("torchrun agent: importing torch")
    lines = capsys.readouterr().out.splitlines()
    assert [(n.kind, n.text) for n in map(classify, lines) if n] == [
        ("phase", "loading the data"),
        ("phase", "torchrun agent: importing torch"),
    ]
    evaluation = classify("[12:00:00] step    200/300 | val loss 1.6739 | val bpb 2.4148 on 32,768 tokens")
    assert evaluation is not None and (evaluation.step, evaluation.value) == (200, 2.4148)


def test_a_pipe_shows_each_phase_as_a_line_before_the_first_step(tmp_path: Path) -> None:
    out = io.StringIO()
    screen = RunScreen(LiveDisplay(100, stream=out), LogWatcher(tmp_path))
    screen.note("phase", "starting 2 torchrun agent(s)")
    screen.update({})  # the trainer's endpoint is not up yet
    for node in range(2):  # both agents say the same: shown once
        (tmp_path / f"train-node-{node}.log").write_text("[12:00:00] phase: rendezvous of 2 node(s)\n")
    screen.update({})
    screen.update({"step": 0, "total_steps": 100})
    screen.finish()
    assert out.getvalue().splitlines() == [
        "phase: starting 2 torchrun agent(s)",
        "phase: rendezvous of 2 node(s)",
        "step 0/100",
    ]


def fake_clock(now: list[float]) -> Callable[[], float]:
    return lambda: now[0]


def screen_text(display: LiveDisplay) -> str:
    [line] = display.console.render_lines(display._render(), pad=False)
    return "".join(segment.text for segment in line).rstrip()


def test_a_terminal_shows_the_phase_under_way_ticking_and_keeps_finished_ones_above() -> None:
    now = [100.0]
    out = io.StringIO()
    display = LiveDisplay(300, stream=out, force_terminal=True, clock=fake_clock(now))
    display.console = Console(file=out, width=80, force_terminal=True)
    display.note(Notice("phase", "starting 2 torchrun agent(s)"))
    now[0] = 103.2
    assert screen_text(display) == "starting 2 torchrun agent(s) 3s"
    display.note(Notice("phase", "loading the data"))
    now[0] = 104.0
    display.update({"step": 0, "total_steps": 300})  # the endpoint is up, no step timed yet
    assert screen_text(display).startswith("step 0/300") and screen_text(display).endswith("loading the data 1s")
    display.update({**METRICS, "step": 10})  # a loss: set-up is over
    assert display.phase is None and "loss 2.5432" in screen_text(display)
    display.finish()
    shown = out.getvalue()
    assert "starting 2 torchrun agent(s) (3.2 s)" in shown and "loading the data (0.8 s)" in shown


def test_the_live_line_labels_its_bpb_with_the_step_it_was_measured_at() -> None:
    """The val_bpb gauge carries no step: shown only as the newest in-loop evaluation, `bpb@step`,
    which is also printed above with its token count; never a bare number."""
    out = io.StringIO()
    display = LiveDisplay(300, stream=out, force_terminal=True)
    display.console = Console(file=out, width=100, force_terminal=True)
    display.update(METRICS)  # the gauge says 2.163, of no known step
    assert "bpb" not in screen_text(display)
    evaluation = classify("[12:00:00] step    200/300 | val loss 1.6739 | val bpb 2.4148 on 32,768 tokens")
    assert evaluation is not None
    display.note(evaluation)
    assert screen_text(display).endswith("| bpb@200 2.415")
    display.finish()
    assert "in-loop eval at step 200/300: val loss 1.6739, bpb 2.4148 on 32,768 tokens" in out.getvalue()


def test_not_a_terminal_prints_a_line_each_tenth_and_notes_as_plain_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    (tmp_path / "node.log").write_text("[12:00:00] resumed from file:///r/ck at step 20\n")
    screen = RunScreen(LiveDisplay(100, stream=out), LogWatcher(tmp_path))
    for step in range(20, 101, 5):
        screen.update({**METRICS, "step": step})
    screen.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "note: resumed from step 20 (file:///r/ck)"
    assert len(lines) == 1 + 9 and lines[-1].startswith("step 100/100 | ETA 1m46s | loss 2.5432")
    assert "\x1b" not in out.getvalue(), "no terminal codes into a pipe or a CI log"


@pytest.mark.parametrize(
    ("width", "shown"),
    [(30, []), (40, ["ETA"]), (60, ["ETA", "loss"]), (80, ["ETA", "loss", "tok/s", "bpb@100"]),
     (200, ["ETA", "loss", "tok/s", "bpb@100"])],
)  # fmt: skip
def test_the_live_line_fits_the_terminal(width: int, shown: list[str]) -> None:
    """One line at any width, short of the last column: the least important fields drop out,
    the bar shrinks, nothing wraps."""
    display = LiveDisplay(300, stream=io.StringIO(), force_terminal=True)
    display.console = Console(file=io.StringIO(), width=width, force_terminal=True)
    display.metrics = METRICS
    display.evaluation = Notice("eval", "in-loop eval at step 100/300", 100, 2.163)
    text = screen_text(display)
    assert len(text) < width and text.startswith("step 150/300 ━")
    assert [name for name in ("ETA", "loss", "tok/s", "bpb@100") if name in text] == shown


def test_human_eta() -> None:
    assert [human_eta(s) for s in (0, 59.4, 61, 3599, 3600 * 5 + 120)] == ["0s", "59s", "1m01s", "59m59s", "5h02m"]


DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from speedrun_trainer.cli.launch import free_port
    from speedrun_trainer.cli.notices import LogWatcher
    from speedrun_trainer.cli.live_display import LiveDisplay, RunScreen, scrape
    from speedrun_trainer.train.telemetry import Telemetry

    logs = Path(sys.argv[1])
    port = free_port()
    screen = RunScreen(LiveDisplay(300, stream=sys.stderr), LogWatcher(logs))
    (logs / "train-node-0.log").write_text("[12:00:00] phase: rendezvous of 2 node(s)\\n")
    for _ in range(3):  # set-up: no endpoint yet, the phase line ticks
        screen.update(scrape(f"http://127.0.0.1:{port}/metrics"))
        time.sleep(0.05)
    telemetry = Telemetry(port)  # the trainer's own endpoint, scraped as `speedrun run` does
    for step in range(0, 301, 10):
        telemetry.set(step=step, total_steps=300, train_loss=3.0 - step / 300, tokens_per_second=10252.0,
                      eta_seconds=(300 - step) * 0.4)
        if step == 100:
            for rank in range(4):  # four ranks print the same warning
                with (logs / f"train-node-{rank}.log").open("a") as f:
                    f.write(f"[rank{rank}]: /x/y.py:3: UserWarning: slow path taken\\n")
            with (logs / "train-node-0.log").open("a") as f:
                f.write("[12:00:00] resumed from file:///r/ck at step 100\\n")
        screen.update(scrape(f"http://127.0.0.1:{port}/metrics"))
        time.sleep(0.05)
    screen.finish()
    telemetry.close()
    print("DRIVER DONE", file=sys.stderr)
""")


def test_tmux_at_80_columns_shows_one_redrawing_line(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "driver.py").write_text(DRIVER)
    driver = f"{sys.executable} {tmp_path / 'driver.py'} {tmp_path / 'logs'}"
    screen = screen_of(f"cd {ROOT} && {driver}", "DRIVER DONE")
    lines = [line for line in screen.splitlines() if line.strip()]
    assert "DRIVER DONE" in screen, screen
    progress = [line for line in lines if line.startswith("step ")]
    assert progress == [progress[-1]] and progress[-1].startswith("step 300/300"), screen
    assert all(len(line) <= 80 for line in lines), screen
    assert sum("UserWarning: slow path taken" in line for line in lines) == 1, screen
    assert sum("resumed from step 100" in line for line in lines) == 1, screen
    [phase_line] = [i for i, line in enumerate(lines) if line.startswith("rendezvous of 2 node(s) (")]
    assert phase_line < lines.index(progress[0]), screen


# ---- one-line endings --------------------------------------------------------------------------


def test_resume_of_a_finished_run_says_so_and_does_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = write_manifest(tmp_path / "job.yaml", tiny_manifest())
    run_dir = tmp_path / "runs" / "test-tiny" / "20260101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "results-summary.json").write_text("{}")
    before = sorted(p.name for p in run_dir.iterdir())
    assert main(["run", str(manifest), "--resume", "--runs-dir", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    assert "already finished" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == before, "nothing started, nothing written"


def test_a_closed_pipe_ends_quietly() -> None:
    """`speedrun render ... | head -1`: no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "speedrun_trainer.cli", "render", str(ROOT / "examples" / "gpt2-124m-8xh100.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # the reader goes away with most of the output unread
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_operator_without_a_kubeconfig_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = subprocess.run([sys.executable, "-m", "speedrun_trainer.cli", "operator"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("speedrun operator: no Kubernetes credentials") and "KUBECONFIG" in line
