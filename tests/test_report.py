"""Paper tables rebuilt from runs in a real local MLflow store (sqlite under a temporary directory)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from unimatch.apps.report import ReportError, build_table, collect_runs, plot_pseudo_label_quality, report, to_markdown

BASE_TAGS = {"dataset": "pascal", "encoder": "small", "streams": "complementary", "frozen": "false", "kind": "train"}
METHOD_ROWS = ["labeled-only", "FixMatch", "UniMatch V1", "UniMatch V2", "AllSpark", "ST", "ST++", "SemiVL"]  # every registered method, in order


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The runs behind a small Table 5: two seeds in one cell, empty cells, runs that must not count."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("paper", artifact_location=(root / "artifacts").as_uri())

    def run(method: str, split: str, miou: float, status: str = "FINISHED", at: int = 0, **tags: str) -> None:
        # Explicit times: runs created within one millisecond would leave "the most recent" undecided.
        created = client.create_run(experiment_id, start_time=1_000 * at,
                                    tags={**BASE_TAGS, "method": method, "split": split, **tags})
        client.log_metric(created.info.run_id, "best_miou_ema", miou)
        client.set_terminated(created.info.run_id, status, end_time=1_000 * at + 500)

    run("unimatch_v2", "92", 70.0, at=1, seed="0", config_digest="seed0")  # trained again later: dropped
    run("unimatch_v2", "92", 80.0, at=2, seed="0", config_digest="seed0")
    run("unimatch_v2", "92", 80.6, at=1, seed="1", config_digest="seed1")
    run("unimatch_v2", "92", 99.0, at=3, status="FAILED", seed="1", config_digest="seed1")  # not FINISHED
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
    assert list(table.index) == ["labeled-only", "FixMatch", "UniMatch V2"]  # methods never run: left out, named
    left_out = re.search(r"Rows without a finished run, left out: ([^.]*)\.", table.attrs["footnote"]).group(1)
    assert {"UniMatch V1", "AllSpark", "ST", "ST++", "SemiVL"} <= set(left_out.split(", ")) and "FixMatch" not in left_out.split(", ")
    assert list(table.columns) == ["92", "366", "1464"]  # numeric, not lexical, order
    assert table.loc["UniMatch V2"].tolist() == ["80.3 (n=2)", "", "85.1"]
    assert table.loc["FixMatch"].tolist() == ["70.0", "", ""]  # the FAILED 99.0 is ignored
    assert table.loc["labeled-only"].tolist() == ["60.0", "", ""]  # the KILLED run is ignored
    assert table.attrs["context"] == {"dataset": "pascal", "encoder": "small"}
    assert "Finished runs used: 5 in 4 cell(s), 1-2 per cell." in table.attrs["footnote"]
    assert "(config_digest) dropped, the latest kept: 1." in table.attrs["footnote"]
    assert "runs ignored: 3." in table.attrs["footnote"]


def test_repeated_configuration_counts_once_by_its_latest_run() -> None:
    """Untagged runs (older stores) all count; a digest counts once, whatever the row order."""
    cell = {"tags.method": "unimatch_v2", "tags.split": "92"}
    runs = _runs(
        {**cell, "tags.config_digest": "a", "end_time": 3, "metrics.best_miou_ema": 81.0},
        {**cell, "tags.config_digest": "a", "end_time": 1, "metrics.best_miou_ema": 50.0},
        {**cell, "tags.config_digest": "b", "end_time": 2, "metrics.best_miou_ema": 79.0},
        {**cell, "metrics.best_miou_ema": 60.0},
        {**cell, "metrics.best_miou_ema": 60.0},
    )
    table = build_table(runs, "methods")
    assert table.loc["UniMatch V2", "92"] == "70.0 (n=4)"  # (81 + 79 + 60 + 60) / 4, not 50
    assert "the latest kept: 1." in table.attrs["footnote"]


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
    rows = _markdown_rows(markdown)
    assert rows[0] == ["method / split", "92", "1464"]
    assert rows[1] == [":---", "---:", "---:"]
    assert ["UniMatch V2", "80.3 (n=2)", "85.1"] in rows and "UniMatch V1" not in {row[0] for row in rows}

    csv = pd.read_csv(paths["csv"], index_col=0, dtype=str, keep_default_na=False)
    assert csv.loc["FixMatch", "92"] == "70.0" and csv.loc["FixMatch", "1464"] == ""
    assert csv.loc["UniMatch V2", "1464"] == "85.14"  # full precision: the table shows 85.1
    assert float(csv.loc["UniMatch V2", "92"]) == pytest.approx((80.0 + 80.6) / 2, abs=1e-12)

    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>Table 5" in page
    assert "<td>80.3 (n=2)</td>" in page and "best_miou_ema" in page
    assert "<img" not in page  # no run logged pseudo-label metrics: no figure, and no broken image


def test_html_report_embeds_its_figures(tmp_path: Path) -> None:
    """The page is one file with its figures inline (was: a table only, the PNG beside it not shown)."""
    import base64

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("figures", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(experiment_id, tags={**BASE_TAGS, "method": "unimatch_v2", "split": "92"})
    for step, value in ((10, 40.0), (20, 55.0)):
        client.log_metric(run.info.run_id, "pseudo/mask_ratio", value, step=step)
        client.log_metric(run.info.run_id, "pseudo/precision", value + 10, step=step)
    client.log_metric(run.info.run_id, "best_miou_ema", 61.0)
    client.set_terminated(run.info.run_id, "FINISHED")
    with warnings.catch_warnings():  # two of the three panels have no data: no legend, no matplotlib warning
        warnings.simplefilter("error")
        paths = report(uri, "figures", "methods", tmp_path / "out")
    page = paths["html"].read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 and base64.b64decode(images[0]) == paths["png"].read_bytes()


def _markdown_rows(markdown: str) -> list[list[str]]:
    """The cells of each table line, stripped; alignment rules reduced to their colon side."""
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            for line in markdown.splitlines() if line.startswith("|")]
    rows[1] = [(":---" if rule.startswith(":") else "---:") for rule in rows[1]]
    return rows


def test_misspelt_experiment_names_the_store_and_the_closest_experiments(store: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError) as error:
        report(store, "papr", "methods", tmp_path / "tables")
    message = str(error.value)
    assert "experiment 'papr' not found" in message and store in message
    assert "it has: paper, Default" in message  # closest first
    assert not (tmp_path / "tables").exists()
    with pytest.raises(ReportError, match="'missing'"):
        collect_runs(store, ["paper", "missing"])


def test_no_matching_runs_say_what_was_looked_for(store: str, tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"no run of experiment\(s\) paper in the tracking store .* has the tags "
                                          r"\{'dataset': 'ade20k'\}"):
        report(store, "paper", "methods", tmp_path, filter_tags={"dataset": "ade20k"})
    with pytest.raises(ReportError, match=r"table 'real_world' needs FINISHED runs .* tags dataset and setting"):
        report(store, "paper", "real_world", tmp_path)
    only_killed = _runs({"status": "KILLED", "tags.method": "fixmatch", "tags.split": "92"})
    with pytest.raises(ReportError, match=r"none among the 1 run\(s\) \(1 unfinished matched\)"):
        build_table(only_killed, "methods")


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
    assert "λ (unlabeled loss weight)" not in table.index  # not swept: left out

    streams = _runs({"tags.method": "unimatch_v2", "tags.split": "92", "tags.streams": "complementary",
                     "metrics.best_miou_ema": 81.0},
                    {"tags.method": "unimatch_v2", "tags.split": "92", "tags.streams": "image_only",
                     "metrics.best_miou_ema": 79.0})  # fmt: skip
    table = build_table(streams, "streams")
    assert list(table.index) == ["(b) two image streams", "complementary dropout (ours)"]  # the paper's order
    assert table.loc["(b) two image streams", "92"] == "79.0"


def test_frozen_layout_is_table_7() -> None:
    runs = _runs(
        {"tags.method": "unimatch_v2", "tags.split": "1464", "tags.frozen": "false", "metrics.best_miou_ema": 85.0},
        {"tags.method": "unimatch_v2", "tags.split": "92", "tags.frozen": "true", "metrics.best_miou_ema": 70.0},
        {"tags.method": "unimatch_v2", "tags.split": "92", "tags.frozen": "true", "metrics.best_miou_ema": 71.2},
        {"tags.method": "unimatch_v2", "tags.split": "1464", "tags.frozen": "true", "metrics.best_miou_ema": 77.0},
        {"tags.method": "fixmatch", "tags.split": "92", "tags.frozen": "true", "metrics.best_miou_ema": 1.0},  # not UniMatch V2
        {"tags.method": "unimatch_v2", "tags.split": "92", "tags.frozen": "true", "tags.streams": "single",
         "metrics.best_miou_ema": 2.0},  # a Table 6 variant
    )
    table = build_table(runs, "frozen")
    assert list(table.index) == ["finetuned", "frozen"] and list(table.columns) == ["92", "1464"]
    assert table.loc["finetuned"].tolist() == ["", "85.0"]
    assert table.loc["frozen"].tolist() == ["70.6 (n=2)", "77.0"]  # the mean of two seeds, then their count
    assert table.attrs["context"] == {"dataset": "pascal", "encoder": "small"}
    assert "Finished runs used: 4 in 3 cell(s), 1-2 per cell." in table.attrs["footnote"]


def test_pseudo_label_figure_draws_each_measured_runs_history(tmp_path: Path, saved_figures: list) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("quality", artifact_location=(tmp_path / "artifacts").as_uri())

    def run(name: str, **history: list[tuple[int, float]]) -> None:
        run_id = client.create_run(experiment_id, run_name=name, tags={**BASE_TAGS, "method": name}).info.run_id
        for key, points in history.items():
            for step, value in points:
                client.log_metric(run_id, f"pseudo/{key}", value, step=step)
        client.set_terminated(run_id)

    run("fixmatch", precision=[(20, 90.0), (10, 80.0)], object_precision=[(10, 30.0), (20, 40.0)],
        foreground_recall=[(10, 1.5), (20, 3.0)], mask_ratio=[(10, 50.0), (20, 60.0)])  # fmt: skip
    run("unimatch_v2", precision=[(10, 85.0)], foreground_recall=[(10, 2.0)], mask_ratio=[(10, 55.0)])
    run("labeled_only")  # nothing measured: not drawn
    runs = collect_runs(uri, ["quality"])
    path = plot_pseudo_label_quality(uri, runs, tmp_path / "quality.png")
    assert path == tmp_path / "quality.png" and path.is_file()
    (figure,) = saved_figures
    precision, objects, recall = figure.axes

    def lines(ax):
        return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}

    assert "precision" in precision.get_title() and "confident and right" in recall.get_title()
    assert lines(precision) == {"fixmatch": ([10, 20], [80.0, 90.0]), "unimatch_v2": ([10], [85.0])}  # by step
    assert lines(recall) == {"fixmatch": ([10, 20], [1.5, 3.0]), "unimatch_v2": ([10], [2.0])}
    assert "object-class" in objects.get_title()
    assert lines(objects) == {"fixmatch": ([10, 20], [30.0, 40.0])}  # unimatch_v2 did not log it: no line
    assert plot_pseudo_label_quality(uri, runs[runs["tags.method"] == "labeled_only"], tmp_path / "none.png") is None


def test_unknown_layout() -> None:
    with pytest.raises(ReportError, match="methods"):
        build_table(_runs(), "table99")


def test_pipes_in_labels_do_not_break_the_markdown_table() -> None:
    runs = _runs({"tags.dataset": "a|b", "tags.setting": "labeled only", "metrics.best_miou_ema": 70.0})
    rows = _markdown_rows(to_markdown(build_table(runs, "real_world"), "T", "note"))
    assert rows[2] == ["a\\|b", "70.0", ""]  # "+ extra unlabeled" is always a column


def test_a_sweep_over_two_keys_is_drawn_as_the_papers_curves(tmp_path: Path) -> None:
    """Figs. 5-6: τ and λ swept in one experiment give one table row and one curve panel each, embedded in
    the page (was: a table only, one key at a time)."""
    import base64

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("sweep", artifact_location=(tmp_path / "artifacts").as_uri())
    points = {("threshold", "0.7"): 60.0, ("threshold", "0.95"): 62.5, ("unlabeled_weight", "0.5"): 58.0,
              ("unlabeled_weight", "2"): 61.25}  # fmt: skip
    for (param, value), miou in points.items():
        tags = {**BASE_TAGS, "method": "unimatch_v2", "split": "92", "sweep_param": param, "sweep_value": value}
        run = client.create_run(experiment_id, tags=tags)
        client.log_metric(run.info.run_id, "best_miou_ema", miou)
        client.set_terminated(run.info.run_id, "FINISHED")
    paths = report(uri, "sweep", "sweep", tmp_path / "out")
    csv = pd.read_csv(paths["csv"], index_col=0)
    assert csv.loc["τ (confidence threshold)", "0.95"] == 62.5 and csv.loc["λ (unlabeled loss weight)", "2"] == 61.25
    assert paths["curves"].name == "sweep_curves.png"
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', paths["html"].read_text())
    assert base64.b64decode(images[0]) == paths["curves"].read_bytes()


def test_sweep_curves_put_each_key_in_its_own_panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from unimatch import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: drawn.append(fig) or Path(path))
    values = pd.DataFrame({"0.5": [float("nan"), 58.0], "0.7": [60.0, float("nan")], "2": [float("nan"), 61.25]},
                          index=["τ", "λ"])  # fmt: skip
    figures.plot_sweep_curves(values, tmp_path / "c.png", "best_miou_ema (%)")
    (fig,) = drawn
    assert isinstance(fig, Figure)
    panels = {ax.get_xlabel(): [tuple(xy) for xy in ax.lines[0].get_xydata()] for ax in fig.axes}
    assert panels == {"τ": [(0.7, 60.0)], "λ": [(0.5, 58.0), (2.0, 61.25)]}
    assert figures.plot_sweep_curves(values.iloc[:0], tmp_path / "none.png", "x") is None
