"""The breadth and self-distillation routes of foundation pre-training: what their pieces compute on
hand-made inputs, that their smoke runs learn, and that the world pool is never the benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from unimatch.apps.foundation import load_foundation_config, train_foundation
from unimatch.apps.foundation_routes import DinoRoute, TokenRoute, colour_jitter, resized_crops
from unimatch.data.embedded import SUBSETS, render_world
from unimatch.data.foundation_corpus import WORLD_STREAM, FoundationCorpus, WorldPool, class_names

PROJECT = Path(__file__).resolve().parents[1]
CONFIGS = PROJECT / "configs" / "foundation"


def test_patch_histograms_count_each_patch_own_pixels() -> None:
    """A 28x28 mask, patch 14: top-left patch all class 2; top-right half 1 / half 0; bottom row background."""
    route = TokenRoute("tiny", nclass=3, input_size=28)
    mask = torch.zeros(1, 28, 28, dtype=torch.long)
    mask[0, :14, :14] = 2
    mask[0, :14, 14:21] = 1
    histograms = route.patch_histograms(mask)[0]
    expected = torch.tensor([[0, 0, 1], [0.5, 0.5, 0], [1, 0, 0], [1, 0, 0]])
    assert torch.allclose(histograms, expected)


def test_colour_jitter_is_identity_when_off_and_grey_when_forced() -> None:
    images = torch.randn(3, 3, 8, 8).clamp(-2, 2)
    generator = torch.Generator().manual_seed(0)
    unchanged = colour_jitter(images, generator, p_jitter=0.0, p_grey=0.0)
    pixels = images * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    inside = ((pixels >= 0) & (pixels <= 1)).all(dim=1, keepdim=True).expand_as(images)  # clamping aside
    assert torch.allclose(unchanged[inside], images[inside], atol=1e-5)
    grey = colour_jitter(images, generator, p_jitter=0.0, p_grey=1.0)
    pixels = grey * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5) and torch.allclose(pixels[:, 1], pixels[:, 2], atol=1e-5)


def test_full_area_crops_are_the_image_or_its_mirror() -> None:
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    crops = resized_crops(images, 6, (1.0, 1.0), torch.Generator().manual_seed(1), copies=3)
    assert crops.shape == (6, 3, 6, 6)
    for crop, image in zip(crops, images.repeat(3, 1, 1, 1)):
        assert torch.allclose(crop, image, atol=1e-4) or torch.allclose(crop, image.flip(-1), atol=1e-4)


def test_dino_teacher_follows_the_student_by_its_momentum() -> None:
    route = DinoRoute("tiny", 56)
    with torch.no_grad():
        for parameter in route.encoder.parameters():
            parameter.add_(1.0)
    before = [p.clone() for p in route.teacher[0].parameters()]
    route.after_step(0, 10)  # momentum 0.994 at the start of the cosine
    for old, new, student in zip(before, route.teacher[0].parameters(), route.encoder.parameters()):
        assert torch.allclose(new, 0.994 * old + 0.006 * student, atol=1e-6)
    assert all(not p.requires_grad for p in route.teacher.parameters())


def test_world_pool_renders_the_benchmark_world_but_never_a_benchmark_image() -> None:
    assert WORLD_STREAM not in SUBSETS.values()
    pool = WorldPool(size=4)
    image, mask = pool.render(0)
    benchmark = render_world(0, "train", 1, size=(112, 112))
    assert image.shape == (112, 112, 3) and not np.array_equal(image, benchmark[0][0])
    assert set(np.unique(mask).tolist()) <= set(range(7))  # the benchmark's classes may appear, unlabeled
    assert class_names(3) == ["background", "shape_001", "shape_002", "shape_003"]
    labels = set()
    for index in range(12):
        labels |= set(np.unique(FoundationCorpus(12, classes=30).render(index)[1]).tolist())
    assert max(labels) > 13  # procedural classes beyond the hand-made thirteen


def _smoke(tmp_path: Path, config: str, *overrides: str) -> list[float]:
    cfg = load_foundation_config(CONFIGS / config, [
        "iterations=30", "batch_size=8", "corpus_size=120", "num_workers=0", "warmup_iters=2", "log_every=5",
        "checkpoint_every=50", f"output={tmp_path / 'encoder.pth'}", "device=cpu", *overrides,
    ])  # fmt: skip
    path = train_foundation(cfg, progress=False)
    return json.loads(path.with_suffix(".json").read_text())["losses"]


def test_tokens_route_smoke_run_learns(tmp_path: Path) -> None:
    losses = _smoke(tmp_path, "embedded-tiny-tokens.yaml", "shape_classes=20")
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_dino_route_smoke_run_trains_the_encoder(tmp_path: Path) -> None:
    losses = _smoke(tmp_path, "embedded-tiny-dino.yaml", "iterations=6")
    assert len(losses) == 6 and all(np.isfinite(losses))
    saved = torch.load(tmp_path / "encoder.pth", weights_only=True)
    fresh = DinoRoute("tiny", 112).encoder.state_dict()
    assert saved.keys() == fresh.keys() and not torch.equal(saved["blocks.0.attn.qkv.weight"], fresh["blocks.0.attn.qkv.weight"])
