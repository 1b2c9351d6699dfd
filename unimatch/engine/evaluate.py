"""Evaluating a saved checkpoint (ours or the authors' released UniMatch V2 ones) on a split."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from torch.utils.data import DataLoader, Dataset

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..figures import plot_confusion_matrix
from ..models import CheckpointError, Segmentor, load_segmentor_weights
from ..tasks import task_for
from ..tracking import Tracker, redact, resolve_tracking_uri, using_store
from ..utils.atomic import check_output_dir
from .checkpoint import checkpoint_header
from .data import prepare_splits
from .inference import EvalResult, evaluate
from .setup import autocast_dtype, build_model, optimize_for_device, resolve_device

MODEL_URI_SCHEMES = ("models:/", "runs:/")  # MLflow model URIs accepted wherever a checkpoint is


@dataclass
class PreparedEvaluation:
    """Everything an evaluation needs, loaded and checked before any MLflow run is opened: a missing
    checkpoint or a bad split fails without leaving a FAILED run behind."""

    source: str  # checkpoint path or MLflow model URI
    weights: str
    model: Segmentor
    run_id: str | None  # the MLflow run that trained the model, when known
    split: Path
    dataset: Dataset
    class_names: list[str]


def checkpoint_model(cfg: ExperimentConfig, checkpoint: str | Path, weights: str = "ema") -> Segmentor:
    """``cfg.model`` holding the ``weights`` entry ('ema' or 'model') of ``checkpoint``."""
    model_cfg = cfg.model.model_copy(update={"weights": None, "init_checkpoint": None})
    task = task_for(cfg.dataset.name)
    model = build_model(model_cfg, cfg.dataset.nclass, cfg.dataset.crop_size, cfg.method, quiet=True, task=task)
    load_segmentor_weights(model, checkpoint, key=weights)
    return model


def _resolve_model_uri(client: Any, uri: str) -> tuple[str, str | None]:
    """The artifact URI and training run behind ``runs:/ID/PATH``, ``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS`` (a registered version resolved in ``client``'s registry)."""
    scheme, _, rest = uri.partition(":/")
    if scheme == "runs":
        return uri, rest.strip("/").split("/")[0]
    name, at, alias = rest.strip("/").partition("@")
    if at:
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = name.rpartition("/")
        version = client.get_model_version(name, number)
    return version.source, version.run_id


def mlflow_model(cfg: ExperimentConfig, uri: str) -> tuple[Segmentor, str | None]:
    """A model logged by a training (``runs:/<id>/model``) or registered (``models:/NAME@best``), from
    the config's tracking store (its registry too), and the run that trained it."""
    # On use: importing mlflow.pytorch sets up the root logger (ERROR), which hides a process's INFO log.
    import mlflow.pytorch

    store = resolve_tracking_uri(cfg.tracking.uri)
    try:
        with using_store(store):
            source, run_id = _resolve_model_uri(mlflow.MlflowClient(tracking_uri=store, registry_uri=store), uri)
            model = mlflow.pytorch.load_model(source, map_location="cpu")
    except MlflowException as error:
        raise CheckpointError(f"--model {uri}: {error.message} (tracking URI {redact(store, store)})") from None
    nclass = model.head.classifier.out_channels
    if nclass != cfg.dataset.nclass:
        raise CheckpointError(f"--model {uri} predicts {nclass} classes, dataset.nclass is {cfg.dataset.nclass}")
    return model, run_id


def check_checkpoint_task(path: str | Path, header: dict[str, Any], dataset: str) -> None:
    """Refuse a training checkpoint whose config trained another task than ``dataset``'s (a change detector
    loaded with a segmentation config would take the wrong inputs). Files without a config (released weights)
    pass: loading them checks the class count."""
    trained = (header.get("config") or {}).get("dataset", {}).get("name")
    if trained is None:
        return
    theirs, ours = task_for(trained).name, task_for(dataset).name
    if theirs != ours:
        raise ConfigError(
            f"{path}: a {theirs} checkpoint (dataset.name={trained}), but the config's dataset.name={dataset} is "
            f"{ours}; pass the config the checkpoint was trained with (-c)"
        )


def load_model_source(cfg: ExperimentConfig, source: str | Path, weights: str = "ema") -> tuple[Segmentor, str | None]:
    """The segmentor of a checkpoint file (of ``cfg``'s task) or an MLflow model URI, and the MLflow run that
    trained it."""
    if str(source).startswith(MODEL_URI_SCHEMES):
        return mlflow_model(cfg, str(source))
    header = checkpoint_header(Path(source))
    check_checkpoint_task(source, header, cfg.dataset.name)
    return checkpoint_model(cfg, source, weights), header.get("run_id")


def prepare_evaluation(
    cfg: ExperimentConfig, source: str | Path, split_file: str | Path | None = None, weights: str = "ema"
) -> PreparedEvaluation:
    """Load the model (checkpoint or MLflow model URI) and the split (default: the val split), and
    preflight the split's files."""
    root, nclass, task = Path(cfg.dataset.root), cfg.dataset.nclass, task_for(cfg.dataset.name)
    check_output_dir(cfg.output_dir, "output_dir")
    model, run_id = load_model_source(cfg, source, weights)
    split = Path(split_file) if split_file else prepare_splits(cfg).val
    samples = task.read_split(split, root)
    task.check(samples, nclass, True, cfg.dataset.preflight).raise_if_bad()
    names = task.class_names(cfg.dataset.name, root, nclass)
    return PreparedEvaluation(str(source), weights, model, run_id, split, task.eval_dataset(samples, nclass), names)


def run_evaluation(
    cfg: ExperimentConfig, prepared: PreparedEvaluation, tracker: Tracker | None = None, progress: bool = True
) -> EvalResult:
    """mIoU of a prepared evaluation, logged to ``tracker`` with its confusion matrix."""
    tracker = tracker or Tracker()
    device = resolve_device(cfg.train.device)
    nclass, names = cfg.dataset.nclass, prepared.class_names
    loader = DataLoader(prepared.dataset, batch_size=1, num_workers=cfg.train.num_workers)
    result = evaluate(
        optimize_for_device(prepared.model, device),
        loader,
        nclass,
        names,
        cfg.eval.mode,
        cfg.eval.window or cfg.dataset.crop_size,
        cfg.eval.stride_ratio,
        cfg.eval.batch_size,
        device,
        autocast_dtype(cfg.train.amp, device),
        progress,
        max_tokens=cfg.eval.max_tokens,
    )
    tracker.log_params(
        {"eval.model": prepared.source, "eval.weights": prepared.weights, "eval.split": str(prepared.split)}
    )
    metrics = {"eval/miou": result.miou}
    metrics.update({f"eval/iou/{name}": iou for name, iou in result.per_class_iou.items() if math.isfinite(iou)})
    metrics.update(
        {f"eval/{name}": value for name, value in task_for(cfg.dataset.name).scores(result.confusion).items()}
    )
    tracker.log_metrics(metrics)
    stem = re.sub(r"[^\w.-]+", "_", Path(prepared.source).stem)  # a model URI as a file name
    figure = Path(cfg.output_dir) / "figures" / f"confusion_{stem}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(result.confusion, names, figure)
    tracker.log_artifact(figure, "figures")
    return result


def evaluate_checkpoint(
    cfg: ExperimentConfig,
    checkpoint: str | Path,
    split_file: str | Path | None = None,
    weights: str = "ema",
    tracker: Tracker | None = None,
    progress: bool = True,
) -> EvalResult:
    """mIoU of ``checkpoint`` (its ``weights`` entry: 'ema' or 'model'; or an MLflow model URI) on
    ``split_file`` or the val split."""
    return run_evaluation(cfg, prepare_evaluation(cfg, checkpoint, split_file, weights), tracker, progress)
