"""What the ZenML table pipelines share: the splits → (pretrain) → train → evaluate → report DAG and step
options. The orchestrator-neutral parts (base config, variants, tags) are :mod:`unimatch.jobs.tables`.

The steps take the resolved, typed config as a parameter, so ZenML's cache key covers the full experiment
(not just a config path whose file may change).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zenml import Model
from zenml.client import Client
from zenml.config import ResourceSettings
from zenml.steps.entrypoint_function_utils import StepArtifact

from steps import build_report, create_splits, evaluate_model, pretrain_encoder, train_model
from steps.tracking import store_uri, tracker_step_options
from unimatch.config import validate
from unimatch.jobs import Table, Variant, pretraining_needed, run_tags, slug, variant_config

DEFAULT_CONFIG = "configs/embedded.yaml"


def train_options(experiment: str, tags: dict[str, str], gpu_count: int) -> dict[str, Any]:
    """The training step's tracker and GPUs: ``gpu_count`` when given (the local orchestrator warns that it
    ignores them), else one GPU where the orchestrator places steps on a cluster's nodes."""
    options = tracker_step_options(experiment, tags)
    if gpu_count or Client().active_stack.orchestrator.config.is_remote:
        options.setdefault("settings", {})["resources"] = ResourceSettings(gpu_count=gpu_count or 1)
    return options


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
    # one encoder for the whole table, before any method trains
    encoder = pretrain_encoder(splits, typed_base, tags) if pretraining_needed(typed_base) else None
    models, evaluations = {}, []
    for variant in variants:
        config, variant_tags = validate(variant_config(base, variant)), {**tags, **variant.tags}
        key = slug(variant.name)
        # Each variant is a ZenML Model whose versions are its trainings (checkpoint + MLflow run as metadata).
        model = Model(name=f"{experiment}-{key}", description=f"{variant.name} of {table.name} ({experiment})")
        models[variant.name] = trainer.with_options(model=model)(
            splits, config, variant.name, variant_tags, encoder, id=f"train_{key}", after=list(after) or None
        )
        evaluations.append(evaluator(models[variant.name], splits, config, variant_tags, id=f"evaluate_{key}"))
    build_report(
        evaluations, store_uri(), experiment, table.layout, f"outputs/{experiment}", tags, table.rows, table.cols
    )
    return models
