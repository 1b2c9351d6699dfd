"""Semi-supervised classification (issue 28, SPEC §9): the readers on small files written in the real formats,
per-class splits, WRN sizes, distribution alignment, complementary dropout on the pooled feature, FixMatch's
unlabeled loss, and trainings on the shared engine."""

from __future__ import annotations

import math
import pickle
import re

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from unimatch.config import load_config
from unimatch.data import DataError
from unimatch.data.classification import per_class_split, read_fraction_list, read_split, read_subset, write_split
from unimatch.engine.inference import PseudoLabelCounts
from unimatch.methods.alignment import DistributionAlignment, align_distribution
from unimatch.methods.base import PseudoLabels, pixel_loss
from unimatch.models.classifier import build_classifier
from unimatch.tasks import ClassificationTask


def _cifar_batch(path, images: np.ndarray, labels: list[int]) -> None:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with path.open("wb") as handle:
        pickle.dump({b"data": rows, b"labels": labels}, handle)


def write_cifar(root, per_batch: int = 4, nclass: int = 10, seed: int = 0) -> None:
    """Five training batches and a test batch of random images; pixel (0, 0) encodes the class in red."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, nclass, per_batch)]
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = labels
        _cifar_batch(root / name, images, labels)


def test_cifar10_reader_shapes_dtypes_and_channel_order(tmp_path):
    write_cifar(tmp_path / "cifar")
    train, test = (
        read_subset("cifar10", tmp_path / "cifar", "train"),
        read_subset("cifar10", tmp_path / "cifar", "test"),
    )
    assert (len(train), len(test)) == (20, 4)
    image = train.load(3)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert train.labels.dtype == np.int64 and 0 <= train.labels.min() and train.labels.max() <= 9
    # the R plane comes first in a CIFAR row: the red value of pixel (0, 0) is the label written there
    assert all(train.load(i)[0, 0, 0] == train.labels[i] for i in range(len(train)))
    assert train.names[0] == "train/000000"


def test_truncated_cifar_batch_is_one_line_naming_it(tmp_path):
    write_cifar(tmp_path / "cifar")
    path = tmp_path / "cifar" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"data_batch_3: corrupt or truncated CIFAR-10 batch") as error:
        read_subset("cifar10", tmp_path / "cifar", "train")
    assert "\n" not in str(error.value)


def test_svhn_reader_maps_label_10_to_digit_0(tmp_path):
    rng = np.random.default_rng(1)
    digits = np.array([[10], [1], [5], [10], [9]], dtype=np.uint8)
    images = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        scipy.io.savemat(tmp_path / name, {"X": images, "y": digits})
    train = read_subset("svhn", tmp_path, "train")
    assert train.labels.tolist() == [0, 1, 5, 0, 9] and train.labels.dtype == np.int64
    assert train.load(2).shape == (32, 32, 3) and np.array_equal(train.load(2), images[:, :, :, 2])
    (tmp_path / "test_32x32.mat").write_bytes((tmp_path / "test_32x32.mat").read_bytes()[:200])
    with pytest.raises(DataError, match="test_32x32.mat: corrupt or truncated SVHN file"):
        read_subset("svhn", tmp_path, "test")


def test_stl10_reader_column_major_images_labels_and_unlabeled_pool(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    for subset in ("train", "test", "unlabeled"):
        images.transpose(0, 3, 2, 1).tofile(tmp_path / f"{subset}_X.bin")  # STL-10: column-major 3 x 96 x 96
    for subset in ("train", "test"):
        np.array([1, 10, 4], dtype=np.uint8).tofile(tmp_path / f"{subset}_y.bin")
    train = read_subset("stl10", tmp_path, "train")
    assert train.labels.tolist() == [0, 9, 3]
    assert train.load(1).shape == (96, 96, 3) and np.array_equal(train.load(1), images[1])
    unlabeled = read_subset("stl10", tmp_path, "unlabeled")
    assert len(unlabeled) == 3 and (unlabeled.labels == -1).all()
    (tmp_path / "test_X.bin").write_bytes((tmp_path / "test_X.bin").read_bytes()[:1000])
    with pytest.raises(DataError, match="test_X.bin: truncated STL-10 image file"):
        read_subset("stl10", tmp_path, "test")


def test_image_folders_and_a_label_fraction_list(tmp_path):
    for subset, count in (("train", 3), ("val", 1)):
        for name, colour in (("n01", (255, 0, 0)), ("n02", (0, 0, 255))):
            (tmp_path / subset / name).mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (20, 12), colour).save(tmp_path / subset / name / f"{name}_{index}.JPEG")
    train = read_subset("imagenet-folder", tmp_path, "train")
    assert train.class_names == ["n01", "n02"] and train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.load(4).shape == (12, 20, 3) and train.load(4)[0, 0].tolist() == [0, 0, 254]
    (tmp_path / "10percent.txt").write_text("n01_2.JPEG\nn02_0.JPEG\n")
    assert read_fraction_list(tmp_path / "10percent.txt", train).tolist() == [2, 3]
    (tmp_path / "bad.txt").write_text("n03_1.JPEG\n")
    with pytest.raises(DataError, match=r"bad.txt:1: n03_1.JPEG is not an image"):
        read_fraction_list(tmp_path / "bad.txt", train)


def test_per_class_splits_per_seed_and_their_files(tmp_path):
    labels = np.repeat(np.arange(6), 20)
    labeled0, unlabeled0 = per_class_split(labels, 4, seed=0)
    labeled1, _ = per_class_split(labels, 4, seed=1)
    for labeled in (labeled0, labeled1):
        assert np.bincount(labels[labeled], minlength=6).tolist() == [4] * 6
    assert not np.array_equal(labeled0, labeled1)
    assert np.array_equal(labeled0, per_class_split(labels, 4, seed=0)[0])
    assert len(unlabeled0) == 96 and not np.intersect1d(labeled0, unlabeled0).size
    assert np.bincount(labels[per_class_split(labels, 0.25, 0)[0]]).tolist() == [5] * 6  # a fraction per class
    write_cifar(tmp_path / "cifar", per_batch=24, nclass=2)
    train = read_subset("cifar10", tmp_path / "cifar", "train")
    picked, _ = per_class_split(train.labels, 3, 0)
    write_split(tmp_path / "labeled.txt", train, picked)
    assert np.array_equal(read_split(tmp_path / "labeled.txt", train), picked)
    assert (tmp_path / "labeled.txt").read_text().splitlines()[
        0
    ] == f"{train.names[picked[0]]} {train.labels[picked[0]]}"
    with pytest.raises(DataError, match="split.labeled: 200 per class"):
        per_class_split(train.labels, 200, 0)


@pytest.mark.parametrize("network, count", [("wrn-28-2", 1_469_642), ("wrn-37-2", 5_933_770)])
def test_wide_resnet_parameter_counts_match_the_logs(network, count):
    model = build_classifier("tiny", 10, network)
    assert sum(p.numel() for p in model.parameters()) == count
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10, 1, 1)


def test_distribution_alignment_against_a_hand_computed_example():
    probabilities = torch.tensor([[0.6, 0.3, 0.1]])
    # x (1/3) / [0.5, 0.3, 0.2] = [0.4, 0.3333, 0.1667], sum 0.9
    aligned = align_distribution(probabilities, torch.tensor([0.5, 0.3, 0.2]), torch.full((3,), 1 / 3))
    assert torch.allclose(aligned, torch.tensor([[4 / 9, 10 / 27, 5 / 27]]), atol=1e-6)
    alignment = DistributionAlignment(window=2)
    first = torch.tensor([[0.8, 0.2], [0.6, 0.4]]).view(2, 2, 1, 1)  # batch mean [0.7, 0.3]
    alignment(first)
    second = torch.tensor([[0.5, 0.5]]).view(1, 2, 1, 1)  # running mean of [0.7, 0.3] and [0.5, 0.5]: [0.6, 0.4]
    out = alignment(second)
    assert torch.allclose(out.flatten(), torch.tensor([0.5 / 0.6, 0.5 / 0.4]) / (0.5 / 0.6 + 0.5 / 0.4), atol=1e-6)
    alignment(second), alignment(second)  # the window keeps the last two batch means only
    assert torch.allclose(torch.stack(tuple(alignment.means)).mean(0), torch.tensor([0.5, 0.5]))


def test_complementary_dropout_masks_on_the_pooled_feature_per_sample():
    model = build_classifier("tiny", 4, "wrn-28-2", undropped_fraction=0.0)
    seen = []
    model.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    maps = [torch.ones(6, model.head.in_features, 2, 2)]  # three images' two views, pooled feature 1 everywhere
    model.decode(maps, drop="complementary")
    first, second = seen[0][:3], seen[0][3:]
    assert torch.equal(first + second, torch.full_like(first, 2.0))  # each channel reaches one view, scaled x2
    assert torch.equal(first * second, torch.zeros_like(first))
    assert not torch.equal(first[0], first[1])  # drawn per sample


def test_fixmatch_unlabeled_loss_on_fixed_logits_by_hand():
    # strong-view logits of three images; pseudo labels 0, 1, 0 of confidence 0.97, 0.5, 0.99 (tau 0.95)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]).view(3, 2, 1, 1)
    pseudo = PseudoLabels(
        torch.tensor([0, 1, 0]).view(3, 1, 1),
        torch.tensor([0.97, 0.5, 0.99]).view(3, 1, 1),
        torch.zeros(3, 1, 1, dtype=torch.int64),
    )
    # mean over the batch of the masked CE: (log(1 + e^-2) + 0 + log 2) / 3
    expected = (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 3
    assert pixel_loss(logits, pseudo, 0.95).item() == pytest.approx(expected, abs=1e-6)


def write_colour_dataset(root, per_class: int, test_per_class: int) -> None:
    """Two classes told by colour (reddish, bluish) with noise, in CIFAR-10's format."""
    rng = np.random.default_rng(3)

    def images(count: int, label: int) -> np.ndarray:
        base = np.array([200, 40, 40] if label == 0 else [40, 40, 200])
        return np.clip(base + rng.normal(0, 25, (count, 32, 32, 3)), 0, 255).astype(np.uint8)

    root.mkdir(parents=True)
    for name, count in [(f"data_batch_{i}", per_class) for i in range(1, 6)] + [("test_batch", test_per_class)]:
        _cifar_batch(root / name, np.concatenate([images(count, 0), images(count, 1)]), [0] * count + [1] * count)


def _tiny_config(tmp_path, method: str, extra: list[str] = ()):
    return load_config(
        "configs/classification/embedded.yaml",
        [
            "dataset.name=cifar10",
            f"dataset.root={tmp_path / 'colours'}",
            "dataset.nclass=2",
            "dataset.crop_size=28",
            "model.weights=null",
            f"method.name={method}",
            "split.labeled=2",
            "train.batch_size=4",
            "train.unlabeled_ratio=2",
            "train.num_workers=0",
            "train.lr=0.01",
            "eval.pseudo_label_images=8",
            "tracking.enabled=false",
            f"output_dir={tmp_path / method}",
            *extra,
        ],
    )


def test_a_short_training_fits_a_tiny_labeled_set(tmp_path):
    from unimatch.engine import Trainer
    from unimatch.jobs.classification import evaluate_classifier

    write_colour_dataset(tmp_path / "colours", per_class=4, test_per_class=5)
    cfg = _tiny_config(tmp_path, "labeled_only", ["train.epochs=6", "train.unlabeled_ratio=1"])
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        result = Trainer(cfg, progress=False).fit()
    assert result.metrics["best_top1_ema"] == max(v for _, v in result.history["val/top1_ema"])
    assert result.history["val/top1_student"][-1][1] == 100.0  # the colours are learnt from 4 labels
    scores = evaluate_classifier(cfg, result.best_checkpoint)
    assert scores["top1"] == result.metrics["best_top1_ema"] and scores["top5"] == 100.0


@pytest.mark.parametrize(
    "method, options", [("fixmatch", []), ("fixmatch", ["method.distribution_alignment=true"]), ("unimatch_v2", [])]
)
def test_semi_supervised_methods_train_on_the_engine(tmp_path, method, options):
    from unimatch.engine import Trainer

    write_colour_dataset(tmp_path / "colours", per_class=4, test_per_class=2)
    cfg = _tiny_config(tmp_path, method, ["train.max_iters=3", "train.epochs=1", *options])
    with pytest.warns(UserWarning):
        trainer = Trainer(cfg, progress=False)
    assert trainer.sizes == {"labeled": 4, "unlabeled": 36, "val": 4}
    result = trainer.fit()
    assert result.iterations == 3 and "pseudo/precision" in result.history
    assert (tmp_path / method / "splits" / "labeled.txt").read_text().count("\n") == 4


def test_report_has_seed_columns_the_mean_last_and_the_pseudo_label_quality(tmp_path):
    from unimatch.jobs.classification import ClassificationResult, write_report

    def result(method: str, seed: int, top1: float, precision: float) -> ClassificationResult:
        return ClassificationResult(method, seed, top1, 99.0, 40.0, precision, top1, "best.pth", None)

    runs = [result("unimatch_v2", 1, 60.0, 90.0), result("labeled_only", 0, 40.0, 70.0)]
    runs += [result("unimatch_v2", 0, 50.0, math.nan), result("labeled_only", 1, 45.0, 80.0)]
    files = write_report(runs, tmp_path, "embedded-cls")
    table = (tmp_path / "classification.csv").read_text().splitlines()
    assert table == [",seed 0,seed 1,mean", "supervised-only,40.0,45.0,42.5", "UniMatch V2,50.0,60.0,55.0"]
    markdown = (tmp_path / "classification.md").read_text()
    assert re.search(r"\| UniMatch V2 +\| +40 \| +90 \|", markdown)  # a NaN seed left out of the mean
    assert "Top-5" not in markdown and (tmp_path / "classification.png").stat().st_size > 0
    assert set(files) == {"markdown", "csv", "figure"}


def test_a_truncated_dataset_file_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    write_cifar(tmp_path / "cifar")
    (tmp_path / "cifar" / "test_batch").write_bytes(b"\x80\x02}q")
    command = [sys.executable, "-m", "unimatch.cli", "classification", "--quick"]
    overrides = [
        "dataset.name=cifar10",
        f"dataset.root={tmp_path / 'cifar'}",
        "dataset.nclass=10",
        "split.labeled=1",
        f"output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    done = subprocess.run(
        [*command, *overrides, "--methods", "labeled_only"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert f"{tmp_path / 'cifar' / 'test_batch'}: corrupt or truncated CIFAR-10 batch" in last


def test_embedded_classification_data_is_deterministic_cifar_format(tmp_path, monkeypatch):
    from unimatch.data import classification_embedded as embedded

    monkeypatch.setattr(embedded, "TRAIN_PER_CLASS", 2)
    monkeypatch.setattr(embedded, "TEST_PER_CLASS", 1)
    first, second = (
        embedded.generate_embedded_classification(tmp_path / "a"),
        embedded.generate_embedded_classification(tmp_path / "b"),
    )
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    train = read_subset("embedded-cls", first, "train")
    assert len(train) == 12 and sorted(train.labels.tolist()) == sorted(list(range(6)) * 2)
    assert train.class_names == ["disk", "square", "triangle", "cross", "star", "ring"]
    assert embedded.generate_embedded_classification(first) == first  # a complete copy is kept
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(DataError, match="other: exists and is not the embedded classification data"):
        embedded.generate_embedded_classification(tmp_path / "other")


def test_pseudo_label_quality_of_a_task_without_background_has_no_object_shares() -> None:
    """Six images (1 x 1 labels), 3 classes, threshold 0.9. Targets 0, 1, 1, 2, 255, 0; the teacher says
    (0 @0.95), (1 @0.92), (2 @0.97), (2 @0.5), (0 @0.99), (1 @0.99). Without a background class every class
    is scored: class 0 has 2 images, 1 confident and right (50 %); class 1: 2, 1 (50 %); class 2: 1, 0."""
    target = torch.tensor([0, 1, 1, 2, 255, 0]).view(6, 1, 1)
    winners = [(0, 0.95), (1, 0.92), (2, 0.97), (2, 0.5), (0, 0.99), (1, 0.99)]
    probabilities = torch.zeros(6, 3, 1, 1)
    for index, (label, confidence) in enumerate(winners):
        probabilities[index, :, 0, 0] = (1 - confidence) / 2
        probabilities[index, label, 0, 0] = confidence
    counts = PseudoLabelCounts(3, background=ClassificationTask.background_class)
    counts.update(probabilities, target, threshold=0.9)
    quality = counts.result(["disk", "square", "ring"])
    assert quality.precision == pytest.approx(50.0) and quality.mask_ratio == pytest.approx(80.0)
    assert quality.class_recall == pytest.approx({"disk": 50.0, "square": 50.0, "ring": 0.0})
    metrics = quality.metrics()
    assert not any(key.startswith(("pseudo/object", "pseudo/foreground")) for key in metrics), metrics
    assert metrics["pseudo/precision"] == pytest.approx(50.0)
