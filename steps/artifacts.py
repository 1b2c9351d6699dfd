"""The artifacts the steps exchange, and the materializer that stores trained checkpoints.

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
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel
from zenml.artifact_stores import LocalArtifactStore
from zenml.enums import ArtifactType
from zenml.io import fileio
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.metadata.metadata_types import MetadataType

from unimatch.models.weights import sha256_file


class SplitFile(BaseModel):
    """One split list file: where it is (relative to the working directory) and what it holds."""

    path: str
    sha256: str
    samples: int

    @classmethod
    def of(cls, path: str | Path) -> SplitFile:
        lines = Path(path).read_bytes().decode("utf-8-sig").splitlines()
        return cls(path=Path(path).as_posix(), sha256=sha256_file(path), samples=sum(1 for line in lines if line.strip()))

    def verify(self) -> None:
        """Fail loudly if the file vanished or changed since the split step described it (another
        process rewrote it): training must read the very lists the cache key was computed from."""
        if not Path(self.path).is_file() or sha256_file(self.path) != self.sha256:
            raise RuntimeError(f"split file {self.path} is missing or changed since create_splits described it; "
                               "re-run the pipeline")


class SplitSet(BaseModel):
    """The labeled / unlabeled / val split files of one experiment, plus a fingerprint of the images
    they list, so that regenerated data invalidates the cache even when the lists are unchanged."""

    labeled: SplitFile
    unlabeled: SplitFile
    val: SplitFile
    data_fingerprint: str

    def overrides(self) -> list[str]:
        """Config overrides that make training read exactly these files."""
        for split in (self.labeled, self.unlabeled, self.val):
            split.verify()
        return [f"dataset.labeled_split={self.labeled.path}", f"dataset.unlabeled_split={self.unlabeled.path}",
                f"dataset.val_split={self.val.path}"]


class TrainedModel(BaseModel):
    """A finished training run: the best checkpoint (EMA and student weights) and its summary metrics."""

    name: str  # the table variant, e.g. 'fixmatch' or 'tau=0.9'
    method: str
    run_dir: str
    checkpoint: str  # best.pth: under run_dir when produced, inside the artifact store once loaded
    sha256: str
    metrics: dict[str, float]
    mlflow_run_id: str | None = None


class Evaluation(BaseModel):
    name: str
    method: str
    miou: float
    per_class_iou: dict[str, float]
    mlflow_run_id: str | None = None  # the evaluation's own run
    train_run_id: str | None = None  # the training run the report reads


class ReportFiles(BaseModel):
    markdown: str
    csv: str
    html: str


class Predictions(BaseModel):
    name: str
    output_dir: str
    images: int


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
        payload = data.model_dump(exclude={"checkpoint", "run_dir", "mlflow_run_id"})
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def extract_metadata(self, data: TrainedModel) -> dict[str, MetadataType]:
        return {"method": data.method, "sha256": data.sha256, "run_dir": data.run_dir, **data.metrics}
