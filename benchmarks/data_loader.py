"""CPU data-pipeline throughput: JPEG decoding (500x375, like Pascal VOC), the weak augmentation and, for
unlabeled images, two strong views and two CutMix boxes at crop 518.

1. Through the engine's own loader (SampleStream, StreamPositions, make_loader) with N worker processes;
   the last lines compare the rates with what a GPU consumes at the training-step targets.
2. Per core, against the reference (with ``--reference PATH``, a checkout of the authors' UniMatch-V2
   repository): the project's datasets and the authors' own ``SemiDataset`` (``dataset/semi.py``, their PIL /
   torchvision pipeline, imported from the checkout) on the same JPEGs, in this process with one thread for
   torch and OpenCV, each batch collated as a worker would. Best of --repeats runs, since other processes
   may share the cores. Without --reference this part is skipped, saying so.

    python benchmarks/data_loader.py                                   # 8 workers, crop 518, batches of 8
    python benchmarks/data_loader.py --workers 1 --crop 112 --batch 2 --batches 3 --images 8   # a quick check
    python benchmarks/data_loader.py --no-loader --reference ~/src/UniMatch-V2 --compare 64 --repeats 3   # only ours vs reference

It writes its own JPEGs (crops of scikit-image's sample photos) and masks to a temporary folder. Loader
timing starts after the first batches, once the workers are up.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import skimage
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from unimatch.data import LabeledDataset, Sample, UnlabeledDataset
from unimatch.engine import resolve_device
from unimatch.engine.setup import make_loader
from unimatch.engine.stream import SampleStream, StreamPositions

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")
NCLASS = 21
STEP_TARGETS = {"DINOv2-S": 0.08, "DINOv2-B": 0.19}  # s/iter per GPU (benchmarks/train_step.py)
REFERENCE_REPOSITORY = "https://github.com/LiheYoung/UniMatch-V2"


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


def reference_datasets(checkout: Path, samples: list[Sample], crop: int, folder: Path) -> dict[str, Dataset]:
    """The authors' own ``SemiDataset`` (UniMatch V2 ``dataset/semi.py``, imported from ``checkout``) in modes
    train_l and train_u, on the same JPEGs and masks, listed in an id file of its format."""
    if not (checkout / "dataset" / "semi.py").is_file():
        raise SystemExit(f"--reference {checkout}: no dataset/semi.py there; give a checkout of {REFERENCE_REPOSITORY}")
    sys.path.insert(0, str(checkout))
    from dataset.semi import SemiDataset

    ids = folder / "reference_ids.txt"
    ids.write_text("".join(f"{sample.image.name} {sample.mask.name}\n" for sample in samples))
    return {mode: SemiDataset("pascal", str(folder), mode, crop, str(ids)) for mode in ("train_l", "train_u")}


def per_core_rate(dataset: Dataset, count: int, batch: int, repeats: int) -> float:
    """Best samples/s over ``repeats`` runs of ``count`` samples in this process, collated in batches of
    ``batch`` as a loader worker does (so outputs live as long as they would there)."""
    best = 0.0
    for repeat in range(repeats):
        random.seed(repeat)
        np.random.seed(repeat)
        torch.manual_seed(repeat)
        default_collate([dataset[i] for i in range(min(batch, len(dataset)))])  # warm caches and lazy imports
        start = time.perf_counter()
        for first in range(0, count, batch):
            default_collate([dataset[i % len(dataset)] for i in range(first, first + batch)])
        best = max(best, count / (time.perf_counter() - start))
    return best


def compare_with_reference(samples: list[Sample], reference: dict[str, Dataset], args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """{stream: (ours, reference)} samples/s on one core (torch and OpenCV set to one thread from here on)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    count = max(args.batch, args.compare // args.batch * args.batch)
    pairs = {
        "labeled": (LabeledDataset(samples, NCLASS, args.crop), reference["train_l"]),
        "unlabeled": (UnlabeledDataset(samples, args.crop), reference["train_u"]),
    }
    return {
        name: tuple(per_core_rate(dataset, count, args.batch, args.repeats) for dataset in datasets)
        for name, datasets in pairs.items()
    }


def print_comparison(rates: dict[str, tuple[float, float]], args: argparse.Namespace) -> None:
    print(f"\nPer core vs the reference PIL/torchvision pipeline (1 thread, crop {args.crop}, batch {args.batch}, "
          f"best of {args.repeats} x {args.compare} samples; target >= 2x)\n")
    print("| stream | ours samples/s | reference samples/s | ours / reference |")
    print("|---|---|---|---|")
    for name, (ours, reference) in rates.items():
        print(f"| {name} | {ours:.1f} | {reference:.1f} | {ours / reference:.2f}x |")


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
    parser.add_argument("--crop", type=int, default=518, help="crop size, a multiple of the encoder's size divisor (default 518)")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch (default 8)")
    parser.add_argument("--batches", type=int, default=None,
                        help="timed batches per stream (default 25 per worker, so that the workers' start-up burst averages out)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches first (default: workers + 1)")
    parser.add_argument("--images", type=int, default=64, help="distinct JPEGs written (default 64)")
    parser.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--device", default="auto", help="where batches go: pinned memory when CUDA (default auto)")
    parser.add_argument("--compare", type=int, default=64, help="samples per timed run of ours vs reference (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the comparison, best kept (default 3)")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader measurement")
    parser.add_argument("--reference", type=Path, metavar="PATH",
                        help=f"a checkout of {REFERENCE_REPOSITORY}: its dataset/semi.py is the per-core baseline")
    args = parser.parse_args()
    args.warmup = args.workers + 1 if args.warmup is None else args.warmup
    args.batches = args.batches or 25 * max(args.workers, 1)
    device = resolve_device(args.device)
    cores = max(args.workers, 1)

    with tempfile.TemporaryDirectory(prefix="unimatch-loader-") as folder:
        samples = write_images(Path(folder), args.images, tuple(args.size))
        rates = {} if args.no_loader else {
            "labeled (weak)": samples_per_second(LabeledDataset(samples, NCLASS, args.crop), args, device),
            "unlabeled (weak + 2 strong + 2 CutMix boxes)": samples_per_second(UnlabeledDataset(samples, args.crop), args, device),
        }
        comparison = {}
        if args.reference:
            reference = reference_datasets(args.reference, samples, args.crop, Path(folder))
            comparison = compare_with_reference(samples, reference, args)
    workers = f"{args.workers} loader workers on " if rates else ""
    print(f"\n{args.images} JPEGs of {args.size[0]}x{args.size[1]} | crop {args.crop} | batch {args.batch} | "
          f"{workers}a {os.cpu_count()}-core machine")
    if rates:
        print_loader_rates(rates, args, cores)
    if comparison:
        print_comparison(comparison, args)
    else:
        print(f"\nOurs vs the reference skipped: give --reference PATH, a checkout of {REFERENCE_REPOSITORY}")


def print_loader_rates(rates: dict[str, float], args: argparse.Namespace, cores: int) -> None:
    print("\n| stream | samples/s | samples/s per worker core |")
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
