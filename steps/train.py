"""Training step: one method / variant of a table, trained by the library's engine."""

from __future__ import annotations

from typing import Annotated

from zenml import get_step_context, log_metadata, step

from unimatch import jobs
from unimatch.config import ExperimentConfig

from .artifacts import PretrainedEncoder, SplitSet, TrainedModel, TrainedModelMaterializer
from .cache import LIBRARY_CACHE_POLICY
from .tracking import store_uri, with_run_tags

# By import path: resolving the class would open the ZenML store whenever this module is imported.
MATERIALIZER = f"{TrainedModelMaterializer.__module__}.{TrainedModelMaterializer.__qualname__}"


@step(cache_policy=LIBRARY_CACHE_POLICY, output_materializers=MATERIALIZER)
def train_model(
    splits: SplitSet,
    config: ExperimentConfig,
    name: str,
    tags: dict[str, str],
    encoder: PretrainedEncoder | None = None,
) -> Annotated[TrainedModel, "model"]:
    """Train ``config`` (fully resolved: method, budget, output_dir) on ``splits``, from ``encoder`` (the
    pre-training step's output) when the table pre-trains one.

    ``tags`` (table, sweep values...) are added to the standard run tags. The GPU request, when any,
    is attached by the pipeline as ``ResourceSettings``. With ``train.gpus`` > 1 the training runs in
    that many processes under ``torchrun`` (rank 0 logs into this step's MLflow run). Training resumes
    from the run directory's ``checkpoints/latest.pth`` if a previous attempt was interrupted.

    When the pipeline configures a ZenML Model, this step's run is one of its versions: the stored
    checkpoint is linked to it as its model artifact, with the MLflow run and registered model as metadata.
    """
    trained = jobs.train_variant(splits, config, name, with_run_tags(tags), tracking_uri=store_uri(), encoder=encoder)
    if get_step_context().model_version is not None:
        log_metadata(metadata=model_version_metadata(trained), infer_model=True)
    return trained


def model_version_metadata(trained: TrainedModel) -> dict[str, str | float]:
    links = {"mlflow_run_id": trained.mlflow_run_id, "mlflow_model": trained.mlflow_model}
    return {
        "method": trained.method,
        "variant": trained.name,
        **{k: v for k, v in links.items() if v},
        **trained.metrics,
    }
