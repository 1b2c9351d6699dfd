"""Training step: one method / variant of a table, trained by the library's engine."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import step

from unimatch.config import apply_overrides, validate
from unimatch.engine import resumable_run_id, train
from unimatch.engine.launch import launch_torchrun
from unimatch.tracking import tracker_from_config

from .artifacts import SplitSet, TrainedModel, TrainedModelMaterializer, sha256_file
from .cache import LIBRARY_CACHE_POLICY
from .tracking import store_uri

# By import path: resolving the class would open the ZenML store whenever this module is imported.
MATERIALIZER = f"{TrainedModelMaterializer.__module__}.{TrainedModelMaterializer.__qualname__}"


@step(cache_policy=LIBRARY_CACHE_POLICY, output_materializers=MATERIALIZER)
def train_model(splits: SplitSet, config: dict[str, Any], name: str, tags: dict[str, str]) -> Annotated[TrainedModel, "model"]:
    """Train ``config`` (fully resolved: method, budget, output_dir) on ``splits``.

    ``tags`` (table, sweep values...) are added to the standard run tags. The GPU request, when any,
    is attached by the pipeline as ``ResourceSettings``. With ``train.gpus`` > 1 the training runs in
    that many processes under ``torchrun`` (rank 0 logs into this step's MLflow run). Training resumes
    from the run directory's ``checkpoints/latest.pth`` if a previous attempt was interrupted.
    """
    cfg = validate(apply_overrides(config, splits.overrides()))
    with tracker_from_config(cfg, tags=tags, resume_run_id=resumable_run_id(cfg)) as tracker:
        if cfg.train.gpus > 1:
            result = launch_torchrun(cfg, run_id=tracker.run_id, tracking_uri=store_uri(), progress=True)
        else:
            result = train(cfg, tracker, progress=True)
    return TrainedModel(
        name=name,
        method=cfg.method.name,
        run_dir=str(result.output_dir),
        checkpoint=str(result.best_checkpoint),
        sha256=sha256_file(result.best_checkpoint),
        metrics=result.metrics,
        mlflow_run_id=result.run_id,
    )
