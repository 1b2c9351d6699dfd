"""Evaluation step: the stored best checkpoint (EMA weights) on the val split."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from unimatch import jobs
from unimatch.config import ExperimentConfig

from .artifacts import Evaluation, SplitSet, TrainedModel
from .cache import LIBRARY_CACHE_POLICY
from .tracking import with_run_tags


@step(cache_policy=LIBRARY_CACHE_POLICY)
def evaluate_model(
    model: TrainedModel, splits: SplitSet, config: ExperimentConfig, tags: dict[str, str]
) -> Annotated[Evaluation, "evaluation"]:
    """mIoU of ``model`` on the val split, logged as its own MLflow run (tag ``kind=eval``), nested
    under the training run.

    It re-reads the checkpoint from the artifact store, so it also proves the stored copy is usable.
    Classes absent from both prediction and ground truth have no IoU and are left out.
    """
    return jobs.evaluate_trained(model, splits, config, with_run_tags(tags))
