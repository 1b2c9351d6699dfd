"""Progress output in logs: whole lines at most every LOG_INTERVAL_S, never carriage-return frames."""

from __future__ import annotations

import tqdm.std

from unimatch.utils import progress


class FakeClock:
    """tqdm's clock, advanced by the test instead of by time passing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_piped_progress_is_one_whole_line_per_interval_with_rate_and_eta(monkeypatch, capsys) -> None:
    clock = FakeClock()
    monkeypatch.setattr(tqdm.std, "time", clock)
    bar = progress.progress_bar(range(40), desc="train", unit="it")  # stderr is captured: not a terminal
    for step in bar:
        clock.now += progress.LOG_INTERVAL_S / 10  # ten iterations per interval: 40 iterations span 4 intervals
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")  # as the trainer does every logging window
    stderr = capsys.readouterr().err
    assert "\r" not in stderr and "\x1b[" not in stderr
    lines = stderr.splitlines()
    # The opening line, then one line per interval, the last at 40/40 (closing adds no repeat of it).
    assert [line.split("|")[0].split()[-1] for line in lines] == ["0%", "25%", "50%", "75%", "100%"], lines
    assert all(line.startswith("train: ") for line in lines)
    assert "40/40 [02:00<00:00,  3.00s/it" in lines[-1]  # 40 iterations of 3 s
    assert "10/40 [00:30<01:30" in lines[1]  # the ETA: 30 more iterations at the rate so far
    assert "loss=0.025" in lines[-1]
