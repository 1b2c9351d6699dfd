"""Foundation step: the embedded world's released encoder, pre-trained on the foundation corpus."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from unimatch import jobs
from unimatch.apps.foundation import FoundationConfig

from .artifacts import FoundationEncoder
from .cache import LIBRARY_CACHE_POLICY


@step(cache_policy=LIBRARY_CACHE_POLICY)
def train_foundation_encoder(settings: FoundationConfig) -> Annotated[FoundationEncoder, "foundation_encoder"]:
    """Pre-train the encoder of ``settings`` on the foundation corpus, as an MLflow run (experiment
    ``foundation``, tag ``kind=foundation``: loss curve, summary and figure)."""
    return jobs.train_foundation_encoder(settings)
