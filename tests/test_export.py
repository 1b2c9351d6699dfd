"""Export to ONNX and TorchScript: the files compute PyTorch's logits (1e-4) at sizes other than the traced one,
DINOv2's positional table resizes inside the graph exactly as the eager encoder resizes it, and ``unimatch export``
writes the SHA-256, logs it to the training's run and refuses bad input with one line and exit code 2."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from unimatch.apps.export import export_model, load_exported, read_metadata, traceable_pos_embed
from unimatch.config import load_config
from unimatch.engine.setup import build_model
from unimatch.models import build_segmentor
from unimatch.models.encoders.dinov2 import interpolate_pos_embed

PROJECT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
FORMATS = ("onnx", "torchscript")


@pytest.mark.parametrize("grid", [(8, 11), (11, 8), (37, 37), (37, 20), (40, 52), (1, 1)])
def test_traceable_positional_table_is_dinov2s_resampling(grid: tuple[int, int]) -> None:
    table = torch.randn(1, 1 + 37 * 37, 24, generator=torch.Generator().manual_seed(0))
    expected = interpolate_pos_embed(table, *grid)
    assert torch.allclose(traceable_pos_embed(table, *grid), expected, atol=2e-5, rtol=0)


def _logits_difference(model: torch.nn.Module, path: Path, format_name: str, shape: tuple[int, ...]) -> float:
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        expected = model(image).numpy()
    found = load_exported(path, format_name)(image.numpy())
    assert found.shape == expected.shape
    return float(np.abs(found - expected).max())


@pytest.fixture(scope="module")
def embedded_model() -> torch.nn.Module:
    """The default experiment's model: the shipped foundation encoder and a seeded DPT head."""
    cfg = load_config("configs/embedded.yaml")
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.dataset.nclass, cfg.dataset.crop_size, cfg.method, quiet=True).eval()


@pytest.mark.parametrize("format_name", FORMATS)
def test_export_of_the_embedded_model_equals_pytorch_at_two_sizes(
    embedded_model: torch.nn.Module, format_name: str, tmp_path: Path
) -> None:
    path = tmp_path / f"model.{format_name}"
    exported = export_model(embedded_model, format_name, path, 112, {"class_names": ["a", "b"]})
    for shape in ((1, 3, 112, 154), (2, 3, 98, 140)):  # traced at 112x140; the second is neither size nor square
        assert _logits_difference(embedded_model, path, format_name, shape) <= TOLERANCE, shape
    digest, name = exported.sha256.read_text().split()
    assert name == path.name and digest == hashlib.sha256(path.read_bytes()).hexdigest()
    metadata = read_metadata(path, format_name)
    assert metadata["class_names"] == ["a", "b"] and metadata["size_divisor"] == 14 and "std" in metadata["processing"]


@pytest.mark.parametrize("format_name", FORMATS)
def test_export_of_a_dinov2_small_segmentor_equals_pytorch(format_name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_segmentor("small", 21, input_size=518).eval()
    path = tmp_path / f"small.{format_name}"
    export_model(model, format_name, path, 224, {})
    assert _logits_difference(model, path, format_name, (1, 3, 266, 224)) <= TOLERANCE


def test_exported_graph_has_no_dropout_branch(embedded_model: torch.nn.Module, tmp_path: Path) -> None:
    """Evaluation mode: the same input gives the same logits, and the pair halves of a batch are not
    complementary views (each image's logits do not depend on its batch neighbour)."""
    import onnx

    path = tmp_path / "model.onnx"
    export_model(embedded_model, "onnx", path, 112, {})
    operators = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Resize" in operators and not {op for op in operators if op.startswith(("Random", "Bernoulli", "Dropout"))}
    run = load_exported(path, "onnx")
    images = np.random.default_rng(0).standard_normal((2, 3, 112, 112)).astype(np.float32)
    together = run(images)
    assert np.array_equal(together, run(images))
    assert np.abs(together[:1] - run(images[:1])).max() <= TOLERANCE


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tracked_training) -> dict:
    """A tracked 2-iteration training of the embedded config (crop 56)."""
    root = tmp_path_factory.mktemp("export")
    settings, _, result = tracked_training(root, 4, "tracking.experiment=export")
    return {"root": root, "store": f"sqlite:///{root / 'mlflow.db'}", "settings": settings, "result": result}


def _export(trained: dict, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "unimatch.cli",
        "export",
        "-c",
        "configs/embedded.yaml",
        *args,
        *trained["settings"],
        f"output_dir={trained['root'] / 'cli'}",
    ]
    return subprocess.run(
        command, cwd=PROJECT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def test_export_command_writes_the_sha256_and_logs_it_to_the_training_run(trained: dict, tmp_path: Path) -> None:
    result = trained["result"]
    for format_name, source in (("onnx", str(result.best_checkpoint)), ("torchscript", "models:/export@best")):
        output = tmp_path / format_name / f"model.{format_name}"
        done = _export(trained, "--model", source, "--format", format_name, "--output", str(output))
        assert done.returncode == 0, done.stderr[-3000:]
        assert (output.parent / f"{output.name}.sha256").read_text().split()[0] == hashlib.sha256(
            output.read_bytes()
        ).hexdigest()
        assert read_metadata(output, format_name)["class_names"][0] == "background"
    logged = {item.path for item in MlflowClient(trained["store"]).list_artifacts(result.run_id, "exports")}
    assert logged == {"exports/model.onnx.sha256", "exports/model.torchscript.sha256"}


def _one_line_error(done: subprocess.CompletedProcess, *words: str) -> None:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert all(word in errors[0] for word in words), errors[0]


def test_bad_export_requests_are_one_line(trained: dict, tmp_path: Path) -> None:
    checkpoint = str(trained["result"].best_checkpoint)
    _one_line_error(
        _export(trained, "--model", checkpoint, "--format", "tflite", "--output", str(tmp_path / "m")),
        "--format",
        "tflite",
        "onnx, torchscript",
    )
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept")
    _one_line_error(
        _export(trained, "--model", checkpoint, "--format", "onnx", "--output", str(folder)), "--output", str(folder)
    )
    assert [p.name for p in folder.iterdir()] == ["kept.txt"]
    change = tmp_path / "change.pth"  # a change detector's checkpoint (its config names the task's dataset)
    torch.save({"model": {}, "config": {"dataset": {"name": "embedded-cd", "nclass": 2}}}, change)
    _one_line_error(
        _export(trained, "--model", str(change), "--format", "onnx", "--output", str(tmp_path / "m.onnx")),
        str(change),
        "change_detection",
    )
    assert not (tmp_path / "m.onnx").exists()


def test_every_command_loading_a_checkpoint_refuses_another_tasks(tmp_path: Path) -> None:
    """The task check sits where evaluate, predict and export load a checkpoint: a change detector's checkpoint
    with the segmentation config is refused by name; one of the config's own task is loaded."""
    from unimatch.engine.evaluate import load_model_source
    from unimatch.errors import ConfigError

    cfg = load_config("configs/embedded.yaml", ["model.weights=null"])
    change = tmp_path / "change.pth"
    torch.save({"model": {}, "config": {"dataset": {"name": "embedded-cd", "nclass": 2}}}, change)
    with pytest.raises(ConfigError, match=f"{change}: a change_detection checkpoint .* is segmentation"):
        load_model_source(cfg, change)
    model = build_model(cfg.model, cfg.dataset.nclass, cfg.dataset.crop_size, cfg.method, quiet=True)
    own = tmp_path / "own.pth"
    torch.save({"ema": model.state_dict(), "config": {"dataset": {"name": "embedded"}}, "run_id": "abc"}, own)
    loaded, run_id = load_model_source(cfg, own)
    saved, restored = model.state_dict(), loaded.state_dict()
    assert run_id == "abc" and all(torch.equal(saved[key], restored[key]) for key in saved)


def test_an_export_that_fails_verification_leaves_the_earlier_file(
    embedded_model: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unimatch.apps import export

    path = tmp_path / "model.onnx"
    path.write_bytes(b"earlier export")
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no file can pass: the refusal path, on a real export
    with pytest.raises(export.ExportError, match="was not written"):
        export_model(embedded_model, "onnx", path, 112, {})
    assert path.read_bytes() == b"earlier export" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
