"""Data step: a generated pool of extra unlabeled images (the real-world setting on embedded data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import step

from unimatch.data import generate_embedded


@step(enable_cache=False)
def make_unlabeled_pool(root: str, seed: int, images: int) -> Annotated[str, "pool"]:
    """Generate an embedded dataset of ``images`` training images at ``root`` (a no-op when it is
    already there) and return its image folder; training uses the images only, never the masks.

    Never cached: its product is a folder on disk, which a cached step would not recreate.
    """
    generate_embedded(root, seed=seed, n_train=images, n_val=1)
    return (Path(root) / "images" / "train").as_posix()
