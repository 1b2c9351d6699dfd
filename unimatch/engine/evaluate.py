"""Evaluating a saved checkpoint (ours or the authors' released UniMatch V2 ones) on a split."""

from __future__ import annotations

import math
from pathlib import Path

from torch.utils.data import DataLoader

from ..config import ExperimentConfig
from ..data import EvalDataset, class_names, prepare_splits, read_split
from ..evaluation import EvalResult, evaluate
from ..models import load_segmentor_weights
from ..tracking import Tracker, plot_confusion_matrix
from .setup import autocast_dtype, build_model, optimize_for_device, resolve_device


def evaluate_checkpoint(
    cfg: ExperimentConfig,
    checkpoint: str | Path,
    split_file: str | Path | None = None,
    weights: str = "ema",
    tracker: Tracker | None = None,
    progress: bool = True,
) -> EvalResult:
    """mIoU of ``checkpoint`` (its ``weights`` entry: 'ema' or 'model') on ``split_file`` or the val split."""
    tracker = tracker or Tracker()
    device = resolve_device(cfg.train.device)
    root, nclass = Path(cfg.dataset.root), cfg.dataset.nclass
    model = build_model(cfg.model.model_copy(update={"weights": None, "init_checkpoint": None}), nclass, quiet=True)
    load_segmentor_weights(model, checkpoint, key=weights)
    split = Path(split_file) if split_file else prepare_splits(cfg).val
    names = class_names(cfg.dataset.name, root, nclass)
    loader = DataLoader(EvalDataset(read_split(split, root), nclass), batch_size=1, num_workers=cfg.train.num_workers)
    result = evaluate(
        optimize_for_device(model, device), loader, nclass, names, cfg.eval.mode, cfg.eval.window or cfg.dataset.crop_size,
        cfg.eval.stride_ratio, cfg.eval.batch_size, device, autocast_dtype(cfg.train.amp, device), progress,
    )
    tracker.log_params({"eval.checkpoint": str(checkpoint), "eval.weights": weights, "eval.split": str(split)})
    metrics = {"eval/miou": result.miou}
    metrics.update({f"eval/iou/{name}": iou for name, iou in result.per_class_iou.items() if math.isfinite(iou)})
    tracker.log_metrics(metrics)
    figure = Path(cfg.output_dir) / "figures" / f"confusion_{Path(checkpoint).stem}.png"
    figure.parent.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(result.confusion, names, figure)
    tracker.log_artifact(figure, "figures")
    return result
