"""Evaluation step: the stored best checkpoint (EMA weights) on the val split."""

from __future__ import annotations

import math
from typing import Annotated, Any

from zenml import step

from unimatch.config import apply_overrides, validate
from unimatch.engine.evaluate import evaluate_checkpoint
from unimatch.tracking import tracker_from_config

from .artifacts import Evaluation, SplitSet, TrainedModel
from .cache import LIBRARY_CACHE_POLICY


@step(cache_policy=LIBRARY_CACHE_POLICY)
def evaluate_model(model: TrainedModel, splits: SplitSet, config: dict[str, Any], tags: dict[str, str]) -> Annotated[Evaluation, "evaluation"]:
    """mIoU of ``model`` on the val split, logged as its own MLflow run (tag ``kind=eval``).

    It re-reads the checkpoint from the artifact store, so it also proves the stored copy is usable.
    Classes absent from both prediction and ground truth have no IoU and are left out.
    """
    cfg = validate(apply_overrides(config, [*splits.overrides(), f"tracking.run_name=eval-{model.name}"]))
    eval_tags = {**tags, "kind": "eval", "checkpoint_sha256": model.sha256}
    with tracker_from_config(cfg, tags=eval_tags, parent_run_id=model.mlflow_run_id) as tracker:
        result = evaluate_checkpoint(cfg, model.checkpoint, splits.val.path, "ema", tracker, progress=True)
        run_id = tracker.run_id
    return Evaluation(
        name=model.name,
        method=model.method,
        miou=result.miou,
        per_class_iou={name: iou for name, iou in result.per_class_iou.items() if math.isfinite(iou)},
        mlflow_run_id=run_id,
        train_run_id=model.mlflow_run_id,
    )
