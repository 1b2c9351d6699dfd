"""The trained model as an MLflow model that serves: its python_function flavour takes images of any size and
returns what ``unimatch predict`` writes, carries the project's code, and ``mlflow models serve`` answers JSON
requests (bad ones with a clear error, without going down)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.models import Model
from PIL import Image

from unimatch.apps.serving import local_server
from unimatch.tracking import using_store

PROJECT = Path(__file__).resolve().parents[1]
NAME = "serving-test"
NCLASS = 7


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tracked_training) -> dict:
    """One tracked training (2 iterations, crop 56) registered as NAME, two images (160x120 and 518x518) and
    the label PNGs `unimatch predict --model models:/NAME@best` wrote for them."""
    root = tmp_path_factory.mktemp("serving")
    store = f"sqlite:///{root / 'mlflow.db'}"
    overrides, cfg, _ = tracked_training(
        root, 3, f"output_dir={root / 'run'}", "tracking.experiment=serving", f"tracking.registered_model={NAME}"
    )
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (height, width) in {"wide": (120, 160), "square": (518, 518)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(images / f"{name}.png")
    labels = root / "predicted"
    command = [
        sys.executable,
        "-m",
        "unimatch.cli",
        "predict",
        "--no-progress",
        "-c",
        "configs/embedded.yaml",
        "--model",
        f"models:/{NAME}@best",
        "--input",
        str(images),
        "--output",
        str(labels),
        *overrides,
    ]
    done = subprocess.run(
        command, cwd=PROJECT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "store": store, "cfg": cfg, "images": images, "labels": labels / "labels"}


def _image(world: dict, name: str) -> np.ndarray:
    return np.asarray(Image.open(world["images"] / f"{name}.png"))


def _predict_png(world: dict, name: str) -> np.ndarray:
    """The label map ``unimatch predict`` wrote for the image (a palette PNG: its values are the classes)."""
    return np.asarray(Image.open(world["labels"] / f"{name}.png"))


def test_pyfunc_predicts_any_size_as_unimatch_predict(world: dict) -> None:
    with using_store(world["store"]):
        served = mlflow.pyfunc.load_model(f"models:/{NAME}@best")
        info = Model.load(f"models:/{NAME}@best")
    (spec,) = info.signature.inputs.inputs
    assert spec.shape == (-1, -1, -1, 3) and spec.type == np.dtype(np.uint8)
    for name, shape in (("wide", (120, 160)), ("square", (518, 518))):
        labels = served.predict(_image(world, name)[None])
        assert labels.shape == (1, *shape) and labels.dtype == np.uint8
        assert np.array_equal(labels[0], _predict_png(world, name)), name
    assert info.metadata["serving"]["class_names"] == info.metadata["class_names"]
    assert len(info.metadata["serving"]["palette"]) == NCLASS and info.metadata["serving"]["palette"][0] == [0, 0, 0]


def test_model_carries_the_project_code_and_keeps_the_pytorch_flavour(world: dict) -> None:
    with using_store(world["store"]):
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@best", dst_path=str(world["root"] / "dl")))
    mlmodel = Model.load(str(local))
    assert mlmodel.flavors["python_function"]["loader_module"] == "unimatch.apps.serving"
    assert set(mlmodel.flavors) >= {"python_function", "pytorch"}
    assert (local / "code" / "unimatch" / "apps" / "serving.py").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "timm==" in requirements and "torch==" in requirements
    # A process whose working directory and path hold no checkout: the model's own copy of the code loads it.
    script = (
        "import sys, mlflow.pyfunc, numpy as np; "
        "m = mlflow.pyfunc.load_model(sys.argv[1]); "
        "import unimatch; print(unimatch.__file__); print(m.predict(np.zeros((1, 30, 40, 3), np.uint8)).shape)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(local)],
        cwd=world["root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    module_file, shape = done.stdout.splitlines()[-2:]
    assert shape == "(1, 30, 40)" and Path(module_file).is_relative_to(local / "code"), done.stdout


def _post(url: str, payload: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_mlflow_models_serve_answers_with_the_mask_of_unimatch_predict(world: dict) -> None:
    image = _image(world, "wide")
    with local_server(f"models:/{NAME}@best", world["store"], timeout_s=180, log=world["root"] / "serve.log") as (
        url,
        process,
    ):
        status, answer = _post(url, {"inputs": image[None].tolist()})
        assert status == 200, answer
        mask = np.asarray(answer["predictions"])
        assert mask.shape == (1, 120, 160)
        assert np.array_equal(mask[0], _predict_png(world, "wide"))

        status, answer = _post(url, {"inputs": "not an image"})
        assert status == 400 and answer["message"], answer
        status, answer = _post(url, {"inputs": np.zeros((1, 8, 8, 4), np.uint8).tolist()})
        assert status == 400 and "(-1, -1, -1, 3)" in answer["message"], answer
        # Still serving after the bad requests.
        status, answer = _post(url, {"inputs": image[None].tolist()})
        assert status == 200 and np.array_equal(np.asarray(answer["predictions"])[0], _predict_png(world, "wide"))
        assert process.poll() is None
    assert process.poll() is not None  # stopped with the context


def test_pyfunc_of_a_change_detector_takes_a_and_b_stacked_on_channels() -> None:
    """(B, H, W, 6): A then B, each normalised as `unimatch predict` normalises a pair (pair_tensor)."""
    import torch

    from unimatch.apps.serving import SegmentationPyfunc, ServingInputError, ServingSettings
    from unimatch.data.change import pair_tensor
    from unimatch.engine.inference import predict_image
    from unimatch.models import build_segmentor

    torch.manual_seed(0)
    model = build_segmentor("tiny", 2, input_size=56, input_images=2).eval()
    settings = ServingSettings(["unchanged", "changed"], [[0, 0, 0], [255, 255, 255]], input_images=2, window=56)
    served = SegmentationPyfunc(model, settings)
    rng = np.random.default_rng(1)
    first, second = (rng.integers(0, 256, (45, 61, 3), dtype=np.uint8) for _ in range(2))
    labels = served.predict(np.concatenate((first, second), axis=-1)[None])
    with torch.no_grad():
        expected = predict_image(model, pair_tensor(first, second)[None], "original", 56).argmax(1)[0].numpy()
    assert labels.shape == (1, 45, 61) and np.array_equal(labels[0], expected)
    with pytest.raises(ServingInputError, match="6"):
        served.predict(first[None])


def test_a_server_that_cannot_start_is_an_error_not_a_hang(world: dict) -> None:
    from unimatch.apps.serving import ServerError

    log = world["root"] / "missing.log"
    with pytest.raises(ServerError, match="exited"):
        with local_server(f"models:/{NAME}@missing", world["store"], timeout_s=120, log=log):
            pass
    assert "missing" in log.read_text()
