"""CPU data-pipeline throughput: JPEG decoding (500x375, like Pascal VOC), the weak augmentation and, for
unlabeled images, two strong views and two CutMix boxes at crop 518, through the engine's own loader
(SampleStream, StreamPositions, make_loader) with N worker processes.

    python benchmarks/data_loader.py                                   # 8 workers, crop 518, batches of 8
    python benchmarks/data_loader.py --workers 1 --crop 112 --batch 2 --batches 3 --images 8   # a quick check

It writes its own JPEGs (crops of scikit-image's sample photos) and masks to a temporary folder. Timing
starts after the first batches, once the workers are up. The last lines compare the rates with what a
GPU consumes at the training-step targets.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage
import torch
from PIL import Image

from unimatch.data import LabeledDataset, Sample, UnlabeledDataset
from unimatch.engine import resolve_device
from unimatch.engine.setup import make_loader
from unimatch.engine.stream import SampleStream, StreamPositions

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
NCLASS = 21
STEP_TARGETS = {"DINOv2-S": 0.08, "DINOv2-B": 0.19}  # s/iter per GPU (benchmarks/train_step.py)


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Sample]:
    """``count`` JPEG photos of ``size`` (every second one portrait) with palette-free L masks."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(Path(skimage.data.__file__).parent / name).convert("RGB") for name in PHOTOS]
    samples = []
    for index in range(count):
        width, height = size if index % 2 == 0 else size[::-1]
        source = sources[index % len(sources)]
        scale = rng.uniform(0.6, 1.0)
        box_w, box_h = int(source.width * scale), int(source.height * scale)
        left, top = rng.integers(0, source.width - box_w + 1), rng.integers(0, source.height - box_h + 1)
        photo = source.resize((width, height), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))
        mask = rng.integers(0, NCLASS, (height // 25 + 1, width // 25 + 1), dtype=np.uint8).repeat(25, 0).repeat(25, 1)
        image_path, mask_path = folder / f"{index:05d}.jpg", folder / f"{index:05d}.png"
        photo.save(image_path, quality=90)
        Image.fromarray(mask[:height, :width]).save(mask_path)
        samples.append(Sample(image_path, mask_path, image_path.name))
    return samples


def samples_per_second(dataset, args: argparse.Namespace, device: torch.device) -> float:
    total = args.warmup + args.batches
    stream = SampleStream(dataset, total * args.batch, 1, seed=0, stream=0)
    loader = make_loader(stream, StreamPositions(0, total, args.batch), args.batch, args.workers, device, seed=0)
    batches = iter(loader)
    for _ in range(args.warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(batches)
    return args.batches * args.batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8, help="loader worker processes (default 8; 0 = main process)")
    parser.add_argument("--crop", type=int, default=518, help="crop size, a multiple of 14 (default 518)")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch (default 8)")
    parser.add_argument("--batches", type=int, default=None,
                        help="timed batches per stream (default 25 per worker, so that the workers' start-up burst averages out)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches first (default: workers + 1)")
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs written (default 64)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--device", default="auto", help="where batches go: pinned memory when CUDA (default auto)")
    args = parser.parse_args()
    args.warmup = args.workers + 1 if args.warmup is None else args.warmup
    args.batches = args.batches or 25 * max(args.workers, 1)
    device = resolve_device(args.device)
    cores = max(args.workers, 1)

    with tempfile.TemporaryDirectory(prefix="unimatch-loader-") as folder:
        samples = write_images(Path(folder), args.images, tuple(args.size))
        rates = {
            "labeled (weak)": samples_per_second(LabeledDataset(samples, NCLASS, args.crop), args, device),
            "unlabeled (weak + 2 strong + 2 CutMix boxes)": samples_per_second(UnlabeledDataset(samples, args.crop), args, device),
        }
    print(f"\n{args.images} JPEGs of {args.size[0]}x{args.size[1]} | crop {args.crop} | batch {args.batch} | "
          f"{args.workers} workers on a {os.cpu_count()}-core machine\n")
    print("| stream | samples/s | samples/s per worker core |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / cores:.1f} |")
    # A step eats `batch` labeled and `batch` unlabeled samples; cores = sum over streams of need / rate per core.
    per_core = {name: rate / cores for name, rate in rates.items()}
    print()
    for model, seconds in STEP_TARGETS.items():
        need = args.batch / seconds
        needed_cores = sum(need / rate for rate in per_core.values())
        print(f"{model} at {seconds} s/iter with {args.batch} + {args.batch} images per step needs {need:.0f} labeled + "
              f"{need:.0f} unlabeled samples/s per GPU: about {math.ceil(needed_cores)} worker core(s) per GPU at these rates")


if __name__ == "__main__":
    main()
