"""The paper's effective batch on a smaller GPU: `unimatch plan-memory`'s recommendation for a recipe, then
that recommendation measured at full size: peak memory (the CUDA allocator's own peak) and step time.

    python benchmarks/memory_plan.py                                   # CUDA: Pascal-92 DINOv2-S, 16 + 16, 24 GiB
    python benchmarks/memory_plan.py --crop 56 --gpu-memory 0.1 --steps 2   # a CPU check (live-tensor peak)

Each measured step is the engine's ``Trainer.train_step`` (``train.accumulate`` micro-batches, one optimizer
step, the EMA update) on random batches of the recipe's sizes and a random-weight model (nothing is read or
downloaded). The verdict compares the measured peak with the target memory.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import describe_device, verdict

from unimatch.apps.memory_plan import measure_training, plan_memory, release_memory
from unimatch.config import load_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "pascal_unimatch_v2_small_92_24gb.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(RECIPE), help="the recipe (default: Pascal-92 DINOv2-S, 24 GB variant)")
    parser.add_argument("--gpu-memory", type=float, default=24.0, help="target memory in GiB (default 24)")
    parser.add_argument("--crop", type=int, help="override dataset.crop_size (a CPU check at small size)")
    parser.add_argument("--device", default="auto", help="train.device (default auto)")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (default 2)")
    args = parser.parse_args()

    overrides = [f"train.device={args.device}", *([f"dataset.crop_size={args.crop}"] if args.crop else [])]
    cfg = load_config(args.config, overrides)
    plan = plan_memory(cfg)
    print(plan.table())
    print(f"\n{plan.advice(args.gpu_memory)}")
    chosen, batch = plan.recommend(args.gpu_memory), plan.per_process_batch
    if chosen is None:
        return
    with tempfile.TemporaryDirectory(prefix="unimatch-bench-") as scratch:
        measured, device = measure_training(
            cfg, Path(scratch), chosen.batch_size, chosen.accumulate, chosen.checkpointing, args.warmup, args.steps
        )
    release_memory()
    source = "CUDA allocator peak" if device.startswith("cuda") else "live-tensor peak"
    print(
        f"\n{describe_device(torch.device(device))} | {cfg.model.encoder} | crop {cfg.dataset.crop_size} | "
        f"amp {cfg.train.amp} | {batch} + {batch} images per optimizer step"
    )
    print("| micro-batch | accumulate | checkpointing | s/step | peak GiB | target |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {chosen.batch_size} | {chosen.accumulate} | {'yes' if chosen.checkpointing else 'no'} | "
        f"{measured.seconds:.3f} | {measured.peak_gib:.2f} ({source}) | "
        f"< {args.gpu_memory:g} {verdict(measured.peak_gib, args.gpu_memory)} |"
    )


if __name__ == "__main__":
    main()
