"""A command in a real terminal of 80 columns: tmux's own screen, read back with its scrollback.

`screen_of(command, done)` starts `command` (a shell command line) in a detached tmux session of
`width` x `height`, reads the screen until `done` shows on it (or the deadline passes) and returns
every line the terminal showed, scrollback included. A line the terminal wrapped comes back as
one line (`capture-pane -J`), so a test sees a too-wide line as too wide: without -J each screen
row is one line and every line is at most `width` by construction. `tmux_or_skip()` skips a test
with one line where tmux is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest


def tmux_or_skip() -> str:
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("no tmux: install it (Debian: tmux) to run the terminal test")
    return tmux


def capture(tmux: str, session: str) -> str:
    return subprocess.run(
        [tmux, "-L", session, "capture-pane", "-p", "-J", "-S", "-", "-t", session],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def screen_of(command: str, done: str, *, width: int = 80, height: int = 24, deadline_s: float = 60) -> str:
    """What the terminal showed while `command` ran, up to the moment `done` appeared."""
    tmux = tmux_or_skip()
    session = f"speedrun-test-{os.getpid()}"
    # The shell stays after the command so the screen can still be read; TERM as a user's terminal.
    shell = f"TERM=xterm-256color {command}; sleep {int(deadline_s) + 30}"
    subprocess.run(
        [tmux, "-L", session, "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), shell],
        check=True,
        timeout=30,
    )
    try:
        end, screen = time.monotonic() + deadline_s, ""
        while time.monotonic() < end and done not in screen:
            time.sleep(0.5)
            screen = capture(tmux, session)
    finally:
        subprocess.run([tmux, "-L", session, "kill-server"], capture_output=True, timeout=30)
    return screen
