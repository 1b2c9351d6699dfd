"""Table 5: labeled-only vs semi-supervised methods on one labeled split — the main job (`make run`).

    python -m pipelines.semi_supervised_benchmark [--quick] [--no-cache] [key=value ...]
    zenml pipeline run pipelines.semi_supervised_benchmark.semi_supervised_benchmark \
        -c configs/zenml/semi_supervised_benchmark.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from zenml import pipeline

from steps import export_predictions
from steps.image import PROJECT_IMAGE
from unimatch.config import validate
from unimatch.jobs import Table, Variant, resolve_base, split_column
from unimatch.methods import single_training_methods

from .cli import run_main
from .common import DEFAULT_CONFIG, table_dag

DEFAULT_METHODS = ("labeled_only", "fixmatch", "unimatch_v2")
# Folder layouts keep their val images in one directory that predictions can be exported from.
FOLDER_LAYOUTS = ("embedded", "folder")


@pipeline(name="semi_supervised_benchmark", settings={"docker": PROJECT_IMAGE})
def semi_supervised_benchmark(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
    methods: list[str] | None = None,
    predict_method: str = "unimatch_v2",
    predict_limit: int = 16,
) -> None:
    """splits → train + evaluate each of ``methods`` → Table 5 report; then label maps and overlays of
    ``predict_method`` on (at most ``predict_limit``) val images when the dataset is a folder layout."""
    base = resolve_base(config, overrides, quick, experiment, "table5")
    methods = list(methods or DEFAULT_METHODS)
    table = Table("table5", "methods", methods, split_column(base))
    models = table_dag(base, [Variant(method, [f"method.name={method}"]) for method in methods], table, gpu_count)
    dataset = base["dataset"]
    if predict_method in models and dataset["name"] in FOLDER_LAYOUTS:
        output_dir = f"outputs/{base['tracking']['experiment']}/predictions/{predict_method}"
        export_predictions(
            models[predict_method],
            validate(base),
            f"{dataset['root']}/images/val",
            output_dir,
            predict_limit,
            f"{dataset['root']}/masks/val",
        )


def _options(parser: argparse.ArgumentParser) -> Sequence[str]:
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=single_training_methods(),
        help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)})",
    )
    return ("methods",)


if __name__ == "__main__":
    run_main(semi_supervised_benchmark, "Table 5: semi-supervised methods vs labeled-only (UniMatch V2).", _options)
