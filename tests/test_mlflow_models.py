"""Trained models in MLflow: logged as MLflow models that load back with ``mlflow.pytorch.load_model``
and predict what the checkpoint predicts, registered with ``best`` aliases that follow the score, usable
by ``unimatch predict/evaluate --model``, and evaluation runs nested under their training run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from unimatch.config import load_config
from unimatch.data import generate_embedded
from unimatch.engine.evaluate import checkpoint_model
from unimatch.jobs import train
from unimatch.tracking import PARENT_RUN_TAG, tracker_from_config, using_store

PROJECT = Path(__file__).resolve().parents[1]
EXPERIMENT = "models-test"
COMMON = ("dataset.crop_size=56", "split.labeled=8", "train.batch_size=2", "train.num_workers=0", "train.max_iters=2",
          "pretrain.method=none", "model.weights=null", "eval.pseudo_label_images=0", f"tracking.experiment={EXPERIMENT}")  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tracked trainings (two seeds) of one experiment in one store."""
    root = tmp_path_factory.mktemp("models")
    data = generate_embedded(root / "data", seed=2, n_train=16, n_val=3, size=(84, 70))
    store = f"sqlite:///{root / 'mlflow.db'}"
    results = []
    for seed in (0, 1):
        overrides = [f"dataset.root={data}", f"output_dir={root / f'run{seed}'}", f"split.dir={root / 'splits'}",
                     f"tracking.uri={store}", f"train.seed={seed}", *COMMON]  # fmt: skip
        cfg = load_config("configs/embedded.yaml", overrides)
        with tracker_from_config(cfg) as tracker:
            results.append((cfg, train(cfg, tracker, progress=False)))
    return {"root": root, "data": data, "store": store, "results": results, "client": MlflowClient(tracking_uri=store)}


def test_logged_model_loads_and_predicts_what_the_checkpoint_predicts(world: dict) -> None:
    cfg, result = world["results"][0]
    with using_store(world["store"]):
        logged = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model", map_location="cpu")
        model_info = mlflow.models.Model.load(f"runs:/{result.run_id}/model")
    reference = checkpoint_model(cfg, result.best_checkpoint, "ema").eval()
    image = torch.randn(1, 3, 70, 84)
    with torch.no_grad():
        assert torch.equal(logged.eval()(image).argmax(1), reference(image).argmax(1))
    run = world["client"].get_run(result.run_id)
    # An MLflow 3 logged model of the run (the UI's "Logged models"), in the run's experiment.
    (output,) = run.outputs.model_outputs
    assert run.data.tags["unimatch.model"] == f"models:/{output.model_id}"
    logged = world["client"].get_logged_model(output.model_id)
    assert (logged.name, logged.source_run_id, logged.experiment_id) == ("model", result.run_id, run.info.experiment_id)
    assert model_info.metadata["class_names"][0] == "background" and model_info.signature is not None


def test_registry_versions_and_best_alias_follow_the_score(world: dict) -> None:
    client = world["client"]
    versions = client.search_model_versions(f"name='{EXPERIMENT}'")
    assert sorted(v.run_id for v in versions) == sorted(r.run_id for _, r in world["results"])
    scores = {r.run_id: r.metrics["best_miou_ema"] for _, r in world["results"]}
    best = client.get_model_version_by_alias(EXPERIMENT, "best")
    assert scores[best.run_id] == max(scores.values()) == float(best.tags["best_miou_ema"])
    assert client.get_model_version_by_alias(EXPERIMENT, "best-unimatch_v2").version == best.version


def _cli(world: dict, *args: str) -> subprocess.CompletedProcess:
    settings = [f"dataset.root={world['data']}", f"split.dir={world['root'] / 'splits'}", f"tracking.uri={world['store']}",
                f"output_dir={world['root'] / 'cli'}", *COMMON]  # fmt: skip
    return subprocess.run([sys.executable, "-m", "unimatch.cli", *args, "--no-progress", "-c", "configs/embedded.yaml", *settings],
                          cwd=PROJECT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


def test_predict_with_a_registry_alias_matches_the_checkpoint(world: dict, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 84, 3), dtype=np.uint8)).save(images / "a.png")
    best = world["client"].get_model_version_by_alias(EXPERIMENT, "best")
    checkpoint = next(r.best_checkpoint for _, r in world["results"] if r.run_id == best.run_id)
    for source, out in ((f"models:/{EXPERIMENT}@best", "by_alias"), (str(checkpoint), "by_checkpoint")):
        done = _cli(world, "predict", "--model", source, "--input", str(images), "--output", str(tmp_path / out))
        assert done.returncode == 0, done.stderr[-3000:]
    by_alias = np.array(Image.open(tmp_path / "by_alias" / "labels" / "a.png"))
    assert np.array_equal(by_alias, np.array(Image.open(tmp_path / "by_checkpoint" / "labels" / "a.png")))


def test_unknown_alias_is_one_line(world: dict) -> None:
    done = _cli(world, "evaluate", "--model", f"models:/{EXPERIMENT}@nope")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1 and f"models:/{EXPERIMENT}@nope" in errors[0], done.stderr[-3000:]


def test_evaluation_run_is_a_child_of_its_training_run(world: dict) -> None:
    _, result = world["results"][1]
    done = _cli(world, "evaluate", "--checkpoint", str(result.best_checkpoint))
    assert done.returncode == 0, done.stderr[-3000:]
    client = world["client"]
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    (evaluation,) = client.search_runs([experiment], "tags.kind = 'eval'")
    assert evaluation.data.tags[PARENT_RUN_TAG] == result.run_id
    assert evaluation.data.params["eval.model"] == str(result.best_checkpoint)


def test_a_quick_run_leaves_the_best_alias_of_the_real_registered_model(world: dict) -> None:
    """Issue 31: a --quick smoke test of the same experiment registers into <name>-quick, never into the real
    registered model, so its `best` alias stays on the real version."""
    from unimatch.config import validate
    from unimatch.jobs import Variant, resolve_base, run_training, variant_config

    client = world["client"]
    before = client.get_model_version_by_alias(EXPERIMENT, "best").version
    versions = {v.version for v in client.search_model_versions(f"name='{EXPERIMENT}'")}
    overrides = [f"dataset.root={world['data']}", f"tracking.uri={world['store']}", *COMMON]
    base = resolve_base("configs/embedded.yaml", overrides, True, EXPERIMENT, "table5")
    base["split"]["dir"] = str(world["root"] / "splits")  # not the project's runs/
    tree = variant_config(base, Variant("quick", []))
    tree["output_dir"] = str(world["root"] / "quick")
    result = run_training(validate(tree), {"kind": "train"}, progress=False)
    assert result.registered_model == f"models:/{EXPERIMENT}-quick/1"
    assert client.get_model_version_by_alias(EXPERIMENT, "best").version == before
    assert {v.version for v in client.search_model_versions(f"name='{EXPERIMENT}'")} == versions
