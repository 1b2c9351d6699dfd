"""Figs. 5-6: one-factor-at-a-time sweeps of UniMatch V2 hyper-parameters (τ, λ) around a config.

The grid holds any number of config keys, each with its values; every run changes ONE key and is tagged
``sweep_param`` (the key's last part, e.g. ``threshold``) and ``sweep_value``, which is what the ``sweep``
report layout reads. The report draws each key's curve (``sweep_curves.png``, in the HTML page too).

    python -m pipelines.sweep                                    # τ and λ: configs/zenml/sweep.yaml
    python -m pipelines.sweep --run-config configs/zenml/sweep_weight.yaml      # λ only, scheduled
    zenml pipeline run pipelines.sweep.sweep -c configs/zenml/sweep.yaml
"""

from __future__ import annotations

import sys

from zenml import pipeline

from steps.image import PROJECT_IMAGE
from unimatch.jobs import Table, Variant, resolve_base
from unimatch.tracking import format_number

from .cli import run_main
from .common import DEFAULT_CONFIG, table_dag

DEFAULT_RUN_CONFIG = "configs/zenml/sweep.yaml"
DEFAULT_GRID = {"method.threshold": [0.0, 0.7, 0.9, 0.95, 0.98], "method.unlabeled_weight": [0.25, 0.5, 1.0, 2.0]}


def grid_variants(grid: dict[str, list[float]]) -> list[Variant]:
    variants = []
    for key, values in grid.items():
        param = key.rsplit(".", 1)[-1]
        for value in values:
            shown = format_number(value)
            variants.append(
                Variant(f"{param}-{shown}", [f"{key}={value}"], {"sweep_param": param, "sweep_value": shown})
            )
    return variants


@pipeline(name="sweep", settings={"docker": PROJECT_IMAGE})
def sweep(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
    grid: dict[str, list[float]] | None = None,
) -> None:
    """One UniMatch V2 run per (key, value) of ``grid`` ({config key: values}), then the sweep report."""
    base = resolve_base(config, [*(overrides or ()), "method.name=unimatch_v2"], quick, experiment, "sweep")
    variants = grid_variants(grid or DEFAULT_GRID)
    params = list(dict.fromkeys(variant.tags["sweep_param"] for variant in variants))
    values = list(dict.fromkeys(variant.tags["sweep_value"] for variant in variants))
    table_dag(base, variants, Table("sweep", "sweep", params, values), gpu_count)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if not any(arg.startswith("--run-config") for arg in arguments):
        arguments = [*arguments, "--run-config", DEFAULT_RUN_CONFIG]
    run_main(sweep, "Hyper-parameter sweeps (Figs. 5-6) of UniMatch V2.", argv=arguments)
