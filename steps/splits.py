"""Split step: validated split files for the whole table, described by content."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from zenml import step

from unimatch.config import validate
from unimatch.data import prepare_splits, read_split

from .artifacts import SplitFile, SplitSet


def data_fingerprint(root: str, files: dict[str, str]) -> str:
    """SHA-256 over the name and byte size of every image and mask the splits list: a stat per file,
    cheap even for COCO, and any regeneration of the data changes some size."""
    digest = hashlib.sha256()
    for role, path in sorted(files.items()):
        for sample in read_split(path, root, require_masks=role != "unlabeled", allow_empty=role == "unlabeled"):
            mask_size = sample.mask.stat().st_size if sample.mask is not None and sample.mask.is_file() else -1
            digest.update(f"{role} {sample.name} {sample.image.stat().st_size} {mask_size}\n".encode())
    return digest.hexdigest()


@step(enable_cache=False)
def create_splits(config: dict[str, Any]) -> Annotated[SplitSet, "splits"]:
    """Create (or validate) the split files of ``config``; the embedded dataset is generated if absent.

    Never cached: it reads the dataset on disk, which ZenML cannot see, and takes seconds. Its output
    is compared by content, so unchanged files still let the training steps hit the cache.
    """
    cfg = validate(config)
    files = prepare_splits(cfg)
    paths = {"labeled": str(files.labeled), "unlabeled": str(files.unlabeled), "val": str(files.val)}
    return SplitSet(
        labeled=SplitFile.of(files.labeled),
        unlabeled=SplitFile.of(files.unlabeled),
        val=SplitFile.of(files.val),
        data_fingerprint=data_fingerprint(cfg.dataset.root, paths),
    )
