"""Foundation step: the embedded world's released encoder, pre-trained on the foundation corpus."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from unimatch import jobs
from unimatch.apps.foundation import FoundationConfig

from .artifacts import FoundationEncoder, ProbeReport
from .cache import LIBRARY_CACHE_POLICY


@step(cache_policy=LIBRARY_CACHE_POLICY)
def train_foundation_encoder(settings: FoundationConfig) -> Annotated[FoundationEncoder, "foundation_encoder"]:
    """Pre-train the encoder of ``settings`` on the foundation corpus, as an MLflow run (experiment
    ``foundation``, tag ``kind=foundation``: loss curve, summary and figure)."""
    return jobs.train_foundation_encoder(settings)


@step(cache_policy=LIBRARY_CACHE_POLICY)
def probe_foundation_encoder(encoder: FoundationEncoder, settings: FoundationConfig) -> Annotated[ProbeReport, "probe"]:
    """Score the encoder's features with the feature-quality probe (frozen and fine-tuned DPT head on 24
    labels of the development world); the table joins the encoder's summary JSON."""
    return jobs.probe_foundation_encoder(encoder, settings.probe)
