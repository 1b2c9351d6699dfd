"""Rebuild the paper's result tables from tracked MLflow runs, written as Markdown, CSV and HTML.

Runs are placed by their tags (see :mod:`unimatch.tracking` for the conventions) and valued by a
summary metric, mIoU in percent as the engine logs it. Cell format: the mean over FINISHED runs with
one decimal, followed by the run count when more than one run was averaged, e.g. ``86.3`` (one run)
or ``86.3 (n=2)`` (two seeds). A cell without a finished run is blank, never an invented number;
RUNNING, FAILED and KILLED runs are ignored (the footnote counts them). A configuration trained twice
(same ``config_digest`` tag) counts once, by its most recent finished run; runs without the tag (older
stores) all count. A misspelt experiment or a table no finished run belongs to is a :class:`ReportError`.
"""

from __future__ import annotations

import base64
import difflib
import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from unimatch.errors import UnimatchError
from unimatch.figures import plot_sweep_curves, save_figure
from unimatch.methods import METHODS, method_labels
from unimatch.tracking import check_tracking_uri, format_number, redact, resolve_tracking_uri, using_store
from unimatch.utils.atomic import write_text_atomic

DIGEST_TAG = "config_digest"  # equal for runs of the same configuration (unimatch.config.config_digest)


class ReportError(UnimatchError, ValueError):
    """The runs cannot be put into the requested table without mixing incomparable results."""


class TableLayout(NamedTuple):
    row_tag: str
    col_tag: str
    metric: str
    row_order: tuple[str, ...]  # tag values always shown, in this order; others follow, sorted
    title: str
    row_labels: Mapping[str, str] = {}  # tag value -> display label
    col_order: tuple[str, ...] = ()  # like row_order; empty: columns sorted numerically
    # the table's fixed tags: a value, None (the tag must be absent) or a tuple of those (any of them)
    where: Mapping[str, str | None | tuple[str | None, ...]] = {}
    context: tuple[str, ...] = ("dataset", "encoder")  # tags that must be single-valued in a table
    # (label, metrics, format): per-row columns before the grid, each metric's mean over the row's runs,
    # several metrics joined by " / " in one cell
    row_columns: tuple[tuple[str, tuple[str, ...], str], ...] = ()
    # (metric, format): more metrics of the same runs after the main one in each cell, e.g. Table 14's OA
    cell_extras: tuple[tuple[str, str], ...] = ()
    unit: str = "mIoU %, one decimal"  # what a cell shows, for the footnote
    curves: bool = False  # rows are curves over numeric columns (Figs. 5-6): the report draws them too


STREAM_LABELS = {
    "single": "(a) single stream + random dropout",
    "image_only": "(b) two image streams",
    "random": "(c) two streams + random dropouts",
    "complementary": "complementary dropout (ours)",
}
_NO_SWEEP = {"sweep_param": None}  # sweep runs change τ or λ and belong only to the sweep table
_OUR_STREAMS = {"streams": ("complementary", None)}  # UniMatch V2's own design, or a method without streams
METHOD_LABELS = method_labels()
CHANGE_METHODS = tuple(name for name, cls in METHODS.items() if "change_detection" in cls.tasks)

TABLE_LAYOUTS: dict[str, TableLayout] = {
    "methods": TableLayout(
        "method",
        "split",
        "best_miou_ema",
        tuple(METHOD_LABELS),
        "Table 5: semi-supervised methods, mIoU (%) by number of labeled images",
        METHOD_LABELS,
        where={**_OUR_STREAMS, "frozen": "false", "stage": None, **_NO_SWEEP},  # ST++'s round-1 student: a stage
    ),
    "streams": TableLayout(
        "streams",
        "split",
        "best_miou_ema",
        tuple(STREAM_LABELS),
        "Table 6: UniMatch V2 stream designs, mIoU (%)",
        STREAM_LABELS,
        where={"method": "unimatch_v2", "frozen": "false", **_NO_SWEEP},
    ),
    "frozen": TableLayout(
        "frozen",
        "split",
        "best_miou_ema",
        ("false", "true"),
        "Table 7: finetuned vs frozen encoder (UniMatch V2), mIoU (%)",
        {"false": "finetuned", "true": "frozen"},
        where={"method": "unimatch_v2", "streams": "complementary", **_NO_SWEEP},
    ),
    "real_world": TableLayout(
        "dataset",
        "setting",
        "best_miou_ema",
        (),
        "Table 13: real-world setting, mIoU (%)",
        col_order=("labeled only", "+ extra unlabeled"),
        where=_NO_SWEEP,
        context=("encoder",),
    ),
    "encoders": TableLayout(
        "encoder",
        "split",
        "best_miou_ema",
        (),
        "Table 9: UniMatch V2 across encoders, mIoU (%) by number of labeled images",
        where={**_OUR_STREAMS, "frozen": "false", **_NO_SWEEP},
        context=("dataset", "method"),
        row_columns=(
            ("#params encoder / decoder (M)", ("params_encoder_m", "params_decoder_m"), "{:.1f}"),
            ("s / training step", ("mean_step_seconds",), "{:.3f}"),
        ),
    ),
    "change": TableLayout(
        "method",
        "split",
        "best_iou_changed_student",
        CHANGE_METHODS,
        "Table 14: change detection, IoU of the changed class / overall accuracy (%) by labeled pairs",
        METHOD_LABELS,
        where=_NO_SWEEP,
        cell_extras=(("best_overall_accuracy_student", "{:.2f}"),),
        unit="IoU_c % of the student's best epoch, one decimal; after the slash: the overall accuracy % of that epoch, "
        "two decimals",
    ),
    "sweep": TableLayout(
        "sweep_param",
        "sweep_value",
        "best_miou_ema",
        ("threshold", "unlabeled_weight"),
        "Figs. 5-6: hyper-parameter sweeps, mIoU (%)",
        {"threshold": "τ (confidence threshold)", "unlabeled_weight": "λ (unlabeled loss weight)"},
        context=("dataset", "encoder", "method", "split"),
        curves=True,
    ),
}


def collect_runs(
    uri: str, experiments: list[str] | None = None, filter_tags: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """One row per (non-deleted) run, as ``mlflow.search_runs`` gives it (``run_id``, ``status``,
    ``start_time``, ``end_time``, ``tags.<key>``, ``metrics.<key>``...) plus ``experiment``, its name.
    ``experiments`` None: all experiments (a name the store lacks is a ReportError); ``filter_tags``:
    exact tag matches."""
    names = _experiment_names(MlflowClient(tracking_uri=uri), uri, experiments)
    with using_store(uri):
        runs = mlflow.search_runs(list(names), output_format="pandas") if names else pd.DataFrame()
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "experiment", "status"])
    runs.insert(1, "experiment", runs["experiment_id"].map(names))
    for tag, value in (filter_tags or {}).items():
        runs = runs[_column(runs, f"tags.{tag}") == format_number(value)]
    return runs.reset_index(drop=True)


def _experiment_names(client: Any, uri: str, experiments: list[str] | None) -> dict[str, str]:
    """experiment id -> name. An unknown name is an error: a typo must not pass for a table without runs."""
    existing = {exp.experiment_id: exp.name for exp in client.search_experiments()}
    if experiments is None:
        return existing
    missing = [name for name in experiments if name not in existing.values()]
    if missing:
        raise ReportError(
            f"experiment '{missing[0]}' not found in the tracking store {redact(uri, uri)}; "
            f"it has: {', '.join(_closest_first(missing[0], existing.values())) or 'no experiments'}"
        )
    return {exp_id: name for exp_id, name in existing.items() if name in experiments}


def _closest_first(name: str, candidates: Iterable[str]) -> list[str]:
    candidates = sorted(candidates)
    return difflib.get_close_matches(name, candidates, n=len(candidates), cutoff=0.0)


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(np.nan, index=frame.index, dtype=object)


def _layout(name: str) -> TableLayout:
    if name not in TABLE_LAYOUTS:
        raise ReportError(f"unknown table layout '{name}'; choose one of {sorted(TABLE_LAYOUTS)}")
    return TABLE_LAYOUTS[name]


def _placed(runs: pd.DataFrame, spec: TableLayout) -> pd.DataFrame:
    """The runs that belong in the table (any status), as columns row, col, value, status, context."""
    keep = pd.Series(True, index=runs.index)
    for tag, wanted in spec.where.items():
        column = _column(runs, f"tags.{tag}")
        absent = column.isna() | (column == "")
        choices = wanted if isinstance(wanted, tuple) else (wanted,)
        keep &= pd.concat([absent if value is None else column == value for value in choices], axis=1).any(axis=1)
    placed = pd.DataFrame(
        {
            "row": _column(runs, f"tags.{spec.row_tag}"),
            "col": _column(runs, f"tags.{spec.col_tag}"),
            "value": pd.to_numeric(_column(runs, f"metrics.{spec.metric}"), errors="coerce"),
            "status": _column(runs, "status"),
            "digest": _column(runs, f"tags.{DIGEST_TAG}"),
            "end_time": pd.to_numeric(_column(runs, "end_time"), errors="coerce"),
            "start_time": pd.to_numeric(_column(runs, "start_time"), errors="coerce"),
            **{tag: _column(runs, f"tags.{tag}") for tag in spec.context},
            **{
                metric: pd.to_numeric(_column(runs, f"metrics.{metric}"), errors="coerce")
                for metric in [m for _, metrics, _ in spec.row_columns for m in metrics]
                + [m for m, _ in spec.cell_extras]
            },
        }
    )
    return placed[keep].dropna(subset=["row", "col"])


def _latest_per_digest(finished: pd.DataFrame) -> pd.DataFrame:
    """One run per (cell, configuration digest): the most recent; a repeated training must not weigh
    twice in a mean. Untagged runs (stores older than the tag) are all kept."""
    tagged = finished["digest"].notna() & (finished["digest"] != "")
    latest = (
        finished[tagged]
        .sort_values(["end_time", "start_time"], kind="stable", na_position="first")
        .drop_duplicates(["row", "col", "digest"], keep="last")
    )
    return pd.concat([latest, finished[~tagged]]).sort_index()


def _looked_for(spec: TableLayout, layout: str, runs: pd.DataFrame) -> str:
    """What a table takes, for the error that says nothing matched it."""

    def wanted(tag: str, value: str | None) -> str:
        return f"{tag} absent" if value is None else f"{tag}={value}"

    fixed = [
        " or ".join(wanted(tag, v) for v in (value if isinstance(value, tuple) else (value,)))
        for tag, value in spec.where.items()
    ]
    scope = sorted(_column(runs, "experiment").dropna().unique())
    return (
        f"table '{layout}' needs FINISHED runs with metric {spec.metric} and tags {spec.row_tag} and "
        f"{spec.col_tag}{', ' + ', '.join(fixed) if fixed else ''}; none among the {len(runs)} run(s)"
        f"{' of experiment(s) ' + ', '.join(scope) if scope else ''}"
    )


def _single_context(runs: pd.DataFrame, spec: TableLayout, layout: str) -> dict[str, str]:
    """The context tags' common values; several values in one table would average apples and pears."""
    context = {}
    for tag in spec.context:
        values = sorted(runs[tag].dropna().unique())
        if len(values) > 1:
            raise ReportError(
                f"table '{layout}': runs mix {tag} = {values}; pick one with filter_tags={{'{tag}': ...}}"
            )
        if values:
            context[tag] = values[0]
    return context


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _axis(fixed: tuple[str, ...], expected: Iterable[Any] | None, observed: Iterable[str]) -> list[str]:
    extra = {format_number(value) for value in expected or ()} | set(observed)
    return list(fixed) + sorted(extra - set(fixed), key=_sort_key)


def _cell(mean: float, count: int, extras: str = "") -> str:
    value = f"{mean:.1f}{extras}"
    return value if count == 1 else f"{value} (n={count})"


def _cell_extras(kept: pd.DataFrame, spec: TableLayout) -> dict[tuple[str, str], str]:
    """(row, col) -> " / x / y": the means of the layout's extra cell metrics."""
    if not spec.cell_extras:
        return {}
    means = kept.groupby(["row", "col"])[[metric for metric, _ in spec.cell_extras]].mean()
    return {
        key: "".join(f" / {fmt.format(means.at[key, metric])}" for metric, fmt in spec.cell_extras)
        for key in means.index
    }


def build_table(
    runs: pd.DataFrame,
    layout: str,
    expected_rows: Iterable[Any] | None = None,
    expected_cols: Iterable[Any] | None = None,
) -> pd.DataFrame:
    """The display table (strings; blank = no finished run) of ``layout`` over ``runs``
    (:func:`collect_runs`). ``expected_rows``/``expected_cols`` are tag values shown even without runs.
    ``attrs`` carries ``footnote`` (metric and runs per cell) and ``context`` (e.g. dataset, encoder)."""
    spec = _layout(layout)
    placed = _placed(runs, spec)
    unfinished = int((placed["status"] != "FINISHED").sum())
    finished = placed[(placed["status"] == "FINISHED") & placed["value"].notna()]
    if finished.empty:
        raise ReportError(f"{_looked_for(spec, layout, runs)} ({unfinished} unfinished matched)")
    context = _single_context(finished, spec, layout)
    kept = _latest_per_digest(finished)
    stats = kept.groupby(["row", "col"])["value"].agg(["mean", "count"])
    # Rows (methods, settings) without a single finished run are left out and named in the footnote: a row of
    # blanks reads as "ran and scored nothing".
    candidates = _axis(spec.row_order, expected_rows, kept["row"])
    ran = set(kept["row"])
    rows = [row for row in candidates if row in ran]
    cols = _axis(spec.col_order, expected_cols, kept["col"])
    table = pd.DataFrame("", index=rows, columns=cols, dtype=object)
    values = pd.DataFrame(float("nan"), index=rows, columns=cols)
    extras = _cell_extras(kept, spec)
    for (row, col), (mean, count) in stats.iterrows():
        table.at[row, col] = _cell(mean, int(count), extras.get((row, col), ""))
        values.at[row, col] = mean
    table = _with_row_columns(table, kept, spec.row_columns)
    labels = pd.Index([spec.row_labels.get(row, row) for row in rows], name=spec.row_tag)
    table.index, values.index = labels, labels
    table.columns.name = values.columns.name = spec.col_tag
    duplicates = len(finished) - len(kept)
    not_run = [spec.row_labels.get(row, row) for row in candidates if row not in rows]
    table.attrs = {
        "footnote": _footnote(spec.metric, spec.unit, stats["count"], unfinished, duplicates, not_run),
        "context": context,
        "values": values,  # the cells' means at full precision, for the CSV
    }
    return table


def _with_row_columns(
    table: pd.DataFrame, kept: pd.DataFrame, columns: tuple[tuple[str, tuple[str, ...], str], ...]
) -> pd.DataFrame:
    """Per-row facts (e.g. parameter counts, step time) in front of the grid; blank where no run has them."""
    if not columns:
        return table
    means = kept.groupby("row")[[metric for _, metrics, _ in columns for metric in metrics]].mean()

    def cell(row: str, metrics: tuple[str, ...], fmt: str) -> str:
        values = [means.at[row, metric] for metric in metrics] if row in means.index else []
        return " / ".join(fmt.format(value) for value in values) if values and all(pd.notna(values)) else ""

    front = {label: [cell(row, metrics, fmt) for row in table.index] for label, metrics, fmt in columns}
    return pd.concat([pd.DataFrame(front, index=table.index, dtype=object), table], axis=1)


def _footnote(metric: str, unit: str, counts: pd.Series, unfinished: int, duplicates: int, not_run: list[str]) -> str:
    note = (
        f"Each cell: mean of {metric} ({unit}) over FINISHED runs; "
        "'(n=k)' marks a cell averaging k > 1 runs; blank: no finished run. "
    )
    if not_run:
        note += f"Rows without a finished run, left out: {', '.join(not_run)}. "
    low, high = int(counts.min()), int(counts.max())
    per_cell = str(low) if low == high else f"{low}-{high}"
    note += f"Finished runs used: {int(counts.sum())} in {len(counts)} cell(s), {per_cell} per cell. "
    note += f"Repeated runs of one configuration ({DIGEST_TAG}) dropped, the latest kept: {duplicates}. "
    return note + f"Unfinished (running/failed/killed) runs ignored: {unfinished}."


def _with_corner(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with "<row tag> / <column tag>" as the only axis name, shown in the corner cell."""
    corner = f"{table.index.name or ''} / {table.columns.name or ''}".strip(" /")
    return table.rename_axis(index=None, columns=corner)


def _markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|")  # a bare pipe would end the cell


def to_markdown(table: pd.DataFrame, title: str, footnote: str) -> str:
    grid = _with_corner(table)
    cells = grid.map(_markdown_cell).set_axis(grid.index.map(_markdown_cell), axis=0)
    # tabulate prints the index name in the corner; disable_numparse keeps "80.0" from becoming 80.
    body = cells.rename_axis(index=grid.columns.name, columns=None).to_markdown(
        disable_numparse=True, colalign=("left", *["right"] * len(grid.columns))
    )
    return "\n".join([f"# {title}", "", body, "", f"_{footnote}_", ""])


_HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ padding: 0.35rem 0.9rem; border-bottom: 1px solid #ddd; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
thead th {{ border-bottom: 2px solid #444; }}
tbody tr:hover {{ background: #f5f7fa; }}
p.note {{ color: #555; font-size: 0.9rem; max-width: 50rem; }}
</style>
</head>
<body>
<h1>{title}</h1>
{table}
<p class="note">{footnote}</p>
{figures}
</body>
</html>
"""


def _embedded_figure(path: Path) -> str:
    """``path`` (a PNG) as an inline image: the page stays one file that opens anywhere, offline."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}" style="max-width: 100%">'
        f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
    )


def to_html(table: pd.DataFrame, title: str, footnote: str, figures: Sequence[Path] = ()) -> str:
    esc = html.escape
    grid = _with_corner(table).to_html(border=0, classes="report", escape=True)
    shown = "\n".join(_embedded_figure(path) for path in figures)
    return _HTML_PAGE.format(title=esc(title), table=grid, footnote=esc(footnote), figures=shown)


def write_report(
    table: pd.DataFrame,
    out_dir: str | Path,
    name: str,
    title: str,
    footnote: str | None = None,
    figures: Sequence[Path] = (),
) -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.csv`` and ``<name>.html`` (with ``figures`` embedded) under ``out_dir``;
    returns them by extension. ``footnote`` defaults to the one :func:`build_table` attached; the CSV holds
    the cells' means at full precision where :func:`build_table` left them (blank: no finished run)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    note = table.attrs.get("footnote", "") if footnote is None else footnote
    values = table.attrs.get("values")
    texts = {
        "md": to_markdown(table, title, note),
        "csv": (table if values is None else _with_corner(values)).to_csv(lineterminator="\n"),
        "html": to_html(table, title, note, figures),
    }
    # Atomic: readers (a browser, DVC) never see a half-written file.
    return {ext: write_text_atomic(out / f"{name}.{ext}", text) for ext, text in texts.items()}


def plot_pseudo_label_quality(uri: str, runs: pd.DataFrame, path: str | Path) -> Path | None:
    """One PNG comparing the training runs of a table, per epoch: the precision of all confident pseudo
    labels, of those predicted as an object class, and the confident-and-right share of the object pixels
    (None when no run measured them). The first is mostly the background's; the other two show whether
    the unlabeled loss teaches objects."""
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    presence = "metrics.pseudo/mask_ratio"  # always finite when measured (precision is NaN while nothing is confident)
    if presence not in runs.columns:
        return None
    measured = runs[runs[presence].notna()]
    if measured.empty:
        return None
    fig = Figure(figsize=(17, 4.5), layout="constrained")
    panels = zip(fig.subplots(1, 3), PSEUDO_LABEL_PANELS)
    for ax, (key, title) in panels:
        for _, run in measured.sort_values("run_id").iterrows():
            history = sorted((m.step, m.value) for m in client.get_metric_history(run["run_id"], key))
            if history:
                label = run.get("tags.mlflow.runName") or run.get("tags.method") or run["run_id"][:8]
                ax.plot(*zip(*history), marker="o", markersize=3, label=str(label))
        ax.set(title=title, xlabel="iteration", ylim=(0, 100))
        ax.grid(alpha=0.3)
        if ax.lines:  # a metric no run logged (an older run's): no legend, rather than matplotlib's warning
            ax.legend(fontsize="x-small")
    return save_figure(fig, path)


PSEUDO_LABEL_PANELS = (
    ("pseudo/precision", "precision of confident pseudo labels (%)"),
    ("pseudo/object_precision", "precision of confident object-class labels (%)"),
    ("pseudo/foreground_recall", "object pixels confident and right (%)"),
)


def _no_runs(uri: str, experiments: list[str] | None, filter_tags: Mapping[str, Any] | None) -> str:
    scope = f"experiment(s) {', '.join(experiments)}" if experiments else "all experiments"
    where = f"the tracking store {redact(uri, uri)}"
    if filter_tags:
        return f"no run of {scope} in {where} has the tags {dict(filter_tags)}"
    return f"no runs in {scope} of {where}"


def report(
    uri: str | None,
    experiment: str | list[str] | None,
    layout: str,
    out_dir: str | Path,
    *,
    name: str | None = None,
    filter_tags: Mapping[str, Any] | None = None,
    expected_rows: Iterable[Any] | None = None,
    expected_cols: Iterable[Any] | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Collect the runs of ``experiment`` (None: all) from the store at ``uri`` (None: the default
    store), build table ``layout`` and write it to ``out_dir/<name or layout>.{md,csv,html}``."""
    uri = resolve_tracking_uri(uri)
    check_tracking_uri(uri)
    experiments = [experiment] if isinstance(experiment, str) else experiment
    runs = collect_runs(uri, experiments, filter_tags)
    if runs.empty:
        raise ReportError(_no_runs(uri, experiments, filter_tags))
    table = build_table(runs, layout, expected_rows, expected_cols)
    if title is None:
        context = ", ".join(f"{tag} {value}" for tag, value in table.attrs["context"].items())
        title = f"{_layout(layout).title} ({context})" if context else _layout(layout).title
    training = runs[_column(runs, "tags.kind") == "train"]
    stem = Path(out_dir) / (name or layout)
    figure = plot_pseudo_label_quality(uri, training, f"{stem}_pseudo_labels.png")
    curves = None
    if _layout(layout).curves:
        curves = plot_sweep_curves(table.attrs["values"], f"{stem}_curves.png", f"{_layout(layout).metric} (%)")
    figures = [path for path in (curves, figure) if path is not None]
    paths = write_report(table, out_dir, name or layout, title, figures=figures)
    if figure is not None:
        paths["png"] = figure
    if curves is not None:
        paths["curves"] = curves
    return paths
