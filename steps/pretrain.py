"""Pre-training step: the self-supervised encoder that every method of a table starts from."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from unimatch import jobs
from unimatch.config import ExperimentConfig

from .artifacts import PretrainedEncoder, SplitSet
from .cache import LIBRARY_CACHE_POLICY
from .tracking import with_run_tags


@step(cache_policy=LIBRARY_CACHE_POLICY)
def pretrain_encoder(
    splits: SplitSet, config: ExperimentConfig, tags: dict[str, str]
) -> Annotated[PretrainedEncoder, "encoder"]:
    """Pre-train the encoder of ``config`` (``pretrain.method``) on the training images of ``splits``,
    as its own MLflow run (tag ``kind=pretrain``, loss curve and reconstructions).

    The training steps take this step's output as an input; should the file be deleted or changed while
    this step stays cached, they pre-train it again.
    """
    return jobs.pretrain(splits, config, with_run_tags(tags))
