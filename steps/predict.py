"""Prediction export step: label PNGs and colour overlays of a trained model on a folder of images."""

from __future__ import annotations

from typing import Annotated, Any

from zenml import step

from unimatch.config import validate
from unimatch.engine import resolve_device
from unimatch.engine.evaluate import checkpoint_model
from unimatch.predict import predict_folder

from .artifacts import Predictions, TrainedModel


@step(enable_cache=False)
def export_predictions(
    model: TrainedModel, config: dict[str, Any], input_dir: str, output_dir: str, limit: int | None = None
) -> Annotated[Predictions, "predictions"]:
    """Predict every image under ``input_dir`` (at most ``limit``) with the EMA weights of ``model``.

    Never cached: its product is the files under ``output_dir``, which a cached step would not rewrite.
    """
    cfg = validate(config)
    device = resolve_device(cfg.train.device)
    # The architecture comes from the config; the weights all come from the checkpoint.
    net = checkpoint_model(cfg, model.checkpoint, "ema").to(device)
    written = predict_folder(net, input_dir, output_dir, cfg, device, limit, progress=True)
    return Predictions(name=model.name, output_dir=output_dir, images=len(written))
