"""Tracking against a real local MLflow store (sqlite under a temporary directory)."""

from __future__ import annotations

import math
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from unimatch.config import ExperimentConfig
from unimatch.figures import plot_confusion_matrix, plot_training_curves, write_curves
from unimatch.settings import TrackingConfig
from unimatch.tracking import (
    TRUNCATION_MARKER,
    MlflowTracker,
    Tracker,
    TrackingError,
    check_tracking_uri,
    redact,
    resolve_tracking_uri,
    sanitize_key,
    tracker_from_config,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database per module: creating MLflow's schema costs about a second."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # nothing may land in the repository (./mlruns, ./mlflow.db)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _config(uri: str, **tracking: object) -> ExperimentConfig:
    return ExperimentConfig(tracking=TrackingConfig(uri=uri, experiment="unit", **tracking))


def test_tracker_logs_params_metrics_tags_and_artifacts(store: str, tmp_path: Path, saved_figures: list) -> None:
    cfg = _config(store, tags={"owner": "ci", "kind": "overridden"})
    with tracker_from_config(cfg, tags={"kind": "train", "note": "first"}) as tracker:
        tracker.log_metrics({"train/loss": 1.5, "train/lr": 5e-6}, step=10)
        tracker.log_metrics({"train/loss": 1.25, "bad": math.nan}, step=20)
        tracker.log_metrics({"val/iou_ema/traffic light": 55.5, "val/iou_ema/a:b": 1.0}, step=1)
        history = {"train/loss": [(10, 1.5), (20, 1.25)], "val/miou_ema": [(1, 55.0), (2, 60.0)]}
        tracker.log_artifact(plot_training_curves(history, tmp_path / "curves.png"), "plots")
        run_id = tracker.run_id

    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "unimatch_v2-tiny-embedded-24"
    assert run.data.params["method.name"] == "unimatch_v2"
    assert run.data.params["train.lr"] == "0.0001"  # the tiny encoder's default, filled in by the config
    assert run.data.params["split.labeled"] == run.data.tags["split"] == "24"  # one spelling, not 24.0
    assert run.data.params["method.streams"] == "complementary" and run.data.params["train.deterministic"] == "false"
    expected_tags = {"kind": "train", "dataset": "embedded", "split": "24", "method": "unimatch_v2",
                     "encoder": "tiny", "frozen": "false", "streams": "complementary", "threshold": "0.95",
                     "unlabeled_weight": "1", "owner": "ci", "note": "first"}
    assert expected_tags.items() <= run.data.tags.items()
    assert run.data.metrics["train/loss"] == 1.25
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == [(10, 1.5), (20, 1.25)]
    assert run.data.metrics["val/iou_ema/traffic light"] == 55.5
    assert "val/iou_ema/a_b" in run.data.metrics and "bad" not in run.data.metrics

    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifacts.is_relative_to(Path(store.removeprefix("sqlite:///")).parent)  # not ./mlruns
    assert yaml.safe_load((artifacts / "config.yaml").read_text()) == cfg.to_dict()
    assert (artifacts / "plots" / "curves.png").is_file()
    (curves,) = saved_figures  # the logged figure draws the history it was given
    panels = {ax.get_title(): {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
              for ax in curves.axes if ax.get_title()}  # fmt: skip
    assert {key: lines for key, lines in panels.items() if lines} == {
        "loss": {"train/loss": ([10, 20], [1.5, 1.25])}, "validation mIoU (%)": {"val/miou_ema": ([1, 2], [55.0, 60.0])}}


def test_labeled_only_run_logs_only_the_settings_it_reads(store: str) -> None:
    cfg = ExperimentConfig(tracking=TrackingConfig(uri=store, experiment="unit"), method={"name": "labeled_only"})
    with tracker_from_config(cfg) as tracker:
        run_id = tracker.run_id
    run = MlflowClient(store).get_run(run_id)
    assert {key for key in run.data.params if key.startswith("method.")} == {"method.name", "method.schedule"}  # no τ, λ, EMA
    assert "train.lr" in run.data.params and "model.encoder" in run.data.params
    assert not {"streams", "threshold", "unlabeled_weight"} & set(run.data.tags)


def test_long_params_are_truncated_and_resume_skips_logged_params(store: str) -> None:
    with MlflowTracker(store, "unit") as tracker:
        tracker.log_params({"model": {"encoder": "small"}, "long": "x" * (MAX_PARAM_VAL_LENGTH + 10)})
        run_id = tracker.run_id

    with MlflowTracker(store, "unit", resume_run_id=run_id) as resumed:
        # same value again: skipped; a changed value: kept as first logged, with a warning, no crash
        resumed.log_params({"model.encoder": "small", "long": "y", "epochs": 3})

    run = MlflowClient(store).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.encoder"] == "small"
    assert run.data.params["epochs"] == "3"
    long = run.data.params["long"]
    assert len(long) == MAX_PARAM_VAL_LENGTH and long.endswith(TRUNCATION_MARKER)


def test_active_run_is_reused_and_left_open(store: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    client = MlflowClient(store)
    experiment_id = client.create_experiment("outer", artifact_location=(tmp_path / "outer").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as outer:
        # the configured URI is ignored: the step's run decides where things go
        tracker = tracker_from_config(_config(f"sqlite:///{tmp_path}/elsewhere.db"))
        assert tracker.run_id == outer.info.run_id
        tracker.log_metrics({"val/miou_ema": 71.0}, step=1)
        tracker.finish()
        assert mlflow.active_run().info.run_id == outer.info.run_id
        assert client.get_run(outer.info.run_id).info.status == "RUNNING"
    run = client.get_run(outer.info.run_id)
    assert run.data.metrics["val/miou_ema"] == 71.0
    assert run.data.tags["unimatch.status"] == "FINISHED"
    assert run.data.tags["method"] == "unimatch_v2"
    assert not (tmp_path / "elsewhere.db").exists()


def test_exception_marks_run_failed(store: str) -> None:
    with pytest.raises(ValueError), MlflowTracker(store, "unit", run_name="boom") as tracker:
        raise ValueError("diverged")
    assert MlflowClient(store).get_run(tracker.run_id).info.status == "FAILED"


def test_metrics_go_to_mlflow_in_batches_of_its_limit_and_all_arrive(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH

    count = 2 * MAX_METRICS_PER_BATCH + 7
    with MlflowTracker(store, "unit", run_name="many") as tracker:
        sent = []
        log_batch = tracker._client.log_batch
        monkeypatch.setattr(tracker._client, "log_batch", lambda run_id, **kinds: sent.append(len(kinds["metrics"])) or log_batch(run_id, **kinds))
        tracker.log_metrics({f"val/iou/class_{index}": index / 10 for index in range(count)}, step=3)
    assert sent == [MAX_METRICS_PER_BATCH, MAX_METRICS_PER_BATCH, 7]
    logged = MlflowClient(store).get_run(tracker.run_id).data.metrics
    assert len(logged) == count and logged["val/iou/class_1234"] == pytest.approx(123.4)


class _Unavailable(BaseHTTPRequestHandler):
    """A tracking server that answers every request 503 (a transient error MLflow's client retries), counting them."""

    requests = 0

    def _answer(self) -> None:
        type(self).requests += 1
        self.send_response(503)
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


def test_unavailable_server_fails_on_its_first_answer_naming_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # so that retries, were there any, cost no waiting
    monkeypatch.setattr(_Unavailable, "requests", 0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        with pytest.raises(TrackingError, match=re.escape(uri)):
            tracker_from_config(_config(uri))
    finally:
        server.shutdown()
    assert _Unavailable.requests == 1  # not retried: MLflow's default retries back off for minutes
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the fast settings were only temporary


def test_redact_masks_the_password_of_a_tracking_uri_wherever_it_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = "https://alice:s3cr%40t@mlflow.example.com:5000/root"
    assert redact(uri, uri) == "https://alice:***@mlflow.example.com:5000/root"
    assert redact(f"{uri} answered 401 to s3cr%40t", uri) == "https://alice:***@mlflow.example.com:5000/root answered 401 to ***"
    for plain in ("sqlite:////tmp/mlflow.db", "http://alice@host:5000"):  # nothing secret: unchanged
        assert redact(f"{plain} is down", plain) == f"{plain} is down"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TrackingError) as error:
            check_tracking_uri(f"http://bob:hunter2@127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert f"bob:***@127.0.0.1:{server.server_port}" in str(error.value) and "hunter2" not in str(error.value)


def test_bad_sqlite_directory_and_unknown_scheme_fail(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path}/no/such/dir/mlflow.db"
    with pytest.raises(TrackingError, match=re.escape(missing)):
        check_tracking_uri(missing)
    assert not (tmp_path / "no").exists()
    with pytest.raises(TrackingError, match="nosuch://store"):
        check_tracking_uri("nosuch://store")


def test_resolve_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/x.db") == f"sqlite:///{tmp_path}/x.db"
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(None) == "http://tracking.example:5000"


def test_disabled_tracking_is_a_no_op() -> None:
    tracker = tracker_from_config(_config("nosuch://store", enabled=False))
    assert type(tracker) is Tracker and tracker.run_id is None
    with tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"train/loss": 0.5}, step=2)
        tracker.log_text("x", "x.txt")


@pytest.mark.parametrize(
    ("key", "expected"),
    [("train/loss", "train/loss"), ("val/iou_ema/traffic light", "val/iou_ema/traffic light"),
     ("val/iou_ema/a:b(c)", "val/iou_ema/a_b_c_"), ("a//b/../c/", "a/b/_/c"), ("", "_")],
)
def test_sanitize_key(key: str, expected: str) -> None:
    assert sanitize_key(key) == expected


def test_curves_are_csv_tables_by_iteration_and_by_epoch(tmp_path: Path) -> None:
    history = {"train/loss": [(10, 1.5), (20, 1.25)], "train/lr": [(10, 1e-4), (20, 5e-5)],
               "val/miou_ema": [(1, 55.0), (2, 60.0)], "val/miou_student": [(1, 50.0), (2, 58.0)],
               "pseudo/precision": [(2, 90.0)]}  # fmt: skip
    training, validation = write_curves(history, tmp_path / "curves")
    assert training.read_text().splitlines() == ["iteration,loss,lr", "10,1.5,0.0001", "20,1.25,5e-05"]
    assert validation.read_text().splitlines() == ["epoch,miou_ema,miou_student,precision", "1,55.0,50.0,", "2,60.0,58.0,90.0"]


def test_plot_confusion_matrix_shows_rows_normalised_and_empty_rows_as_zeros(tmp_path: Path, saved_figures: list) -> None:
    confusion = np.array([[8, 2, 0], [0, 0, 0], [1, 0, 9]])
    path = plot_confusion_matrix(confusion, ["road", "sky", "car"], tmp_path / "sub" / "confusion.png")
    assert path.is_file()
    (figure,) = saved_figures
    ax = figure.axes[0]
    assert np.array_equal(np.asarray(ax.images[0].get_array()), [[0.8, 0.2, 0.0], [0.0, 0.0, 0.0], [0.1, 0.0, 0.9]])
    assert [label.get_text() for label in ax.get_yticklabels()] == ["road", "sky", "car"]  # rows: ground truth
    assert [text.get_text() for text in ax.texts][:3] == ["0.80", "0.20", "0.00"]
