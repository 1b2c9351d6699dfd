"""The trained segmentor as an MLflow model that serves: an MLflow flavour module for ``Model.log``.

A model saved through :func:`save_model` is ``mlflow.pytorch``'s model (the pickled segmentor, loadable
with ``mlflow.pytorch.load_model``) whose ``python_function`` flavour loads through this module instead:
:class:`SegmentationPyfunc` takes a batch of RGB images of any height and width, uint8 (B, H, W, 3) (a
change detector: (B, H, W, 6), A then B), and returns the label maps, uint8 (B, H, W), predicted exactly
as ``unimatch predict`` does (ImageNet normalisation, evaluation mode, ``eval.mode``, sliding windows
above ``eval.max_tokens``). The model's metadata holds the class names, the palette and the evaluation
settings; this project's ``unimatch`` package travels in the model (``code_paths``) so that a machine
without the checkout loads it with the pinned requirements, and ``mlflow models serve`` answers
``{"inputs": <nested list (B, H, W, 3)>}`` with ``{"predictions": <label maps>}``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import Schema, TensorSpec

from ..config import ExperimentConfig
from ..data import palette
from ..data.transforms import normalize
from ..engine.inference import predict_image

PACKAGE = Path(__file__).resolve().parents[1]  # unimatch/: the code the pickled segmentor needs
METADATA_KEY = "serving"  # the MLmodel metadata entry read back by the loader
# What importing the segmentor and the prediction code needs, pinned to the training's versions.
REQUIREMENTS = (
    "torch",
    "torchvision",
    "timm",
    "segmentation-models-pytorch",
    "albumentations",
    "opencv-python-headless",
    "scikit-image",
    "pydantic",
    "pyyaml",
    "pillow",
    "numpy",
    "tqdm",
)


class ServingInputError(MlflowException):
    """A request that is not a batch of images of the model's channels: MLflow's scoring server answers an
    MlflowException of this code with HTTP 400 and the message (any other error: 500, a stack trace)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass(frozen=True)
class ServingSettings:
    """How the served model predicts: ``unimatch predict``'s settings of the training's config."""

    class_names: list[str]
    palette: list[list[int]]
    input_images: int = 1
    mode: str = "original"
    window: int = 518
    stride_ratio: float = 2 / 3
    window_batch: int = 1
    max_tokens: int | None = None
    input: str = "uint8 (B, H, W, 3 x input_images) RGB, any H and W; output: uint8 (B, H, W) labels"

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, class_names: list[str], input_images: int) -> ServingSettings:
        return cls(
            class_names=list(class_names),
            palette=palette(cfg.dataset.nclass).tolist(),
            input_images=input_images,
            mode=cfg.eval.mode,
            window=cfg.eval.window or cfg.dataset.crop_size,
            stride_ratio=cfg.eval.stride_ratio,
            window_batch=cfg.eval.batch_size,
            max_tokens=cfg.eval.max_tokens,
        )

    def metadata(self) -> dict[str, Any]:
        return {METADATA_KEY: asdict(self)}

    def signature(self) -> ModelSignature:
        """Images in, label maps out; batch, height and width variable (-1)."""
        channels = 3 * self.input_images
        return ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, channels))]),
            outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]),
        )

    def input_example(self, size: int) -> np.ndarray:
        return np.zeros((1, size, size, 3 * self.input_images), dtype=np.uint8)


def pinned_requirements() -> list[str]:
    return [f"{name}=={version(name)}" for name in REQUIREMENTS]


def log_options(settings: ServingSettings, example_size: int) -> dict[str, Any]:
    """What ``Model.log(flavor=serving, ...)`` takes besides the model: the variable-size signature, an
    input example of ``example_size`` px, the project's code and the pinned requirements."""
    return {
        "signature": settings.signature(),
        "input_example": settings.input_example(example_size),
        "code_paths": [str(PACKAGE)],
        "pip_requirements": pinned_requirements(),
    }


class SegmentationPyfunc:
    """The ``python_function`` implementation: label maps of uint8 RGB image batches."""

    def __init__(self, model: torch.nn.Module, settings: ServingSettings) -> None:
        self.model = model.eval()
        self.settings = settings

    def _check(self, images: np.ndarray) -> np.ndarray:
        channels = 3 * self.settings.input_images
        if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != channels:
            shape = getattr(images, "shape", type(images).__name__)
            raise ServingInputError(f"expected images as uint8 (batch, height, width, {channels}), got {shape}")
        if images.dtype != np.uint8:
            if not np.issubdtype(images.dtype, np.number) or images.min() < 0 or images.max() > 255:
                raise ServingInputError(f"expected pixel values 0..255, got {images.dtype} data")
            images = images.astype(np.uint8)
        return images

    def _normalized(self, image: np.ndarray) -> torch.Tensor:
        """(3 x images, H, W): each RGB image of the channel stack normalised as ``unimatch predict`` does."""
        return torch.cat([normalize(image[..., start : start + 3]) for start in range(0, image.shape[-1], 3)])

    @torch.no_grad()
    def predict(self, model_input: Any) -> np.ndarray:
        images = self._check(model_input)
        s = self.settings
        labels = []
        for image in images:
            batch = self._normalized(image).unsqueeze(0)
            logits = predict_image(self.model, batch, s.mode, s.window, s.stride_ratio, s.window_batch, s.max_tokens)
            labels.append(logits.argmax(dim=1)[0].numpy().astype(np.uint8))
        return np.stack(labels)


def save_model(path: str, mlflow_model: Model | None = None, **options: Any) -> None:
    """``mlflow.pytorch.save_model`` with this module as the loader of the ``python_function`` flavour
    (``Model.log(flavor=serving)`` calls it)."""
    import mlflow.pytorch  # on use: importing it sets up the root logger (ERROR)

    mlflow_model = mlflow_model or Model()
    mlflow.pytorch.save_model(path=path, mlflow_model=mlflow_model, **options)
    mlflow_model.flavors["python_function"]["loader_module"] = __name__
    mlflow_model.save(str(Path(path) / "MLmodel"))


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> SegmentationPyfunc:
    """MLflow's entry point (``loader_module``): ``data_path`` is the model's ``data`` folder."""
    import mlflow.pytorch

    root = Path(data_path).parent
    settings = ServingSettings(**Model.load(str(root)).metadata[METADATA_KEY])
    return SegmentationPyfunc(mlflow.pytorch.load_model(str(root), map_location="cpu"), settings)


class ServerError(RuntimeError):
    """``mlflow models serve`` exited or did not answer in time; the message names its log file."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def local_server(
    model_uri: str, tracking_uri: str, timeout_s: float = 180, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``mlflow models serve -m model_uri`` (this environment, ``--env-manager local``) on a free port of
    127.0.0.1: (its URL, its process) once ``/ping`` answers; stopped (SIGTERM, then SIGKILL) on exit.
    ServerError when it exits or does not answer within ``timeout_s``."""
    port, log = free_port(), log or Path(os.devnull)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        # MLflow starts uvicorn by name: this environment's, also when its bin/ is not on PATH.
        "PATH": os.pathsep.join((str(Path(sys.executable).parent), os.environ.get("PATH", ""))),
    }
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while not _ready(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    what = (
                        f"exited ({process.returncode})"
                        if process.poll() is not None
                        else f"no answer in {timeout_s:g} s"
                    )
                    raise ServerError(f"mlflow models serve -m {model_uri}: {what}; log: {log}")
                time.sleep(0.5)
            yield url, process
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """The server and its workers (one process group): SIGTERM, SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 15)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait()
