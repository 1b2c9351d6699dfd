"""The one training engine every method runs on."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..methods import LabeledBatch, StepLosses, UnlabeledBatch, build_method
from ..methods.base import Progress
from ..settings import scoring_threshold
from ..tasks import task_for
from ..tracking import Tracker
from ..utils.atomic import check_output_dir
from ..utils.progress import progress_bar
from .checkpoint import CheckpointKeeper, TrainingError, capture_rng, recorded_run_id, restore_rng, seed_everything
from .classification import classification_training_data
from .data import training_data
from .distributed import init_distributed, sync_batch_norm, weights_checksum, wrap_for_training
from .ema import ema_decay, update_ema
from .inference import EvalResult, PseudoLabelQuality, evaluate, pseudo_label_quality
from .losses import build_labeled_loss
from .optim import build_optimizer, set_lr
from .setup import autocast_dtype, build_model, compile_blocks, describe, make_loader, optimize_for_device
from .stream import StreamPositions

log = logging.getLogger(__name__)
# Tasks whose training data are not the segmentation split files (their own assembly, by task name).
TASK_DATA = {"classification": classification_training_data}


@dataclass
class TrainResult:
    output_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: dict[str, float]
    run_id: str | None
    history: dict[str, list[tuple[int, float]]] = field(repr=False, default_factory=dict)
    iterations: int = 0
    class_names: list[str] = field(default_factory=list)
    best_confusion: np.ndarray | None = field(
        repr=False, default=None
    )  # the EMA's, when this session saw its best epoch
    registered_model: str | None = None  # models:/NAME/VERSION of the best EMA model, set by the job that publishes it

    def summary(self) -> str:
        return f"best EMA mIoU {self.metrics['best_miou_ema']:.2f} | checkpoint {self.best_checkpoint}"


def micro_batches(
    labeled: LabeledBatch, unlabeled: UnlabeledBatch | None, count: int
) -> list[tuple[LabeledBatch, UnlabeledBatch | None]]:
    """An optimizer step's batch as ``count`` micro-batches of consecutive samples (train.accumulate).

    A micro-batch is what a method's step sees, as one rank's batch is under DDP: CutMix partners are
    paired inside it (sample i with its micro-batch's B-1-i), the unlabeled loss is normalised by its own
    non-padding pixels and the labeled cross-entropy averages its own labeled pixels, then the
    micro-batches' losses are averaged with equal weights; the dropout masks are drawn per micro-batch.
    So the update equals one large batch's wherever these coincide (README "Fit your hardware")."""
    if count == 1:
        return [(labeled, unlabeled)]
    parts = [LabeledBatch(*fields) for fields in zip(labeled.image.chunk(count), labeled.mask.chunk(count))]
    if unlabeled is None:
        return [(part, None) for part in parts]
    views = zip(*(getattr(unlabeled, field.name).chunk(count) for field in dataclasses.fields(unlabeled)))
    return [(part, UnlabeledBatch(*fields)) for part, fields in zip(parts, views)]


def mean_losses(parts: list[StepLosses]) -> StepLosses:
    """The micro-batches' losses averaged, detached (for the log and the finiteness check)."""
    if len(parts) == 1:
        return parts[0]
    return StepLosses(
        *(
            torch.stack([getattr(part, field.name).detach() for part in parts]).mean()
            for field in dataclasses.fields(StepLosses)
        )
    )


def _read_later(flag: torch.Tensor) -> Callable[[], bool]:
    """Start copying a device boolean to the host; the returned function waits for that copy only, not
    for the GPU work queued after it."""
    host = flag.to("cpu", non_blocking=True)
    copied = torch.cuda.Event() if flag.is_cuda else None
    if copied is not None:
        copied.record()

    def read() -> bool:
        if copied is not None:
            copied.synchronize()
        return bool(host)

    return read


class Trainer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        tracker: Tracker | None = None,
        progress: bool = True,
        encoder_weights: str | None = None,
    ):
        """``encoder_weights``: a pre-trained encoder that replaces ``cfg.model.weights`` (the job resolves it)."""
        self.cfg = cfg
        # Under torchrun every rank trains; rank 0 alone tracks, shows progress and writes files.
        self.dist = init_distributed(cfg.train.device)
        self.tracker = (tracker or Tracker()) if self.dist.is_main else Tracker()
        self.progress = progress and self.dist.is_main
        self.device = self.dist.device
        self.amp_dtype = autocast_dtype(cfg.train.amp, self.device)
        self.output_dir = check_output_dir(cfg.output_dir, "output_dir")
        self.checkpoints = CheckpointKeeper(self.output_dir / "checkpoints", cfg.train.snapshots)
        seed_everything(cfg.train.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        labeled_loss = build_labeled_loss(cfg.train.labeled_loss, cfg.train.ohem_threshold, cfg.train.ohem_min_kept)
        self.method = build_method(cfg.method, labeled_loss)
        self.task = task_for(cfg.dataset.name)
        if self.task.name not in self.method.tasks:
            raise ConfigError(
                f"method.name: {cfg.method.name} is not defined for {self.task.name} "
                f"(dataset.name={cfg.dataset.name}); it supports {', '.join(self.method.tasks)}"
            )
        data = TASK_DATA.get(self.task.name, training_data)(cfg, self.task, self.method, self.dist, self.progress)
        self.class_names, self.val_set, self.pseudo_set, self.streams = (
            data.class_names,
            data.val_set,
            data.pseudo_set,
            data.streams,
        )
        self.sizes, self.iters_per_epoch, self.total_iters = data.sizes, data.iters_per_epoch, data.total_iters
        model_cfg = cfg.model if encoder_weights is None else cfg.model.model_copy(update={"weights": encoder_weights})
        model = build_model(model_cfg, cfg.dataset.nclass, cfg.dataset.crop_size, cfg.method, task=self.task)
        if model_cfg.activation_checkpointing:
            try:
                model.checkpoint_activations()
            except ValueError as error:  # an encoder without blocks (a CNN)
                raise ConfigError(f"model.activation_checkpointing: {error} (encoder {model_cfg.encoder})") from None
        self.model = sync_batch_norm(optimize_for_device(model, self.device), self.dist)
        self.method.on_device(self.model, model_cfg, self.device)
        self.step_module = wrap_for_training(self.model, self.method, self.dist)  # DDP: rank 0's weights everywhere
        # A method with a teacher setting keeps an EMA of the student, evaluated beside it; the teacher that
        # makes the pseudo labels is that EMA or, with method.teacher=student (BEiT, change detection: the
        # released code), the student itself while the EMA is still kept and evaluated.
        teacher_setting = getattr(cfg.method, "teacher", None) if self.uses_unlabeled else None
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if teacher_setting else None
        self.teacher = self.ema if teacher_setting == "ema" else self.model
        if cfg.train.compile:  # after the deep copy: a copied compiled block would still call the student's
            compile_blocks(self.model)
            if self.ema is not None:
                compile_blocks(self.ema)
        self.optimizer = build_optimizer(self.model, cfg.train)
        self.iteration = 0
        self.bad_steps = 0
        # best mIoU per model; for a task whose headline is another metric (change detection: IoU_c) also
        # that metric's best and the task's other metrics at that epoch (Table 14: IoU_c and its OA)
        self.best = {
            f"{metric}_{model}": -1.0 for metric in {"miou", self.task.headline} for model in ("ema", "student")
        }
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.best_confusion: np.ndarray | None = None
        self.step_seconds: list[float] = []  # compute time of each step of this process's run
        self._resume_if_possible()
        if self.dist.enabled:
            self._check_replicas()  # every rank resumed from the same checkpoint, or none did
        self._seed_rank_stream()

    @property
    def uses_unlabeled(self) -> bool:
        return self.method.uses_unlabeled

    def _iterators(self) -> dict[str, Any]:
        workers, rank, world = self.cfg.train.num_workers, self.dist.rank, self.dist.world
        return {
            name: iter(
                make_loader(
                    stream,
                    StreamPositions(self.iteration, self.total_iters, batch, rank, world),
                    batch,
                    workers,
                    self.device,
                    self.cfg.train.seed,
                )
            )
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
    def _state(self) -> dict[str, Any]:
        """What latest.pth holds: everything to continue this run."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "iteration": self.iteration,
            "bad_steps": self.bad_steps,
            "best": dict(self.best),
            "history": {k: [list(p) for p in v] for k, v in self.history.items()},
            "rng": capture_rng(),
            "config": self.cfg.to_dict(),
            "run_id": self.tracker.run_id,
            "class_names": self.class_names,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def _weights(self) -> dict[str, Any]:
        """What best.pth and the snapshots hold: student and EMA weights (the student's when no EMA is kept)."""
        return {
            "model": self.model.state_dict(),
            "ema": (self.ema or self.model).state_dict(),
            "config": self.cfg.to_dict(),
            "class_names": self.class_names,
            "iteration": self.iteration,
            "best": dict(self.best),
            "run_id": self.tracker.run_id,
        }

    def _resume_if_possible(self) -> None:
        """Continue from latest.pth, or from latest.prev.pth when the newest is missing or unusable."""
        if self.dist.is_main:
            self.checkpoints.remove_stale_temps()
        found = (
            self.checkpoints.resume(self.cfg.to_dict(), set_aside=self.dist.is_main) if self.cfg.train.resume else None
        )
        if found is None:
            return
        state, path = found
        self.model.load_state_dict(state["model"])
        if "ema" in state and self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.iteration = int(state["iteration"])
        self.bad_steps = int(state.get("bad_steps", 0))  # absent from checkpoints of earlier versions
        self.best = dict(state["best"])
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}
        restore_rng(state["rng"])
        log.warning("resuming %s from iteration %d/%d", path, self.iteration, self.total_iters)

    # ----------------------------------------------------------------- training
    def _checkpoint(self, best: bool = False) -> None:
        """Rank 0 saves (best.pth first when ``best``, then latest.pth), once the ranks are checked to hold
        the same weights; then every rank re-seeds its random stream."""
        if self.dist.enabled:
            self._check_replicas()
        if self.dist.is_main:
            if best:
                self.checkpoints.save_weights(self.checkpoints.best, self._weights())
            self.checkpoints.save_latest(self._state())
        self._seed_rank_stream()

    def _check_replicas(self) -> str:
        """The weights checksum (student and EMA), or a TrainingError when it differs between ranks."""
        ema = self.ema.state_dict().values() if self.ema is not None else ()
        checksums = self.dist.gather(weights_checksum(chain(self.model.state_dict().values(), ema)))
        if len(set(checksums)) > 1:
            raise TrainingError(
                f"the ranks' weights differ at iteration {self.iteration} (checksums {checksums}): they "
                "must start from the same checkpoint (output_dir on a filesystem every node shares) "
                "and receive identical gradient and EMA updates"
            )
        return f"{checksums[self.dist.rank] % 2**64:016x}"

    def _seed_rank_stream(self) -> None:
        """Under DDP each rank draws its own channel-dropout masks: its RNG is re-seeded from (seed, rank,
        iteration) at start, on resume and at every checkpoint, so that a resumed run draws what an
        uninterrupted one would (a checkpoint holds rank 0's RNG state only)."""
        if self.dist.enabled:
            seed_everything(
                int(np.random.SeedSequence([self.cfg.train.seed, self.dist.rank, self.iteration]).generate_state(1)[0])
            )

    def train_step(self, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None) -> tuple[StepLosses | None, float]:
        """One optimizer step at ``self.iteration`` over the step's batch, in ``train.accumulate`` micro-batches:
        its losses averaged over them (None if skipped as non-finite) and lr."""
        lr = set_lr(self.optimizer, self.iteration, self.total_iters, self.cfg.train)
        self.method.progress = Progress(self.iteration, self.total_iters, self.iters_per_epoch)
        self.model.train()
        self._zero_grad()
        micro = micro_batches(labeled, unlabeled, self.cfg.train.accumulate)
        parts = []
        for index, (part_labeled, part_unlabeled) in enumerate(micro):
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                part = StepLosses(*self.step_module(self.teacher, part_labeled, part_unlabeled))
            parts.append(part)
            if index == len(micro) - 1:  # read while the last backward pass is queued on the GPU
                losses = mean_losses(parts)
                finite = _read_later(self.dist.all_true(torch.isfinite(losses.loss)))
            # The mean of the micro-batches' losses, as DDP averages the ranks'. Every micro-batch's backward
            # all-reduces under DDP: no_sync() is broken with static_graph (pytorch/pytorch#187732).
            (part.loss / len(micro)).backward()  # even when non-finite: every rank must join the all-reduce
        if not finite():  # the step's one host read
            self._zero_grad()
            self.bad_steps += 1
            if self.bad_steps > self.cfg.train.max_bad_steps:
                raise TrainingError(
                    f"non-finite loss ({losses.loss.item()}) at iteration {self.iteration}; {self.checkpoints.kept()} "
                    f"(train.max_bad_steps={self.cfg.train.max_bad_steps} bad steps allowed; lower train.lr?)"
                )
            log.warning("skipping iteration %d: non-finite loss", self.iteration)
            return None, lr
        self.optimizer.step()
        if self.ema is not None:
            update_ema(self.model, self.ema, ema_decay(self.iteration, self.cfg.method.ema_decay))
        return losses, lr

    def _zero_grad(self) -> None:
        """Under DDP the gradients are DDP's bucket views (``wrap_for_training``), zeroed in place: a new
        gradient tensor would be copied into its bucket at every step, and warned about where its strides
        differ from the bucket's."""
        self.optimizer.zero_grad(set_to_none=not self.dist.enabled)

    def _record(self, name: str, step: int, value: float) -> None:
        self.history.setdefault(name, []).append((step, value))

    def _log_window(self, window: list, lr: float) -> dict[str, float]:
        stacked = (
            torch.stack([torch.stack((l.loss.detach(), l.labeled, l.unlabeled, l.mask_ratio)) for l in window])
            .float()
            .mean(0)
        )
        stacked = self.dist.mean(stacked).tolist()  # over ranks too: the global batch's values
        metrics = dict(zip(("train/loss", "train/loss_labeled", "train/loss_unlabeled", "train/mask_ratio"), stacked))
        metrics["train/lr"] = lr
        for name, value in metrics.items():
            self._record(name, self.iteration, value)
        # Compute time of a step, data loading excluded; MLflow only (timings would make the DVC curves differ).
        timing = {"train/step_seconds": float(np.mean(self.step_seconds[-len(window) :]))} if self.step_seconds else {}
        self.tracker.log_metrics({**metrics, **timing}, step=self.iteration)
        return metrics

    def evaluate_models(self) -> dict[str, EvalResult]:
        """mIoU of the student and the EMA teacher; under DDP each rank predicts every world-th image and
        the confusion matrices are summed, so every rank gets the full validation result."""
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world
        models = {"student": self.model} if self.ema is None else {"student": self.model, "ema": self.ema}
        shard = Subset(self.val_set, range(rank, len(self.val_set), world)) if world > 1 else self.val_set
        loader = DataLoader(
            shard,
            batch_size=self.task.eval_batch_size,
            num_workers=min(cfg.train.num_workers, 2),
            pin_memory=self.device.type == "cuda",
        )
        return {
            name: evaluate(
                model,
                loader,
                cfg.dataset.nclass,
                self.class_names,
                cfg.eval.mode,
                cfg.eval.window or cfg.dataset.crop_size,
                cfg.eval.stride_ratio,
                cfg.eval.batch_size,
                self.device,
                self.amp_dtype,
                distributed=self.dist.enabled,
                max_tokens=cfg.eval.max_tokens,
            )
            for name, model in models.items()
        }

    def score_pseudo_labels(self) -> PseudoLabelQuality | None:
        """The teacher's pseudo-label quality on the unlabeled images with ground truth (sharded like
        evaluation under DDP); None when there are none."""
        if self.pseudo_set is None:
            return None
        rank, world = self.dist.rank, self.dist.world
        shard = Subset(self.pseudo_set, range(rank, len(self.pseudo_set), world)) if world > 1 else self.pseudo_set
        loader = DataLoader(
            shard,
            batch_size=self.task.eval_batch_size,
            num_workers=min(self.cfg.train.num_workers, 2),
            pin_memory=self.device.type == "cuda",
        )
        threshold = scoring_threshold(self.cfg.method)
        return pseudo_label_quality(
            self.teacher,
            loader,
            threshold,
            self.cfg.dataset.nclass,
            self.device,
            self.amp_dtype,
            self.dist.enabled,
            self.class_names,
            self.task.background_class,
        )

    def _end_epoch(self, epoch: int, window_metrics: dict[str, float], started: float) -> str:
        results = self.evaluate_models()
        results.setdefault("ema", results["student"])
        scores = {name: {"miou": result.miou, **self.task.scores(result.confusion)} for name, result in results.items()}
        metrics = {f"val/{metric}_{name}": value for name, values in scores.items() for metric, value in values.items()}
        metrics["epoch"] = epoch
        metrics.update(
            {f"val/iou_ema/{name}": iou for name, iou in results["ema"].per_class_iou.items() if math.isfinite(iou)}
        )
        quality = self.score_pseudo_labels()
        if quality is not None:
            metrics.update(quality.metrics())
            for name, value in quality.metrics().items():
                self._record(name, epoch, value)
        self.tracker.log_metrics(metrics, step=self.iteration)
        headline = self.task.headline
        for name in ("student", "ema"):
            self._record(f"val/miou_{name}", epoch, results[name].miou)
            if headline != "miou":
                self._record(f"val/{headline}_{name}", epoch, scores[name][headline])
        improved = scores["ema"][headline] > self.best[f"{headline}_ema"]  # best.pth: the EMA's best headline epoch
        for name in ("student", "ema"):
            self.best[f"miou_{name}"] = max(self.best[f"miou_{name}"], results[name].miou)
            if headline != "miou" and scores[name][headline] > self.best[f"{headline}_{name}"]:
                self.best.update(
                    {f"{metric}_{name}": value for metric, value in scores[name].items() if metric != "miou"}
                )
        if improved:
            self.best_confusion = results["ema"].confusion
        self._checkpoint(best=improved)
        losses = {
            key: window_metrics.get(f"train/{key}", float("nan")) for key in ("loss", "loss_labeled", "loss_unlabeled")
        }
        pseudo = ""
        if quality:
            shares = [("precision", quality.precision)]
            if self.task.background_class is not None:  # object shares exist only beside a background class
                shares += [("objects", quality.object_precision), ("fg", quality.foreground_recall)]
            pseudo = " | pseudo " + " ".join(f"{name} {value:.1f}" for name, value in shares)
        best = f"{self.best[f'{headline}_ema']:.1f}{' *' if improved else ''}"
        return (
            f"epoch {epoch}/{self.cfg.train.epochs} | loss {losses['loss']:.3f} "
            f"(l {losses['loss_labeled']:.3f} u {losses['loss_unlabeled']:.3f}) "
            f"| mask {window_metrics.get('train/mask_ratio', float('nan')):.2f}{pseudo}"
            f" | {'mIoU' if headline == 'miou' else headline} student {scores['student'][headline]:.1f} "
            f"ema {scores['ema'][headline]:.1f} (best {best}) | {time.time() - started:.0f}s"
        )

    def fit(self) -> TrainResult:
        cfg = self.cfg
        self.tracker.log_params(
            {
                "data.labeled_images": self.sizes["labeled"],
                "data.unlabeled_images": self.sizes["unlabeled"],
                "data.val_images": self.sizes["val"],
                "data.iters_per_epoch": self.iters_per_epoch,
                "data.total_iters": self.total_iters,
            }
        )
        log.info(
            "%s: %s, %d iterations (%d per epoch) on %s x %d",
            describe(cfg),
            self.sizes,
            self.total_iters,
            self.iters_per_epoch,
            self.device,
            self.dist.world,
        )
        iterators = self._iterators()
        window, metrics, lr = [], {}, 0.0
        started = time.time()
        snapshots = self.checkpoints.snapshot_iterations(self.total_iters)
        bar = progress_bar(
            total=self.total_iters, initial=self.iteration, desc=cfg.method.name, unit="it", disable=not self.progress
        )
        while self.iteration < self.total_iters:
            labeled, unlabeled = self._next_batches(iterators)
            step_started = time.perf_counter()
            losses, lr = self.train_step(labeled, unlabeled)
            self.step_seconds.append(time.perf_counter() - step_started)
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
            if self.iteration in snapshots and self.dist.is_main:
                self.checkpoints.save_weights(
                    self.checkpoints.snapshot(snapshots[self.iteration]), self._weights()
                )  # e.g. ST++'s teacher at T/3, 2T/3, T
            if epoch_done and (epoch % cfg.train.eval_every == 0 or self.iteration == self.total_iters):
                summary = self._end_epoch(epoch, metrics, started)
                if self.dist.is_main:
                    bar.write(summary)
            elif epoch_done or self.iteration % cfg.train.checkpoint_every == 0:
                self._checkpoint()
        bar.close()
        return self._finish()

    def _finish(self) -> TrainResult:
        if self.dist.from_main(
            not self.checkpoints.best.exists()
        ):  # resumed after the last evaluation, or never evaluated
            self._end_epoch(math.ceil(self.iteration / self.iters_per_epoch), {}, time.time())
        final = self.history.get("val/miou_ema", [(0, float("nan"))])[-1][1]
        metrics = {
            **{f"best_{key}": value for key, value in self.best.items()},
            "final_miou_ema": final,
            **self._size_and_speed(),
        }
        self.tracker.log_metrics(metrics, step=self.iteration)
        if self.dist.enabled:
            checksum = self._check_replicas()  # the same on every rank, else a TrainingError
            log.info("weights checksum %s on all %d ranks", checksum, self.dist.world)
        return TrainResult(
            self.output_dir,
            self.checkpoints.best,
            self.checkpoints.latest,
            metrics,
            self.tracker.run_id,
            self.history,
            self.iteration,
            self.class_names,
            self.best_confusion,
        )

    def _size_and_speed(self) -> dict[str, float]:
        """Parameter counts (millions) and the mean compute time of a training step (Table 9's columns)."""
        model = self.model
        sizes = {
            "params_encoder_m": sum(p.numel() for p in model.encoder.parameters()) / 1e6,
            "params_decoder_m": sum(p.numel() for m in model.decoder_modules() for p in m.parameters()) / 1e6,
        }
        # Without the first steps, which include warm-up (allocator, cuDNN autotuning, compilation).
        steps = self.step_seconds[min(len(self.step_seconds) // 10, 20) :]
        return {**sizes, "mean_step_seconds": float(np.mean(steps))} if steps else sizes


def resumable_run_id(cfg: ExperimentConfig) -> str | None:
    """The MLflow run of the interrupted training that ``cfg`` would resume (None: it starts afresh)."""
    return recorded_run_id(Path(cfg.output_dir) / "checkpoints" / "latest.pth") if cfg.train.resume else None
