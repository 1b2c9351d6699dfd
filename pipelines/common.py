"""What every table pipeline shares: config resolution and the splits → train → evaluate → report DAG.

Configs are resolved at compile time into plain dicts and handed to the steps as parameters, so
ZenML's cache key covers the full experiment (not just a config path whose file may change). Nothing
in a parameter depends on the clock or the machine: paths are relative to the project root.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from zenml import Model
from zenml.config import ResourceSettings
from zenml.steps.entrypoint_function_utils import StepArtifact

from steps import build_report, create_splits, evaluate_model, pretrain_encoder, train_model
from steps.tracking import store_uri, tracker_step_options
from unimatch.config import apply_overrides, load_config, validate
from unimatch.tracking import format_number

DEFAULT_CONFIG = "configs/embedded.yaml"
# --quick: a smoke-test budget (minutes on a laptop CPU), not a result worth reporting.
QUICK_OVERRIDES = ("train.epochs=1", "train.max_iters=3", "pretrain.iterations=3")
# Keys a variant may not change: the table's runs share one set of split files.
SHARED_KEYS = ("split", "dataset.name", "dataset.root", "dataset.labeled_split", "dataset.unlabeled_split", "dataset.val_split")


class Variant(NamedTuple):
    """One training run of a table: a name (row of the log, run directory), its config overrides on
    top of the pipeline's base config, and extra MLflow tags (e.g. the sweep value)."""

    name: str
    overrides: list[str]
    tags: dict[str, str] = {}


class Table(NamedTuple):
    """A paper table: its tag value (``table``), the report layout, and the rows / columns to show
    even before every run exists."""

    name: str
    layout: str
    rows: list[str]
    cols: list[str]


def digest(tree: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:8]


def slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def resolve_base(
    config: str, overrides: Sequence[str] | None, quick: bool, experiment: str | None, table: str
) -> dict[str, Any]:
    """The pipeline's base config: ``config`` + (quick budget) + ``overrides``, logging to ``experiment``
    (default ``<dataset>-<table>``, ``-quick`` appended for smoke tests so that they never overwrite a
    real report) with split files under ``runs/<experiment>/splits``."""
    layers = [*(QUICK_OVERRIDES if quick else ()), *(overrides or ())]
    cfg = load_config(config, layers)
    experiment = experiment or f"{cfg.dataset.name}-{table}{'-quick' if quick else ''}"
    return load_config(config, [*layers, f"tracking.experiment={experiment}", f"split.dir=runs/{experiment}/splits"]).to_dict()


def _lookup(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def variant_config(base: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The resolved config of ``variant``; its run directory ``runs/<experiment>/<name>-<digest>`` is
    keyed by the config, so the engine's automatic resume never continues a run of another config."""
    tree = validate(apply_overrides(base, variant.overrides), f"variant {variant.name}").to_dict()
    changed = [key for key in SHARED_KEYS if _lookup(tree, key) != _lookup(base, key)]
    if changed:
        raise ValueError(f"variant {variant.name} changes {changed}, which all runs of a table share")
    identity = {key: value for key, value in tree.items() if key not in ("output_dir", "tracking")}
    tree["output_dir"] = f"runs/{base['tracking']['experiment']}/{slug(variant.name)}-{digest(identity)}"
    return tree


def run_tags(base: dict[str, Any], table: Table) -> dict[str, str]:
    """Tags on every run of the table; ``base_config`` lets the report ignore runs that an earlier,
    differently configured version of the pipeline left in the same experiment."""
    return {"table": table.name, "base_config": digest(base)}


def train_options(experiment: str, tags: dict[str, str], gpu_count: int) -> dict[str, Any]:
    options = tracker_step_options(experiment, tags)
    if gpu_count:  # honoured by orchestrators that place steps (Kubernetes, Vertex...); the local one warns
        options.setdefault("settings", {})["resources"] = ResourceSettings(gpu_count=gpu_count)
    return options


def needs_pretraining(config: dict[str, Any]) -> bool:
    """The engine pre-trains the encoder itself when no weights are given; as a step it is visible,
    tracked and done once per table instead of by the first training step."""
    model = config["model"]
    return config["pretrain"]["method"] != "none" and not model["weights"] and not model["init_checkpoint"]


def table_dag(
    base: dict[str, Any], variants: Sequence[Variant], table: Table, gpu_count: int, after: Sequence[Any] = ()
) -> dict[str, StepArtifact]:
    """create_splits → (train_model → evaluate_model) per variant → build_report; returns the models.
    ``after``: outputs of steps that produce files the training reads (e.g. an extra unlabeled pool)."""
    experiment = base["tracking"]["experiment"]
    tags = run_tags(base, table)
    gpus = base["train"]["gpus"]
    trainer = train_model.with_options(**train_options(experiment, tags, gpu_count or (gpus if gpus > 1 else 0)))
    evaluator = evaluate_model.with_options(**tracker_step_options(experiment, tags))
    typed_base = validate(base)  # the steps take the typed config; ZenML validates it against their annotation
    splits = create_splits(config=typed_base)
    if needs_pretraining(base):  # one encoder for the whole table, before any method trains
        after = [*after, pretrain_encoder(splits, typed_base, tags)]
    models, evaluations = {}, []
    for variant in variants:
        config, variant_tags = validate(variant_config(base, variant)), {**tags, **variant.tags}
        key = slug(variant.name)
        # Each variant is a ZenML Model whose versions are its trainings (checkpoint + MLflow run as metadata).
        model = Model(name=f"{experiment}-{key}", description=f"{variant.name} of {table.name} ({experiment})")
        models[variant.name] = trainer.with_options(model=model)(splits, config, variant.name, variant_tags, id=f"train_{key}",
                                                                 after=list(after) or None)  # fmt: skip
        evaluations.append(evaluator(models[variant.name], splits, config, variant_tags, id=f"evaluate_{key}"))
    build_report(evaluations, store_uri(), experiment, table.layout, f"outputs/{experiment}", tags, table.rows, table.cols)
    return models


def split_column(base: dict[str, Any]) -> list[str]:
    """The report column of the base config's labeled split, as the ``split`` tag spells it."""
    return [format_number(base["split"]["labeled"])]
