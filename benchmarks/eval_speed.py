"""Evaluation speed in images/s through the library's ``evaluate``: "original" mode on Pascal-sized images
(500x375, landscape and portrait in turn, resized to multiples of 14, one image per forward) and
sliding-window mode on Cityscapes-sized images (1024x2048, window 798, stride 2/3, windows batched).

    python benchmarks/eval_speed.py                      # CUDA, bf16: DINOv2-S and -B
    python benchmarks/eval_speed.py --encoder tiny --images 2 --sliding-images 1 --original-size 140 105 \\
        --sliding-size 224 448 --window 112              # a CPU check

Images are random tensors already decoded (decoding is data_loader.py's business); weights are random.
"""

from __future__ import annotations

import argparse

import torch
from common import describe_device, seconds_per_call

from unimatch.config import ModelConfig
from unimatch.engine import build_model, resolve_device
from unimatch.engine.inference import evaluate
from unimatch.engine.setup import autocast_dtype, optimize_for_device
from unimatch.models import ENCODERS

PASCAL_CLASSES, CITYSCAPES_CLASSES = 21, 19


def random_images(count: int, width: int, height: int, nclass: int, alternate: bool) -> list[tuple]:
    """(image, mask, name) batches of one image; ``alternate``: every second one portrait."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for index in range(count):
        w, h = (height, width) if alternate and index % 2 else (width, height)
        image = torch.randn(1, 3, h, w, generator=generator)
        batches.append((image, torch.randint(0, nclass, (1, h, w), generator=generator), [f"image{index}"]))
    return batches


def images_per_second(args: argparse.Namespace, encoder: str, mode: str, device: torch.device) -> float:
    nclass = PASCAL_CLASSES if mode == "original" else CITYSCAPES_CLASSES
    model = optimize_for_device(build_model(ModelConfig(encoder=encoder), nclass, args.window, quiet=True), device)
    size, count = (args.original_size, args.images) if mode == "original" else (args.sliding_size, args.sliding_images)
    batches = random_images(count, *size, nclass, alternate=mode == "original")
    dtype = autocast_dtype(args.amp, device)

    def run(images: list[tuple]) -> None:
        evaluate(model, images, nclass, mode=mode, window=args.window, window_batch=args.window_batch, device=device, autocast_dtype=dtype)

    run(batches[:2])  # warm-up: one image of each orientation
    return count / seconds_per_call(lambda: run(batches), device, warmup=0, iters=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", nargs="+", default=["small", "base"], choices=sorted(ENCODERS))
    parser.add_argument("--images", type=int, default=100, help="images timed in original mode (default 100)")
    parser.add_argument("--sliding-images", type=int, default=20, help="images timed in sliding mode (default 20)")
    parser.add_argument("--original-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--sliding-size", type=int, nargs=2, default=(2048, 1024), metavar=("W", "H"))
    parser.add_argument("--window", type=int, default=798, help="sliding window, a multiple of the encoder's size divisor (default 798)")
    parser.add_argument("--window-batch", type=int, default=8, help="windows per forward (default 8)")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp32"), help="auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = autocast_dtype(args.amp, device)
    print(f"\n{describe_device(device)} | {'bf16' if dtype else 'fp32'} | 2 untimed warm-up images per mode\n")
    print("| encoder | mode | image size | images/s | ms/image |")
    print("|---|---|---|---|---|")
    for encoder in args.encoder:
        for mode in ("original", "sliding"):
            rate = images_per_second(args, encoder, mode, device)
            width, height = args.original_size if mode == "original" else args.sliding_size
            label = f"sliding {args.window}, {args.window_batch} windows/forward" if mode == "sliding" else mode
            print(f"| {encoder} | {label} | {width}x{height} | {rate:.1f} | {1000 / rate:.0f} |")


if __name__ == "__main__":
    main()
