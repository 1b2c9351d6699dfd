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
    ProbeReport,
    PseudoLabelSet,
    ReportFiles,
    SplitFile,
    SplitSet,
    StabilityRanking,
    TrainedModel,
)

__all__ = [
    "Evaluation",
    "FoundationEncoder",
    "ProbeReport",
    "Predictions",
    "PretrainedEncoder",
    "PseudoLabelSet",
    "ReportFiles",
    "SplitFile",
    "SplitSet",
    "StabilityRanking",
    "TrainedModel",
    "TrainedModelMaterializer",
]


class TrainedModelMaterializer(BaseMaterializer):
    """Stores ``model.json`` and a copy of ``best.pth`` in the artifact store."""

    ASSOCIATED_TYPES: ClassVar[tuple[type[Any], ...]] = (TrainedModel,)
    ASSOCIATED_ARTIFACT_TYPE: ClassVar[ArtifactType] = ArtifactType.MODEL
    CHECKPOINT: ClassVar[str] = "best.pth"
    METADATA: ClassVar[str] = "model.json"

    def save(self, data: TrainedModel) -> None:
        for source, name in ((data.checkpoint, self.CHECKPOINT), *zip(data.snapshots, self._snapshot_names(data))):
            fileio.copy(source, os.path.join(self.uri, name), overwrite=True)
        with fileio.open(os.path.join(self.uri, self.METADATA), "w") as handle:
            handle.write(data.model_dump_json(indent=2))

    def load(self, data_type: type[Any]) -> TrainedModel:
        with fileio.open(os.path.join(self.uri, self.METADATA), "r") as handle:
            model = TrainedModel.model_validate_json(handle.read())
        checkpoint, *snapshots = (self._local(name) for name in (self.CHECKPOINT, *self._snapshot_names(model)))
        return model.model_copy(update={"checkpoint": checkpoint, "snapshots": snapshots})

    @staticmethod
    def _snapshot_names(data: TrainedModel) -> list[str]:
        return [f"snapshot_{k}.pth" for k in range(1, len(data.snapshots) + 1)]  # ST++'s teacher keeps three

    def _local(self, name: str) -> str:
        stored = os.path.join(self.uri, name)
        if isinstance(self.artifact_store, LocalArtifactStore):
            return stored
        local = os.path.join(tempfile.mkdtemp(prefix="unimatch-ckpt-"), name)  # remote store: fetch a local copy
        fileio.copy(stored, local)
        return local

    def compute_content_hash(self, data: TrainedModel) -> str:
        # Paths differ between a run directory and the store copy; the weights and metrics do not.
        payload = data.model_dump(exclude={"checkpoint", "run_dir", "mlflow_run_id", "mlflow_model", "snapshots"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def extract_metadata(self, data: TrainedModel) -> dict[str, MetadataType]:
        return {"method": data.method, "sha256": data.sha256, "run_dir": data.run_dir, **data.metrics}
