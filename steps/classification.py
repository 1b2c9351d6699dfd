"""Steps of the classification pipeline (issue 28): thin, typed adapters over ``unimatch.jobs.classification``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from zenml import step

from unimatch.config import ExperimentConfig
from unimatch.jobs import classification

from .tracking import store_uri, with_run_tags


@step(enable_cache=False)
def classification_splits(config: ExperimentConfig) -> Annotated[dict[str, str], "splits"]:
    """The labeled / unlabeled split files of ``config``'s seed (the embedded data generated if absent).
    Never cached: it reads the dataset on disk, which ZenML cannot see."""
    return classification.make_splits(config)


@step
def train_classifier(
    splits: dict[str, str], config: ExperimentConfig, row: str, tags: dict[str, str]
) -> Annotated[dict[str, Any], "trained"]:
    """Train ``config`` (table row ``row``, seed resolved) on ``splits`` as one MLflow run of the pipeline's store."""
    tags = with_run_tags({**tags, "splits": splits["labeled"]})
    return classification.train_classifier(config, row, tags, tracking_uri=store_uri())


@step
def evaluate_classifier(trained: dict[str, Any], config: ExperimentConfig) -> Annotated[dict[str, Any], "evaluation"]:
    """Top-1 / top-5 of the best EMA model and its pseudo labels' confident share and precision."""
    return asdict(classification.evaluate_trained(config, trained))


@step(enable_cache=False)
def classification_report(
    evaluations: list[dict[str, Any]], out_dir: str, title: str, top5: bool = False
) -> Annotated[dict[str, str], "report_files"]:
    """The report in the layout of Tables 15-17 (markdown, CSV, figure) under ``out_dir``."""
    results = [classification.ClassificationResult(**evaluation) for evaluation in evaluations]
    files = classification.write_report(results, out_dir, title, top5)
    print(Path(files["markdown"]).read_text(encoding="utf-8"))
    return files
