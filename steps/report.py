"""Report step: a paper table rebuilt from the MLflow runs of this pipeline's configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step
from zenml.types import HTMLString

from unimatch.report import report
from unimatch.tracking import resolve_tracking_uri

from .artifacts import Evaluation, ReportFiles


def check_runs_exist(uri: str, evaluations: list[Evaluation]) -> None:
    """Cached training steps point at runs logged earlier; a deleted tracking store would otherwise
    produce an empty table without a word."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    for evaluation in evaluations:
        if evaluation.train_run_id is None:
            continue
        try:
            client.get_run(evaluation.train_run_id)
        except MlflowException as error:
            raise RuntimeError(
                f"training run {evaluation.train_run_id} ({evaluation.name}) is not in the tracking store {uri}; "
                "re-run the pipeline with --no-cache"
            ) from error


@step(enable_cache=False)
def build_report(
    evaluations: list[Evaluation],
    uri: str | None,
    experiment: str,
    layout: str,
    out_dir: str,
    filter_tags: dict[str, str],
    expected_rows: list[str],
    expected_cols: list[str],
) -> tuple[Annotated[pd.DataFrame, "table"], Annotated[HTMLString, "table_html"], Annotated[ReportFiles, "report_files"]]:
    """Write ``<out_dir>/<layout>.{md,csv,html}`` from the runs of ``experiment`` matching ``filter_tags``
    in the tracking store ``uri`` (None: the library's default store).

    Never cached: it reads the tracking store (which other runs change) and writes files a cached
    step would not restore. ``evaluations`` orders it after the evaluations and names the runs that
    must exist.
    """
    uri = resolve_tracking_uri(uri)
    check_runs_exist(uri, evaluations)
    paths = report(uri, experiment, layout, out_dir, filter_tags=filter_tags,
                   expected_rows=expected_rows, expected_cols=expected_cols)
    table = pd.read_csv(paths["csv"], index_col=0, dtype=str, keep_default_na=False)
    files = ReportFiles(markdown=str(paths["md"]), csv=str(paths["csv"]), html=str(paths["html"]))
    return table, HTMLString(Path(paths["html"]).read_text(encoding="utf-8")), files
