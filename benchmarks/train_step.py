"""UniMatch V2 training-step speed: seconds per iteration, peak GPU memory, model FLOP utilisation (MFU),
the frozen-encoder speed-up, and the agreement of the bf16 and fp32 losses.

    python benchmarks/train_step.py                      # CUDA: DINOv2-S and -B, crop 518, 8 + 8 images per GPU
    python benchmarks/train_step.py --encoder tiny --crop 112 --batch 2 --iters 3 --warmup 1   # a CPU check

Each step is the engine's own ``Trainer.train_step`` (EMA-teacher pseudo labels on the weak view; labeled
images and both strong CutMix views through the student in one encoder pass, complementary dropout;
losses, backward, AdamW, EMA update) for a trainer built from configs/embedded.yaml with the sizes given
here, on random batches already on the device (loading is data_loader.py's business). Weights are random
(nothing is downloaded): speed and memory do not depend on them. tau = 0, so that the unlabeled loss is
not zero in the bf16 / fp32 comparison; a step does the same work for any tau.

MFU = FLOPs of one step (matmuls, convolutions and attention, counted by FlopCounterMode) / step time /
the device's dense bf16 peak (built in for H100 / H200 / A100, else --peak-tflops).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import warnings
from pathlib import Path

import torch
from common import GIB, describe_device, seconds_per_call, verdict
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop,
    sdpa_flop,
)

from unimatch.config import load_config
from unimatch.data import cutmix_box, generate_embedded
from unimatch.engine import Trainer
from unimatch.methods import LabeledBatch, UnlabeledBatch
from unimatch.models import ENCODERS

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "embedded.yaml"
TARGETS = {"small": (0.08, 14.0), "base": (0.19, 27.0)}  # s/iter and peak GiB per GPU at crop 518, 8 + 8
FROZEN_TARGET = 0.5  # frozen-encoder step time / fine-tuned step time
MFU_TARGET = 0.30  # stretch goal
LOSS_TOLERANCE = 1e-2  # |loss_bf16 - loss_fp32| / |loss_fp32| on the same batch and weights
# Dense bf16 peak TFLOP/s by device name (first match wins).
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))

# FlopCounterMode knows the CUDA attention kernels; count the CPU one the same way.
for op, formula in ((torch.ops.aten._scaled_dot_product_flash_attention_for_cpu, sdpa_flop),
                    (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward, sdpa_backward_flop)):
    if op not in flop_registry:
        register_flop_formula(op, get_raw=True)(formula)


def build_trainer(args: argparse.Namespace, encoder: str, frozen: bool, scratch: Path) -> Trainer:
    """A UniMatch V2 trainer whose data set holds exactly one batch of unlabeled images (never read)."""
    data = generate_embedded(scratch / "data", n_train=args.batch + 2, n_val=1, size=(64, 48))
    cfg = load_config(CONFIG, [
        f"dataset.root={data}", f"dataset.crop_size={args.crop}", "split.labeled=2", f"output_dir={scratch / 'run'}",
        f"model.encoder={encoder}", f"model.frozen={str(frozen).lower()}", "method.name=unimatch_v2", "method.threshold=0",
        f"train.batch_size={args.batch}", "train.epochs=100000", "train.num_workers=0", "train.resume=false",
        f"train.amp={args.amp}", f"train.compile={str(args.compile).lower()}", f"train.device={args.device}",
        "tracking.enabled=false",
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised": intended here
        return Trainer(cfg, progress=False)


def random_batches(trainer: Trainer, batch: int, crop: int) -> tuple[LabeledBatch, UnlabeledBatch]:
    generator = torch.Generator().manual_seed(0)
    device, nclass = trainer.device, trainer.cfg.dataset.nclass

    def images() -> torch.Tensor:
        return torch.randn(batch, 3, crop, crop, generator=generator).to(device)

    mask = torch.randint(0, nclass, (batch, crop, crop), generator=generator)
    mask[:, : crop // 8] = 255
    ignore = torch.zeros(batch, crop, crop, dtype=torch.int64)
    ignore[:, -crop // 8 :] = 255  # padding
    boxes = [torch.stack([cutmix_box(crop, p=1.0) for _ in range(batch)]).to(device) for _ in range(2)]
    labeled = LabeledBatch(images(), mask.to(device))
    return labeled, UnlabeledBatch(images(), images(), images(), ignore.to(device), *boxes)


def one_step(trainer: Trainer, batches: tuple[LabeledBatch, UnlabeledBatch]) -> None:
    trainer.train_step(*batches)
    trainer.iteration += 1


def step_flops(trainer: Trainer, batches: tuple[LabeledBatch, UnlabeledBatch]) -> int:
    with torch.compiler.set_stance("force_eager"), FlopCounterMode(display=False) as counter:
        one_step(trainer, batches)
    return counter.get_total_flops()


@torch.no_grad()
def step_loss(trainer: Trainer, batches: tuple[LabeledBatch, UnlabeledBatch], dtype: torch.dtype | None) -> float:
    """The method's loss in ``dtype`` autocast (None: fp32), with the same dropout masks every time."""
    torch.manual_seed(0)
    trainer.model.train()
    with torch.autocast(trainer.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return float(trainer.method.step(trainer.model, trainer.teacher, *batches).loss)


def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    if args.peak_tflops or device.type != "cuda":
        return args.peak_tflops
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS if key in name), None)


def measure(args: argparse.Namespace, encoder: str, frozen: bool, scratch: Path) -> dict:
    trainer = build_trainer(args, encoder, frozen, scratch)
    batches = random_batches(trainer, args.batch, args.crop)
    device = trainer.device
    blocks = getattr(trainer.model.encoder, "blocks", [])
    result = {"device": device, "fused_attention": all(getattr(block.attn, "fused_attn", True) for block in blocks)}
    if not frozen:
        result["loss"] = (step_loss(trainer, batches, torch.bfloat16), step_loss(trainer, batches, None))
    result["flops"] = step_flops(trainer, batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result["seconds"] = seconds_per_call(lambda: one_step(trainer, batches), device, args.warmup, args.iters)
    result["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    del trainer, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def report_row(encoder: str, mode: str, result: dict, peak: float | None, finetune_seconds: float | None) -> str:
    seconds, memory, flops = result["seconds"], result["peak_gib"], result["flops"]
    time_limit, memory_limit = TARGETS.get(encoder, (None, None)) if mode == "fine-tune" else (None, None)
    if mode == "frozen" and finetune_seconds:
        ratio = seconds / finetune_seconds
        time_target = f"<= {FROZEN_TARGET:g}x fine-tune: {ratio:.2f}x {verdict(ratio, FROZEN_TARGET)}"
    else:
        time_target = f"<= {time_limit:g} {verdict(seconds, time_limit)}" if time_limit else "-"
    memory_text = f"{memory:.1f}" if memory is not None else "n/a"
    memory_target = f"<= {memory_limit:g} {verdict(memory, memory_limit)}" if memory_limit and memory is not None else "-"
    mfu = flops / seconds / (peak * 1e12) if peak else None
    mfu_text = f"{100 * mfu:.1f} % ({verdict(mfu, MFU_TARGET, higher_is_better=True)} vs {100 * MFU_TARGET:g} %)" if mfu else "n/a"
    return f"| {encoder} | {mode} | {seconds:.3f} | {time_target} | {memory_text} | {memory_target} | {flops / 1e12:.3g} | {mfu_text} |"


def loss_line(encoder: str, losses: tuple[float, float]) -> str:
    bf16, fp32 = losses
    difference = abs(bf16 - fp32) / max(abs(fp32), 1e-12)
    ok = "ok" if difference <= LOSS_TOLERANCE else "OUT OF TOLERANCE"
    return (f"{encoder}: bf16 vs fp32 loss on the same batch and weights: {bf16:.5f} vs {fp32:.5f}, "
            f"relative difference {difference:.1e} (tolerance {LOSS_TOLERANCE:g}): {ok}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", nargs="+", default=["small", "base"], choices=sorted(ENCODERS))
    parser.add_argument("--modes", nargs="+", default=["fine-tune", "frozen"], choices=("fine-tune", "frozen"))
    parser.add_argument("--crop", type=int, default=518, help="crop size, a multiple of the encoder's size divisor (default 518)")
    parser.add_argument("--batch", type=int, default=8, help="labeled and unlabeled images per step and GPU (default 8)")
    parser.add_argument("--iters", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5; more with --compile)")
    parser.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp32"), help="train.amp (auto: bf16 on CUDA)")
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument("--device", default="auto", help="train.device (default auto)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, for MFU")
    args = parser.parse_args()

    rows, losses, device, fused = [], [], None, True
    with tempfile.TemporaryDirectory(prefix="unimatch-bench-") as scratch:
        for encoder in args.encoder:
            finetune_seconds = None
            for mode in args.modes:
                result = measure(args, encoder, mode == "frozen", Path(scratch) / encoder)
                device, fused = result["device"], fused and result["fused_attention"]
                finetune_seconds = result["seconds"] if mode == "fine-tune" else finetune_seconds
                rows.append(report_row(encoder, mode, result, peak_tflops(args, device), finetune_seconds))
                if "loss" in result:
                    losses.append(loss_line(encoder, result["loss"]))
    peak = peak_tflops(args, device)
    print(f"\n{describe_device(device)} | amp {args.amp} | crop {args.crop} | {args.batch} + {args.batch} images per step "
          f"| fused SDPA attention: {'yes' if fused else 'NO'} | compile: {'yes' if args.compile else 'no'} "
          f"| bf16 peak: {f'{peak:g} TFLOP/s' if peak else 'unknown (--peak-tflops)'}\n")
    print("| encoder | mode | s/iter | target | peak GiB | target | TFLOP/step | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(losses))


if __name__ == "__main__":
    main()
