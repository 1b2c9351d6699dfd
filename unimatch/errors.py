"""The project's error boundary: anticipated failures are typed errors shown as one line (exit code 2);
Ctrl-C and SIGTERM end a command with one line too (exit 130 / 143); anything else is a bug and keeps
its traceback.

Every entry point (``unimatch``, ``python -m pipelines.*``, the DVC stage commands) runs through
:func:`run_guarded`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

EXIT_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM
# How torch's DataLoader re-raises an exception from a worker: the type is kept, the message becomes
# "Caught X in DataLoader worker process N.\nOriginal Traceback ...\n<module>.X: <original message>".
_WORKER_TRACEBACK = "Original Traceback (most recent call last):"
_RESUME_HINT = "an open MLflow run is marked KILLED; the same command resumes a training from its last checkpoint"


def from_worker(message: str) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker (else ``message``)."""
    if _WORKER_TRACEBACK not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    qualified, separator, original = last.partition(": ")
    return original if separator and " " not in qualified else last


class UnimatchError(Exception):
    """An anticipated failure (bad input, config, checkpoint, store): the message names the file, key
    or value and says what to do; shown without a traceback."""

    def __init__(self, message: Any = "", *args: Any) -> None:
        super().__init__(from_worker(str(message)), *args)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job): unwinds like Ctrl-C, so open runs are marked KILLED."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def one_line(error: BaseException) -> str:
    return " ".join(from_worker(str(error)).split("\n"))


def run_guarded(main: Callable[[], Any], anticipated: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``main`` and return the process exit code: 0, 2 for a :class:`UnimatchError` (or one of
    ``anticipated``) printed as ``error: <message>``, 130 on Ctrl-C, 143 on SIGTERM."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        main()
    except Terminated:
        print(f"terminated (SIGTERM); {_RESUME_HINT}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"interrupted (Ctrl-C); {_RESUME_HINT}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UnimatchError, FileNotFoundError, *anticipated) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


class ConfigError(UnimatchError, ValueError):
    """A configuration that cannot be used; the message names the file and key."""
