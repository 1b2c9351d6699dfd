"""The artifacts the steps exchange (the records of :mod:`unimatch.jobs`), and the materializer that
stores trained checkpoints.

Checkpoint design: a :class:`TrainedModel` names its run directory under ``runs/`` (curves, figures,
the resumable ``latest.pth``) but its ``best.pth`` is COPIED into the ZenML artifact store by
:class:`TrainedModelMaterializer`. A bare path would break as soon as ``runs/`` is cleaned while the
step stays cached, or when the next step runs on another machine (remote orchestrators); the copy
keeps a cached result loadable. Its content hash is the checkpoint's SHA-256 plus the metrics, so a
retrained but identical model still lets downstream steps hit the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, ClassVar

from zenml.artifact_stores import LocalArtifactStore
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.metadata.metadata_types import MetadataType

from unimatch.jobs import (
    Evaluation,
    FoundationEncoder,
    Predictions,
    PretrainedEncoder,
    ReportFiles,
    SplitFile,
    SplitSet,
    TrainedModel,
)

__all__ = ["Evaluation", "FoundationEncoder", "Predictions", "PretrainedEncoder", "ReportFiles", "SplitFile", "SplitSet",
           "TrainedModel", "TrainedModelMaterializer"]


class TrainedModelMaterializer(BaseMaterializer):
    """Stores ``model.json`` and a copy of ``best.pth`` in the artifact store."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (TrainedModel,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL
    CHECKPOINT: ClassVar[str] = "best.pth"
    METADATA: ClassVar[str] = "model.json"

    def save(self, data: TrainedModel) -> None:
        fileio.copy(data.checkpoint, os.path.join(self.uri, self.CHECKPOINT), overwrite=True)
        with fileio.open(os.path.join(self.uri, self.METADATA), "w") as handle:
            handle.write(data.model_dump_json(indent=2))

    def load(self, data_type: type[Any]) -> TrainedModel:
        with fileio.open(os.path.join(self.uri, self.METADATA), "r") as handle:
            model = TrainedModel.model_validate_json(handle.read())
        stored = os.path.join(self.uri, self.CHECKPOINT)
        if not isinstance(self.artifact_store, LocalArtifactStore):  # remote store: fetch a local copy
            local = os.path.join(tempfile.mkdtemp(prefix="unimatch-ckpt-"), self.CHECKPOINT)
            fileio.copy(stored, local)
            stored = local
        return model.model_copy(update={"checkpoint": stored})

    def compute_content_hash(self, data: TrainedModel) -> str:
        # Paths differ between a run directory and the store copy; the weights and metrics do not.
        payload = data.model_dump(exclude={"checkpoint", "run_dir", "mlflow_run_id", "mlflow_model"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def extract_metadata(self, data: TrainedModel) -> dict[str, MetadataType]:
        return {"method": data.method, "sha256": data.sha256, "run_dir": data.run_dir, **data.metrics}
