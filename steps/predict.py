"""Prediction export step: label PNGs and colour overlays of a trained model on a folder of images."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from unimatch import jobs
from unimatch.config import ExperimentConfig

from .artifacts import Predictions, TrainedModel


@step(enable_cache=False)
def export_predictions(
    model: TrainedModel,
    config: ExperimentConfig,
    input_dir: str,
    output_dir: str,
    limit: int | None = None,
    masks_dir: str | None = None,
    second_dir: str | None = None,
    split_file: str | None = None,
) -> Annotated[Predictions, "predictions"]:
    """Predict every image under ``input_dir`` (at most ``limit``) with the EMA weights of ``model``;
    overlays show the ground truth of ``masks_dir`` beside the prediction where it has a mask. With
    ``second_dir`` the inputs are change-detection pairs: A under ``input_dir``, B under ``second_dir``,
    those listed in ``split_file`` (bare names).

    Never cached: its product is the files under ``output_dir``, which a cached step would not rewrite.
    """
    return jobs.export_predictions(
        model, config, input_dir, output_dir, limit, masks_dir, second_dir=second_dir, split_file=split_file
    )
