"""The ZenML pipelines end to end on the local stack, in a temporary project.

Each pipeline runs in a subprocess, as `make run` does, with its working directory, ZenML
configuration, store and repository and its MLflow store all in a temporary directory, on a tiny
generated dataset with a two-iteration budget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from unimatch.data import generate_embedded
from unimatch.data.embedded_change import generate_embedded_change

PROJECT = Path(__file__).resolve().parents[1]
METHODS = ("labeled_only", "fixmatch", "unimatch_v2")
# 12 train / 3 val images of 64x48, 4 labeled, 2 iterations, no loader workers: seconds per method.
TINY = ["split.labeled=4", "train.batch_size=2", "dataset.crop_size=42", "train.num_workers=0", "train.max_iters=2",
        "model.weights=null", "pretrain.method=mae", "pretrain.batch_size=4"]  # --quick: 3 pre-training iterations
STEP_STATUSES = """
import json
from zenml.client import Client
runs = Client().list_pipeline_runs(pipeline_name="semi_supervised_benchmark", sort_by="asc:created", size=10).items
print(json.dumps([{name: step.status.value for name, step in run.steps.items()} for run in runs]))
"""


def _home_env(root: Path) -> dict[str, str]:
    """This environment with ``root/home`` as the home directory and no ZenML variable: ZenML's own defaults
    (its configuration and local store under ``~/.config/zenml``), as for a user who exported nothing."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("ZENML_") and key != "XDG_CONFIG_HOME"}
    return {**env, "HOME": str(root / "home")}


def _env(root: Path) -> dict[str, str]:
    return {
        **_home_env(root),
        "ZENML_REPOSITORY_PATH": str(root),  # the temporary project, not this checkout
        "ZENML_ANALYTICS_OPT_IN": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PYTHONPATH": str(PROJECT),
    }


def _python(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, *args], cwd=root, env=_env(root), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(PROJECT / "configs", root / "configs")
    generate_embedded(root / "data" / "embedded", n_train=12, n_val=3, size=(64, 48))
    return root


@pytest.fixture(scope="module")
def benchmark_runs(project: Path) -> list[subprocess.CompletedProcess[str]]:
    """The Table 5 pipeline twice with identical inputs."""
    return [_python(project, "-m", "pipelines.semi_supervised_benchmark", "--quick", *TINY) for _ in range(2)]


def _runs(project: Path, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment}"
    return client.search_runs([found.experiment_id])


def test_benchmark_logs_one_training_run_per_method(project: Path, benchmark_runs: list) -> None:
    runs = [run for run in _runs(project, "embedded-table5-quick") if run.data.tags.get("kind") == "train"]
    assert sorted(run.data.tags["method"] for run in runs) == sorted(METHODS)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert "best_miou_ema" in run.data.metrics
        tags = run.data.tags
        assert (tags["table"], tags["dataset"], tags["split"], tags["encoder"]) == ("table5", "embedded", "4", "tiny")
        assert tags.get("streams") == ("complementary" if tags["method"] == "unimatch_v2" else None)  # its own settings only
        assert run.data.params["train.max_iters"] == "2"
        assert re.fullmatch(r"[0-9a-f-]{36}", tags["zenml_run_id"])  # the ZenML pipeline run it belongs to
        assert run.data.params["pretrain.encoder"].startswith("runs/pretrain/embedded-tiny-mae-")
    (pretrain_run,) = [run for run in _runs(project, "embedded-table5-quick") if run.data.tags.get("kind") == "pretrain"]
    assert pretrain_run.info.status == "FINISHED" and "pretrain/loss" in pretrain_run.data.metrics


def test_benchmark_writes_the_table5_report_and_predictions(project: Path, benchmark_runs: list) -> None:
    outputs = project / "outputs" / "embedded-table5-quick"
    markdown = (outputs / "methods.md").read_text(encoding="utf-8")
    assert markdown.startswith("# Table 5")
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in markdown.splitlines() if line.startswith("| ")}
    for label in ("labeled-only", "FixMatch", "UniMatch V2"):
        assert rows[label], f"empty cell for {label}: {markdown}"
    assert (outputs / "methods.csv").is_file() and (outputs / "methods.html").is_file()
    assert (outputs / "methods_pseudo_labels.png").stat().st_size > 10_000  # pseudo-label quality across runs
    assert len(list((outputs / "predictions" / "unimatch_v2" / "labels").glob("*.png"))) == 3


def test_zenml_cli_of_a_plain_venv_lists_the_runs(project: Path, benchmark_runs: list, tmp_path: Path) -> None:
    """`zenml pipeline runs list`, run in the project from a virtual environment built like `pip install -e .`
    (no startup hook, nothing exported), lists the runs that `python -m pipelines...` made: ZenML finds the
    repository that `zenml init` marked at the project root and its store at its default place.

    Building that environment by installing the packages would take minutes, so it is a bare `venv` of this
    interpreter whose only addition is a .pth line naming this environment's site-packages (and the project,
    as an editable install does): the same packages, but none of this environment's own .pth start-up code,
    which is where the old mechanism hid the project's ZenML variables."""
    assert (project / ".zen" / "config.yaml").is_file()  # what `zenml init` writes
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    site = next((tmp_path / "venv" / "lib").glob("python3*/site-packages"))
    (site / "packages.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{PROJECT}\n", encoding="utf-8")
    cli = "from zenml.cli.cli import cli; cli()"
    listed = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", cli, "pipeline", "runs", "list"],
                            cwd=project, env=_home_env(project), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert listed.stdout.count("semi_supervised_benchmark") == 2 and "2 items found" in listed.stderr, listed.stdout
    stacks = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", cli, "stack", "describe"],
                            cwd=project, env=_home_env(project), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "unimatch-mlflow" in stacks.stdout and "unimatch-mlflow-registry" in stacks.stdout, stacks.stdout


MODEL_VERSIONS = """
import json
from zenml.client import Client
versions = Client().list_model_versions(model_name_or_id="embedded-table5-quick-unimatch_v2", size=10).items
print(json.dumps([{"metadata": {k: v for k, v in version.run_metadata.items()},
                   "artifacts": sorted(version.model_artifact_ids)} for version in versions], default=str))
"""


def test_trainings_are_zenml_model_versions_linked_to_their_mlflow_runs(project: Path, benchmark_runs: list) -> None:
    versions = json.loads(_python(project, "-c", MODEL_VERSIONS).stdout.strip().splitlines()[-1])
    assert versions, "no ZenML model version for the UniMatch V2 training"
    (train_run,) = [run for run in _runs(project, "embedded-table5-quick")
                    if run.data.tags.get("kind") == "train" and run.data.tags["method"] == "unimatch_v2"]  # fmt: skip
    first = versions[0]
    assert first["metadata"]["mlflow_run_id"] == train_run.info.run_id and first["artifacts"]
    assert first["metadata"]["mlflow_model"].startswith("models:/embedded-table5-quick/")


def test_second_identical_run_is_served_from_the_step_cache(project: Path, benchmark_runs: list) -> None:
    statuses = json.loads(_python(project, "-c", STEP_STATUSES).stdout.strip().splitlines()[-1])
    assert len(statuses) == 2
    first, second = statuses
    assert set(first.values()) == {"completed"}
    assert first["pretrain_encoder"] == "completed" and second["pretrain_encoder"] == "cached"
    for method in METHODS:
        assert second[f"train_{method}"] == "cached"
        assert second[f"evaluate_{method}"] == "cached"
    # Side-effect steps always run (they read the dataset or the tracking store, or write files).
    assert second["create_splits"] == second["build_report"] == "completed"
    assert re.search(r"train_fixmatch +cached", benchmark_runs[1].stdout)  # the command's own summary
    # The cached steps did not log new MLflow runs: still one training run per method.
    assert len([r for r in _runs(project, "embedded-table5-quick") if r.data.tags.get("kind") == "train"]) == len(METHODS)


def test_pretrain_foundation_pipeline_writes_tracked_weights_and_is_cached(project: Path) -> None:
    output = project / "weights" / "tiny.pth"
    overrides = ["iterations=3", "batch_size=4", "corpus_size=12", "num_workers=0", "warmup_iters=1", f"output={output}",
                 "probe.labeled=2", "probe.iterations=2", "probe.batch_size=2"]  # fmt: skip
    first = _python(project, "-m", "pipelines.pretrain_foundation", *overrides)
    assert re.search(r"train_foundation_encoder +completed", first.stdout)
    assert re.search(r"probe_foundation_encoder +completed", first.stdout)
    assert output.is_file() and (project / "weights" / "SHA256SUMS").read_text().split()[1] == "tiny.pth"
    runs = {run.data.tags["kind"]: run for run in _runs(project, "foundation")}
    assert sorted(runs) == ["foundation", "probe"] and all(run.info.status == "FINISHED" for run in runs.values())
    assert "foundation/loss" in runs["foundation"].data.metrics and "foundation/held_out_miou" in runs["foundation"].data.metrics
    assert {"probe/frozen/miou", "probe/finetuned/foreground_accuracy"} <= set(runs["probe"].data.metrics)
    summary = json.loads(output.with_suffix(".json").read_text())  # the probe's table joins the summary
    assert [row["mode"] for row in summary["probe"]["results"]] == ["frozen", "finetuned"]
    second = _python(project, "-m", "pipelines.pretrain_foundation", *overrides)
    assert re.search(r"train_foundation_encoder +cached", second.stdout)


def test_scheduled_sweep_runs_once_on_the_local_orchestrator(project: Path, tmp_path: Path) -> None:
    run_config = tmp_path / "sweep.yaml"
    run_config.write_text(yaml.safe_dump({
        "parameters": {"quick": True, "overrides": TINY, "grid": {"method.threshold": [0.5]}},
        "schedule": {"cron_expression": "0 3 * * 0"},
    }), encoding="utf-8")
    result = _python(project, "-m", "pipelines.sweep", "--run-config", str(run_config))
    assert "does not support schedules" in result.stdout
    assert "0 3 * * 0 cd " in result.stdout and "-m pipelines.sweep --run-config" in result.stdout
    (run,) = [run for run in _runs(project, "embedded-sweep-quick") if run.data.tags.get("kind") == "train"]
    assert (run.data.tags["sweep_param"], run.data.tags["sweep_value"], run.data.params["method.threshold"]) == (
        "threshold", "0.5", "0.5")
    rows = (project / "outputs" / "embedded-sweep-quick" / "sweep.md").read_text(encoding="utf-8").splitlines()
    assert any(row.startswith("| τ (confidence threshold) ") for row in rows)


SELF_TRAINING_STEPS = """
import json
from zenml.client import Client
runs = Client().list_pipeline_runs(pipeline_name="self_training", sort_by="asc:created", size=10).items
print(json.dumps([{name: step.status.value for name, step in run.steps.items()} for run in runs]))
"""


def test_self_training_runs_its_stages_once_and_reports_st_and_stpp(project: Path) -> None:
    for _ in range(2):
        _python(project, "-m", "pipelines.self_training", "--quick", *TINY, "pretrain.method=none")
    first, second = json.loads(_python(project, "-c", SELF_TRAINING_STEPS).stdout)[-2:]
    stages = {"train_teacher", "pseudo_label_all", "train_st", "rank_by_stability", "select_pseudo_labels",
              "train_stpp_round1", "pseudo_label_unreliable", "train_stpp", "build_report"}  # fmt: skip
    assert stages <= set(first) and all(first[name] == "completed" for name in stages)
    # Side-effect steps always run (they read the dataset or the tracking store, or write files).
    assert all(status == "cached" for name, status in second.items() if name not in ("create_splits", "build_report")), second
    runs = [run for run in _runs(project, "embedded-self-training-quick") if run.data.tags.get("kind") == "train"]
    assert sorted((run.data.tags["method"], run.data.tags.get("stage", "")) for run in runs) == [
        ("labeled_only", ""), ("st", ""), ("st++", ""), ("st++", "round 1")]
    outputs = project / "outputs" / "embedded-self-training-quick"
    rows = (outputs / "methods.md").read_text(encoding="utf-8").splitlines()
    assert any(re.match(r"\| ST +\| +\d+\.\d \|", row) for row in rows) and any(re.match(r"\| ST\+\+ +\| +\d+\.\d \|", row) for row in rows)
    label_next = (outputs / "stability" / "label_next.csv").read_text(encoding="utf-8").splitlines()
    assert label_next[0] == "rank,image,stability" and len(label_next) == 1 + 8  # every unlabeled image, ranked
    assert (outputs / "stability" / "label_next.png").is_file()


def test_encoder_comparison_writes_table9_with_sizes_and_step_time(project: Path) -> None:
    _python(project, "-m", "pipelines.encoder_comparison", "--quick", *TINY, "pretrain.method=none")
    runs = {run.data.tags["encoder"]: run for run in _runs(project, "embedded-table9-quick") if run.data.tags.get("kind") == "train"}
    assert sorted(runs) == ["mit-tiny", "resnet-tiny", "tiny"]  # the CPU-sized encoders made for the DPT head
    cnn, vit = runs["resnet-tiny"], runs["tiny"]
    assert (cnn.data.params["train.lr"], cnn.data.params["dataset.crop_size"]) == ("0.001", "32")  # its defaults, its divisor
    assert (vit.data.params["train.lr"], vit.data.params["dataset.crop_size"]) == ("0.0001", "42")
    assert cnn.data.metrics["params_encoder_m"] == pytest.approx(0.70, abs=0.01) and cnn.data.metrics["mean_step_seconds"] > 0
    rows = (project / "outputs" / "embedded-table9-quick" / "encoders.md").read_text(encoding="utf-8").splitlines()
    assert "#params encoder / decoder (M)" in rows[2] and "s / training step" in rows[2]
    assert any(re.match(r"\| resnet-tiny +\| +0\.7 / 0\.4 \| +\d+\.\d{3} \| +\d+\.\d \|", row) for row in rows), rows


def test_change_detection_reports_table14_and_draws_pair_overlays(project: Path) -> None:
    generate_embedded_change(project / "data" / "embedded-cd", n_train=12, n_val=3, size=(64, 64))
    _python(project, "-m", "pipelines.change_detection", "--quick", "split.labeled=4", "train.batch_size=2", "dataset.crop_size=56",
            "train.num_workers=0", "model.weights=null", "eval.pseudo_label_images=2")  # fmt: skip
    runs = [run for run in _runs(project, "embedded-cd-table14-quick") if run.data.tags.get("kind") == "train"]
    assert sorted(run.data.tags["method"] for run in runs) == ["labeled_only", "unimatch_v2"]
    assert all({"best_iou_changed_student", "best_overall_accuracy_student"} <= set(run.data.metrics) for run in runs)
    outputs = project / "outputs" / "embedded-cd-table14-quick"
    rows = (outputs / "change.md").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("# Table 14: change detection")
    for label in ("labeled-only", "UniMatch V2"):  # IoU_c / OA of the student's best epoch
        assert any(re.match(rf"\| {label} +\| +\d+\.\d / \d+\.\d\d \|", row) for row in rows), rows
    assert not any(row.startswith(("| ST", "| SemiVL", "| AllSpark")) for row in rows)  # methods not defined for pairs
    overlays = sorted((outputs / "predictions" / "unimatch_v2" / "overlays").glob("*.jpg"))
    assert [path.name for path in overlays] == ["val_00000.jpg", "val_00001.jpg", "val_00002.jpg"]  # the evaluation pairs only


def test_encoder_variants_take_each_encoders_defaults_unless_set() -> None:
    from pipelines.encoder_comparison import encoder_variants
    from unimatch.jobs import resolve_base, variant_config

    def configs(config: str, overrides: list[str], encoders: list[str]) -> list[dict]:
        base = resolve_base(config, overrides, False, None, "table9")
        return [variant_config(base, variant) for variant in encoder_variants(config, overrides, base, encoders, {})]

    embedded = str(PROJECT / "configs" / "embedded.yaml")
    tiny, cnn = configs(embedded, [], ["tiny", "resnet-tiny"])
    assert tiny["model"]["weights"] == "weights/foundation/embedded-tiny.pth" and cnn["model"]["weights"] is None
    assert (tiny["train"]["lr"], cnn["train"]["lr"], cnn["train"]["lr_multiplier"]) == (1e-4, 1e-3, 1.0)
    (chosen,) = configs(embedded, ["train.lr=3e-4"], ["resnet-tiny"])
    assert chosen["train"]["lr"] == 3e-4  # set by the user: kept for every encoder
    beit, sam = configs(str(PROJECT / "configs" / "experiments" / "pascal_unimatch_v2_base_92.yaml"), [], ["beit-b", "sam-b"])
    assert (beit["dataset"]["crop_size"], beit["method"]["teacher"], sam["method"]["teacher"]) == (512, "student", "ema")


def test_variant_run_directories_are_keyed_by_config() -> None:
    from unimatch.jobs import Variant, resolve_base, variant_config

    base = resolve_base(str(PROJECT / "configs" / "embedded.yaml"), [], False, None, "table5")
    one = variant_config(base, Variant("fixmatch", ["method.name=fixmatch"]))
    other = variant_config(base, Variant("fixmatch", ["method.name=fixmatch", "train.seed=12345"]))
    assert one["output_dir"].startswith("runs/embedded-table5/fixmatch-")
    assert one["output_dir"] != other["output_dir"]
    assert one == variant_config(base, Variant("fixmatch", ["method.name=fixmatch"]))
    with pytest.raises(ValueError, match="split"):
        variant_config(base, Variant("more-labels", ["split.labeled=48"]))


@pytest.mark.parametrize(("entry", "expected"), [
    (("pipelines.semi_supervised_benchmark", "--quick", "train.batch_sise=2"), "command-line override 'train.batch_sise=2': train.batch_sise: Extra inputs are not permitted"),
    (("pipelines.dvc_stages", "splits"), "params.yaml: not found in "),
], ids=["zenml", "dvc"])  # fmt: skip
def test_entry_points_report_anticipated_errors_in_one_line(tmp_path: Path, entry: tuple[str, ...], expected: str) -> None:
    """The pipeline and DVC stage commands share the CLI's error boundary: a typo in an override, a missing
    params.yaml (run outside the project) are one line and exit code 2, not a traceback."""
    shutil.copytree(PROJECT / "configs", tmp_path / "configs")
    result = subprocess.run([sys.executable, "-m", *entry], cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
