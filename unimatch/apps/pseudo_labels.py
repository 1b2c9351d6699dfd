"""The stages of ST and ST++ between trainings (SPEC §11): offline pseudo-labelling with multi-scale + flip
test-time augmentation, ST++'s image-level stability score, the reliable / unreliable split, and the
label-next list (the least stable images, what an annotator should label first).

Trainings themselves are ordinary runs of the engine: the teacher is labeled-only (with snapshots at T/3,
2T/3 and T iterations, ``train.snapshots=3``), the students are the ``st`` / ``st++`` methods reading the split files
written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from ..data import IGNORE_INDEX, Sample, normalize, palette, read_image, read_mask, read_pseudo_labels
from ..data.splits import relative_path
from ..engine.inference import exceeds_token_budget, predict_original, predict_sliding
from ..figures import save_figure
from ..metrics import ConfusionMatrix, iou_per_class, mean_iou
from ..utils.atomic import atomic_write, write_text_atomic
from ..utils.progress import progress_bar
from .predict import label_png, overlay

TTA_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0)  # the reference's five scales, each also flipped
RELIABLE_FRACTION = 0.5  # ST++: the most stable half is labelled and learnt first


@dataclass(frozen=True)
class Inference:
    """How whole images are predicted: in one pass, or in sliding windows of ``window`` px above ``max_tokens``
    (and always for an encoder built for one input size), as evaluation does."""

    window: int | None = None
    max_tokens: int | None = None

    def probabilities(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        fixed = getattr(model, "fixed_input_size", None)
        if fixed or exceeds_token_budget(model, "original", *image.shape[-2:], self.max_tokens):
            summed = predict_sliding(model, image, fixed or self.window, 2 / 3)
            return summed / summed.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return predict_original(model, image).softmax(dim=1)


@torch.no_grad()
def tta_probabilities(
    model: nn.Module,
    image: torch.Tensor,
    scales: Sequence[float] = TTA_SCALES,
    flip: bool = True,
    inference: Inference = Inference(),
) -> torch.Tensor:
    """Sum of softmax probabilities over ``scales`` x (image, horizontal flip), each prediction resized back
    (bilinear, align_corners) to the image's size: (1, C, H, W)."""
    height, width = image.shape[-2:]
    total = None
    for scale in scales:
        size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
        scaled = F.interpolate(image, size, mode="bilinear", align_corners=True)
        for flipped in (False, True) if flip else (False,):
            view = scaled.flip(-1) if flipped else scaled
            probs = inference.probabilities(model, view)
            probs = probs.flip(-1) if flipped else probs
            probs = F.interpolate(probs, (height, width), mode="bilinear", align_corners=True)
            total = probs if total is None else total + probs
    return total


@dataclass
class PseudoLabelResult:
    split_file: (
        Path  # lines "<image> <pseudo mask>": the image relative to the dataset root, the mask to the file's folder
    )
    images: int
    miou: float | None  # of the pseudo labels against ground truth, where the images have masks (percent)


@torch.no_grad()
def write_pseudo_labels(
    model: nn.Module,
    samples: Sequence[Sample],
    root: str | Path,
    out_dir: str | Path,
    nclass: int,
    device: torch.device,
    scales: Sequence[float] = TTA_SCALES,
    progress: bool = True,
    inference: Inference = Inference(),
) -> PseudoLabelResult:
    """Hard pseudo labels (argmax of the TTA probabilities, no confidence threshold) of every sample as
    palette PNGs under ``out_dir/labels``, and ``out_dir/pseudo_labels.txt`` listing them; scored against
    the samples' masks where there are any (never read for training)."""
    out_dir, root = Path(out_dir), Path(root)
    model.eval()
    colours, lines = palette(nclass), []
    confusion = ConfusionMatrix(nclass)
    for sample in progress_bar(samples, desc="pseudo-label", unit="img", disable=not progress):
        image = normalize(read_image(sample.image)).unsqueeze(0).to(device)
        labels = tta_probabilities(model, image, scales, inference=inference).argmax(dim=1)[0].cpu()
        target = out_dir / "labels" / (Path(sample.name).with_suffix("").as_posix().replace("/", "__") + ".png")
        atomic_write(target, lambda file, png=label_png(labels.numpy(), colours): png.save(file, format="PNG"))
        lines.append(f"{relative_path(sample.image, root)} {relative_path(target, out_dir)}")
        if sample.mask is not None and sample.mask.is_file():
            confusion.update(labels, torch.from_numpy(read_mask(sample.mask, nclass).astype(np.int64)))
    split_file = out_dir / "pseudo_labels.txt"
    write_text_atomic(split_file, "".join(line + "\n" for line in lines))
    matrix = confusion.numpy()
    miou = mean_iou(matrix) if matrix.sum() else None
    return PseudoLabelResult(split_file, len(lines), miou)


def subset_pseudo_labels(path: str | Path, root: str | Path, images: set[str], out_dir: str | Path) -> Path:
    """The pseudo labels of split ``path`` whose image is in ``images`` (root-relative paths), copied with a
    split file of their own to ``out_dir`` (a self-contained folder, like every stage's output)."""
    out_dir = Path(out_dir)
    lines = []
    for sample in read_pseudo_labels(path, root):
        if sample.name in images:
            target = out_dir / "labels" / sample.mask.name
            atomic_write(target, lambda file, source=sample.mask: file.write(source.read_bytes()))
            lines.append(f"{sample.name} {relative_path(target, out_dir)}")
    return write_text_atomic(out_dir / "pseudo_labels.txt", "".join(line + "\n" for line in lines))


def mask_miou(prediction: np.ndarray, reference: np.ndarray, nclass: int) -> float:
    """Mean IoU of ``prediction`` against ``reference`` (taken as ground truth) over the classes present in
    either (ST++'s per-image score; 255 in ``reference`` ignored), in [0, 1]."""
    valid = reference != IGNORE_INDEX
    matrix = np.bincount(reference[valid] * nclass + prediction[valid], minlength=nclass * nclass).reshape(
        nclass, nclass
    )
    return float(np.nanmean(iou_per_class(matrix)))


@torch.no_grad()
def predicted_masks(
    model: nn.Module, samples: Sequence[Sample], device: torch.device, inference: Inference = Inference()
) -> list[np.ndarray]:
    """Single-scale label maps (ST++ scores stability without TTA, as the reference)."""
    model.eval()
    return [
        inference.probabilities(model, normalize(read_image(s.image)).unsqueeze(0).to(device))
        .argmax(1)[0]
        .cpu()
        .numpy()
        for s in samples
    ]


def stability_scores(earlier: Sequence[Sequence[np.ndarray]], final: Sequence[np.ndarray], nclass: int) -> list[float]:
    """Per image: the mean over earlier snapshots of meanIoU(snapshot mask, final mask) (higher: more stable)."""
    return [float(np.mean([mask_miou(masks[i], final[i], nclass) for masks in earlier])) for i in range(len(final))]


def rank_by_stability(samples: Sequence[Sample], scores: Sequence[float]) -> pd.DataFrame:
    """Images from the most to the least stable (ties by name, so the order is reproducible)."""
    frame = pd.DataFrame({"image": [s.name for s in samples], "stability": scores})
    return frame.sort_values(["stability", "image"], ascending=[False, True], kind="stable").reset_index(drop=True)


def split_reliable(ranking: pd.DataFrame, fraction: float = RELIABLE_FRACTION) -> tuple[list[str], list[str]]:
    """The most stable ``fraction`` of the images (ST++'s reliable set, the reference's ``len // 2``) and the rest."""
    cut = int(len(ranking) * fraction)
    names = ranking["image"].tolist()
    return names[:cut], names[cut:]


def write_label_next(
    ranking: pd.DataFrame,
    samples: Sequence[Sample],
    final: Sequence[np.ndarray],
    earlier: Sequence[Sequence[np.ndarray]],
    nclass: int,
    out_dir: str | Path,
    sheet_images: int = 12,
) -> tuple[Path, Path]:
    """``label_next.csv``: every unlabeled image, least stable first (rank, image, stability), what to annotate
    next; ``label_next.png``: the first ``sheet_images`` of them as image | pseudo label | disagreement (pixels
    where the earlier snapshots disagree with the final model: 0 none, 1 all)."""

    out_dir = Path(out_dir)
    least_first = ranking.iloc[::-1].reset_index(drop=True)
    table = least_first.assign(rank=np.arange(1, len(least_first) + 1))[["rank", "image", "stability"]]
    csv = write_text_atomic(
        out_dir / "label_next.csv", table.to_csv(index=False, float_format="%.4f", lineterminator="\n")
    )
    index = {sample.name: i for i, sample in enumerate(samples)}
    shown = table["image"].tolist()[:sheet_images]
    fig = Figure(figsize=(9, 2.6 * max(1, len(shown))), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(1, len(shown)), 3, squeeze=False))
    colours, stability = palette(nclass), ranking.set_index("image")["stability"]
    for row, name in zip(axes, shown):
        i = index[name]
        disagreement = np.mean([masks[i] != final[i] for masks in earlier], axis=0)
        image = read_image(samples[i].image)
        panels = (
            (image, name),
            (overlay(image, final[i], colours), "pseudo label (final model; background untinted)"),
            (disagreement, f"disagreement (stability {stability[name]:.2f})"),
        )
        for ax, (array, title) in zip(row, panels):
            ax.imshow(
                array, cmap="magma" if array.ndim == 2 else None, vmin=0, vmax=1 if array.ndim == 2 else None
            )  # share of snapshots
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    sheet = save_figure(fig, out_dir / "label_next.png")
    return csv, sheet
