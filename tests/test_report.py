"""Paper tables rebuilt from runs in a real local MLflow store (sqlite under a temporary directory)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from unimatch.report import ReportError, build_table, collect_runs, report

BASE_TAGS = {"dataset": "pascal", "encoder": "small", "streams": "complementary", "frozen": "false", "kind": "train"}
METHOD_ROWS = ["labeled-only", "FixMatch", "UniMatch V1", "UniMatch V2"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The runs behind a small Table 5: two seeds in one cell, empty cells, runs that must not count."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("paper", artifact_location=(root / "artifacts").as_uri())

    def run(method: str, split: str, miou: float, status: str = "FINISHED", **tags: str) -> None:
        created = client.create_run(experiment_id, tags={**BASE_TAGS, "method": method, "split": split, **tags})
        client.log_metric(created.info.run_id, "best_miou_ema", miou)
        client.set_terminated(created.info.run_id, status)

    run("unimatch_v2", "92", 80.0, seed="0")
    run("unimatch_v2", "92", 80.6, seed="1")
    run("unimatch_v2", "1464", 85.14)
    run("fixmatch", "92", 70.0)
    run("fixmatch", "92", 99.0, status="FAILED")
    run("labeled_only", "92", 60.0)
    run("labeled_only", "1464", 50.0, status="KILLED")  # the only run of its cell: stays blank
    run("unimatch_v2", "92", 10.0, frozen="true")  # Table 7 run
    run("unimatch_v2", "92", 11.0, streams="single")  # Table 6 run
    run("unimatch_v2", "92", 12.0, sweep_param="threshold", sweep_value="0.8")  # Fig. 5 run
    run("unimatch_v2", "92", 13.0, dataset="cityscapes")  # another dataset
    return uri


def test_methods_table_values_blanks_and_order(store: str) -> None:
    runs = collect_runs(store, ["paper"], filter_tags={"dataset": "pascal"})
    table = build_table(runs, "methods", expected_cols=[366])
    assert list(table.index) == METHOD_ROWS
    assert list(table.columns) == ["92", "366", "1464"]  # numeric, not lexical, order
    assert table.loc["UniMatch V2"].tolist() == ["80.3 (n=2)", "", "85.1"]
    assert table.loc["FixMatch"].tolist() == ["70.0", "", ""]  # the FAILED 99.0 is ignored
    assert table.loc["labeled-only"].tolist() == ["60.0", "", ""]  # the KILLED run is ignored
    assert table.loc["UniMatch V1"].tolist() == ["", "", ""]
    assert table.attrs["context"] == {"dataset": "pascal", "encoder": "small"}
    assert "Finished runs used: 5 in 4 cell(s), 1-2 per cell." in table.attrs["footnote"]
    assert "runs ignored: 2." in table.attrs["footnote"]


def test_mixed_datasets_are_refused(store: str) -> None:
    with pytest.raises(ReportError, match="dataset"):
        build_table(collect_runs(store, ["paper"]), "methods")


def test_report_writes_markdown_csv_and_html(store: str, tmp_path: Path) -> None:
    paths = report(store, "paper", "methods", tmp_path / "tables", filter_tags={"dataset": "pascal"})
    assert {ext: path.name for ext, path in paths.items()} == {
        "md": "methods.md", "csv": "methods.csv", "html": "methods.html"}
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["methods.csv", "methods.html", "methods.md"]

    markdown = paths["md"].read_text()
    assert "# Table 5" in markdown and "dataset pascal" in markdown
    assert "| UniMatch V2 | 80.3 (n=2) | 85.1 |" in markdown
    assert "| UniMatch V1 |  |  |" in markdown

    csv = pd.read_csv(paths["csv"], index_col=0, dtype=str, keep_default_na=False)
    assert csv.loc["FixMatch", "92"] == "70.0" and csv.loc["FixMatch", "1464"] == ""

    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>Table 5" in page
    assert "<td>80.3 (n=2)</td>" in page and "best_miou_ema" in page


def test_unknown_experiment_gives_blank_table(store: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        runs = collect_runs(store, ["missing"])
    assert "missing" in caplog.text
    table = build_table(runs, "frozen", expected_cols=["92"])
    assert list(table.index) == ["finetuned", "frozen"] and (table == "").all().all()


def _runs(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame([{"status": "FINISHED", **{f"tags.{k}": v for k, v in BASE_TAGS.items()}, **row}
                         for row in rows])


def test_sweep_and_streams_layouts() -> None:
    sweep = _runs(
        {"tags.method": "unimatch_v2", "tags.split": "92", "tags.sweep_param": "threshold",
         "tags.sweep_value": "0.95", "metrics.best_miou_ema": 80.0},
        {"tags.method": "unimatch_v2", "tags.split": "92", "tags.sweep_param": "threshold",
         "tags.sweep_value": "0.7", "metrics.best_miou_ema": 78.24},
    )
    table = build_table(sweep, "sweep")
    assert list(table.columns) == ["0.7", "0.95"]
    assert table.loc["τ (confidence threshold)"].tolist() == ["78.2", "80.0"]
    assert table.loc["λ (unlabeled loss weight)"].tolist() == ["", ""]

    streams = _runs({"tags.method": "unimatch_v2", "tags.split": "92", "tags.streams": "image_only",
                     "metrics.best_miou_ema": 79.0})
    table = build_table(streams, "streams")
    assert table.index[-1] == "complementary dropout (ours)"
    assert table.loc["(b) two image streams", "92"] == "79.0"


def test_unknown_layout() -> None:
    with pytest.raises(ReportError, match="methods"):
        build_table(_runs(), "table99")
