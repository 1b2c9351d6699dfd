"""Every registered encoder's segmentor (DPT head, 21 classes): parameters against the authors' logs (SPEC §7) and
the time and peak memory of one training step (forward + backward of a labeled batch, AdamW step) at a crop.

    python benchmarks/encoders.py                              # all encoders, crop 518 (512 for divisors 16/32), batch 8
    python benchmarks/encoders.py --encoders tiny resnet-tiny --crop 112 --batch 2 --iters 2   # a CPU check

Random weights (nothing is downloaded). Times are wall-clock with the GPU synchronised; on CPU they only
compare the encoders with each other.
"""

from __future__ import annotations

import argparse
import gc

import torch
import torch.nn.functional as F
from common import GIB, describe_device, seconds_per_call

from unimatch.engine import resolve_device
from unimatch.engine.setup import autocast_dtype, optimize_for_device
from unimatch.models import ENCODERS, build_segmentor
from unimatch.models.encoders import parameter_counts

# (encoder, decoder) millions logged by the authors for Table 9 (SPEC §7); None where no run was logged.
LOGGED = {"small": (22.1, 2.7), "base": (86.6, 10.9), "large": (304.4, 31.2), "resnet152": (58.3, 20.3),
          "mit-b5": (81.4, 17.7), "beit-b": (86.2, 10.9), "beit-l": (304.6, 31.2), "sam-b": (88.9, 10.9),
          "sam-l": (307.4, 31.2)}  # fmt: skip


def step_seconds(name: str, crop: int, batch: int, device: torch.device, amp: str, warmup: int, iters: int) -> tuple[float, float | None]:
    model = optimize_for_device(build_segmentor(name, 21, input_size=crop), device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    images = torch.randn(batch, 3, crop, crop, device=device)
    masks = torch.randint(0, 21, (batch, crop, crop), device=device)
    dtype = autocast_dtype(amp, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(images).float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_call(step, device, warmup, iters)
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    del model, optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=sorted(ENCODERS), choices=sorted(ENCODERS))
    parser.add_argument("--crop", type=int, default=518, help="crop; rounded down to each encoder's size divisor")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--params-only", action="store_true", help="counts only, no step timing")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(describe_device(device))
    print(f"{'encoder':12s} {'params M enc / dec':>19s} {'logged':>13s} {'crop':>5s} {'s/step':>8s} {'peak GiB':>9s}")
    for name in args.encoders:
        encoder, decoder = (count / 1e6 for count in parameter_counts(name))
        logged = "{:.1f} / {:.1f}".format(*LOGGED[name]) if name in LOGGED else "-"
        line = f"{name:12s} {f'{encoder:.1f} / {decoder:.1f}':>19s} {logged:>13s}"
        if not args.params_only:
            divisor = ENCODERS[name].size_divisor
            crop = args.crop // divisor * divisor
            seconds, peak = step_seconds(name, crop, args.batch, device, args.amp, args.warmup, args.iters)
            line += f" {crop:5d} {seconds:8.3f} {f'{peak:.1f}' if peak is not None else '-':>9s}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
