"""Atomic, rotated checkpoints, resume with a fallback, and RNG state capture (everything loadable with
``weights_only=True``)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import lookup
from ..errors import UnimatchError
from ..models import CheckpointError, read_checkpoint
from ..utils.atomic import atomic_write, remove_stale_temps

log = logging.getLogger(__name__)

# What a training checkpoint needs to continue a run; best.pth (weights only) lacks most of them.
RESUME_ENTRIES = ("model", "optimizer", "iteration", "best", "history", "rng", "config")
# Changing these between a checkpoint and the run that resumes it would silently mix two experiments.
RESUME_KEYS = (
    "dataset.name",
    "dataset.nclass",
    "dataset.crop_size",
    "model.encoder",
    "method.name",
    "train.batch_size",
    "train.seed",
)


class TrainingError(UnimatchError, RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint); the last good checkpoint is kept."""


def previous_path(path: Path) -> Path:
    """``latest.pth`` -> ``latest.prev.pth``: the checkpoint before the newest one."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write ``state`` atomically. ``keep_previous`` keeps the file it replaces as :func:`previous_path`,
    so that a newest checkpoint that turns out unreadable (a disk error, a copy cut short) still leaves a
    good one to resume from."""
    path = Path(path)
    atomic_write(path, lambda file: torch.save(state, file), backup=previous_path(path) if keep_previous else None)


def load_checkpoint(path: Path) -> dict[str, Any]:
    state = read_checkpoint(path)
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint of this project (no 'model' entry)")
    return state


def load_resumable(path: Path, entries: Sequence[str] = RESUME_ENTRIES) -> dict[str, Any]:
    """A checkpoint holding ``entries`` (what continuing needs); CheckpointError names the file and what
    is wrong."""
    state = load_checkpoint(path)
    missing = [entry for entry in entries if entry not in state]
    if missing:
        raise CheckpointError(f"{path} cannot resume a run: no {', '.join(missing)} entries")
    return state


def _set_aside(path: Path) -> Path:
    """Rename an unusable checkpoint to ``<name>.corrupt`` (never overwriting an earlier one), so the
    user can inspect it and the next save cannot rotate it into the fallback slot."""
    target, number = path.with_name(f"{path.name}.corrupt"), 1
    while target.exists():
        target, number = path.with_name(f"{path.name}.corrupt.{number}"), number + 1
    os.replace(path, target)
    return target


def resume_state(
    latest: Path, set_aside: bool = True, entries: Sequence[str] = RESUME_ENTRIES
) -> tuple[dict[str, Any], Path] | None:
    """The state to resume from, and its file: ``latest``, else (missing or unusable) its previous copy.
    None when neither exists; CheckpointError naming both files when neither is usable. With ``set_aside``
    (for the one process that writes checkpoints), unusable files passed over for a good one are renamed
    ``*.corrupt``.
    """
    latest = Path(latest)
    failures: list[tuple[Path, CheckpointError]] = []
    for candidate in (latest, previous_path(latest)):
        if not candidate.exists():
            continue
        try:
            state = load_resumable(candidate, entries)
        except CheckpointError as error:
            failures.append((candidate, error))
            continue
        for bad, error in failures:
            kept = _set_aside(bad) if set_aside else bad
            log.warning("unusable checkpoint: %s; kept as %s, resuming from %s instead", error, kept, candidate)
        return state, candidate
    if failures:
        reasons = "; ".join(str(error) for _, error in failures)
        raise CheckpointError(
            f"no usable checkpoint to resume from: {reasons}. Move them aside (or set train.resume=false) to "
            "start over."
        )
    return None


def checkpoint_header(path: Path) -> dict[str, Any]:
    """A checkpoint's entries, memory-mapped so that a large checkpoint is not read for its small ones (its
    run id, its config); empty when unreadable or not a dict: whoever loads it for real says why."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    return state if isinstance(state, dict) else {}


def checkpoint_run_id(path: Path) -> str | None:
    """The MLflow run id a checkpoint records (None: none, or unreadable)."""
    return checkpoint_header(path).get("run_id")


def recorded_run_id(latest: Path) -> str | None:
    """The MLflow run id of the checkpoint a resume would start from (``latest``, else its previous
    copy): reopening that run keeps one training in one run across crashes."""
    for candidate in (Path(latest), previous_path(Path(latest))):
        if candidate.exists() and (run_id := checkpoint_run_id(candidate)) is not None:
            return run_id
    return None


def capture_rng() -> dict[str, Any]:
    """Global RNG states as tensors and plain types (numpy's array becomes a tensor)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CheckpointKeeper:
    """The checkpoints of one training under ``folder``: ``latest.pth`` (everything to resume, rotated to
    ``latest.prev.pth``), ``best.pth`` (student and EMA weights of the best epoch) and the ``snapshots``
    evenly spaced weight snapshots ``snapshot_<k>of<K>.pth``; and resuming from them."""

    def __init__(self, folder: Path, snapshots: int = 0) -> None:
        self.folder = Path(folder)
        self.snapshots = snapshots
        self.saved_iteration = 0  # of the latest.pth written or resumed from

    @property
    def latest(self) -> Path:
        return self.folder / "latest.pth"

    @property
    def best(self) -> Path:
        return self.folder / "best.pth"

    def snapshot(self, k: int) -> Path:
        return self.folder / f"snapshot_{k}of{self.snapshots}.pth"

    def snapshot_iterations(self, total_iters: int) -> dict[int, int]:
        """Iteration -> k of the evenly spaced snapshots, the last at the end of training."""
        return {round(k * total_iters / self.snapshots): k for k in range(1, self.snapshots + 1)}

    def save_latest(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.latest, state, keep_previous=True)
        self.saved_iteration = int(state["iteration"])

    def save_weights(self, path: Path, weights: dict[str, Any]) -> None:
        save_checkpoint(path, weights)

    def remove_stale_temps(self) -> None:
        """A save killed mid-write leaves its temporary file behind."""
        for path in (self.latest, self.best):
            remove_stale_temps(path)

    def resume(self, config: dict[str, Any], set_aside: bool) -> tuple[dict[str, Any], Path] | None:
        """The state to continue from and its file (``latest.pth``, else ``latest.prev.pth``), checked to
        come from the same experiment as ``config``; None when there is none."""
        found = resume_state(self.latest, set_aside=set_aside)
        if found is None:
            return None
        state, path = found
        changed = [
            f"{key}: checkpoint {lookup(state['config'], key)!r}, now {lookup(config, key)!r}"
            for key in RESUME_KEYS
            if lookup(state["config"], key) != lookup(config, key)
        ]
        if changed:
            raise TrainingError(
                f"{path} was written by a different experiment ({'; '.join(changed)}); "
                "use another output_dir or train.resume=false"
            )
        self.saved_iteration = int(state["iteration"])
        return state, path

    def kept(self) -> str:
        """What survives a failure now, for its error message."""
        if not self.latest.exists():
            return "no checkpoint was written yet"
        return f"the last good checkpoint {self.latest} (iteration {self.saved_iteration}) is kept"
