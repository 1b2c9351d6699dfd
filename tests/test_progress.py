"""Progress output in logs: whole lines at most every LOG_INTERVAL_S, never carriage-return frames."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
LOOP = """
import time
import unimatch.progress as p
p.LOG_INTERVAL_S = 0.2
bar = p.progress_bar(range(40), desc="train", unit="it")
for step in bar:
    time.sleep(0.02)
    bar.set_postfix(loss=f"{1 / (step + 1):.3f}")  # as the trainer does every logging window
"""


def test_piped_progress_is_a_few_whole_lines_with_rate_and_eta() -> None:
    done = subprocess.run([sys.executable, "-c", LOOP], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "\x1b[" not in done.stderr
    lines = done.stderr.splitlines()
    # 0.8 s of work at one line per 0.2 s: a handful of lines, not one per iteration.
    assert 2 <= len(lines) <= 10, lines
    assert all(line.startswith("train: ") for line in lines)
    assert "40/40" in lines[-1] and "it/s" in lines[-1] and "<" in lines[1]  # the ETA appears once running
    assert "loss=" in lines[-1]
