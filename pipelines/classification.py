"""Semi-supervised classification (UniMatch V2 Tables 15-17, SPEC §9) on the shared engine.

    python -m pipelines.classification [--quick] [--no-cache] [key=value ...]
    python -m pipelines.classification --config configs/classification/cifar10.yaml --seeds 0 1 2 3 4

splits (per seed) -> train each method per seed -> evaluate its best EMA model -> the report
``outputs/<experiment>/classification.{md,csv,png}``: a row per method, a column per seed, the mean last, and
each method's pseudo-label quality (confident share, precision). Default: the embedded classification data
(generated on first use), 4 labels per class, seeds 0 and 1, supervised-only, FixMatch, FixMatch + DA and
UniMatch V2. ``--quick``: one seed, 8 iterations per method.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from zenml import pipeline

from steps.classification import classification_report, classification_splits, evaluate_classifier, train_classifier
from steps.image import PROJECT_IMAGE
from unimatch.jobs import classification as jobs

from .cli import run_main
from .common import train_options


@pipeline(name="classification", settings={"docker": PROJECT_IMAGE})
def classification(
    config: str = jobs.DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
) -> None:
    """classification_splits -> (train_classifier -> evaluate_classifier) per method and seed -> report."""
    extra = [f"tracking.experiment={experiment}"] if experiment else []
    base = jobs.benchmark_base(config, [*(overrides or []), *extra], quick)
    methods, seeds = jobs.benchmark_grid(methods, seeds, quick)
    name, tags = base["tracking"]["experiment"], dict(jobs.TABLE_TAGS)
    trainer = train_classifier.with_options(**train_options(name, tags, gpu_count))
    evaluations = []
    for seed in seeds:
        splits = classification_splits(jobs.run_config(base, methods[0], seed), id=f"splits_seed{seed}")
        for method in methods:
            cfg = jobs.run_config(base, method, seed)
            trained = trainer(splits, cfg, method, tags, id=f"train_{method}_seed{seed}")
            evaluations.append(evaluate_classifier(trained, cfg, id=f"evaluate_{method}_seed{seed}"))
    classification_report(evaluations, f"outputs/{name}", jobs.report_title(base), jobs.reports_top5(base))


def _options(parser: argparse.ArgumentParser) -> Sequence[str]:
    parser.add_argument(
        "--methods", nargs="+", choices=jobs.classification_methods(), help="default: " + " ".join(jobs.DEFAULT_METHODS)
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 (--quick: 0)")
    return ("methods", "seeds")


if __name__ == "__main__":
    run_main(classification, "Semi-supervised classification (Tables 15-17): methods x seeds.", _options)
