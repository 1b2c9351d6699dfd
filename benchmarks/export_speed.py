"""Images per second on the CPU of one model three ways: PyTorch eager, the TorchScript export and the ONNX
export under ONNX Runtime, printed with each one's ratio to eager, for the embedded model (tiny encoder, 112 px)
and a DINOv2-S-sized segmentor at 518 px (random weights: speed does not depend on them).

    python benchmarks/export_speed.py                          # both models, 20 / 5 images
    python benchmarks/export_speed.py --models embedded --images 10

Exports go to a temporary folder through the library's ``export_model`` (verified against PyTorch there);
one image per forward pass, threads as torch's default (OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import describe_device

from unimatch.apps.export import FORMATS, export_model, load_exported
from unimatch.config import load_config
from unimatch.engine.setup import build_model
from unimatch.models import build_segmentor


def embedded_model() -> tuple[torch.nn.Module, int]:
    cfg = load_config("configs/embedded.yaml")
    model = build_model(cfg.model, cfg.dataset.nclass, cfg.dataset.crop_size, cfg.method, quiet=True)
    return model.eval(), cfg.dataset.crop_size


def dinov2_small() -> tuple[torch.nn.Module, int]:
    return build_segmentor("small", 21, input_size=518).eval(), 518


MODELS = {"embedded": embedded_model, "dinov2-s-518": dinov2_small}


def images_per_second(run, image: np.ndarray, count: int) -> float:
    run(image)  # warm-up (ONNX Runtime plans its first run, TorchScript profiles its first two)
    run(image)
    start = time.perf_counter()
    for _ in range(count):
        run(image)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--images", type=int, nargs="+", default=[20, 5], help="timed images per model (default 20 5)")
    args = parser.parse_args()
    print(describe_device(torch.device("cpu")))
    print(f"{'model':14s} {'size':>9s} {'runtime':12s} {'img/s':>8s} {'x eager':>8s}")
    with tempfile.TemporaryDirectory() as folder:
        for name, count in zip(args.models, args.images * len(args.models)):
            model, size = MODELS[name]()
            image = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)

            def eager(batch: np.ndarray, model: torch.nn.Module = model) -> np.ndarray:
                with torch.no_grad():
                    return model(torch.from_numpy(batch)).numpy()

            runners = {"eager": eager}
            for format_name in sorted(FORMATS):
                path = Path(folder) / f"{name}.{format_name}"
                export_model(model, format_name, path, size, {})
                runners[format_name] = load_exported(path, format_name)
            rates = {runtime: images_per_second(run, image, count) for runtime, run in runners.items()}
            for runtime, rate in rates.items():
                print(f"{name:14s} {size:4d}x{size:<4d} {runtime:12s} {rate:8.2f} {rate / rates['eager']:8.2f}")


if __name__ == "__main__":
    main()
