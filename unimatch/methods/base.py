"""What every method shares: the method registry, pseudo labels from the teacher, CutMix mixing, the
masked pixel loss.

A method is a small class that turns one labeled and one unlabeled batch into losses, registered with
:func:`register_method`; its ``Settings`` is its config section (validated, nothing it does not read).
The engine (``unimatch.engine``) owns everything else (data, optimiser, EMA, AMP, logging, checkpoints)
and reads only the declarations: ``uses_unlabeled``, where the settings have one ``teacher``, and the
hooks ``build_model`` (the architecture it trains) and ``on_device`` (extra frozen models).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import create_model
from torch import nn
from torch.utils.data import Dataset

from ..data import Sample
from ..models import Segmentor
from ..models.segmentor import FeatureDrop
from ..settings import MethodSettings, ModelSettings, PseudoLabelSettings
from ..utils.registry import Registry

if TYPE_CHECKING:
    from ..tasks import SegmentationTask as Task

PADDING = 255  # value of the unlabeled ignore mask on padded pixels


@dataclass
class LabeledBatch:
    image: torch.Tensor  # (B, 3, H, W) normalised
    mask: torch.Tensor  # (B, H, W) int64, 255 = ignore


@dataclass
class UnlabeledBatch:
    weak: torch.Tensor  # (B, 3, H, W)
    strong1: torch.Tensor
    strong2: torch.Tensor
    ignore: torch.Tensor  # (B, H, W) int64, 255 on padding, 0 elsewhere
    box1: torch.Tensor  # (B, H, W) 0/1 CutMix boxes of the two strong views
    box2: torch.Tensor


@dataclass
class PseudoLabels:
    label: torch.Tensor  # (B, H, W) argmax of the teacher on the weak view
    confidence: torch.Tensor  # (B, H, W) max softmax
    ignore: torch.Tensor  # (B, H, W) 255 on padding


@dataclass
class StepLosses:
    loss: torch.Tensor
    labeled: torch.Tensor
    unlabeled: torch.Tensor
    mask_ratio: torch.Tensor  # confident share of non-padding pixels


@torch.no_grad()
def eval_logits(teacher: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Teacher logits in eval mode without gradients (the student as teacher goes back to train)."""
    was_training = teacher.training
    teacher.eval()
    logits = teacher(images).float()
    teacher.train(was_training)
    return logits


def pseudo_labels_of(logits: torch.Tensor, ignore: torch.Tensor) -> PseudoLabels:
    confidence, label = logits.softmax(dim=1).max(dim=1)
    return PseudoLabels(label, confidence, ignore)


def pseudo_label(teacher: nn.Module, weak: torch.Tensor, ignore: torch.Tensor) -> PseudoLabels:
    """The teacher's pseudo labels of the weak view: argmax and confidence of its eval-mode prediction."""
    return pseudo_labels_of(eval_logits(teacher, weak), ignore)


def cutmix_images(images: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Inside sample i's box, paste sample B-1-i (the batch flipped), as the reference code does."""
    return torch.where(box.unsqueeze(1).bool(), images.flip(0), images)


def cutmix_pseudo(pseudo: PseudoLabels, box: torch.Tensor) -> PseudoLabels:
    """Mix pseudo label, confidence and padding mask with the same box and partner as the images."""
    inside = box.bool()
    return PseudoLabels(
        torch.where(inside, pseudo.label.flip(0), pseudo.label),
        torch.where(inside, pseudo.confidence.flip(0), pseudo.confidence),
        torch.where(inside, pseudo.ignore.flip(0), pseudo.ignore),
    )


def pixel_loss(logits: torch.Tensor, pseudo: PseudoLabels, threshold: float) -> torch.Tensor:
    """CE to the pseudo label on confident non-padding pixels, normalised by ALL non-padding pixels."""
    per_pixel = F.cross_entropy(logits.float(), pseudo.label, reduction="none")
    real = pseudo.ignore != PADDING
    kept = (pseudo.confidence >= threshold) & real
    return (per_pixel * kept).sum() / real.sum().clamp(min=1)


def mask_ratio(pseudo: PseudoLabels, threshold: float) -> torch.Tensor:
    real = pseudo.ignore != PADDING
    return ((pseudo.confidence >= threshold) & real).sum() / real.sum().clamp(min=1)


def joint_forward(
    student: Segmentor, labeled: torch.Tensor, views: list[torch.Tensor], drop: FeatureDrop = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder pass over labeled images and unlabeled views (the encoder is per-sample, so this
    equals separate passes at a better batch size); labeled decoded plainly, views with ``drop``."""
    maps = student.features(torch.cat((labeled, *views)))
    count, size = labeled.shape[0], labeled.shape[-2:]
    pred_labeled = student.decode([m[:count] for m in maps], size)
    pred_views = student.decode([m[count:] for m in maps], size, drop)
    return pred_labeled, pred_views


@dataclass(frozen=True)
class Progress:
    """Where training is: the engine sets ``Method.progress`` before every step."""

    iteration: int  # from 0
    total: int  # iterations of the whole training
    iterations_per_epoch: int

    @property
    def epoch(self) -> int:
        """The epoch the step belongs to, from 0 (the reference scripts' loop variable)."""
        return self.iteration // self.iterations_per_epoch


@dataclass(frozen=True)
class Pools:
    """The training images a schedule is made from."""

    labeled: int
    labeled_set: int  # samples of the method's labeled dataset (ST: with its pseudo-labelled images)
    unlabeled: int  # the unlabeled split plus any extra pools
    labeled_split: str
    unlabeled_split: str
    labeled_epoch_samples: int | None  # dataset.labeled_epoch_samples (the reference's n_upsampled)


@dataclass(frozen=True)
class Schedule:
    """What one epoch is: its iterations, the labeled images per step and process, and the pool it
    passes over (named in the error when not one step fits)."""

    iterations_per_epoch: int
    labeled_batch: int
    pool: int
    pool_name: str  # e.g. "unlabeled images of <split>"


class Method:
    """Base class: ``step`` returns the losses of one iteration. Declarations the engine reads:
    ``uses_unlabeled`` (load unlabeled batches at all) and ``Settings`` (the config section; a ``teacher``
    field there says which model makes the pseudo labels); ``staged`` tells benchmarks which methods need
    stages before them (a teacher's pseudo labels) rather than one training. ``name`` and ``label`` (report
    rows) come from :func:`register_method`. ``progress`` is where training is when ``step`` runs."""

    name: str
    label: str
    uses_unlabeled = True
    Settings: type[MethodSettings] = PseudoLabelSettings
    # True: trained on inputs that earlier stages make (ST / ST++'s pseudo labels); False: one training from
    # the config alone.
    staged = False
    # The tasks (unimatch.tasks) the method is defined and tested for; the engine refuses the others.
    tasks: tuple[str, ...] = ("segmentation",)

    def __init__(self, settings: MethodSettings, labeled_loss: nn.Module):
        self.cfg = settings
        self.labeled_loss = labeled_loss
        self.progress = Progress(0, 1, 1)

    @classmethod
    def build_model(cls, model: Segmentor, settings: MethodSettings, input_size: int) -> Segmentor:
        """The architecture the method trains, made from the configured segmentor (training crops of
        ``input_size``) before any weights load: wherever a model is built from a config (training,
        evaluation, prediction, checkpoints) it gets the same modules. Default: the segmentor unchanged."""
        return model

    def on_device(self, model: Segmentor, model_cfg: ModelSettings, device: torch.device) -> None:
        """Called once the trained model is on ``device``: build what the steps need besides it (e.g. a frozen
        copy of the pre-trained encoder from ``model_cfg.weights``), kept by the method, outside the model and
        its checkpoints. Default: nothing."""

    def labeled_dataset(self, labeled: Sequence[Sample], root: str, nclass: int, crop: int, task: Task) -> Dataset:
        """What the labeled stream draws from: the task's weakly augmented labeled crops (or pairs)."""
        return task.labeled_dataset(labeled, nclass, crop)

    def schedule(self, pools: Pools, batch: int, world: int) -> Schedule:
        """One epoch = one pass over the unlabeled pool, ``batch`` labeled and unlabeled images per step."""
        return Schedule(
            pools.unlabeled // (batch * world), batch, pools.unlabeled, f"unlabeled images of {pools.unlabeled_split}"
        )

    def step(
        self, student: Segmentor, teacher: nn.Module, labeled: LabeledBatch, unlabeled: UnlabeledBatch | None
    ) -> StepLosses:
        raise NotImplementedError

    def combine(self, loss_labeled: torch.Tensor, loss_unlabeled: torch.Tensor, ratio: torch.Tensor) -> StepLosses:
        """Total = (L_l + lambda * L_u) / 2, the reference weighting."""
        total = (loss_labeled + self.cfg.unlabeled_weight * loss_unlabeled) / 2.0
        return StepLosses(total, loss_labeled.detach(), loss_unlabeled.detach(), ratio.detach())


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str, label: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a method under ``name`` (the config's ``method.name``) with its report
    label; its ``Settings`` gets ``name`` as a fixed field."""

    def register(cls: type[Method]) -> type[Method]:
        METHODS.add(name, cls)  # first: a duplicate name leaves the class untouched
        cls.name, cls.label = name, label
        cls.Settings = create_model(f"{cls.__name__}Settings", __base__=cls.Settings, name=(Literal[name], name))
        return cls

    return register


def method_class(name: str) -> type[Method]:
    return METHODS.entry(name)
