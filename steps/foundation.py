"""Foundation step: the embedded world's released encoder, pre-trained on the foundation corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel
from zenml import step

from unimatch.foundation import FoundationConfig, train_foundation
from unimatch.models.weights import sha256_file
from unimatch.tracking import MlflowTracker, check_tracking_uri, resolve_tracking_uri

from .cache import LIBRARY_CACHE_POLICY

EXPERIMENT = "foundation"


class FoundationEncoder(BaseModel):
    path: str  # the weights file (configs/foundation/*.yaml: output), loaded through model.weights
    sha256: str
    route: str
    final_loss: float
    held_out_miou: float | None  # supervised route: corpus images never trained on


@step(cache_policy=LIBRARY_CACHE_POLICY)
def train_foundation_encoder(settings: FoundationConfig) -> Annotated[FoundationEncoder, "foundation_encoder"]:
    """Pre-train the encoder of ``settings`` on the foundation corpus, as an MLflow run (experiment
    ``foundation``, tag ``kind=foundation``: loss curve, summary and figure)."""
    uri = resolve_tracking_uri(None)
    check_tracking_uri(uri)
    with MlflowTracker(uri, EXPERIMENT, f"foundation-{settings.route}-{settings.encoder}", {"kind": "foundation"}) as tracker:
        path = train_foundation(settings, tracker, progress=True)
    summary = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    return FoundationEncoder(path=Path(path).as_posix(), sha256=sha256_file(path), route=settings.route,
                             final_loss=summary["final_loss"], held_out_miou=summary.get("held_out_miou"))
