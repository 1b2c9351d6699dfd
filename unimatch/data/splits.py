"""Split list files in the community format: one sample per line, ``IMAGE_PATH MASK_PATH``.

Paths are relative to the dataset root, without a leading slash (as in the official UniMatch
Pascal splits). Unlabeled lists may carry a mask path, which is ignored, or the image path alone.
Blank lines are skipped and a UTF-8 byte-order mark is tolerated; an image listed twice is an error.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..utils.atomic import write_text_atomic
from .errors import DataError


@dataclass(frozen=True)
class Sample:
    """One image (absolute path), its mask (absolute path or None) and its id (root-relative image path)."""

    image: Path
    mask: Path | None
    name: str


def _resolve(root: Path, rel: str, where: str) -> Path:
    """``root / rel``, refusing absolute paths and ``..`` that lead outside ``root`` (checked lexically,
    so a dataset may legitimately hold symlinks to elsewhere)."""
    if rel.startswith(("/", "\\")) or Path(rel).is_absolute():
        raise DataError(f"{where}: absolute path '{rel}'; split paths must be relative to the dataset root {root}")
    normal = os.path.normpath(rel)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise DataError(f"{where}: path '{rel}' escapes the dataset root {root}")
    return root / normal


def read_split_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: split file is not UTF-8 (byte {error.start})") from error


def _parse_line(line: str, where: str, require_masks: bool) -> tuple[str, str | None]:
    fields = line.split()
    if len(fields) > 2:
        raise DataError(f"{where}: expected 'IMAGE_PATH MASK_PATH', got {len(fields)} fields (spaces in paths?)")
    if require_masks and len(fields) != 2:
        raise DataError(f"{where}: expected 'IMAGE_PATH MASK_PATH', got an image path only")
    return fields[0], fields[1] if len(fields) == 2 else None


def raise_missing(missing: list[str]) -> None:
    """One error listing every missing file (not only the first), so one fix-up covers them all."""
    if len(missing) == 1:
        raise DataError(missing[0])
    if missing:
        raise DataError(f"{len(missing)} files not found: " + "; ".join(missing))


def read_split(
    path: str | Path,
    root: str | Path,
    require_masks: bool = True,
    check_files: bool = True,
    allow_empty: bool = False,
    mask_root: str | Path | None = None,
) -> list[Sample]:
    """The samples listed in split file ``path``. With ``require_masks`` False a line may hold an image path
    only (mask None), and a listed mask is kept but not checked to exist: unlabeled images never read it,
    only the pseudo-label quality metrics do, where the file is there.

    ``check_files=False`` parses without the dataset on disk (paths are still checked to stay under root).
    ``allow_empty``: an empty file is an empty list (the unlabeled split when every image is labeled).
    ``mask_root``: where mask paths are relative to, when not the dataset root (pseudo labels live beside
    their split file).
    """
    path, root = Path(path), Path(root).absolute()
    mask_root = Path(mask_root).absolute() if mask_root is not None else root
    samples: list[Sample] = []
    first_line: dict[str, int] = {}
    missing: list[str] = []
    for number, line in enumerate(read_split_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        image_rel, mask_rel = _parse_line(line, where, require_masks)
        if image_rel in first_line:
            raise DataError(f"{where}: '{image_rel}' is already listed on line {first_line[image_rel]}")
        first_line[image_rel] = number
        image = _resolve(root, image_rel, where)
        mask = _resolve(mask_root, mask_rel, where) if mask_rel else None
        if check_files:
            for file in (image, mask if require_masks else None):
                if file is not None and not file.is_file():
                    missing.append(f"{where}: file not found: {file}")
        samples.append(Sample(image, mask, image_rel))
    raise_missing(missing)
    if not samples and not allow_empty:
        raise DataError(f"{path}: empty split (no samples)")
    return samples


def relative_path(file: str | Path, root: str | Path) -> str:
    """``file`` as a split file writes it: a POSIX path relative to ``root``, which must hold it."""
    root = Path(os.path.abspath(root))
    try:
        rel = Path(os.path.abspath(file)).relative_to(root).as_posix()
    except ValueError:
        raise DataError(f"{file} is not under the dataset root {root}, so a split file cannot list it") from None
    if any(char.isspace() for char in rel):
        raise DataError(f"{file}: whitespace in the path cannot be written to a split file")
    return rel


def split_text(samples: Iterable[Sample], root: str | Path) -> str:
    """The split-file contents for ``samples``: root-relative POSIX paths, one sample per line."""
    root = Path(os.path.abspath(root))
    lines = []
    for sample in samples:
        fields = [relative_path(sample.image, root)]
        if sample.mask is not None:
            fields.append(relative_path(sample.mask, root))
        lines.append(" ".join(fields) + "\n")
    return "".join(lines)


def write_split(path: str | Path, samples: Sequence[Sample], root: str | Path, allow_empty: bool = False) -> None:
    """Write ``samples`` to split file ``path`` (paths relative to ``root``), atomically; an unchanged
    file is not rewritten."""
    if not samples and not allow_empty:
        raise DataError(f"{path}: refusing to write an empty split")
    write_text_atomic(path, split_text(samples, root))


def check_disjoint(
    labeled: Iterable[Sample], unlabeled: Iterable[Sample], roles: tuple[str, str] = ("labeled", "unlabeled")
) -> None:
    """Raise DataError if an image is in both sets (``roles`` names them in the message)."""
    first = {os.path.abspath(sample.image) for sample in labeled}
    overlap = sorted(sample.name for sample in unlabeled if os.path.abspath(sample.image) in first)
    if overlap:
        shown = ", ".join(overlap[:5]) + (" ..." if len(overlap) > 5 else "")
        raise DataError(f"{len(overlap)} image(s) are in both the {roles[0]} and the {roles[1]} split: {shown}")


def labeled_count(labeled: float, available: int) -> int:
    """A count (an integer >= 1) or a fraction (0 < f < 1, rounded, at least 1) of ``available``."""
    if not (0 < labeled < 1 or (labeled >= 1 and labeled == int(labeled))):
        raise DataError(f"split.labeled: {labeled} is neither a count (integer >= 1) nor a fraction in (0, 1)")
    count = max(1, round(labeled * available)) if labeled < 1 else int(labeled)
    if count > available:
        raise DataError(f"split.labeled: {count} labeled images requested, only {available} have masks")
    return count


def create_split(samples: Sequence[Sample], labeled: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Draw ``labeled`` samples (among those with a mask) as the labeled set; the rest is unlabeled.

    Samples are sorted by name first and drawn with ``random.Random(seed)``, so the result depends only on
    the set of samples and the seed. Both lists come back sorted by name.
    """
    if not samples:
        raise DataError("cannot create a split from an empty sample list")
    ordered = sorted(samples, key=lambda sample: sample.name)
    duplicates = sorted(name for name, count in Counter(s.name for s in ordered).items() if count > 1)
    if duplicates:
        raise DataError("duplicate sample names: " + ", ".join(duplicates[:5]))
    candidates = [index for index, sample in enumerate(ordered) if sample.mask is not None]
    chosen = set(random.Random(seed).sample(candidates, labeled_count(labeled, len(candidates))))
    labeled_set = [sample for index, sample in enumerate(ordered) if index in chosen]
    unlabeled_set = [sample for index, sample in enumerate(ordered) if index not in chosen]
    return labeled_set, unlabeled_set


def read_pseudo_labels(path: str | Path, root: str | Path) -> list[Sample]:
    """The (image, pseudo mask) samples of a split file written by ``write_pseudo_labels``
    (:mod:`unimatch.apps.pseudo_labels`; or a subset)."""
    return read_split(path, root, mask_root=Path(path).parent)
