"""Table 14: remote-sensing change detection, labeled-only vs UniMatch V2 at one label fraction.

    python -m pipelines.change_detection [--quick] [--no-cache] [key=value ...]
    python -m pipelines.change_detection --config configs/experiments/levir-cd_unimatch_v2_base_5.yaml
    zenml pipeline run pipelines.change_detection.change_detection -c configs/zenml/change_detection.yaml

Default: the embedded change-detection pairs (generated on first use) with the shipped foundation encoder.
The report (``outputs/<experiment>/table14.*``) gives the changed class's IoU at the student's best epoch and
the overall accuracy of that epoch, as Table 14; overlays (A | B | ground truth | predicted change) of
UniMatch V2 on the val pairs go to ``outputs/<experiment>/predictions/``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from zenml import pipeline

from steps import export_predictions
from steps.image import PROJECT_IMAGE
from unimatch.config import validate
from unimatch.jobs import Table, Variant, resolve_base, split_column
from unimatch.methods import METHODS

from .cli import run_main
from .common import table_dag

DEFAULT_CONFIG = "configs/change_detection.yaml"
DEFAULT_METHODS = ("labeled_only", "unimatch_v2")


def change_methods() -> list[str]:
    """The single-training methods defined for change detection (their registry declaration)."""
    return [name for name, cls in METHODS.items() if "change_detection" in cls.tasks and not cls.staged]


@pipeline(name="change_detection", settings={"docker": PROJECT_IMAGE})
def change_detection(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
    methods: list[str] | None = None,
    predict_method: str = "unimatch_v2",
    predict_limit: int = 16,
) -> None:
    """splits → train + evaluate each of ``methods`` → Table 14 report; then overlays of ``predict_method``
    on (at most ``predict_limit``) pairs of the evaluation split."""
    base = resolve_base(config, overrides, quick, experiment, "table14")
    methods = list(methods or DEFAULT_METHODS)
    table = Table("table14", "change", methods, split_column(base))
    models = table_dag(base, [Variant(method, [f"method.name={method}"]) for method in methods], table, gpu_count)
    if predict_method in models:
        dataset, name = base["dataset"], base["tracking"]["experiment"]
        root = Path(dataset["root"])
        val_split = dataset["val_split"] or f"{base['split']['dir']}/val.txt"  # given, or written by create_splits
        export_predictions(
            models[predict_method],
            validate(base),
            (root / "A").as_posix(),
            f"outputs/{name}/predictions/{predict_method}",
            predict_limit,
            (root / "label").as_posix(),
            (root / "B").as_posix(),
            val_split,
        )


def _options(parser: argparse.ArgumentParser) -> Sequence[str]:
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=change_methods(),
        help=f"methods to compare (default: {' '.join(DEFAULT_METHODS)})",
    )
    return ("methods",)


if __name__ == "__main__":
    run_main(change_detection, "Table 14: change detection, UniMatch V2 vs labeled-only.", _options)
