"""A paper table as runs, for any orchestrator: the base config, its variants' configs and run directories,
and the tags that let a report find the table's runs. ZenML's pipelines and the DVC stages both build on it.

Configs are resolved into plain dicts that hold everything a run computes from, so an orchestrator's cache
key covers the full experiment. Nothing depends on the clock or the machine: paths are relative to the
project root.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..config import apply_overrides, load_config, lookup, tree_digest, validate
from ..errors import ConfigError
from ..tracking import format_number

# --quick: a smoke-test budget (minutes on a laptop CPU), not a result worth reporting.
QUICK_OVERRIDES = ("train.epochs=1", "train.max_iters=3", "pretrain.iterations=3")
QUICK_SUFFIX = "-quick"  # of a smoke test's registered model (and default experiment)
# Keys a variant may not change: the table's runs share one set of split files.
SHARED_KEYS = (
    "split",
    "dataset.name",
    "dataset.root",
    "dataset.labeled_split",
    "dataset.unlabeled_split",
    "dataset.val_split",
)
DIGEST_LENGTH = 8  # of the run directories and the base_config tag


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


def slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def resolve_base(
    config: str, overrides: Sequence[str] | None, quick: bool, experiment: str | None, table: str
) -> dict[str, Any]:
    """The table's base config: ``config`` + (quick budget) + ``overrides``, logging to ``experiment``
    (default ``<dataset>-<table>``, ``-quick`` appended for smoke tests so that they never overwrite a
    real report) with split files under ``runs/<experiment>/splits``. A smoke test registers its models
    as ``<registered model>-quick``, so that it never moves the ``best`` alias of a real one."""
    layers = [*(QUICK_OVERRIDES if quick else ()), *(overrides or ())]
    cfg = load_config(config, layers)
    experiment = experiment or f"{cfg.dataset.name}-{table}{QUICK_SUFFIX if quick else ''}"
    layers += [f"tracking.experiment={experiment}", f"split.dir=runs/{experiment}/splits"]
    if quick:
        registered = (cfg.tracking.registered_model or experiment).removesuffix(QUICK_SUFFIX) + QUICK_SUFFIX
        layers.append(f"tracking.registered_model={registered}")
    return load_config(config, layers).to_dict()


def variant_config(base: dict[str, Any], variant: Variant) -> dict[str, Any]:
    """The resolved config of ``variant``; its run directory ``runs/<experiment>/<name>-<digest>`` is
    keyed by the config, so the engine's automatic resume never continues a run of another config."""
    tree = validate(apply_overrides(base, variant.overrides), f"variant {variant.name}").to_dict()
    changed = [key for key in SHARED_KEYS if lookup(tree, key) != lookup(base, key)]
    if changed:
        raise ConfigError(f"variant {variant.name} changes {changed}, which all runs of a table share")
    identity = {key: value for key, value in tree.items() if key not in ("output_dir", "tracking")}
    tree["output_dir"] = (
        f"runs/{base['tracking']['experiment']}/{slug(variant.name)}-{tree_digest(identity, DIGEST_LENGTH)}"
    )
    return tree


def run_tags(base: dict[str, Any], table: Table) -> dict[str, str]:
    """Tags on every run of the table; ``base_config`` lets the report ignore runs that an earlier,
    differently configured version of the pipeline left in the same experiment."""
    return {"table": table.name, "base_config": tree_digest(base, DIGEST_LENGTH)}


def split_column(base: dict[str, Any]) -> list[str]:
    """The report column of the base config's labeled split, as the ``split`` tag spells it."""
    return [format_number(base["split"]["labeled"])]
