"""The engine's data assembly: an experiment configuration turned into validated split files (and extra
unlabeled pools)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ExperimentConfig
from ..data import DataError, Sample, check_disjoint, create_split, generate_embedded, list_dataset, list_image_folder
from ..data.embedded_change import generate_embedded_change
from ..data.layouts import SplitFormat

# Datasets the project generates itself, written on first use when their root does not exist.
GENERATED = {"embedded": generate_embedded, "embedded-cd": generate_embedded_change}


@dataclass(frozen=True)
class SplitFiles:
    labeled: Path
    unlabeled: Path
    val: Path


def _labeled_unlabeled(cfg: ExperimentConfig, out: Path) -> tuple[Path, Path, list[Sample]]:
    """The labeled and unlabeled split files (configured or created) and all their samples."""
    data, split_format = cfg.dataset, SplitFormat.of(cfg.dataset.name)
    if (data.labeled_split is None) != (data.unlabeled_split is None):
        raise DataError("dataset.labeled_split and dataset.unlabeled_split must be given together (or neither)")
    if data.labeled_split is not None and data.unlabeled_split is not None:
        labeled = split_format.read(data.labeled_split, data.root)
        unlabeled = split_format.read(data.unlabeled_split, data.root, require_masks=False, allow_empty=True)
        check_disjoint(labeled, unlabeled)
        return Path(data.labeled_split), Path(data.unlabeled_split), labeled + unlabeled
    train = list_dataset(data.name, data.root, "train")
    labeled, unlabeled = create_split(train, cfg.split.labeled, cfg.split.seed)
    split_format.write(out / "labeled.txt", labeled, data.root)
    # Empty when every image is labeled: the real-world setting takes its unlabeled images from
    # dataset.extra_unlabeled, and the trainer rejects a semi-supervised run with no unlabeled image at all.
    split_format.write(out / "unlabeled.txt", unlabeled, data.root, allow_empty=True)
    return out / "labeled.txt", out / "unlabeled.txt", train


def _val(cfg: ExperimentConfig, out: Path) -> tuple[Path, list[Sample]]:
    data, split_format = cfg.dataset, SplitFormat.of(cfg.dataset.name)
    if data.val_split is not None:
        return Path(data.val_split), split_format.read(data.val_split, data.root)
    val = list_dataset(data.name, data.root, "val")
    split_format.write(out / "val.txt", val, data.root)
    return out / "val.txt", val


def prepare_splits(cfg: ExperimentConfig) -> SplitFiles:
    """Labeled, unlabeled and val split files for ``cfg``.

    Configured files (``dataset.*_split``, relative to the working directory) are validated and returned as
    given. Missing ones are created from the dataset layout with ``split.labeled`` / ``split.seed`` and
    written to ``split.dir`` (default ``<output_dir>/splits``); identical inputs give byte-identical files,
    which are not rewritten. Training and val images must not overlap. The embedded datasets are generated
    first if their root does not exist.
    """
    data = cfg.dataset
    if data.name in GENERATED and not Path(data.root).exists():
        GENERATED[data.name](data.root)
    out = Path(cfg.split.dir or Path(cfg.output_dir) / "splits")
    labeled, unlabeled, train = _labeled_unlabeled(cfg, out)
    val, val_samples = _val(cfg, out)
    check_disjoint(train, val_samples, roles=("training", "val"))
    return SplitFiles(labeled, unlabeled, val)


def extra_unlabeled_samples(cfg: ExperimentConfig) -> list[Sample]:
    """Samples of the extra unlabeled pools (``dataset.extra_unlabeled``): split files (paths relative to the
    dataset root; listed masks are kept for the pseudo-label quality metrics, never trained on) or image folders (searched recursively; absolute paths under the folder)."""
    samples: list[Sample] = []
    for index, entry in enumerate(cfg.dataset.extra_unlabeled):
        path = Path(entry)
        if path.is_file():
            samples += SplitFormat.of(cfg.dataset.name).read(path, cfg.dataset.root, require_masks=False)
        elif path.is_dir():
            samples += list_image_folder(path)
        else:
            raise DataError(f"dataset.extra_unlabeled[{index}]: {entry} is neither a split file nor a folder")
    return samples
