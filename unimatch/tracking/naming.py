"""The naming rules of tracked runs, which the engine, the jobs and :mod:`unimatch.apps.report` rely on.

Metrics (mIoU values are PERCENTAGES, 0-100):

* per logged iteration (step = global iteration): ``train/loss``, ``train/loss_labeled``,
  ``train/loss_unlabeled``, ``train/mask_ratio``, ``train/lr``, ``train/step_seconds`` (mean compute time
  of the steps since the last point, data loading excluded)
* per evaluation (step = global iteration, with ``epoch`` alongside): ``val/miou_ema``,
  ``val/miou_student``, ``val/iou_ema/<class name>``; where unlabeled images have ground truth, the
  teacher's pseudo-label quality on them (percent): ``pseudo/precision``, ``pseudo/object_precision``,
  ``pseudo/foreground_coverage``, ``pseudo/foreground_recall``, ``pseudo/foreground_accuracy``,
  ``pseudo/mask_ratio``, ``pseudo/class_recall/<class name>``
  (:func:`unimatch.engine.inference.pseudo_label_quality`)
* once at the end of training: ``best_miou_ema``, ``best_miou_student``, ``final_miou_ema``,
  ``params_encoder_m``, ``params_decoder_m`` (millions), ``mean_step_seconds`` (Table 9's columns)
* standalone evaluation runs: ``eval/miou``, ``eval/iou/<class name>``

Tags set by :func:`tracker_from_config`: ``kind`` (``train``; evaluation passes ``{"kind": "eval"}``),
``dataset``, ``split`` (labeled count or fraction as written, e.g. ``24`` or ``0.0625``), ``method``,
``encoder``, ``frozen`` (``true``/``false``), ``streams``, ``threshold``, ``unlabeled_weight`` (where the
method has them: a labeled-only run has none of the three), ``seed``,
``config_digest`` (:func:`unimatch.config.config_digest`: equal for runs of the same experiment), ``data_version``
(what DVC pins of the dataset: :func:`data_version`; absent where DVC tracks none), ``zenml_run_id`` (runs of a
ZenML pipeline step),
then ``tracking.tags`` from the config and the caller's tags, which win. The report tables also read
``setting`` (Table 13: ``labeled only`` / ``+ extra unlabeled``) and ``sweep_param`` / ``sweep_value``
(Figs. 5-6), which the experiment configs set through ``tracking.tags``.

A run that fails gets the tag ``unimatch.error`` (the one-line error); a training's checkpoints record
its run id, and resuming the training reopens that run.

Params are the flattened config (``train.lr``, ``method.threshold``, ...), numbers written as in
tags (``24``, not ``24.0``), the ``method`` section holding only the fields of the method's ``Settings``;
the resolved config is stored as the artifact ``config.yaml``.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

from unimatch.config import ExperimentConfig, config_digest

# The metric names the engine logs (see the module docstring).
TRAIN_METRICS = (
    "train/loss",
    "train/loss_labeled",
    "train/loss_unlabeled",
    "train/mask_ratio",
    "train/lr",
    "train/step_seconds",
)


VAL_METRICS = ("val/miou_ema", "val/miou_student")


PSEUDO_METRICS = ("pseudo/precision", "pseudo/object_precision", "pseudo/foreground_recall", "pseudo/mask_ratio")


SUMMARY_METRICS = ("best_miou_ema", "best_miou_student", "final_miou_ema")


TRUNCATION_MARKER = "...[truncated]"


# MLflow allows ':' too, except on Windows; dropping it keeps one store readable everywhere.
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")


MODEL_ARTIFACT = "model"


MODEL_TAG = "unimatch.model"  # set once a run's model is logged: its models:/<model id> URI


REGISTERED_TAG = "unimatch.registered_model"  # models:/NAME/VERSION of the run's registered model


SCORE_TAG, GROUP_TAG = "best_miou_ema", "method"  # on registered model versions


PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests the run under its parent


@functools.lru_cache(maxsize=4096)
def sanitize_key(key: str) -> str:
    """A metric/param/tag key MLflow accepts: bad characters become '_', no empty or dot path parts."""

    parts = [part if part not in (".", "..") else "_" for part in _BAD_KEY_CHARS.sub("_", key).split("/") if part]
    return "/".join(parts)[:MAX_ENTITY_KEY_LENGTH].rstrip("/") or "_"


def truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def format_number(value: Any) -> str:
    """24 / 24.0 -> '24', 0.0625 -> '0.0625', True -> 'true': tag values that read as they were written."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def default_run_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.method.name}-{cfg.model.encoder}-{cfg.dataset.name}-{format_number(cfg.split.labeled)}"


METHOD_TAGS = ("streams", "threshold", "unlabeled_weight")


def config_tags(cfg: ExperimentConfig) -> dict[str, str]:
    """The standard tags of a training run (see the module docstring)."""
    return {
        "kind": "train",
        "dataset": cfg.dataset.name,
        "split": format_number(cfg.split.labeled),
        "method": cfg.method.name,
        "encoder": cfg.model.encoder,
        "frozen": format_number(cfg.model.frozen),
        # the method's settings that tables select on, where the method has them
        **{key: format_number(getattr(cfg.method, key)) for key in METHOD_TAGS if hasattr(cfg.method, key)},
        "seed": format_number(cfg.train.seed),
        "config_digest": config_digest(cfg),
        **({"data_version": version} if (version := data_version(cfg.dataset.root)) else {}),
    }


def data_version(root: str | Path) -> str | None:
    """What DVC pins of the dataset at ``root``: ``<file>.dvc:<md5>`` of the .dvc file beside ``root`` or beside
    a folder above it (``data.dvc`` for ``data/embedded``); None where DVC tracks no folder holding it."""
    folder = Path(root).absolute()
    for tracked in (folder, *folder.parents[:-1]):  # not the file-system root, which has no name
        dvc_file = tracked.with_name(tracked.name + ".dvc")
        if dvc_file.is_file():
            outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs", [])
            pinned = [out.get("md5") for out in outs if out.get("path") == tracked.name and out.get("md5")]
            return f"{dvc_file.name}:{pinned[0].removesuffix('.dir')}" if pinned else None
    return None


def run_params(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as MLflow params; the method section holds only what the method reads (no τ or λ on a
    labeled-only run)."""
    return cfg.to_dict()
