"""Report step: a paper table rebuilt from the MLflow runs of this pipeline's configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
from zenml import step
from zenml.types import HTMLString

from unimatch import jobs

from .artifacts import Evaluation, ReportFiles


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
) -> tuple[
    Annotated[pd.DataFrame, "table"], Annotated[HTMLString, "table_html"], Annotated[ReportFiles, "report_files"]
]:
    """Write ``<out_dir>/<layout>.{md,csv,html}`` from the runs of ``experiment`` matching ``filter_tags``
    in the tracking store ``uri`` (None: the library's default store).

    Never cached: it reads the tracking store (which other runs change) and writes files a cached
    step would not restore. ``evaluations`` orders it after the evaluations and names the runs that
    must exist.
    """
    files = jobs.build_report(evaluations, uri, experiment, layout, out_dir, filter_tags, expected_rows, expected_cols)
    table = pd.read_csv(files.csv, index_col=0, dtype=str, keep_default_na=False)
    return table, HTMLString(Path(files.html).read_text(encoding="utf-8")), files
