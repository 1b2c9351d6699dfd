"""Augmentations (SPEC §2) against the reference: what is drawn (sizes, offsets, probabilities, factors,
orders, sigmas) and what each op computes (torchvision's PIL functions, Pillow's blur), plus shapes,
padding values, CutMix boxes, normalisation and seeding."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter

from unimatch.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    LabeledDataset,
    UnlabeledDataset,
    check_crop_size,
    cutmix_box,
    list_dataset,
    normalize,
    strong,
    weak,
)
from unimatch.data.transforms import (
    PILGaussianBlur,
    RandomRescale,
    TorchvisionColorJitter,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment,
    pil_box_kernel,
    pil_gaussian_blur,
    strong_pipeline,
    weak_pipeline,
)

PADDED_PIXEL = torch.from_numpy(-IMAGENET_MEAN / IMAGENET_STD)  # a 0-valued pixel after normalisation


def photo(size: int = 64, seed: int = 0) -> np.ndarray:
    """A colourful, smooth-ish RGB image (hue and saturation sweeps plus noise) with edges inside."""
    y, x = np.mgrid[0:size, 0:size] / size
    hsv = np.stack([(x * 200 + y * 55) % 256, 60 + 180 * y, 40 + 200 * (1 - x * y)], axis=-1).astype(np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(int)
    rgb[size // 3 : size // 2, size // 4 :] = (250, 20, 30)  # a saturated block with hard edges
    rgb += np.random.default_rng(seed).integers(-12, 13, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def applied(pipeline: A.Compose, rng: random.Random, **data: np.ndarray) -> tuple[dict, dict]:
    """Output and {transform name: drawn parameters} of one run of ``pipeline``'s transforms."""
    out = augment(A.Compose(pipeline.transforms, save_applied_params=True), rng, **data)
    return out, dict(out["applied_transforms"])


def reference_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The authors' resize() rule (dataset/transform.py)."""
    if height > width:
        return int(1.0 * width * long_side / height + 0.5), long_side
    return long_side, int(1.0 * height * long_side / width + 0.5)


# ---------------------------------------------------------------------------------------------- weak view


@pytest.mark.parametrize("crop", [0, -14])
def test_crop_must_be_positive(crop: int, folder_dataset: Path) -> None:
    with pytest.raises(DataError, match=r"dataset.crop_size"):
        check_crop_size(crop)
    with pytest.raises(DataError, match=r"dataset.crop_size"):
        UnlabeledDataset(list_dataset("folder", folder_dataset, "train"), crop)


@pytest.mark.parametrize("shape", [(40, 100), (73, 100), (80, 37)])
def test_rescale_draws_the_long_side_and_resizes_exactly_like_pil(shape: tuple[int, int]) -> None:
    image = photo(max(shape))[: shape[0], : shape[1]]
    mask = np.random.default_rng(1).integers(0, 5, shape, dtype=np.uint8)
    pipeline, rng, longs = A.Compose([RandomRescale()]), random.Random(0), []
    for _ in range(600):
        out, params = applied(pipeline, rng, image=image, mask=mask)
        size = params["RandomRescale"]["size"]
        longs.append(max(size))
        assert size == reference_size(shape[1], shape[0], max(size))
        assert out["image"].shape == (size[1], size[0], 3) and out["mask"].shape == (size[1], size[0])
        assert np.array_equal(out["image"], np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)))
        assert np.array_equal(out["mask"], np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST)))
    low, high = int(0.5 * max(shape)), int(2.0 * max(shape))
    assert low <= min(longs) <= low + 2 and high - 2 <= max(longs) <= high  # the whole range, ends included
    assert abs(np.mean(longs) - (low + high) / 2) < 0.05 * (high - low)  # uniform


def test_short_side_rounds_half_up_like_the_reference() -> None:
    # 73 * 50 / 100 = 36.5: the reference's int(x + 0.5) gives 37 where round() would give 36.
    out, params = applied(A.Compose([RandomRescale((0.5, 0.5))]), random.Random(0), image=photo(100)[:73])
    assert params["RandomRescale"]["size"] == (50, 37) and out["image"].shape == (37, 50, 3)


def replay_weak(image: np.ndarray, mask: np.ndarray, params: dict, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """The weak view rebuilt with PIL and numpy from the drawn parameters: resize, pad, crop, flip."""
    size = params["RandomRescale"]["size"]
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    bottom, right = params["PadIfNeeded"]["pad_bottom"], params["PadIfNeeded"]["pad_right"]
    image = np.pad(image, ((0, bottom), (0, right), (0, 0)), constant_values=0)
    mask = np.pad(mask, ((0, bottom), (0, right)), constant_values=fill)
    left, top, x_end, y_end = params["RandomCrop"]["crop_coords"]
    image, mask = image[top:y_end, left:x_end], mask[top:y_end, left:x_end]
    if "HorizontalFlip" in params:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return image, mask


@pytest.mark.parametrize("fill", [255, 254])
def test_weak_is_rescale_pad_crop_flip_with_reference_draws(fill: int) -> None:
    image = photo(60)[:, :45]
    mask = np.random.default_rng(2).integers(0, 3, (60, 45), dtype=np.uint8)
    crop, rng, offsets, flips = 56, random.Random(0), [], 0
    for _ in range(300):
        out, params = applied(weak_pipeline(crop, fill), rng, image=image, mask=mask)
        expected_image, expected_mask = replay_weak(image, mask, params, fill)
        assert np.array_equal(out["image"], expected_image) and np.array_equal(out["mask"], expected_mask)
        width, height = params["RandomRescale"]["size"]
        pad = params["PadIfNeeded"]
        assert pad["pad_top"] == pad["pad_left"] == 0  # right/bottom only, as the reference
        assert (pad["pad_bottom"], pad["pad_right"]) == (max(crop - height, 0), max(crop - width, 0))
        left, top = params["RandomCrop"]["crop_coords"][:2]
        assert 0 <= left <= max(width, crop) - crop and 0 <= top <= max(height, crop) - crop
        if height > crop + 20:
            offsets.append(top / (height - crop))
        flips += "HorizontalFlip" in params
    assert 0.4 < flips / 300 < 0.6
    assert len(offsets) > 60 and 0.4 < np.mean(offsets) < 0.6  # uniform over the valid offsets


def test_weak_crops_small_and_large_images_to_the_crop_size() -> None:
    rng = random.Random(0)
    for shape in [(10, 10), (50, 100), (300, 120)]:
        for _ in range(20):
            out_image, out_mask = weak(np.zeros((*shape, 3), np.uint8), np.zeros(shape, np.uint8), 28, 255, rng)
            assert out_image.shape == (28, 28, 3) and out_mask.shape == (28, 28)


def test_flip_and_crop_draws_are_independent() -> None:
    """One shared generator per call: with albumentations' per-transform seeding (Compose(seed=)) the flip
    coin and the crop offset would come from identically seeded generators and move together."""
    image, mask = photo(200), np.zeros((200, 200), np.uint8)
    flips, offsets = [], []
    for seed in range(400):
        _, params = applied(weak_pipeline(56, 255), random.Random(seed), image=image, mask=mask)
        height = params["RandomRescale"]["size"][1]
        flips.append("HorizontalFlip" in params)
        offsets.append(params["RandomCrop"]["crop_coords"][1] / (height - 56))
    assert abs(np.corrcoef(flips, offsets)[0, 1]) < 0.2


def test_labeled_crop_pads_with_255(folder_dataset: Path) -> None:
    random.seed(0)
    samples = [s for s in list_dataset("folder", folder_dataset, "train") if s.mask is not None]
    source_labels = {0, 1, 2, 255}
    for image, mask in LabeledDataset(samples, 3, 112):  # images <= 51 px wide: x2 < 112, always padded
        assert image.shape == (3, 112, 112) and image.dtype == torch.float32
        assert mask.shape == (112, 112) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= source_labels
        # Bottom-right corner is padding whatever the flip (padding goes right/bottom, flip mirrors it left).
        assert mask[-1, -1] == 255 or mask[-1, 0] == 255
        padded = mask[-1] == 255
        assert torch.allclose(image[:, -1][:, padded], PADDED_PIXEL[:, None].expand(3, int(padded.sum())))


def test_unlabeled_padding_becomes_ignore_mask(folder_dataset: Path) -> None:
    random.seed(1)
    dataset = UnlabeledDataset(list_dataset("folder", folder_dataset, "train"), 112)
    assert len(dataset) == 12  # mask-less images included; masks are never read
    for weak_view, strong1, strong2, ignore, box1, box2 in dataset:
        for view in (weak_view, strong1, strong2):
            assert view.shape == (3, 112, 112) and view.dtype == torch.float32
        assert ignore.dtype == torch.int64 and set(ignore.unique().tolist()) == {0, 255}
        padding = ignore == 255
        assert torch.allclose(weak_view.permute(1, 2, 0)[padding], PADDED_PIXEL.expand(int(padding.sum()), 3))
        assert not torch.allclose(weak_view.permute(1, 2, 0)[~padding].std(0), torch.zeros(3))
        for box in (box1, box2):
            assert box.shape == (112, 112) and set(box.unique().tolist()) <= {0, 1}


def test_unlabeled_padding_value_is_254_before_the_ignore_mask() -> None:
    image, mask = weak(np.full((10, 10, 3), 9, np.uint8), np.zeros((10, 10), np.uint8), 56, 254, random.Random(0))
    assert set(np.unique(mask)) == {0, 254}
    assert (image[mask == 254] == 0).all() and (image[mask == 0] > 0).all()


def test_augmentations_are_reproducible_under_seeding(folder_dataset: Path) -> None:
    dataset = UnlabeledDataset(list_dataset("folder", folder_dataset, "train"), 56)
    random.seed(5)
    first = dataset[3]
    random.seed(5)
    second = dataset[3]
    random.seed(6)
    other = dataset[3]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


# -------------------------------------------------------------------------------------------- strong view


def test_strong_keeps_size_and_changes_pixels() -> None:
    rng = random.Random(0)
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    views = [strong(image, rng) for _ in range(20)]
    assert all(view.shape == (28, 28, 3) and view.dtype == np.uint8 for view in views)
    assert any(not np.array_equal(view, image) for view in views)
    assert np.array_equal(image, np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))  # input kept


@pytest.mark.parametrize("factor", [0.5, 0.77, 1.0, 1.23, 1.5])
def test_brightness_contrast_saturation_are_torchvision_bit_for_bit(factor: float) -> None:
    for image in (photo(), np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)):
        pil = Image.fromarray(image)
        assert np.array_equal(adjust_brightness(image, factor), np.asarray(TF.adjust_brightness(pil, factor)))
        assert np.array_equal(adjust_contrast(image, factor), np.asarray(TF.adjust_contrast(pil, factor)))
        assert np.array_equal(adjust_saturation(image, factor), np.asarray(TF.adjust_saturation(pil, factor)))


@pytest.mark.parametrize("factor", [-0.25, -0.1, 0.0, 0.003, 0.05, 0.2, 0.25])
def test_hue_follows_torchvision_pil_up_to_float_rounding(factor: float) -> None:
    for image in (photo(), np.random.default_rng(4).integers(0, 256, (40, 50, 3), dtype=np.uint8)):
        reference = np.asarray(TF.adjust_hue(Image.fromarray(image), factor)).astype(int)
        error = adjust_hue(image, factor).astype(int) - reference
        assert (error != 0).mean() < 0.01 and np.abs(error).mean() < 0.02


def test_jitter_draws_torchvision_factors_and_uniform_orders() -> None:
    jitter = TorchvisionColorJitter()
    jitter.set_random_state(np.random.default_rng(0), random.Random(0))
    draws = [jitter.get_params() for _ in range(2400)]
    ranges = {"brightness": (0.5, 1.5), "contrast": (0.5, 1.5), "saturation": (0.5, 1.5), "hue": (-0.25, 0.25)}
    for name, (low, high) in ranges.items():
        values = np.array([draw[name] for draw in draws])
        assert low <= values.min() < low + 0.01 and high - 0.01 < values.max() <= high
        assert abs(values.mean() - (low + high) / 2) < 0.03 * (high - low)
    orders = Counter(tuple(draw["order"]) for draw in draws)
    assert len(orders) == 24 and min(orders.values()) > 60 and max(orders.values()) < 140


def test_jitter_applies_torchvision_functions_in_the_drawn_order() -> None:
    jitter, image = TorchvisionColorJitter(), photo()
    functions = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    jitter.set_random_state(np.random.default_rng(1), random.Random(1))
    for _ in range(20):
        params = jitter.get_params()
        factors = [params["brightness"], params["contrast"], params["saturation"], params["hue"]]
        expected = Image.fromarray(image)
        for index in params["order"]:
            expected = functions[index](expected, factors[index])
        error = jitter.apply(image, **params).astype(int) - np.asarray(expected).astype(int)
        assert (error != 0).mean() < 0.02  # hue's rounding only, carried through the later ops


def test_strong_op_probabilities_and_blur_sigmas() -> None:
    pipeline, rng, image = strong_pipeline(), random.Random(0), photo(16)
    runs = [applied(pipeline, rng, image=image)[1] for _ in range(1500)]
    names = ("TorchvisionColorJitter", "ToGray", "PILGaussianBlur")
    share = {name: sum(name in run for run in runs) / len(runs) for name in names}
    assert abs(share["TorchvisionColorJitter"] - 0.8) < 0.04
    assert abs(share["ToGray"] - 0.2) < 0.04
    assert abs(share["PILGaussianBlur"] - 0.5) < 0.05
    sigmas = np.array([run["PILGaussianBlur"]["sigma"] for run in runs if "PILGaussianBlur" in run])
    assert 0.1 <= sigmas.min() < 0.15 and 1.95 < sigmas.max() <= 2.0
    assert abs(sigmas.mean() - 1.05) < 0.08 and abs((sigmas < 0.575).mean() - 0.25) < 0.06  # U(0.1, 2.0)
    assert [type(t).__name__ for t in pipeline.transforms] == list(names)


def test_grayscale_is_pils_up_to_one_level() -> None:
    image = photo()
    gray = A.ToGray(num_output_channels=3, method="weighted_average", p=1.0)(image=image)["image"]
    assert gray.shape == image.shape and (gray == gray[..., :1]).all()
    reference = np.asarray(TF.rgb_to_grayscale(Image.fromarray(image), num_output_channels=3)).astype(int)
    error = gray.astype(int) - reference
    assert np.abs(error).max() <= 1 and (error != 0).mean() < 0.01


@pytest.mark.parametrize("sigma", [0.1, 0.25, 0.6, 1.0, 1.4, 2.0])
def test_blur_follows_pillows_gaussian_blur(sigma: float) -> None:
    kernel = np.asarray(pil_box_kernel(sigma), dtype=np.float64)
    for _ in range(2):
        kernel = np.convolve(kernel, pil_box_kernel(sigma))
    taps = np.arange(len(kernel)) - len(kernel) // 2
    assert kernel.sum() == pytest.approx(1, abs=1e-6)
    assert (kernel * taps**2).sum() == pytest.approx(sigma**2, rel=1e-3, abs=1e-5)  # Pillow's rule: variance sigma^2
    for image in (photo(), np.random.default_rng(5).integers(0, 256, (40, 50, 3), dtype=np.uint8)):
        reference = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma))).astype(int)
        error = pil_gaussian_blur(image, sigma).astype(int) - reference
        assert np.abs(error).max() <= 2 and np.abs(error).mean() < 0.2


def test_blur_replicates_the_edge_at_every_pass_like_pillow() -> None:
    """A dark edge pixel next to bright ones: Pillow re-reads the (already blurred) edge at each pass, one
    composite kernel over the original edge would leave it ~40 levels darker."""
    line = np.zeros((1, 20, 3), np.uint8)
    line[0, 1:5] = 255
    for sigma in (1.5, 2.0):
        reference = np.asarray(Image.fromarray(line).filter(ImageFilter.GaussianBlur(sigma))).astype(int)
        assert np.abs(pil_gaussian_blur(line, sigma).astype(int) - reference).max() <= 1


def test_blur_transform_draws_sigma_and_blurs() -> None:
    blur, image = PILGaussianBlur(p=1.0), photo()
    blur.set_random_state(np.random.default_rng(0), random.Random(0))
    params = blur.get_params()
    assert 0.1 <= params["sigma"] <= 2.0
    assert np.array_equal(blur.apply(image, **params), pil_gaussian_blur(image, params["sigma"]))
    assert not np.array_equal(pil_gaussian_blur(image, 0.25), image)  # Pillow's small sigmas still blur a little


# ------------------------------------------------------------------------------- CutMix and normalisation


@pytest.mark.parametrize("size", [14, 56, 112])
def test_cutmix_boxes_fit_and_have_the_right_area(size: int) -> None:
    rng = random.Random(0)
    boxes = [cutmix_box(size, p=1.0, rng=rng) for _ in range(300)]
    for box in boxes:
        rows, cols = torch.nonzero(box, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert int(box.sum()) == height * width  # one solid rectangle, inside the crop by construction
        # int() truncation of both sides loses at most (w + h + 1) pixels of the drawn area.
        assert 0.02 * size * size - (width + height + 1) <= height * width <= 0.4 * size * size
    assert len({tuple(torch.nonzero(b)[0].tolist()) for b in boxes}) > 10  # positions vary


class ScriptedRng:
    """A ``random``-like source that returns planned draws, in order, for ``random``, ``uniform`` and ``randint``."""

    def __init__(self, *draws: float) -> None:
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)

    def uniform(self, low: float, high: float) -> float:
        value = self.draws.pop(0)
        assert low <= value <= high
        return value

    def randint(self, low: int, high: int) -> int:
        return int(self.uniform(low, high))


def test_cutmix_box_by_hand_and_its_aspect_ratio_is_height_over_width() -> None:
    # area 0.12 of 100 x 100 = 1200 px at aspect 3: width int(sqrt(1200 / 3)) = 20, height int(sqrt(1200 * 3)) = 60;
    # the first position (left 90, top 50) does not fit, the second draw (aspect 1/3: 60 wide, 20 tall) at (10, 5) does.
    box = cutmix_box(100, p=1.0, rng=ScriptedRng(0.0, 0.12, 3.0, 90, 50, 1 / 3, 10, 5))
    expected = torch.zeros(100, 100, dtype=torch.int64)
    expected[5:25, 10:70] = 1
    assert torch.equal(box, expected)
    tall = cutmix_box(100, p=1.0, rng=ScriptedRng(0.0, 0.12, 3.0, 10, 5))
    assert tall[5:65, 10:30].all() and int(tall.sum()) == 60 * 20


def test_cutmix_box_aspect_ratios_span_the_range_both_ways() -> None:
    rng = random.Random(1)
    ratios = []
    for _ in range(400):
        rows, cols = torch.nonzero(cutmix_box(112, p=1.0, rng=rng), as_tuple=True)
        ratios.append((int(rows.max() - rows.min()) + 1) / (int(cols.max() - cols.min()) + 1))
    assert min(ratios) >= 0.3 * 0.8 and max(ratios) <= 1 / 0.3 / 0.8  # within 0.3-3.3, up to int() truncation
    assert sum(r < 0.5 for r in ratios) > 5 and sum(r > 2 for r in ratios) > 5  # wide and tall boxes both occur


def test_cutmix_box_that_cannot_fit_is_an_error_naming_the_draw() -> None:
    # 100 % of a 10 x 10 crop at aspect 3 is 5 wide and 17 tall: no position fits.
    with pytest.raises(ValueError, match=r"no cutmix box of area \(1.0, 1.0\) and ratio \(3.0, 3.0\) fits a 10x10 crop"):
        cutmix_box(10, p=1.0, area=(1.0, 1.0), ratio=(3.0, 3.0), rng=random.Random(0), max_tries=50)


def test_cutmix_probability() -> None:
    rng = random.Random(0)
    assert all(cutmix_box(56, p=0.0, rng=rng).sum() == 0 for _ in range(100))
    hits = sum(int(cutmix_box(56, p=0.5, rng=rng).sum() > 0) for _ in range(400))
    assert 150 < hits < 250


def test_normalize_is_the_imagenet_formula_bit_for_bit() -> None:
    image = np.random.default_rng(6).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    formula = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    expected = torch.from_numpy(formula.transpose(2, 0, 1).copy())
    for source in (image, Image.fromarray(image), image[:, ::-1][:, ::-1]):
        out = normalize(source)
        assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, expected)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        normalize(image[..., 0])
