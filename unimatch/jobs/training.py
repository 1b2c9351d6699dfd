"""Training as a job: the tracked run around the engine's :class:`~unimatch.engine.Trainer`.

The job resolves the pre-trained encoder (the one place the pre-training rule is written), trains in this
process or in torchrun's ranks, then writes the run's figures and publishes its best EMA model.
"""

from __future__ import annotations

import dataclasses
import logging

from ..apps import serving
from ..apps.mae import pretrained_encoder
from ..apps.serving import ServingSettings
from ..config import ExperimentConfig, config_digest
from ..engine import Trainer, TrainResult, resumable_run_id
from ..engine.data import ensure_dataset_root
from ..engine.distributed import init_distributed, launched_by_torchrun, shutdown_distributed
from ..engine.evaluate import checkpoint_model
from ..figures import plot_confusion_matrix, plot_training_curves, write_curves
from ..tasks import task_for
from ..tracking import Tracker, tracker_from_config
from ..utils.atomic import check_output_dir
from .launch import launch_torchrun

log = logging.getLogger(__name__)


def pretraining_needed(cfg: ExperimentConfig) -> bool:
    """Self-supervised pre-training applies when ``pretrain.method`` is set and no weights are given:
    an explicit ``model.weights`` or ``model.init_checkpoint`` always wins."""
    return cfg.pretrain.method != "none" and not cfg.model.weights and not cfg.model.init_checkpoint


def encoder_weights(
    cfg: ExperimentConfig, tracker: Tracker, encoder: str | None = None, progress: bool = True
) -> str | None:
    """The pre-trained encoder ``cfg`` trains from: ``encoder`` (the pre-training job's file) when given, else
    the cached one, pre-trained now (into ``tracker``) on a miss; None when pre-training does not apply."""
    if not pretraining_needed(cfg):
        return None
    path = str(encoder or pretrained_encoder(cfg, tracker, progress))
    tracker.log_params({"pretrain.encoder": path})
    return path


def train(
    cfg: ExperimentConfig, tracker: Tracker | None = None, progress: bool = True, encoder: str | None = None
) -> TrainResult:
    """Train ``cfg`` in this process (one rank of it under a torchrun launch) into ``tracker``, resuming from
    ``<output_dir>/checkpoints/latest.pth``; rank 0 then writes the figures and publishes the model."""
    tracker = tracker or Tracker()
    ctx = init_distributed(cfg.train.device)
    weights = encoder_weights(cfg, tracker, encoder, progress) if ctx.is_main else None
    ctx.barrier()  # rank 0 pre-trains (or finds the cache) first; the other ranks then read the file
    weights = weights or encoder_weights(cfg, Tracker(), encoder, progress=False)
    result = Trainer(cfg, tracker, progress, weights).fit()
    return publish(cfg, result, tracker) if ctx.is_main else result


def run_training(
    cfg: ExperimentConfig,
    tags: dict[str, str],
    run_id: str | None = None,
    tracking_uri: str | None = None,
    encoder: str | None = None,
    progress: bool = True,
) -> TrainResult | None:
    """``cfg`` trained as one tracked run (``run_id``, else the interrupted run a checkpoint records, else a
    new one); with ``train.gpus`` > 1 in that many processes under torchrun (``tracking_uri``: where rank 0
    logs). None on the ranks other than 0 of a torchrun launch that started this process."""
    check_output_dir(cfg.output_dir, "output_dir")  # before a run is opened: a FAILED run would be noise
    ensure_dataset_root(cfg)  # likewise: a typo'd dataset.root fails before anything is written
    run_id = run_id or resumable_run_id(cfg)
    # issue 29: several nodes. Elastic (no node_rank): rank 0 may start on any node and opens the run there;
    # static: node 0 holds rank 0 and opens the run here, as on one node; the other nodes only train.
    node_rank = cfg.train.node_rank
    if cfg.train.nnodes > 1 and not node_rank == 0 and not launched_by_torchrun():
        weights = encoder_weights(cfg, Tracker(), encoder, progress)
        result = launch_torchrun(cfg, run_id, tracking_uri, progress, weights, tags if node_rank is None else None)
        if result is None:  # this node's ranks were not rank 0
            return None
        with tracker_from_config(cfg, tags=tags, resume_run_id=result.run_id) as tracker:
            return publish(cfg, result, tracker)
    if (cfg.train.gpus > 1 or cfg.train.nnodes > 1) and not launched_by_torchrun():
        with tracker_from_config(cfg, tags=tags, resume_run_id=run_id) as tracker:
            weights = encoder_weights(cfg, tracker, encoder, progress)
            result = launch_torchrun(cfg, tracker.run_id, tracking_uri, progress, weights)
            return publish(cfg, result, tracker)
    ctx = init_distributed(cfg.train.device)
    try:
        with tracker_from_config(cfg, tags=tags, resume_run_id=run_id) if ctx.is_main else Tracker() as tracker:
            result = train(cfg, tracker, progress, encoder)
    finally:
        shutdown_distributed()
    return result if ctx.is_main else None


def publish(cfg: ExperimentConfig, result: TrainResult, tracker: Tracker) -> TrainResult:
    """``result`` with its figures written and logged and its best EMA model published."""
    write_figures(result, tracker)
    return dataclasses.replace(result, registered_model=publish_model(cfg, result, tracker))


def write_figures(result: TrainResult, tracker: Tracker) -> None:
    figures = result.output_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_training_curves(result.history, figures / "training_curves.png")
    tracker.log_artifact(figures / "training_curves.png", "figures")
    for path in write_curves(result.history, result.output_dir / "curves"):  # what `dvc plots diff` overlays
        tracker.log_artifact(path, "curves")
    if result.best_confusion is not None:
        plot_confusion_matrix(result.best_confusion, result.class_names, figures / "confusion_matrix.png")
        tracker.log_artifact(figures / "confusion_matrix.png", "figures")


def publish_model(cfg: ExperimentConfig, result: TrainResult, tracker: Tracker) -> str | None:
    """The best EMA weights as the run's MLflow model (PyTorch flavour, and a ``python_function`` flavour
    that takes images of any size: :mod:`unimatch.apps.serving`), registered (``tracking.log_model``); the
    registered version's URI, None when nothing was registered (now)."""
    if not cfg.tracking.log_model or tracker.run_id is None:
        return None
    crop, inputs = cfg.dataset.crop_size, task_for(cfg.dataset.name).input_images
    best = result.metrics["best_miou_ema"]
    settings = ServingSettings.from_config(cfg, result.class_names, inputs)
    metadata = {
        "class_names": result.class_names,
        "nclass": cfg.dataset.nclass,
        "dataset": cfg.dataset.name,
        "method": cfg.method.name,
        "encoder": cfg.model.encoder,
        "crop_size": crop,
        "iteration": result.iterations,
        "best_miou_ema": best,
        "config_digest": config_digest(cfg),
        "input": f"pyfunc: {settings.input}; PyTorch flavour: float32 (B, {3 * inputs}, H, W), {inputs} RGB "
        "image(s) normalised with the ImageNet mean and std, stacked on channels -> (B, nclass, H, W) logits",
        **settings.metadata(),
    }
    model = checkpoint_model(cfg, result.best_checkpoint, "ema").eval()
    if not tracker.log_model(model, metadata, serving, **serving.log_options(settings, crop)):
        return tracker.registered_model_uri()  # logged by an earlier, finished attempt
    name = cfg.tracking.registered_model or cfg.tracking.experiment
    version = tracker.register_model(name, best, cfg.method.name)
    log.info("model logged and registered as %s version %s", name, version)
    return f"models:/{name}/{version}"
