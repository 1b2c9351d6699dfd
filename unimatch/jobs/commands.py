"""The command line's jobs: one experiment config (or foundation recipe) in, one tracked result out.
``unimatch``'s subcommands parse their arguments and print; everything else happens here."""

from __future__ import annotations

from pathlib import Path

from ..apps.foundation import FoundationConfig, train_foundation
from ..apps.mae import pretrained_encoder
from ..apps.predict import predict_folder
from ..config import ExperimentConfig
from ..data import DataCheck
from ..engine import resolve_device
from ..engine.data import extra_unlabeled_samples, prepare_splits
from ..engine.evaluate import load_model_source, prepare_evaluation, run_evaluation
from ..engine.inference import EvalResult
from ..engine.probe import ProbeSettings
from ..errors import ConfigError
from ..tasks import task_for
from ..tracking import tracker_from_config
from .units import ProbeReport, add_to_summary, foundation_tracker, probe_features


def check_data(cfg: ExperimentConfig, decode: bool, progress: bool = True) -> DataCheck:
    """Every file of the experiment's splits (and extra unlabeled pools) checked: headers, or full decodes."""
    root, task = Path(cfg.dataset.root), task_for(cfg.dataset.name)
    splits = prepare_splits(cfg)
    unlabeled = task.read_split(
        splits.unlabeled, root, require_masks=False, allow_empty=True
    ) + extra_unlabeled_samples(cfg)
    return task.check_training_data(
        task.read_split(splits.labeled, root),
        unlabeled,
        task.read_split(splits.val, root),
        cfg.dataset.nclass,
        "decode" if decode else "headers",
        progress=progress,
    )


def pretrain_encoder(cfg: ExperimentConfig, progress: bool = True) -> Path:
    """The self-supervised encoder of ``cfg.pretrain`` as its own MLflow run (``kind=pretrain``)."""
    if cfg.pretrain.method == "none":
        raise ConfigError("pretrain.method is 'none'; set pretrain.method=mae")
    cfg.tracking.run_name = cfg.tracking.run_name or f"pretrain-{cfg.pretrain.method}-{cfg.model.encoder}"
    with tracker_from_config(cfg, tags={"kind": "pretrain"}) as tracker:
        return pretrained_encoder(cfg, tracker, progress=progress)


def foundation_encoder(
    settings: FoundationConfig, uri: str | None, tracked: bool = True, progress: bool = True, probe: bool = True
) -> tuple[Path, ProbeReport | None]:
    """The foundation encoder of ``settings``, as an MLflow run of experiment ``foundation`` unless not
    ``tracked``, and (``probe``) its feature-quality probe, whose table joins the summary JSON."""
    name = f"foundation-{settings.route}-{settings.encoder}"
    with foundation_tracker(name, {"kind": "foundation"}, uri, tracked) as tracker:
        path = train_foundation(settings, tracker, progress=progress)
        report = probe_features(settings.encoder, str(path), settings.probe, tracker) if probe else None
    if report:
        add_to_summary(report, path.with_suffix(".json"))
    return path, report


def probe_weights(
    encoder: str, weights: str | None, settings: ProbeSettings, uri: str | None, tracked: bool = True
) -> ProbeReport:
    """The feature-quality probe of ``weights`` (None: random initialisation) as an MLflow run of experiment
    ``foundation`` (tag ``kind=probe``) unless not ``tracked``."""
    name = f"probe-{Path(weights).stem if weights else 'random-init'}-{encoder}"
    with foundation_tracker(name, {"kind": "probe"}, uri, tracked) as tracker:
        return probe_features(encoder, weights, settings, tracker)


def evaluate(cfg: ExperimentConfig, source: str, split: str | None, weights: str, progress: bool = True) -> EvalResult:
    """mIoU of a checkpoint or MLflow model on ``split`` (default: the val split), as an evaluation run
    nested under the run that trained it; nothing is opened until the model and the split have loaded."""
    prepared = prepare_evaluation(cfg, source, split, weights)
    tags = {"kind": "eval", "checkpoint": str(source)}
    with tracker_from_config(cfg, tags=tags, parent_run_id=prepared.run_id) as tracker:
        return run_evaluation(cfg, prepared, tracker, progress=progress)


def predict(
    cfg: ExperimentConfig,
    source: str,
    weights: str,
    input_dir: str,
    output_dir: str,
    limit: int | None = None,
    masks_dir: str | None = None,
    second_dir: str | None = None,
    progress: bool = True,
) -> list[Path]:
    """Label maps and overlays of a checkpoint or MLflow model on the images under ``input_dir`` (with
    ``second_dir``: the B images of change-detection pairs)."""
    pairs = task_for(cfg.dataset.name).input_images == 2
    if pairs != (second_dir is not None):
        wanted = (
            "compares image pairs: give the B images with --input-b" if pairs else "takes single images: drop --input-b"
        )
        raise ConfigError(f"--input-b: the model of dataset.name={cfg.dataset.name} {wanted}")
    device = resolve_device(cfg.train.device)
    model = load_model_source(cfg, source, weights)[0].to(device)
    return predict_folder(
        model, input_dir, output_dir, cfg, device, limit, progress, masks_dir=masks_dir, second_dir=second_dir
    )
