"""Progress bars that suit where the output goes: a redrawn tqdm bar on a terminal; in a log file, a CI
job or a scheduler's output (stderr not a TTY), one plain line per ``LOG_INTERVAL_S`` seconds with the
count, rate and ETA, instead of hundreds of carriage-return frames."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
_FRAME_BREAKS = re.compile(r"[\r\n]+")
_CURSOR_MOVES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _LogLines(io.TextIOBase):
    """A file for tqdm that turns its redrawn frames into whole lines on stderr (one per frame that
    tqdm decides to print, blank and repeated frames dropped)."""

    def __init__(self) -> None:
        self._last = ""

    def write(self, text: str) -> int:
        for frame in _FRAME_BREAKS.split(_CURSOR_MOVES.sub("", text)):
            frame = frame.strip()
            if frame and frame != self._last:
                sys.stderr.write(frame + "\n")
                self._last = frame
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def interactive() -> bool:
    return sys.stderr.isatty()


class _Bar(tqdm):
    """tqdm whose ``set_postfix`` redraws only on a terminal: in logs a postfix update every few
    iterations would otherwise print a line each time, whatever the interval."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool | None = None, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=interactive() if refresh is None else refresh, **kwargs)


def progress_bar(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)`` for the terminal or for logs (see the module docstring)."""
    if interactive():
        return _Bar(iterable, dynamic_ncols=True, **options)
    # In a log a bar is never erased (leave): erasing a finished bar there prints nothing, which left a work
    # shorter than the interval at its first line ("evaluate: 0/100") as if it had hung.
    return _Bar(
        iterable,
        file=_LogLines(),
        mininterval=LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S,
        ncols=100,
        ascii=True,
        **{**options, "leave": True},
    )
