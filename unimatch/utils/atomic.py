"""Atomic file writes: a reader, or a crash at any instant, sees the old file or the new one, never a mix.

The data goes to a temporary file beside the target (same file system, so the final ``os.replace`` is
atomic), is flushed to disk, and only then renamed over the target. A process killed mid-write leaves
at most a hidden ``.<name>.*.tmp`` file, which :func:`remove_stale_temps` clears.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import ConfigError

log = logging.getLogger(__name__)

FILE_MODE = 0o644  # mkstemp creates 0600; outputs are meant to be read by others


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a power cut after os.replace could otherwise undo it)."""
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], backup: Path | None = None) -> Path:
    """Write ``path`` through ``write(file)`` (a binary file object) atomically; returns ``path``.
    ``backup``: the current file is renamed there once the new one is complete, just before it replaces
    it (so ``path`` is missing only between two renames, never while the data is written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, FILE_MODE)
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically; a file that already holds exactly ``data`` is left untouched, so its
    modification time (and the tools keyed on it: DVC, make) sees no change."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return path
    return atomic_write(path, lambda file: file.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`write_bytes_atomic` of ``text`` in UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer of ``path`` left behind; returns them. Only call this
    when no other process is writing ``path``."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for temp in stale:
        temp.unlink(missing_ok=True)
        log.info("removed %s, left by a write of %s that was interrupted", temp, path)
    return stale


def check_output_dir(path: str | Path, key: str) -> Path:
    """``path`` as a folder to write into, refused up front (one line naming ``key``) when it or one of
    its parents is an existing file: found later, that is a traceback after work was done."""
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is" if folder == path else f"is inside {folder}, which is"
                raise ConfigError(f"{key}: {path} {what} a file, not a folder")
            break
    return path
