"""`unimatch plan-memory`: what fits a GPU's memory at the configured run's effective batch.

The configured run (encoder, crop, classes, method, precision) is measured for a few steps at micro-batches
of 1 and 2 images, with and without activation checkpointing, on the device at hand, on random batches of
the configured sizes and a random-weight model (nothing is read or downloaded: memory and time do not
depend on the values). Peak memory is close to linear in the micro-batch: ``fixed + batch x per_image``
(weights, gradients, optimizer state and EMA teacher are the fixed part). The recommendation is the
micro-batch size, accumulation K and checkpointing that keep the per-process batch of the config
(``train.batch_size x train.accumulate``), hence the effective batch, and whose estimated peak stays below
the target less a 10 % margin (allocator fragmentation): no checkpointing where a micro-batch fits without
it, and then the fewest accumulation steps.
Methods that mix CutMix partners inside a batch need micro-batches of at least 2 images.

The linear model holds where activations set the peak, as at the recipes' crops on a GPU (a ViT-S image at
crop 518 keeps more than the optimizer's temporaries); at toy sizes the optimizer step sets it and the fit's
slope is near zero, so the estimate for large micro-batches is low: ``benchmarks/memory_plan.py`` measures
the recommendation itself.
"""

from __future__ import annotations

import gc
import tempfile
import warnings
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch

from ..config import ExperimentConfig, validate
from ..data import cutmix_box, generate_embedded
from ..engine import Trainer
from ..engine.memory import GIB, StepMeasurement, measure_steps
from ..errors import ConfigError
from ..methods import LabeledBatch, UnlabeledBatch, method_class

MEASURED_BATCHES = (1, 2)  # micro-batch sizes of the linear fit
MARGIN = 0.9  # the share of the target memory a recommendation may use


@dataclass(frozen=True)
class Measured:
    checkpointing: bool
    batch: int
    step: StepMeasurement
    device: str


@dataclass(frozen=True)
class Fit:
    """Peak bytes and step seconds as ``fixed + batch x per_image``, for one checkpointing setting."""

    checkpointing: bool
    fixed_bytes: float
    bytes_per_image: float
    fixed_seconds: float
    seconds_per_image: float

    def peak_gib(self, batch: int) -> float:
        return (self.fixed_bytes + batch * self.bytes_per_image) / GIB

    def step_seconds(self, batch: int, accumulate: int) -> float:
        return accumulate * (self.fixed_seconds + batch * self.seconds_per_image)


@dataclass(frozen=True)
class Recommendation:
    batch_size: int
    accumulate: int
    checkpointing: bool
    peak_gib: float  # estimated
    step_seconds: float  # estimated, per optimizer step

    def overrides(self) -> str:
        return (
            f"train.batch_size={self.batch_size} train.accumulate={self.accumulate} "
            f"model.activation_checkpointing={str(self.checkpointing).lower()}"
        )


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    per_process_batch: int  # train.batch_size x train.accumulate of the config
    min_micro_batch: int
    measured: list[Measured]
    fits: list[Fit]

    def recommend(self, target_gib: float) -> Recommendation | None:
        """The largest micro-batch (fewest accumulation steps) whose estimated peak is below ``MARGIN x
        target_gib``, without activation checkpointing where one fits (recomputing the encoder costs about
        a third of a step; a smaller micro-batch costs little on a GPU), else with it; None when not even
        the smallest micro-batch fits."""
        batch = self.per_process_batch
        candidates = [
            Recommendation(
                micro, batch // micro, fit.checkpointing, fit.peak_gib(micro), fit.step_seconds(micro, batch // micro)
            )
            for fit in self.fits
            for micro in range(self.min_micro_batch, batch + 1)
            if batch % micro == 0 and fit.peak_gib(micro) <= MARGIN * target_gib
        ]
        return min(candidates, key=lambda r: (r.checkpointing, r.accumulate), default=None)

    def advice(self, target_gib: float) -> str:
        """The recommendation for ``target_gib`` as the line `unimatch plan-memory` prints."""
        batch = f"{self.per_process_batch} images per process and optimizer step"
        recommended = self.recommend(target_gib)
        if recommended is None:
            return f"nothing fits {target_gib:g} GiB at {batch}: use more GPUs (train.gpus, train.nnodes)"
        return (
            f"for {target_gib:g} GiB at {batch}: {recommended.overrides()} "
            f"(estimated peak {recommended.peak_gib:.2f} GiB)"
        )

    def table(self) -> str:
        source = "CUDA allocator" if self.device.startswith("cuda") else "live tensors"
        lines = [
            f"measured on {self.device} (peak: {source})",
            "| checkpointing | micro-batch | peak GiB | s/step |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {'yes' if m.checkpointing else 'no'} | {m.batch} | {m.step.peak_gib:.3f} | {m.step.seconds:.3f} |"
            for m in self.measured
        ]
        return "\n".join(lines)


def _fit(checkpointing: bool, points: list[Measured]) -> Fit:
    (small, large) = sorted(points, key=lambda m: m.batch)
    span = large.batch - small.batch
    per_image = max(0.0, (large.step.peak_bytes - small.step.peak_bytes) / span)
    per_second = max(0.0, (large.step.seconds - small.step.seconds) / span)
    return Fit(
        checkpointing,
        small.step.peak_bytes - small.batch * per_image,
        per_image,
        max(0.0, small.step.seconds - small.batch * per_second),
        per_second,
    )


def _probe_config(
    cfg: ExperimentConfig, data: Path, batch: int, accumulate: int, checkpointing: bool, out: Path
) -> ExperimentConfig:
    """``cfg``'s model, method and precision on a few generated images, ``accumulate`` micro-batches of ``batch``."""
    settings = cfg.to_dict()
    sizes = {"crop_size": cfg.dataset.crop_size, "nclass": cfg.dataset.nclass}  # the classifier's and logits' size
    settings["dataset"] = {"name": "embedded", "root": str(data), **sizes}
    settings["split"] = {"labeled": 2}
    settings["model"] = {**settings["model"], "weights": None, "init_checkpoint": None, "hub_download": False}
    settings["model"]["activation_checkpointing"] = checkpointing
    settings["train"] = {
        **settings["train"],
        "batch_size": batch,
        "accumulate": accumulate,
        "gpus": 1,
        "nnodes": 1,
        "epochs": 1000,
        "max_iters": None,
        "num_workers": 0,
        "resume": False,
    }
    settings["pretrain"] = {**settings["pretrain"], "method": "none"}
    settings["tracking"] = {**settings["tracking"], "enabled": False}
    settings["output_dir"] = str(out)
    return validate(settings, "plan-memory probe")


def random_batches(trainer: Trainer, nclass: int, crop: int) -> tuple[LabeledBatch, UnlabeledBatch | None]:
    """One optimizer step's batch of random images at the trainer's sizes (values do not change the memory)."""
    generator = torch.Generator().manual_seed(0)
    device, channels = trainer.device, 3 * trainer.task.input_images

    def images(count: int) -> torch.Tensor:
        return torch.randn(count, channels, crop, crop, generator=generator).to(device)

    labeled_count = trainer.streams["labeled"][1]
    labeled = LabeledBatch(images(labeled_count), torch.randint(0, nclass, (labeled_count, crop, crop)).to(device))
    if "unlabeled" not in trainer.streams:
        return labeled, None
    count = trainer.streams["unlabeled"][1]
    ignore = torch.zeros(count, crop, crop, dtype=torch.int64, device=device)
    boxes = [torch.stack([cutmix_box(crop, p=1.0) for _ in range(count)]).to(device) for _ in range(2)]
    return labeled, UnlabeledBatch(images(count), images(count), images(count), ignore, *boxes)


def measure_training(
    cfg: ExperimentConfig,
    scratch: Path,
    batch: int,
    accumulate: int,
    checkpointing: bool,
    warmup: int = 1,
    steps: int = 2,
) -> tuple[StepMeasurement, str]:
    """Peak memory and time of optimizer steps of ``cfg``'s training (``accumulate`` micro-batches of
    ``batch``, random weights and images) on this device; and the device's name."""
    # 2 labeled images, and unlabeled ones for one optimizer step (the schedule needs them; never read)
    data = generate_embedded(
        scratch / f"data-{batch * accumulate}", n_train=2 + batch * accumulate, n_val=1, size=(64, 48)
    )
    (data / "classes.txt").unlink(missing_ok=True)  # the recipe's nclass, not the embedded world's 7 names
    probe = _probe_config(cfg, data, batch, accumulate, checkpointing, scratch / f"run-{checkpointing}-{batch}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised": intended here
        trainer = Trainer(probe, progress=False)
    batches = random_batches(trainer, cfg.dataset.nclass, cfg.dataset.crop_size)

    def step() -> None:
        trainer.train_step(*batches)
        trainer.iteration += 1

    def resident() -> list[torch.Tensor]:
        """Weights, buffers, EMA teacher, gradients and optimizer state, once the warm-up made them."""
        models = [trainer.model] + ([trainer.ema] if trainer.ema is not None else [])
        tensors = [t for model in models for t in chain(model.parameters(), model.buffers())]
        tensors += [p.grad for p in trainer.model.parameters() if p.grad is not None]
        return tensors + [v for state in trainer.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]

    return measure_steps(step, trainer.device, resident, warmup, steps), str(trainer.device)


def release_memory() -> None:
    """Free the memory of a measured trainer (out of scope now) before the next one is built."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def plan_memory(cfg: ExperimentConfig, checkpointing: tuple[bool, ...] = (False, True)) -> MemoryPlan:
    """Measure ``cfg``'s training step at small micro-batches on this device and fit the memory model."""
    if cfg.dataset.crop_size is None:
        raise ConfigError("dataset.crop_size: plan-memory needs the training crop size")
    min_micro = 2 if method_class(cfg.method.name).uses_unlabeled else 1  # CutMix partners within a micro-batch
    measured = []
    with tempfile.TemporaryDirectory(prefix="unimatch-plan-memory-") as scratch:
        for setting in checkpointing:
            for batch in MEASURED_BATCHES:
                step, device = measure_training(cfg, Path(scratch), batch, 1, setting)
                measured.append(Measured(setting, batch, step, device))
                release_memory()
    fits = [_fit(setting, [m for m in measured if m.checkpointing == setting]) for setting in checkpointing]
    return MemoryPlan(measured[0].device, cfg.train.batch_size * cfg.train.accumulate, min_micro, measured, fits)
