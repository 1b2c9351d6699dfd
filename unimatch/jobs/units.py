"""The units of work of the table pipelines, shared by the ZenML steps, the DVC stage commands and the CLI.

Each job takes a validated config and the records of the jobs before it, does one thing through the
library, and returns a record (a pydantic model) that names its files by content. The ZenML steps in
``steps/`` are typed adapters over these functions; ``pipelines/dvc_stages.py`` calls them directly
and stores the records as JSON files that DVC tracks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from ..apps.foundation import FoundationConfig, train_foundation
from ..apps.mae import pretrained_encoder
from ..apps.predict import predict_folder
from ..apps.pseudo_labels import (
    Inference,
    predicted_masks,
    rank_by_stability,
    split_reliable,
    stability_scores,
    subset_pseudo_labels,
    write_label_next,
    write_pseudo_labels,
)
from ..apps.report import report
from ..config import ExperimentConfig, apply_overrides, validate
from ..data import generate_embedded, read_split, write_split
from ..data.change import read_names_split
from ..data.layouts import SplitFormat
from ..engine import resolve_device
from ..engine.data import prepare_splits
from ..engine.evaluate import checkpoint_model, evaluate_checkpoint
from ..engine.probe import ProbeResult, ProbeSettings, probe_encoder, probe_table
from ..errors import UnimatchError
from ..models.weights import sha256_file
from ..tracking import MlflowTracker, Tracker, check_tracking_uri, resolve_tracking_uri, tracker_from_config
from ..utils.atomic import write_text_atomic
from .training import run_training


class StaleArtifactError(UnimatchError):
    """A record points at files that changed or vanished since it was written."""


# ----------------------------------------------------------------- records
class SplitFile(BaseModel):
    """One split list file: where it is (relative to the working directory) and what it holds."""

    path: str
    sha256: str
    samples: int

    @classmethod
    def of(cls, path: str | Path) -> SplitFile:
        lines = Path(path).read_bytes().decode("utf-8-sig").splitlines()
        return cls(
            path=Path(path).as_posix(), sha256=sha256_file(path), samples=sum(1 for line in lines if line.strip())
        )

    def verify(self) -> None:
        """Training must read the very lists the cache key was computed from."""
        if not Path(self.path).is_file() or sha256_file(self.path) != self.sha256:
            raise StaleArtifactError(
                f"split file {self.path} is missing or changed since the splits job described it; "
                "re-run the pipeline (or `dvc repro`)"
            )


class SplitSet(BaseModel):
    """The labeled / unlabeled / val split files of one experiment, plus a fingerprint of the images
    they list, so that regenerated data invalidates the cache even when the lists are unchanged."""

    labeled: SplitFile
    unlabeled: SplitFile
    val: SplitFile
    data_fingerprint: str

    def applied_to(self, cfg: ExperimentConfig, *overrides: str) -> ExperimentConfig:
        """``cfg`` reading exactly these (verified) files, plus ``overrides``."""
        for split in (self.labeled, self.unlabeled, self.val):
            split.verify()
        files = [
            f"dataset.labeled_split={self.labeled.path}",
            f"dataset.unlabeled_split={self.unlabeled.path}",
            f"dataset.val_split={self.val.path}",
        ]
        return derive(cfg, *files, *overrides)


class PretrainedEncoder(BaseModel):
    path: str  # <pretrain.dir>/<dataset>-<encoder>-<method>-<digest>/encoder.pth
    sha256: str

    def intact(self) -> str | None:
        """The weights file when it is unchanged since pre-training wrote it; None when it was deleted or
        changed (a cached step outliving its file): training then pre-trains it again."""
        return self.path if Path(self.path).is_file() and sha256_file(self.path) == self.sha256 else None


class FoundationEncoder(BaseModel):
    path: str  # the weights file (configs/foundation/*.yaml: output), loaded through model.weights
    sha256: str
    route: str
    encoder: str
    final_loss: float
    held_out_miou: float | None  # supervised route: corpus images never trained on


class ProbeReport(BaseModel):
    """The feature-quality probe of one encoder (unimatch.engine.probe): one row per mode."""

    encoder: str
    weights: str | None
    settings: ProbeSettings
    results: list[dict[str, float | str]]

    def table(self) -> str:
        return probe_table([ProbeResult(**row) for row in self.results])


class TrainedModel(BaseModel):
    """A finished training run: the best checkpoint (EMA and student weights) and its summary metrics."""

    name: str  # the table variant, e.g. 'fixmatch' or 'tau=0.9'
    method: str
    run_dir: str
    checkpoint: str  # best.pth: under run_dir when produced, inside the artifact store once loaded
    sha256: str
    metrics: dict[str, float]
    mlflow_run_id: str | None = None
    mlflow_model: str | None = None  # models:/NAME/VERSION when the model was registered
    snapshots: list[str] = []  # train.snapshots checkpoints, in training order (the last = the final model)


class PseudoLabelSet(BaseModel):
    """Pseudo labels of a set of unlabeled images: the split file listing (image, pseudo mask) and their
    quality against ground truth where the images have masks (never used for training)."""

    name: str
    split: SplitFile
    miou: float | None


class StabilityRanking(BaseModel):
    """ST++'s ranking of the unlabeled images: the reliable and unreliable halves as split files, and the
    label-next list (least stable first) as CSV and a contact sheet."""

    reliable: SplitFile
    unreliable: SplitFile
    label_next_csv: str
    label_next_png: str


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


def derive(cfg: ExperimentConfig, *overrides: str) -> ExperimentConfig:
    """``cfg`` with ``key=value`` overrides, validated again."""
    return (
        validate(apply_overrides(cfg.to_dict(), list(overrides)), "derived config", list(overrides))
        if overrides
        else cfg
    )


# ----------------------------------------------------------------- jobs
def data_fingerprint(root: str, files: Mapping[str, str], split_format: SplitFormat | None = None) -> str:
    """SHA-256 over the name and byte size of every image (a pair's A and B) and mask the splits list: a
    stat per file, cheap even for COCO, and any regeneration of the data changes some size."""
    split_format = split_format or SplitFormat(pairs=False)
    digest = hashlib.sha256()
    for role, path in sorted(files.items()):
        for sample in split_format.read(path, root, require_masks=role != "unlabeled", allow_empty=role == "unlabeled"):
            mask_size = sample.mask.stat().st_size if sample.mask is not None and sample.mask.is_file() else -1
            sizes = " ".join(str(image.stat().st_size) for image in split_format.images(sample))
            digest.update(f"{role} {sample.name} {sizes} {mask_size}\n".encode())
    return digest.hexdigest()


def create_splits(cfg: ExperimentConfig) -> SplitSet:
    """Create (or validate) the split files of ``cfg``; the embedded dataset is generated if absent."""
    files = prepare_splits(cfg)
    paths = {"labeled": str(files.labeled), "unlabeled": str(files.unlabeled), "val": str(files.val)}
    return SplitSet(
        labeled=SplitFile.of(files.labeled),
        unlabeled=SplitFile.of(files.unlabeled),
        val=SplitFile.of(files.val),
        data_fingerprint=data_fingerprint(cfg.dataset.root, paths, SplitFormat.of(cfg.dataset.name)),
    )


def pretrain(
    splits: SplitSet, cfg: ExperimentConfig, tags: Mapping[str, str], progress: bool = True
) -> PretrainedEncoder:
    """The self-supervised encoder of ``cfg.pretrain`` on the training images, as its own MLflow run."""
    cfg = splits.applied_to(cfg, f"tracking.run_name=pretrain-{cfg.pretrain.method}")
    with tracker_from_config(cfg, tags={**tags, "kind": "pretrain"}) as tracker:
        path = pretrained_encoder(cfg, tracker, progress=progress)
    return PretrainedEncoder(path=path.as_posix(), sha256=sha256_file(path))


def foundation_tracker(run_name: str, tags: Mapping[str, str], uri: str | None = None, tracked: bool = True) -> Tracker:
    """A run of MLflow experiment ``foundation`` in the store of ``uri`` (default: the configured one),
    checked before anything is trained; a no-op tracker unless ``tracked``."""
    if not tracked:
        return Tracker()
    uri = resolve_tracking_uri(uri)
    check_tracking_uri(uri)
    return MlflowTracker(uri, "foundation", run_name, dict(tags))


def train_foundation_encoder(settings: FoundationConfig, progress: bool = True) -> FoundationEncoder:
    """The embedded world's released encoder, pre-trained on the foundation corpus, as an MLflow run
    (experiment ``foundation``, tag ``kind=foundation``)."""
    name = f"foundation-{settings.route}-{settings.encoder}"
    with foundation_tracker(name, {"kind": "foundation"}) as tracker:
        path = train_foundation(settings, tracker, progress=progress)
    summary = json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
    return FoundationEncoder(
        path=Path(path).as_posix(),
        sha256=sha256_file(path),
        route=settings.route,
        encoder=settings.encoder,
        final_loss=summary["final_loss"],
        held_out_miou=summary.get("held_out_miou"),
    )


def probe_features(
    encoder: str, weights: str | None, settings: ProbeSettings, tracker: Tracker | None = None
) -> ProbeReport:
    """Score an encoder's features with the probe; metrics ``probe/<mode>/<score>`` go to ``tracker``."""
    results = probe_encoder(encoder, weights, settings, resolve_device("auto"))
    if tracker:
        tracker.log_metrics({f"probe/{r.mode}/{k}": v for r in results for k, v in r.as_dict().items() if k != "mode"})
    return ProbeReport(encoder=encoder, weights=weights, settings=settings, results=[r.as_dict() for r in results])


def probe_foundation_encoder(foundation: FoundationEncoder, settings: ProbeSettings) -> ProbeReport:
    """Probe a freshly trained foundation encoder and add the table to its summary JSON (``probe``), as an
    MLflow run of experiment ``foundation`` (tag ``kind=probe``)."""
    name = f"probe-{Path(foundation.path).stem}"
    with foundation_tracker(name, {"kind": "probe", "weights_sha256": foundation.sha256}) as tracker:
        report = probe_features(foundation.encoder, foundation.path, settings, tracker)
    add_to_summary(report, Path(foundation.path).with_suffix(".json"))
    return report


def add_to_summary(report: ProbeReport, summary_path: Path) -> None:
    """Write the probe's settings and rows into a foundation summary JSON (key ``probe``)."""
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    summary["probe"] = {"settings": report.settings.model_dump(mode="json"), "results": report.results}
    write_text_atomic(summary_path, json.dumps(summary, indent=1) + "\n")


def train_variant(
    splits: SplitSet,
    cfg: ExperimentConfig,
    name: str,
    tags: Mapping[str, str],
    tracking_uri: str | None = None,
    progress: bool = True,
    encoder: PretrainedEncoder | None = None,
) -> TrainedModel:
    """Train ``cfg`` (fully resolved: method, budget, output_dir) on ``splits`` as one MLflow run,
    resumed (run included) from the run directory's ``latest.pth`` after an interruption; with
    ``train.gpus`` > 1 in that many processes under torchrun (``tracking_uri``: where rank 0 logs).
    ``encoder``: the pre-training job's encoder, when the table pre-trains one."""
    cfg = splits.applied_to(cfg)
    result = run_training(
        cfg, dict(tags), tracking_uri=tracking_uri, encoder=encoder.intact() if encoder else None, progress=progress
    )
    snapshots = sorted(
        result.output_dir.glob("checkpoints/snapshot_*.pth"), key=lambda p: int(p.stem.split("_")[1].split("of")[0])
    )
    return TrainedModel(
        name=name,
        method=cfg.method.name,
        run_dir=str(result.output_dir),
        checkpoint=str(result.best_checkpoint),
        sha256=sha256_file(result.best_checkpoint),
        metrics=result.metrics,
        mlflow_run_id=result.run_id,
        mlflow_model=result.registered_model,
        snapshots=[path.as_posix() for path in snapshots],
    )


def train_student(
    splits: SplitSet,
    pseudo_labels: list[PseudoLabelSet],
    cfg: ExperimentConfig,
    name: str,
    tags: Mapping[str, str],
    tracking_uri: str | None = None,
    progress: bool = True,
    keyed_dir: bool = True,
    encoder: PretrainedEncoder | None = None,
) -> TrainedModel:
    """An ST / ST++ student (``cfg.method``) on the labeled split and ``pseudo_labels``. ``keyed_dir``: its run
    directory is keyed by their content too, so that other pseudo labels never resume this student (DVC,
    which clears a stage's outputs before running it, keeps fixed directories)."""
    for pseudo in pseudo_labels:
        pseudo.split.verify()
    files = "[" + ",".join(p.split.path for p in pseudo_labels) + "]"
    key = hashlib.sha256("".join(p.split.sha256 for p in pseudo_labels).encode()).hexdigest()[:8]
    cfg = derive(cfg, f"method.pseudo_labels={files}", *([f"output_dir={cfg.output_dir}-{key}"] if keyed_dir else []))
    return train_variant(splits, cfg, name, tags, tracking_uri, progress, encoder)


def pseudo_label(
    model: TrainedModel, images: SplitFile, cfg: ExperimentConfig, name: str, out_dir: str, progress: bool = True
) -> PseudoLabelSet:
    """Hard pseudo labels of ``images`` by ``model`` (its best checkpoint) with multi-scale + flip TTA."""
    images.verify()
    device = resolve_device(cfg.train.device)
    net = checkpoint_model(cfg, model.checkpoint, "ema").to(device)
    samples = read_split(images.path, cfg.dataset.root, require_masks=False)
    result = write_pseudo_labels(
        net,
        samples,
        cfg.dataset.root,
        out_dir,
        cfg.dataset.nclass,
        device,
        progress=progress,
        inference=_inference(cfg),
    )
    return PseudoLabelSet(name=name, split=SplitFile.of(result.split_file), miou=result.miou)


def _inference(cfg: ExperimentConfig) -> Inference:
    return Inference(cfg.eval.window or cfg.dataset.crop_size, cfg.eval.max_tokens)


def rank_stability(
    teacher: TrainedModel, images: SplitFile, cfg: ExperimentConfig, out_dir: str, progress: bool = True
) -> StabilityRanking:
    """ST++: score each of ``images`` by how much the teacher's earlier snapshots agree with its final one,
    split them into the reliable (most stable) half and the rest, and write the label-next list."""
    if len(teacher.snapshots) < 2:
        raise UnimatchError(
            f"the teacher {teacher.run_dir} kept {len(teacher.snapshots)} snapshot(s); ST++ compares "
            "earlier ones with the final one: train it with train.snapshots=3"
        )
    images.verify()
    device = resolve_device(cfg.train.device)
    samples = read_split(images.path, cfg.dataset.root, require_masks=False)
    masks = [
        predicted_masks(checkpoint_model(cfg, path, "model").to(device), samples, device, _inference(cfg))
        for path in teacher.snapshots
    ]
    ranking = rank_by_stability(samples, stability_scores(masks[:-1], masks[-1], cfg.dataset.nclass))
    reliable, unreliable = split_reliable(ranking)
    by_name = {sample.name: sample for sample in samples}
    out = Path(out_dir)
    for file, names in (("reliable.txt", reliable), ("unreliable.txt", unreliable)):
        write_split(out / file, [by_name[name] for name in names], cfg.dataset.root)
    csv, sheet = write_label_next(ranking, samples, masks[-1], masks[:-1], cfg.dataset.nclass, out)
    return StabilityRanking(
        reliable=SplitFile.of(out / "reliable.txt"),
        unreliable=SplitFile.of(out / "unreliable.txt"),
        label_next_csv=csv.as_posix(),
        label_next_png=sheet.as_posix(),
    )


def select_pseudo_labels(
    pseudo: PseudoLabelSet, images: SplitFile, cfg: ExperimentConfig, name: str, out_dir: str
) -> PseudoLabelSet:
    """The pseudo labels of ``pseudo`` for the images of ``images``, copied to ``out_dir`` (ST++'s reliable
    half keeps the teacher's labels)."""
    pseudo.split.verify()
    images.verify()
    wanted = {sample.name for sample in read_split(images.path, cfg.dataset.root, require_masks=False)}
    split = subset_pseudo_labels(pseudo.split.path, cfg.dataset.root, wanted, out_dir)
    return PseudoLabelSet(name=name, split=SplitFile.of(split), miou=None)


def evaluate_trained(
    model: TrainedModel, splits: SplitSet, cfg: ExperimentConfig, tags: Mapping[str, str], progress: bool = True
) -> Evaluation:
    """mIoU of ``model`` (EMA weights) on the val split, as an MLflow run nested under its training run."""
    cfg = splits.applied_to(cfg, f"tracking.run_name=eval-{model.name}")
    eval_tags = {**tags, "kind": "eval", "checkpoint_sha256": model.sha256}
    with tracker_from_config(cfg, tags=eval_tags, parent_run_id=model.mlflow_run_id) as tracker:
        result = evaluate_checkpoint(cfg, model.checkpoint, splits.val.path, "ema", tracker, progress=progress)
        run_id = tracker.run_id
    return Evaluation(
        name=model.name,
        method=model.method,
        miou=result.miou,
        train_run_id=model.mlflow_run_id,
        per_class_iou={name: iou for name, iou in result.per_class_iou.items() if math.isfinite(iou)},
        mlflow_run_id=run_id,
    )


def check_runs_exist(uri: str, evaluations: list[Evaluation]) -> None:
    """Cached training steps point at runs logged earlier; a deleted tracking store would otherwise
    produce an empty table without a word."""
    client = MlflowClient(tracking_uri=uri)
    for evaluation in evaluations:
        if evaluation.train_run_id is None:
            continue
        try:
            client.get_run(evaluation.train_run_id)
        except MlflowException:
            raise StaleArtifactError(
                f"training run {evaluation.train_run_id} ({evaluation.name}) is not in the tracking "
                f"store {uri}; re-run the pipeline with --no-cache"
            ) from None


def build_report(
    evaluations: list[Evaluation],
    uri: str | None,
    experiment: str,
    layout: str,
    out_dir: str,
    filter_tags: Mapping[str, str],
    expected_rows: list[str],
    expected_cols: list[str],
) -> ReportFiles:
    """``<out_dir>/<layout>.{md,csv,html}`` from the runs of ``experiment`` matching ``filter_tags``
    (``uri`` None: the library's default store), after checking the evaluated runs are there."""
    uri = resolve_tracking_uri(uri)
    check_runs_exist(uri, evaluations)
    paths = report(
        uri,
        experiment,
        layout,
        out_dir,
        filter_tags=dict(filter_tags),
        expected_rows=expected_rows,
        expected_cols=expected_cols,
    )
    return ReportFiles(markdown=str(paths["md"]), csv=str(paths["csv"]), html=str(paths["html"]))


def export_predictions(
    model: TrainedModel,
    cfg: ExperimentConfig,
    input_dir: str,
    output_dir: str,
    limit: int | None = None,
    masks_dir: str | None = None,
    progress: bool = True,
    second_dir: str | None = None,
    split_file: str | None = None,
) -> Predictions:
    """Label maps and overlays of ``model`` (EMA weights) on the images under ``input_dir``; with
    ``masks_dir``, ground truth beside each prediction; with ``second_dir``, image pairs (change detection:
    ``input_dir`` holds A, ``second_dir`` B), restricted to the pairs of ``split_file`` when given."""
    device = resolve_device(cfg.train.device)
    net = checkpoint_model(cfg, model.checkpoint, "ema").to(device)
    only = [sample.name for sample in read_names_split(split_file, cfg.dataset.root)] if split_file else None
    written = predict_folder(
        net,
        input_dir,
        output_dir,
        cfg,
        device,
        limit,
        progress=progress,
        masks_dir=masks_dir,
        second_dir=second_dir,
        only=only,
    )
    return Predictions(name=model.name, output_dir=output_dir, images=len(written))


def unlabeled_pool(root: str, seed: int, images: int) -> str:
    """An embedded dataset of ``images`` training images at ``root`` (kept when already there); its image
    folder, an extra unlabeled pool (training never reads its masks)."""
    generate_embedded(root, seed=seed, n_train=images, n_val=1)
    return (Path(root) / "images" / "train").as_posix()
