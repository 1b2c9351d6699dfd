"""The command line's jobs: one experiment config (or foundation recipe) in, one tracked result out.
``unimatch``'s subcommands parse their arguments and print; everything else happens here."""

from __future__ import annotations

from pathlib import Path

from ..apps.export import Exported, check_export_output, export_model
from ..apps.foundation import FoundationConfig, train_foundation
from ..apps.mae import pretrained_encoder
from ..apps.predict import predict_folder
from ..config import ExperimentConfig
from ..data import DataCheck, palette
from ..data import class_names as dataset_class_names
from ..engine import resolve_device
from ..engine.data import extra_unlabeled_samples, prepare_splits
from ..engine.evaluate import load_model_source, prepare_evaluation, run_evaluation
from ..engine.inference import EvalResult
from ..engine.probe import ProbeSettings
from ..errors import ConfigError
from ..tasks import task_for
from ..tracking import log_to_run, resolve_tracking_uri, tracker_from_config
from .units import ProbeReport, add_to_summary, foundation_tracker, probe_features


def cache_tracked_data(data_dir: Path) -> str:
    """Store the data that ``make-data`` wrote in the local DVC cache when ``<data_dir>.dvc`` tracks it and it is
    exactly what that file pins (so a fresh clone's ``dvc status`` is clean, and ``dvc checkout`` can restore it);
    different data (another seed) is left alone. Returns what it did, in a line for the user."""
    dvc_file = data_dir.with_name(data_dir.name + ".dvc")
    if not dvc_file.is_file():
        return f"{dvc_file}: not found; the data stays out of the DVC cache"
    from dvc.repo import Repo  # imported on use: DVC is slow to import and only make-data needs it here

    with Repo(str(dvc_file.parent)) as repo:
        changes = repo.status(targets=[str(dvc_file)]).get(str(dvc_file), [])
        outputs = {state for change in changes for state in change.get("changed outs", {}).values()}
        if outputs - {"not in cache"}:
            return f"{data_dir} differs from what {dvc_file} pins ({', '.join(sorted(outputs))}): not cached"
        if outputs:
            repo.commit(str(dvc_file), force=True)  # same hash (checked above): only fills the cache
    return f"{data_dir} is what {dvc_file} pins, and is in the DVC cache"


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


# issue 30: export
def export(
    cfg: ExperimentConfig, source: str, weights: str, format_name: str, output: str
) -> tuple[Exported, str | None]:
    """A checkpoint or MLflow model exported to ``output`` (ONNX or TorchScript, dynamic height and width),
    verified against PyTorch, its SHA-256 beside it and logged to the training's MLflow run (``exports/``)
    when the config's store holds that run; the exported file and that run's id (None: not logged)."""
    check_export_output(output, format_name)  # before minutes of loading and tracing
    model, run_id = load_model_source(cfg, source, weights)
    task = task_for(cfg.dataset.name)
    metadata = {
        "source": str(source),
        "dataset": cfg.dataset.name,
        "encoder": cfg.model.encoder,
        "input_images": task.input_images,
        "class_names": dataset_class_names(cfg.dataset),
        "palette": palette(cfg.dataset.nclass).tolist(),
    }
    exported = export_model(model, format_name, output, cfg.dataset.crop_size, metadata, task.input_images)
    uri = resolve_tracking_uri(cfg.tracking.uri)
    logged = cfg.tracking.enabled and log_to_run(uri, run_id, exported.sha256, "exports")
    return exported, run_id if logged else None
