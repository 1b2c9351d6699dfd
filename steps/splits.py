"""Split step: validated split files for the whole table, described by content."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from unimatch import jobs
from unimatch.config import ExperimentConfig

from .artifacts import SplitSet


@step(enable_cache=False)
def create_splits(config: ExperimentConfig) -> Annotated[SplitSet, "splits"]:
    """Create (or validate) the split files of ``config``; the embedded dataset is generated if absent.

    Never cached: it reads the dataset on disk, which ZenML cannot see, and takes seconds. Its output
    is compared by content, so unchanged files still let the training steps hit the cache.
    """
    return jobs.create_splits(config)
