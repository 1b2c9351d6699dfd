"""The one training engine every method runs on."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..config import ExperimentConfig
from ..data import DataError, EvalDataset, LabeledDataset, UnlabeledDataset, class_names, extra_unlabeled_samples, prepare_splits, read_split
from ..evaluation import EvalResult, evaluate
from ..methods import LabeledBatch, UnlabeledBatch, build_method
from ..models import CheckpointError
from ..tracking import Tracker, plot_confusion_matrix, plot_training_curves
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint, seed_everything
from .ema import ema_decay, update_ema
from .losses import build_labeled_loss
from .optim import build_optimizer, set_poly_lr
from .setup import autocast_dtype, build_model, describe, make_loader, resolve_device
from .stream import SampleStream, StreamPositions

log = logging.getLogger(__name__)

LABELED_STREAM, UNLABELED_STREAM = 0, 1
# Changing these between a checkpoint and the run that resumes it would silently mix two experiments.
RESUME_KEYS = ("dataset.name", "dataset.nclass", "dataset.crop_size", "model.encoder", "method.name", "train.batch_size", "train.seed")


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, incompatible checkpoint); the last good checkpoint is kept."""


@dataclass
class TrainResult:
    output_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, float]
    run_id: str | None
    history: dict[str, list[tuple[int, float]]] = field(repr=False, default_factory=dict)


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


class Trainer:
    def __init__(self, cfg: ExperimentConfig, tracker: Tracker | None = None, progress: bool = True):
        self.cfg = cfg
        self.tracker = tracker or Tracker()
        self.progress = progress
        self.device = resolve_device(cfg.train.device)
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        seed_everything(cfg.train.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._build_data()
        self.model = build_model(cfg.model, cfg.dataset.nclass).to(self.device)
        self.teacher = self.model
        if cfg.method.teacher == "ema" and cfg.method.name != "labeled_only":
            self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.optimizer = build_optimizer(self.model, cfg.train)
        labeled_loss = build_labeled_loss(cfg.train.labeled_loss, cfg.train.ohem_threshold, cfg.train.ohem_min_kept)
        self.method = build_method(cfg.method, labeled_loss)
        self.iteration = 0
        self.bad_steps = 0
        self.best = {"miou_ema": -1.0, "miou_student": -1.0}
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._resume_if_possible()

    # ----------------------------------------------------------------- data
    def _build_data(self) -> None:
        cfg = self.cfg
        splits = prepare_splits(cfg)
        root, nclass, crop = Path(cfg.dataset.root), cfg.dataset.nclass, cfg.dataset.crop_size
        labeled = read_split(splits.labeled, root)
        self.class_names = class_names(cfg.dataset.name, root, nclass)
        self.val_set = EvalDataset(read_split(splits.val, root), nclass)
        # One epoch = one pass over the unlabeled set; labeled-only reads the list too, so that it trains
        # for the same number of iterations as the semi-supervised methods it is compared with.
        unlabeled = read_split(splits.unlabeled, root, require_masks=False, allow_empty=True) + extra_unlabeled_samples(cfg)
        if self.uses_unlabeled and not unlabeled:
            raise DataError(f"{cfg.method.name} needs unlabeled images: {splits.unlabeled} is empty and "
                            "dataset.extra_unlabeled names no pool")
        batch = cfg.train.batch_size
        pool = len(unlabeled) if unlabeled or self.uses_unlabeled else len(labeled)  # fully labeled baseline
        self.iters_per_epoch = pool // batch
        if self.iters_per_epoch == 0:
            raise ValueError(f"train.batch_size {batch} is larger than the {pool} unlabeled images of {splits.unlabeled}")
        self.total_iters = self.iters_per_epoch * cfg.train.epochs
        if cfg.train.max_iters:
            self.total_iters = min(self.total_iters, cfg.train.max_iters)
        labeled_batch = batch if self.uses_unlabeled else 2 * batch  # the reference doubles it
        self.streams = {
            "labeled": (SampleStream(LabeledDataset(labeled, nclass, crop), self.iters_per_epoch * labeled_batch, cfg.train.epochs, cfg.train.seed, LABELED_STREAM), labeled_batch),
        }
        if self.uses_unlabeled:
            self.streams["unlabeled"] = (
                SampleStream(UnlabeledDataset(unlabeled, crop), self.iters_per_epoch * batch, cfg.train.epochs, cfg.train.seed, UNLABELED_STREAM),
                batch,
            )
        self.sizes = {"labeled": len(labeled), "unlabeled": len(unlabeled), "val": len(self.val_set)}

    @property
    def uses_unlabeled(self) -> bool:
        return self.cfg.method.name != "labeled_only"

    def _iterators(self) -> dict[str, Any]:
        workers = self.cfg.train.num_workers
        return {
            name: iter(make_loader(stream, StreamPositions(self.iteration, self.total_iters, batch), batch, workers, self.device, self.cfg.train.seed))
            for name, (stream, batch) in self.streams.items()
        }

    def _next_batches(self, iterators: dict[str, Any]) -> tuple[LabeledBatch, UnlabeledBatch | None]:
        to = lambda t: t.to(self.device, non_blocking=True)  # noqa: E731
        image, mask = next(iterators["labeled"])
        labeled = LabeledBatch(to(image), to(mask))
        if "unlabeled" not in iterators:
            return labeled, None
        return labeled, UnlabeledBatch(*(to(t) for t in next(iterators["unlabeled"])))

    # ----------------------------------------------------------------- checkpoints
    @property
    def latest_path(self) -> Path:
        return self.checkpoint_dir / "latest.pth"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.pth"

    def _state(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "best": dict(self.best),
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            "rng": capture_rng(),
            "config": self.cfg.to_dict(),
            "run_id": self.tracker.run_id,
            "class_names": self.class_names,
        }
        if self.teacher is not self.model:
            state["ema"] = self.teacher.state_dict()
        return state

    def save_latest(self) -> None:
        save_checkpoint(self.latest_path, self._state())

    def _save_best(self) -> None:
        teacher = self.teacher.state_dict()
        save_checkpoint(self.best_path, {"model": self.model.state_dict(), "ema": teacher, "config": self.cfg.to_dict(), "class_names": self.class_names, "iteration": self.iteration, "best": dict(self.best)})

    def _resume_if_possible(self) -> None:
        if not (self.cfg.train.resume and self.latest_path.exists()):
            return
        try:
            state = load_checkpoint(self.latest_path)
        except CheckpointError as error:
            raise TrainingError(f"{error}. Move it aside (or set train.resume=false) to start over.") from error
        mine = self.cfg.to_dict()
        changed = [key for key in RESUME_KEYS if _lookup(state["config"], key) != _lookup(mine, key)]
        if changed:
            raise TrainingError(f"{self.latest_path} was written by a different experiment (changed: {', '.join(changed)}); use another output_dir or train.resume=false")
        self.model.load_state_dict(state["model"])
        if "ema" in state and self.teacher is not self.model:
            self.teacher.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.best = dict(state["best"])
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}
        restore_rng(state["rng"])
        log.warning("resuming %s from iteration %d/%d", self.latest_path, self.iteration, self.total_iters)

    # ----------------------------------------------------------------- training
    def _train_step(self, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None):
        lr = set_poly_lr(self.optimizer, self.iteration, self.total_iters, self.cfg.train.poly_power)
        self.model.train()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            losses = self.method.step(self.model, self.teacher, labeled, unlabeled)
        if not torch.isfinite(losses.loss):
            self.bad_steps += 1
            if self.bad_steps > self.cfg.train.max_bad_steps:
                raise TrainingError(
                    f"non-finite loss ({losses.loss.item()}) at iteration {self.iteration}; the last good checkpoint "
                    f"{self.latest_path} is kept (train.max_bad_steps={self.cfg.train.max_bad_steps} bad steps allowed)"
                )
            log.warning("skipping iteration %d: non-finite loss", self.iteration)
            return None, lr
        self.optimizer.zero_grad(set_to_none=True)
        losses.loss.backward()
        self.optimizer.step()
        if self.teacher is not self.model:
            update_ema(self.model, self.teacher, ema_decay(self.iteration, self.cfg.method.ema_decay))
        return losses, lr

    def _record(self, name: str, step: int, value: float) -> None:
        self.history.setdefault(name, []).append((step, value))

    def _log_window(self, window: list, lr: float) -> dict[str, float]:
        stacked = torch.stack([torch.stack((l.loss.detach(), l.labeled, l.unlabeled, l.mask_ratio)) for l in window]).float().mean(0).tolist()
        metrics = dict(zip(("train/loss", "train/loss_labeled", "train/loss_unlabeled", "train/mask_ratio"), stacked))
        metrics["train/lr"] = lr
        for name, value in metrics.items():
            self._record(name, self.iteration, value)
        self.tracker.log_metrics(metrics, step=self.iteration)
        return metrics

    def evaluate_models(self) -> dict[str, EvalResult]:
        cfg = self.cfg
        models = {"student": self.model} if self.teacher is self.model else {"student": self.model, "ema": self.teacher}
        loader = torch.utils.data.DataLoader(self.val_set, batch_size=1, num_workers=min(cfg.train.num_workers, 2))
        return {
            name: evaluate(
                model, loader, cfg.dataset.nclass, self.class_names, cfg.eval.mode, cfg.eval.window or cfg.dataset.crop_size,
                cfg.eval.stride_ratio, cfg.eval.batch_size, self.device, self.amp_dtype,
            )
            for name, model in models.items()
        }

    def _end_epoch(self, epoch: int, window_metrics: dict[str, float], started: float) -> str:
        results = self.evaluate_models()
        results.setdefault("ema", results["student"])
        metrics = {"val/miou_student": results["student"].miou, "val/miou_ema": results["ema"].miou, "epoch": epoch}
        metrics.update({f"val/iou_ema/{name}": iou for name, iou in results["ema"].per_class_iou.items() if math.isfinite(iou)})
        self.tracker.log_metrics(metrics, step=self.iteration)
        self._record("val/miou_student", epoch, results["student"].miou)
        self._record("val/miou_ema", epoch, results["ema"].miou)
        self.best["miou_student"] = max(self.best["miou_student"], results["student"].miou)
        improved = results["ema"].miou > self.best["miou_ema"]
        if improved:
            self.best["miou_ema"] = results["ema"].miou
            self.best_confusion = results["ema"].confusion
            self._save_best()
        self.save_latest()
        return (
            f"epoch {epoch}/{self.cfg.train.epochs} | loss {window_metrics.get('train/loss', float('nan')):.3f} "
            f"(l {window_metrics.get('train/loss_labeled', float('nan')):.3f} u {window_metrics.get('train/loss_unlabeled', float('nan')):.3f}) "
            f"| mask {window_metrics.get('train/mask_ratio', float('nan')):.2f} | mIoU student {results['student'].miou:.1f} "
            f"ema {results['ema'].miou:.1f} (best {self.best['miou_ema']:.1f}{' *' if improved else ''}) | {time.time() - started:.0f}s"
        )

    def fit(self) -> TrainResult:
        cfg = self.cfg
        self.tracker.log_params({"data.labeled_images": self.sizes["labeled"], "data.unlabeled_images": self.sizes["unlabeled"], "data.val_images": self.sizes["val"], "data.iters_per_epoch": self.iters_per_epoch, "data.total_iters": self.total_iters})
        log.info("%s: %s, %d iterations (%d per epoch) on %s", describe(cfg), self.sizes, self.total_iters, self.iters_per_epoch, self.device)
        iterators = self._iterators()
        window, metrics, lr = [], {}, 0.0
        started = time.time()
        bar = tqdm(total=self.total_iters, initial=self.iteration, desc=cfg.method.name, unit="it", disable=not self.progress, dynamic_ncols=True)
        while self.iteration < self.total_iters:
            labeled, unlabeled = self._next_batches(iterators)
            losses, lr = self._train_step(labeled, unlabeled)
            self.iteration += 1
            bar.update(1)
            if losses is not None:
                window.append(losses)
            epoch_done = self.iteration % self.iters_per_epoch == 0 or self.iteration == self.total_iters
            if window and (self.iteration % cfg.train.log_every == 0 or epoch_done):
                metrics = self._log_window(window, lr)
                window = []
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", mask=f"{metrics['train/mask_ratio']:.2f}")
            epoch = math.ceil(self.iteration / self.iters_per_epoch)
            if epoch_done and (epoch % cfg.train.eval_every == 0 or self.iteration == self.total_iters):
                bar.write(self._end_epoch(epoch, metrics, started))
            elif epoch_done or self.iteration % cfg.train.checkpoint_every == 0:
                self.save_latest()
        bar.close()
        return self._finish()

    def _finish(self) -> TrainResult:
        if not self.best_path.exists():  # resumed after the last evaluation, or never evaluated
            self._end_epoch(math.ceil(self.iteration / self.iters_per_epoch), {}, time.time())
        final = self.history.get("val/miou_ema", [(0, float("nan"))])[-1][1]
        metrics = {"best_miou_ema": self.best["miou_ema"], "best_miou_student": self.best["miou_student"], "final_miou_ema": final}
        self.tracker.log_metrics(metrics, step=self.iteration)
        self._write_figures()
        return TrainResult(self.output_dir, self.best_path, self.latest_path, metrics, self.tracker.run_id, self.history)

    def _write_figures(self) -> None:
        figures = self.output_dir / "figures"
        figures.mkdir(parents=True, exist_ok=True)
        plot_training_curves(self.history, figures / "training_curves.png")
        self.tracker.log_artifact(figures / "training_curves.png", "figures")
        confusion = getattr(self, "best_confusion", None)
        if confusion is not None:
            plot_confusion_matrix(confusion, self.class_names, figures / "confusion_matrix.png")
            self.tracker.log_artifact(figures / "confusion_matrix.png", "figures")


def train(cfg: ExperimentConfig, tracker: Tracker | None = None, progress: bool = True) -> TrainResult:
    """Train ``cfg.method`` on ``cfg.dataset``; resumes from ``<output_dir>/checkpoints/latest.pth``."""
    return Trainer(cfg, tracker, progress).fit()
