"""The foundation corpus and encoder: disjoint from the benchmark, a pre-training run that learns, the
shipped weights checked against their published digest, and pseudo-label quality on a hand-made case."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from unimatch.apps.foundation import load_foundation_config, train_foundation
from unimatch.cli import main as cli_main
from unimatch.config import load_config
from unimatch.data.embedded import SHAPES, SUBSETS, render
from unimatch.data.foundation_corpus import (
    FOUNDATION_CLASSES,
    FOUNDATION_SCENE,
    FOUNDATION_SHAPES,
    FOUNDATION_STREAM,
    FoundationCorpus,
)
from unimatch.engine.inference import PseudoLabelCounts
from unimatch.models import CheckpointError, build_segmentor, load_encoder_weights
from unimatch.models.weights import CHECKSUMS_FILE, published_digests, sha256_file

PROJECT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = PROJECT / "configs" / "foundation" / "embedded-tiny.yaml"


def _raster(outlines, angle: float, size: int = 96) -> np.ndarray:
    """A unit shape (filled outline, holes cut) rotated by ``angle`` and scaled to equal area 1/4 of the canvas."""
    def draw(scale: float) -> np.ndarray:
        canvas = Image.new("L", (size, size), 0)
        pen = ImageDraw.Draw(canvas)
        cos, sin = math.cos(angle), math.sin(angle)
        for index, outline in enumerate(outlines):
            points = [(size / 2 + scale * (x * cos - y * sin), size / 2 + scale * (x * sin + y * cos)) for x, y in outline]
            pen.polygon(points, fill=0 if index else 1)
        return np.asarray(canvas, dtype=bool)

    area = draw(size / 4).sum()
    return draw(size / 4 * math.sqrt(size * size / 8 / area))  # every shape covers the same area


def _best_overlap(first, second) -> float:
    """Highest IoU of ``second`` against ``first`` over rotations (scale normalised by area)."""
    reference = _raster(first, 0.0)
    best = 0.0
    for step in range(120):
        for mirror in (False, True):
            candidate = _raster(tuple(tuple((x, -y if mirror else y) for x, y in o) for o in second), step * math.pi / 60)
            best = max(best, (reference & candidate).sum() / (reference | candidate).sum())
    return best


def test_no_foundation_shape_is_a_benchmark_shape() -> None:
    """Every benchmark class matches itself (IoU ~1 after a rotation) and no foundation shape does:
    the corpus cannot draw a benchmark object, so it cannot contain a benchmark label or image."""
    for label, shape in SHAPES.items():
        turn = 13 * math.pi / 60  # on the search grid: the match is exact
        rotated = tuple(tuple((x * math.cos(turn) - y * math.sin(turn), x * math.sin(turn) + y * math.cos(turn)) for x, y in o) for o in shape)
        assert _best_overlap(shape, rotated) > 0.97, label  # square 0.979 (rasterisation), the rest 1.0
    # Nearest pairs (measured): hexagon/disk 0.931, pentagon/disk 0.896; everything else <= 0.83.
    overlaps = {(f, b): _best_overlap(SHAPES[b], FOUNDATION_SHAPES[f]) for f in FOUNDATION_SHAPES for b in SHAPES}
    (worst_pair, worst) = max(overlaps.items(), key=lambda item: item[1])
    assert worst < 0.95, f"foundation shape {FOUNDATION_CLASSES[worst_pair[0]]} looks like benchmark class {worst_pair[1]}: IoU {worst:.3f}"


def test_corpus_has_its_own_seed_stream_and_label_space() -> None:
    assert FOUNDATION_STREAM not in SUBSETS.values()  # benchmark images are seeded [seed, subset, index]
    assert FOUNDATION_SCENE.shapes is FOUNDATION_SHAPES and len(FOUNDATION_CLASSES) == len(FOUNDATION_SHAPES) + 1
    corpus = FoundationCorpus(size=40)
    first, again = corpus.render(5), FoundationCorpus(size=40).render(5)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])  # deterministic
    labels = set()
    for index in range(40):
        labels |= set(np.unique(corpus.render(index)[1]).tolist())
    assert labels <= set(range(len(FOUNDATION_CLASSES))) and len(labels) >= 10
    # The same random stream through the benchmark's scene draws different objects: the shapes, not the
    # seed, decide what a corpus image can contain.
    sources = corpus._sources
    benchmark_view = render(np.random.default_rng([0, FOUNDATION_STREAM, 5]), sources, (112, 112))
    assert not np.array_equal(benchmark_view[0], first[0])
    image, mask = corpus[3]
    assert image.shape == (3, 112, 112) and mask.dtype == torch.int64
    with pytest.raises(IndexError):
        corpus.render(40)


def test_supervised_pretraining_smoke_run_learns_and_publishes_its_digest(tmp_path: Path) -> None:
    """The shipped recipe at a few iterations: the loss falls, the weights load through model.weights."""
    cfg = load_foundation_config(SHIPPED_CONFIG, [
        "iterations=12", "batch_size=8", "corpus_size=96", "num_workers=0", "warmup_iters=2", "log_every=3",
        "checkpoint_every=5", f"output={tmp_path / 'encoder.pth'}", "device=cpu",
    ])
    path = train_foundation(cfg, progress=False)
    losses = json.loads(path.with_suffix(".json").read_text())["losses"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
    assert published_digests(tmp_path) == {"encoder.pth": sha256_file(path)}
    assert not (tmp_path / "encoder.ckpt").exists() and path.with_suffix(".png").is_file()
    model = build_segmentor("tiny", 7)
    load_encoder_weights(model, path)
    saved = torch.load(path, weights_only=True)
    assert torch.equal(model.encoder.state_dict()["blocks.0.attn.qkv.weight"], saved["blocks.0.attn.qkv.weight"])


def test_foundation_config_errors_name_the_key(tmp_path: Path) -> None:
    from unimatch.errors import ConfigError

    with pytest.raises(ConfigError, match="iterations"):
        load_foundation_config(SHIPPED_CONFIG, ["iterations=0"])
    with pytest.raises(ConfigError, match="route"):
        load_foundation_config(SHIPPED_CONFIG, ["route=simclr"])  # not a registered route


def test_shipped_weights_match_their_published_digest_and_the_default_config_loads_them() -> None:
    cfg = load_config(PROJECT / "configs" / "embedded.yaml")
    weights = Path(cfg.model.weights)
    assert weights.as_posix() == "weights/foundation/embedded-tiny.pth"
    shipped = PROJECT / weights
    assert published_digests(shipped.parent)[shipped.name] == sha256_file(shipped)
    assert shipped.stat().st_size <= 10 * 1024 * 1024
    summary = json.loads(shipped.with_suffix(".json").read_text())
    assert summary["settings"] == load_foundation_config(SHIPPED_CONFIG).model_dump(mode="json")


def _copy_shipped(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    for name in ("embedded-tiny.pth", CHECKSUMS_FILE):
        shutil.copy2(PROJECT / "weights" / "foundation" / name, folder / name)
    return folder / "embedded-tiny.pth"


def test_a_changed_or_missing_weights_file_fails_naming_it_and_its_digest(tmp_path: Path) -> None:
    path = _copy_shipped(tmp_path)
    expected = published_digests(path.parent)[path.name]
    model = build_segmentor("tiny", 7)
    load_encoder_weights(model, path)  # intact: loads
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path}.*expected {expected}"):
        load_encoder_weights(model, path)
    path.unlink()
    with pytest.raises(CheckpointError, match=f"{path} is missing; expected sha256 {expected}"):
        load_encoder_weights(model, path)


def test_cli_reports_a_missing_weights_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _copy_shipped(tmp_path)
    path.unlink()
    code = cli_main(["train", f"model.weights={path}", f"output_dir={tmp_path / 'run'}", "tracking.enabled=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(path) in err and "expected sha256" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pseudo_label_counts_on_a_hand_computed_case() -> None:
    """2x3 pixels, 3 classes, threshold 0.9. Targets: [[0, 1, 1], [2, 255, 0]].
    Teacher: (0 @0.95 right), (1 @0.92 right), (2 @0.97 wrong), (2 @0.5 unconfident), (ignored), (1 @0.99 wrong)."""
    target = torch.tensor([[[0, 1, 1], [2, 255, 0]]])
    winners = [[(0, 0.95), (1, 0.92), (2, 0.97)], [(2, 0.5), (0, 0.99), (1, 0.99)]]
    probabilities = torch.zeros(1, 3, 2, 3)
    for row, cells in enumerate(winners):
        for col, (label, confidence) in enumerate(cells):
            probabilities[0, :, row, col] = (1 - confidence) / 2
            probabilities[0, label, row, col] = confidence
    counts = PseudoLabelCounts(3)
    counts.update(probabilities, target, threshold=0.9)
    quality = counts.result(["background", "one", "two"])
    # valid 5; confident 4 (all but the 0.5); right 2 -> precision 50 %.
    # foreground (targets 1, 1, 2) 3; confident 2 (the 0.92 and 0.97); right 1 (the 0.92).
    assert quality.precision == pytest.approx(50.0)
    assert quality.foreground_coverage == pytest.approx(200 / 3)
    assert quality.foreground_recall == pytest.approx(100 / 3)
    assert quality.mask_ratio == pytest.approx(80.0)
    # confident and predicted as an object: the 0.92 (right), the 0.97 and the 0.99 (wrong) -> 1 of 3.
    assert quality.object_precision == pytest.approx(100 / 3)
    # arg-max right on the foreground, confident or not: the 0.92 and the unconfident 0.5 -> 2 of 3.
    assert quality.foreground_accuracy == pytest.approx(200 / 3)
    # class one: 2 pixels, 1 confident and right; class two: 1 pixel, none.
    assert quality.class_recall == pytest.approx({"one": 50.0, "two": 0.0})


def test_object_precision_is_not_the_background_precision() -> None:
    """96 background pixels confidently right, 4 object pixels (class 1) of which the teacher is confident on
    all: 1 right, 3 called class 2. Overall precision is 97 %, but only 1 of the 4 confident object labels
    is right (25 %): the regime where pseudo labels confirm the teacher's mistakes on objects."""
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 0, :4] = 1
    labels = torch.zeros_like(target)
    labels[0, 0, 0], labels[0, 0, 1:4] = 1, 2
    probabilities = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 0.98 + 0.01
    counts = PseudoLabelCounts(3)
    counts.update(probabilities, target, threshold=0.95)
    quality = counts.result()
    assert quality.precision == pytest.approx(97.0)
    assert quality.object_precision == pytest.approx(25.0)
    assert quality.foreground_recall == pytest.approx(25.0) and quality.foreground_accuracy == pytest.approx(25.0)
    assert quality.class_recall == {"class_1": pytest.approx(25.0)}  # class 2 has no pixels: not reported
    assert quality.metrics()["pseudo/class_recall/class_1"] == pytest.approx(25.0)
