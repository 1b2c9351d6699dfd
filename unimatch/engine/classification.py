"""The engine's data assembly for image classification (SPEC §9): per-class labeled split files, and the
streams of weak labeled views and weak + two strong unlabeled views (``train.unlabeled_ratio`` unlabeled
images per labeled one) the trainer reads; the test subset is evaluated."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import ConcatDataset

from ..config import ExperimentConfig
from ..data import DataError
from ..data.classification import (
    UNKNOWN,
    ClassificationEval,
    ClassificationLabeled,
    ClassificationSubset,
    ClassificationUnlabeled,
    per_class_split,
    read_fraction_list,
    read_split,
    read_subset,
    write_split,
)
from ..errors import ConfigError
from ..methods import Method
from ..methods.base import Pools
from ..tasks import ClassificationTask
from .data import TrainingData, ensure_dataset_root, split_folder, step_streams, total_iterations
from .distributed import Distributed


@dataclass
class ClassificationSplits:
    """The training pool and which of its images are labeled and unlabeled (indices), the split files."""

    train: ClassificationSubset
    labeled: np.ndarray
    unlabeled: np.ndarray
    labeled_file: Path
    unlabeled_file: Path


def classification_splits(cfg: ExperimentConfig) -> ClassificationSplits:
    """Labeled and unlabeled split files of ``cfg``: given ones (``dataset.labeled_split``: an ``ID LABEL``
    split or, for class folders, a label-fraction list; ``dataset.unlabeled_split`` optional: default the
    rest), else ``split.labeled`` per class drawn with ``split.seed`` into ``split.dir``."""
    ensure_dataset_root(cfg)
    data = cfg.dataset
    train = read_subset(data.name, data.root, "train")
    out = split_folder(cfg)
    if data.labeled_split:
        path = Path(data.labeled_split)
        listed = path.read_text().split()[1:2] if path.is_file() else []
        has_labels = bool(listed) and listed[0].lstrip("-").isdigit()
        labeled = read_split(path, train) if has_labels else read_fraction_list(path, train)
        unlabeled = (
            read_split(data.unlabeled_split, train)
            if data.unlabeled_split
            else np.setdiff1d(np.arange(len(train)), labeled)
        )
        if np.intersect1d(labeled, unlabeled).size:
            raise DataError(f"{data.unlabeled_split}: lists images of the labeled split {data.labeled_split}")
    else:
        labeled, unlabeled = per_class_split(train.labels, cfg.split.labeled, cfg.split.seed)
    write_split(out / "labeled.txt", train, labeled)
    write_split(out / "unlabeled.txt", train, unlabeled)
    return ClassificationSplits(train, labeled, unlabeled, out / "labeled.txt", out / "unlabeled.txt")


def _nclass_matches(cfg: ExperimentConfig, subset: ClassificationSubset) -> None:
    known = subset.labels[subset.labels != UNKNOWN]
    if known.size and known.max() >= cfg.dataset.nclass:
        raise ConfigError(
            f"dataset.nclass: {cfg.dataset.nclass}, but {cfg.dataset.root} has labels up to {known.max()}"
        )


def classification_training_data(
    cfg: ExperimentConfig, task: ClassificationTask, method: Method, dist: Distributed, progress: bool = True
) -> TrainingData:
    """What a classification training reads: labeled weak views, unlabeled weak + strong views (the training
    pool's unlabeled images plus an extra pool such as STL-10's), the test subset to evaluate, and the
    unlabeled images with known labels on which the pseudo labels are scored."""
    splits = classification_splits(cfg) if dist.is_main else None
    dist.barrier()
    splits = splits or classification_splits(cfg)
    data, size, world = cfg.dataset, cfg.dataset.crop_size, dist.world
    # per rank and optimizer step: train.accumulate micro-batches, split by the trainer (as segmentation)
    batch = cfg.train.batch_size * cfg.train.accumulate
    _nclass_matches(cfg, splits.train)
    test, extra = read_subset(data.name, data.root, "test"), read_subset(data.name, data.root, "unlabeled")
    if method.uses_unlabeled and not len(splits.unlabeled) + len(extra):
        raise DataError(f"{cfg.method.name} needs unlabeled images: {splits.unlabeled_file} is empty")
    labeled_set = ClassificationLabeled(splits.train, splits.labeled, size)
    unlabeled_sets = [ClassificationUnlabeled(splits.train, splits.unlabeled, size)]
    if len(extra):
        unlabeled_sets.append(ClassificationUnlabeled(extra, range(len(extra)), size))
    unlabeled_count = sum(len(s) for s in unlabeled_sets)
    unlabeled_batch = batch * cfg.train.unlabeled_ratio
    pools = Pools(
        len(splits.labeled),
        len(labeled_set),
        unlabeled_count,
        str(splits.labeled_file),
        str(splits.unlabeled_file),
        None,
    )
    # One epoch = one pass over the unlabeled pool at the unlabeled batch (FixMatch's uratio); the method
    # declares the labeled batch (labeled-only doubles it).
    labeled_batch = method.schedule(pools, batch, world).labeled_batch
    iters_per_epoch = unlabeled_count // (unlabeled_batch * world)
    if iters_per_epoch == 0:
        raise ConfigError(
            f"train.batch_size: {batch} x train.unlabeled_ratio {cfg.train.unlabeled_ratio} is larger than the "
            f"{unlabeled_count} unlabeled images"
        )
    pool = ConcatDataset(unlabeled_sets) if method.uses_unlabeled else None
    streams = step_streams(cfg, world, iters_per_epoch, (labeled_set, labeled_batch), (pool, unlabeled_batch))
    scored = splits.unlabeled[splits.train.labels[splits.unlabeled] != UNKNOWN]
    if len(scored) > cfg.eval.pseudo_label_images:
        scored = np.sort(np.random.default_rng(cfg.split.seed).choice(scored, cfg.eval.pseudo_label_images, False))
    return TrainingData(
        class_names=splits.train.class_names[: data.nclass],
        val_set=ClassificationEval(test, range(len(test)), size),
        pseudo_set=ClassificationEval(splits.train, scored, size) if len(scored) else None,
        streams=streams,
        sizes={"labeled": len(splits.labeled), "unlabeled": unlabeled_count, "val": len(test)},
        iters_per_epoch=iters_per_epoch,
        total_iters=total_iterations(cfg, iters_per_epoch),
    )
