"""The engine's data assembly: an experiment configuration turned into validated split files (and extra
unlabeled pools), and those into what a training reads (:func:`training_data`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..config import ExperimentConfig
from ..data import DataError, Sample, check_disjoint, create_split, generate_embedded, list_dataset, list_image_folder
from ..data.classification_embedded import generate_embedded_classification
from ..data.embedded import generate_on_first_use
from ..data.embedded_change import generate_embedded_change
from ..data.layouts import SplitFormat
from ..errors import ConfigError
from ..methods import Method
from ..methods.base import Pools
from ..tasks import SegmentationTask
from .distributed import Distributed
from .stream import SampleStream

log = logging.getLogger(__name__)
LABELED_STREAM, UNLABELED_STREAM = 0, 1  # part of each stream's seed

# Datasets the project generates itself: their default root (configs/datasets/), the generator, and how
# `unimatch make-data` writes them elsewhere. Generated on first use only at that default root.
GENERATED = {
    "embedded": ("data/embedded", generate_embedded, "unimatch make-data --root {root}"),
    "embedded-cd": ("data/embedded-cd", generate_embedded_change, "unimatch make-data --change-root {root}"),
    "embedded-cls": ("data/embedded-cls", generate_embedded_classification, "copy data/embedded-cls to {root}"),
}


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


def split_folder(cfg: ExperimentConfig) -> Path:
    """Where the run's split files are written: ``split.dir``, else ``<output_dir>/splits``."""
    return Path(cfg.split.dir or Path(cfg.output_dir) / "splits")


def ensure_dataset_root(cfg: ExperimentConfig) -> None:
    """Generate a project-made dataset missing at its default root; a missing root elsewhere is an error
    (raised before a command opens a tracked run or writes anything)."""
    if cfg.dataset.name in GENERATED:
        default_root, generate, command = GENERATED[cfg.dataset.name]
        generate_on_first_use(cfg.dataset.root, default_root, generate, command.format(root=cfg.dataset.root))


def prepare_splits(cfg: ExperimentConfig) -> SplitFiles:
    """Labeled, unlabeled and val split files for ``cfg``.

    Configured files (``dataset.*_split``, relative to the working directory) are validated and returned as
    given. Missing ones are created from the dataset layout with ``split.labeled`` / ``split.seed`` and
    written to ``split.dir`` (default ``<output_dir>/splits``); identical inputs give byte-identical files,
    which are not rewritten. Training and val images must not overlap. The embedded datasets are generated
    first if their root is missing and the default one (any other missing root is an error).
    """
    ensure_dataset_root(cfg)
    out = split_folder(cfg)
    labeled, unlabeled, train = _labeled_unlabeled(cfg, out)
    val, val_samples = _val(cfg, out)
    check_disjoint(train, val_samples, roles=("training", "val"))
    return SplitFiles(labeled, unlabeled, val)


def extra_unlabeled_samples(cfg: ExperimentConfig) -> list[Sample]:
    """Samples of the extra unlabeled pools (``dataset.extra_unlabeled``): split files (paths relative to the
    dataset root; listed masks are kept for the pseudo-label quality metrics, never trained on) or image folders
    (searched recursively; absolute paths under the folder)."""
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


@dataclass
class TrainingData:
    """What a training reads, assembled from its config: the streams of labeled (and unlabeled) samples
    with their batch sizes, the val set, the unlabeled images whose pseudo labels are scored, the schedule."""

    class_names: list[str]
    val_set: Dataset
    pseudo_set: Dataset | None
    streams: dict[str, tuple[SampleStream, int]]
    sizes: dict[str, int]
    iters_per_epoch: int
    total_iters: int


def training_data(
    cfg: ExperimentConfig, task: SegmentationTask, method: Method, dist: Distributed, progress: bool = True
) -> TrainingData:
    """The split files (rank 0 writes them first), their samples checked before the first step, the datasets
    the method builds and the epoch it declares."""
    splits = prepare_splits(cfg) if dist.is_main else None
    dist.barrier()
    splits = splits or prepare_splits(cfg)
    root, nclass, crop = Path(cfg.dataset.root), cfg.dataset.nclass, cfg.dataset.crop_size
    labeled, val = task.read_split(splits.labeled, root), task.read_split(splits.val, root)
    # Labeled-only reads the unlabeled list too: its "unlabeled" schedule matches the semi-supervised runs.
    unlabeled = task.read_split(
        splits.unlabeled, root, require_masks=False, allow_empty=True
    ) + extra_unlabeled_samples(cfg)
    pseudo_samples = pseudo_label_samples(unlabeled, cfg.eval.pseudo_label_images, cfg.split.seed)
    preflight(task, cfg, labeled, unlabeled, val, pseudo_samples, progress)
    if method.uses_unlabeled and not unlabeled:
        raise DataError(
            f"{cfg.method.name} needs unlabeled images: {splits.unlabeled} is empty and "
            "dataset.extra_unlabeled names no pool"
        )
    # batch_size is per rank and micro-batch; an optimizer step consumes world x accumulate x batch samples of
    # each stream (the global batch), loaded together and split into micro-batches by the trainer.
    batch, world = cfg.train.batch_size * cfg.train.accumulate, dist.world
    labeled_set = method.labeled_dataset(labeled, cfg.dataset.root, nclass, crop, task)
    pools = Pools(
        len(labeled),
        len(labeled_set),
        len(unlabeled),
        str(splits.labeled),
        str(splits.unlabeled),
        cfg.dataset.labeled_epoch_samples,
    )
    schedule = method.schedule(pools, batch, world)  # what an epoch is: the method declares it
    iters_per_epoch, labeled_batch = schedule.iterations_per_epoch, schedule.labeled_batch
    if iters_per_epoch == 0:
        ranks = f" x {world} processes" if world > 1 else ""
        raise ConfigError(f"train.batch_size: {batch}{ranks} is larger than the {schedule.pool} {schedule.pool_name}")
    unlabeled_set = task.unlabeled_dataset(unlabeled, crop) if method.uses_unlabeled else None
    streams = step_streams(cfg, world, iters_per_epoch, (labeled_set, labeled_batch), (unlabeled_set, batch))
    val_set = task.eval_dataset(val, nclass)
    return TrainingData(
        class_names=task.class_names(cfg.dataset.name, root, nclass),
        val_set=val_set,
        pseudo_set=task.eval_dataset(pseudo_samples, nclass) if pseudo_samples else None,
        streams=streams,
        sizes={"labeled": len(labeled), "unlabeled": len(unlabeled), "val": len(val_set)},
        iters_per_epoch=iters_per_epoch,
        total_iters=total_iterations(cfg, iters_per_epoch),
    )


def total_iterations(cfg: ExperimentConfig, iters_per_epoch: int) -> int:
    """Optimizer steps of the run: its epochs, capped by ``train.max_iters``."""
    total = iters_per_epoch * cfg.train.epochs
    return min(total, cfg.train.max_iters) if cfg.train.max_iters else total


def step_streams(
    cfg: ExperimentConfig,
    world: int,
    iters_per_epoch: int,
    labeled: tuple[Dataset, int],
    unlabeled: tuple[Dataset | None, int],
) -> dict[str, tuple[SampleStream, int]]:
    """The labeled stream and, when there is an unlabeled dataset, the unlabeled one, each with the number of
    samples one rank's optimizer step takes from it; every stream lasts the run's epochs."""
    epochs, seed = cfg.train.epochs, cfg.train.seed
    streams = {}
    for name, (dataset, batch), stream_seed in (
        ("labeled", labeled, LABELED_STREAM),
        ("unlabeled", unlabeled, UNLABELED_STREAM),
    ):
        if dataset is not None:
            streams[name] = (SampleStream(dataset, iters_per_epoch * batch * world, epochs, seed, stream_seed), batch)
    return streams


def preflight(
    task: SegmentationTask,
    cfg: ExperimentConfig,
    labeled: list[Sample],
    unlabeled: list[Sample],
    val: list[Sample],
    pseudo: list[Sample],
    progress: bool = True,
) -> None:
    """Every unreadable file, size mismatch (and, with ``dataset.preflight=decode``, bad label) of the
    three splits, found before the first step rather than one at a time mid-epoch."""
    level, nclass = cfg.dataset.preflight, cfg.dataset.nclass
    started = time.perf_counter()
    scored = set(pseudo)  # their masks are read every epoch for the pseudo/* metrics: checked with them
    found = task.check_training_data(labeled, [s for s in unlabeled if s not in scored], val, nclass, level, progress)
    found.merge(task.check(pseudo, nclass, True, level))
    found.raise_if_bad(f" (`unimatch check-data` lists every one; dataset.preflight={level})")
    if level != "off":
        log.info("preflight (%s): %d files fine in %.1f s", level, found.files, time.perf_counter() - started)


def pseudo_label_samples(unlabeled: list[Sample], limit: int, seed: int) -> list[Sample]:
    """Unlabeled images whose ground truth is on disk (the embedded data; real datasets whose unlabeled
    split lists masks), at most ``limit`` (``eval.pseudo_label_images``) of them, a fixed seeded choice: the
    teacher's pseudo labels are scored on them every epoch. The masks are never used for training."""
    if not limit:
        return []
    with_truth = [s for s in unlabeled if s.mask is not None and s.mask.is_file()]
    if len(with_truth) > limit:
        picks = np.random.default_rng(seed).choice(len(with_truth), limit, replace=False)
        with_truth = [with_truth[i] for i in sorted(picks)]
    return with_truth
