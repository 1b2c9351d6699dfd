"""CPU data-pipeline throughput: JPEG decoding (500x375, like Pascal VOC), the weak augmentation and, for
unlabeled images, two strong views and two CutMix boxes at crop 518.

1. Through the engine's own loader (SampleStream, StreamPositions, make_loader) with N worker processes;
   the last lines compare the rates with what a GPU consumes at the training-step targets.
2. Per core, against the reference: the project's datasets and a faithful rendition of the authors' PIL /
   torchvision pipeline (UniMatch V2 ``dataset/semi.py`` + ``dataset/transform.py``, below) on the same
   JPEGs, in this process with one thread for torch and OpenCV, each batch collated as a worker would.
   Best of --repeats runs, since other processes may share the cores.

    python benchmarks/data_loader.py                                   # 8 workers, crop 518, batches of 8
    python benchmarks/data_loader.py --workers 1 --crop 112 --batch 2 --batches 3 --images 8   # a quick check
    python benchmarks/data_loader.py --no-loader --compare 64 --repeats 3   # only ours vs reference, per core

It writes its own JPEGs (crops of scikit-image's sample photos) and masks to a temporary folder. Loader
timing starts after the first batches, once the workers are up.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np
import skimage
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import Dataset, default_collate

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


# ---- the reference: the authors' PIL / torchvision pipeline, as released (UniMatch V2, dataset/transform.py) ----


def ref_resize(img: Image.Image, mask: Image.Image, ratio_range: tuple[float, float]) -> tuple[Image.Image, Image.Image]:
    w, h = img.size
    long_side = random.randint(int(max(h, w) * ratio_range[0]), int(max(h, w) * ratio_range[1]))
    if h > w:
        oh, ow = long_side, int(1.0 * w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(1.0 * h * long_side / w + 0.5)
    return img.resize((ow, oh), Image.BILINEAR), mask.resize((ow, oh), Image.NEAREST)


def ref_crop(img: Image.Image, mask: Image.Image, size: int, ignore_value: int = 255) -> tuple[Image.Image, Image.Image]:
    w, h = img.size
    padw, padh = max(size - w, 0), max(size - h, 0)
    img = ImageOps.expand(img, border=(0, 0, padw, padh), fill=0)
    mask = ImageOps.expand(mask, border=(0, 0, padw, padh), fill=ignore_value)
    w, h = img.size
    x, y = random.randint(0, w - size), random.randint(0, h - size)
    return img.crop((x, y, x + size, y + size)), mask.crop((x, y, x + size, y + size))


def ref_hflip(img: Image.Image, mask: Image.Image, p: float = 0.5) -> tuple[Image.Image, Image.Image]:
    if random.random() < p:
        return img.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    return img, mask


REF_TO_TENSOR = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def ref_normalize(img: Image.Image, mask: Image.Image | None = None):
    img = REF_TO_TENSOR(img)
    if mask is not None:
        return img, torch.from_numpy(np.array(mask)).long()
    return img


def ref_blur(img: Image.Image, p: float = 0.5) -> Image.Image:
    if random.random() < p:
        sigma = np.random.uniform(0.1, 2.0)
        img = img.filter(ImageFilter.GaussianBlur(radius=sigma))
    return img


def ref_cutmix_box(img_size: int, p: float = 0.5, size_min: float = 0.02, size_max: float = 0.4,
                   ratio_1: float = 0.3, ratio_2: float = 1 / 0.3) -> torch.Tensor:
    mask = torch.zeros(img_size, img_size)
    if random.random() > p:
        return mask
    size = np.random.uniform(size_min, size_max) * img_size * img_size
    while True:
        ratio = np.random.uniform(ratio_1, ratio_2)
        cutmix_w, cutmix_h = int(np.sqrt(size / ratio)), int(np.sqrt(size * ratio))
        x, y = np.random.randint(0, img_size), np.random.randint(0, img_size)
        if x + cutmix_w <= img_size and y + cutmix_h <= img_size:
            break
    mask[y : y + cutmix_h, x : x + cutmix_w] = 1
    return mask


class ReferenceDataset(Dataset):
    """``SemiDataset.__getitem__`` for modes train_l and train_u (dataset/semi.py)."""

    def __init__(self, samples: list[Sample], mode: str, size: int) -> None:
        self.samples, self.mode, self.size = samples, mode, size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int):
        sample = self.samples[item]
        img = Image.open(sample.image).convert("RGB")
        if self.mode == "train_u":
            mask = Image.fromarray(np.zeros((img.size[1], img.size[0]), dtype=np.uint8))
        else:
            mask = Image.fromarray(np.array(Image.open(sample.mask)))
        img, mask = ref_resize(img, mask, (0.5, 2.0))
        ignore_value = 254 if self.mode == "train_u" else 255
        img, mask = ref_crop(img, mask, self.size, ignore_value)
        img, mask = ref_hflip(img, mask, p=0.5)
        if self.mode == "train_l":
            return ref_normalize(img, mask)
        img_w, img_s1, img_s2 = deepcopy(img), deepcopy(img), deepcopy(img)
        if random.random() < 0.8:
            img_s1 = T.ColorJitter(0.5, 0.5, 0.5, 0.25)(img_s1)
        img_s1 = T.RandomGrayscale(p=0.2)(img_s1)
        img_s1 = ref_blur(img_s1, p=0.5)
        cutmix_box1 = ref_cutmix_box(img_s1.size[0], p=0.5)
        if random.random() < 0.8:
            img_s2 = T.ColorJitter(0.5, 0.5, 0.5, 0.25)(img_s2)
        img_s2 = T.RandomGrayscale(p=0.2)(img_s2)
        img_s2 = ref_blur(img_s2, p=0.5)
        cutmix_box2 = ref_cutmix_box(img_s2.size[0], p=0.5)
        ignore_mask = Image.fromarray(np.zeros((mask.size[1], mask.size[0])))
        img_s1, ignore_mask = ref_normalize(img_s1, ignore_mask)
        img_s2 = ref_normalize(img_s2)
        mask = torch.from_numpy(np.array(mask)).long()
        ignore_mask[mask == 254] = 255
        return ref_normalize(img_w), img_s1, img_s2, ignore_mask, cutmix_box1, cutmix_box2


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


def compare_with_reference(samples: list[Sample], args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """{stream: (ours, reference)} samples/s on one core (torch and OpenCV set to one thread from here on)."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    count = max(args.batch, args.compare // args.batch * args.batch)
    pairs = {
        "labeled": (LabeledDataset(samples, NCLASS, args.crop), ReferenceDataset(samples, "train_l", args.crop)),
        "unlabeled": (UnlabeledDataset(samples, args.crop), ReferenceDataset(samples, "train_u", args.crop)),
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
    parser.add_argument("--no-compare", action="store_true", help="skip ours vs reference")
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
        comparison = {} if args.no_compare else compare_with_reference(samples, args)
    workers = f"{args.workers} loader workers on " if rates else ""
    print(f"\n{args.images} JPEGs of {args.size[0]}x{args.size[1]} | crop {args.crop} | batch {args.batch} | "
          f"{workers}a {os.cpu_count()}-core machine")
    if rates:
        print_loader_rates(rates, args, cores)
    if comparison:
        print_comparison(comparison, args)


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
