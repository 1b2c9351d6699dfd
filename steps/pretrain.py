"""Pre-training step: the self-supervised encoder that every method of a table starts from."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel
from zenml import step

from unimatch.config import apply_overrides, validate
from unimatch.pretrain import pretrained_encoder
from unimatch.tracking import tracker_from_config

from .artifacts import SplitSet, sha256_file
from .cache import LIBRARY_CACHE_POLICY


class PretrainedEncoder(BaseModel):
    path: str  # <pretrain.dir>/<dataset>-<encoder>-<method>-<digest>/encoder.pth
    sha256: str


@step(cache_policy=LIBRARY_CACHE_POLICY)
def pretrain_encoder(splits: SplitSet, config: dict[str, Any], tags: dict[str, str]) -> Annotated[PretrainedEncoder, "encoder"]:
    """Pre-train the encoder of ``config`` (``pretrain.method``) on the training images of ``splits``,
    as its own MLflow run (tag ``kind=pretrain``, loss curve and reconstructions).

    The library caches the weights by a digest of what decides them, so the training steps that follow
    find this file; should it be deleted while this step stays cached, they pre-train it again.
    """
    cfg = validate(apply_overrides(config, [*splits.overrides(), f"tracking.run_name=pretrain-{config['pretrain']['method']}"]))
    with tracker_from_config(cfg, tags={**tags, "kind": "pretrain"}) as tracker:
        path = pretrained_encoder(cfg, tracker, progress=True)
    return PretrainedEncoder(path=path.as_posix(), sha256=sha256_file(path))
