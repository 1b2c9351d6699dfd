"""Data step: a generated pool of extra unlabeled images (the real-world setting on embedded data)."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from unimatch import jobs


@step(enable_cache=False)
def make_unlabeled_pool(root: str, seed: int, images: int) -> Annotated[str, "pool"]:
    """Generate an embedded dataset of ``images`` training images at ``root`` (a no-op when it is
    already there) and return its image folder; training uses the images only, never the masks.

    Never cached: its product is a folder on disk, which a cached step would not recreate.
    """
    return jobs.unlabeled_pool(root, seed, images)
