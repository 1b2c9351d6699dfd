"""Change detection (SPEC §10): the A/B/label layout and its split files, paired augmentations, the siamese
segmentor, IoU_c / OA, the embedded pairs, training, prediction and the Table 14 pipeline."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimatch.config import load_config
from unimatch.data import DataError, Sample
from unimatch.data.change import (
    ChangeEvalDataset,
    ChangeLabeledDataset,
    ChangeUnlabeledDataset,
    image_b,
    read_change_mask,
    read_names_split,
    write_names_split,
)  # fmt: skip
from unimatch.data.embedded_change import generate_embedded_change
from unimatch.errors import ConfigError
from unimatch.methods import cutmix_images
from unimatch.metrics import ConfusionMatrix
from unimatch.models import build_segmentor
from unimatch.tasks import change_scores, task_for

PROJECT = Path(__file__).resolve().parents[1]


def _write_levir_like(root: Path, names: list[str], size: int = 64, seed: int = 0) -> None:
    """A/B/label PNG triples: a bright square painted only in B, labelled 255 there."""
    rng = np.random.default_rng(seed)
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        first = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
        second, label = first.copy(), np.zeros((size, size), dtype=np.uint8)
        top = 8 + 4 * index % (size - 24)
        second[top : top + 16, 10:26] = 250
        label[top : top + 16, 10:26] = 255
        Image.fromarray(first).save(root / "A" / name)
        Image.fromarray(second).save(root / "B" / name)
        Image.fromarray(label).save(root / "label" / name)


def test_bare_name_split_files_read_write_and_reject_bad_lines(tmp_path: Path) -> None:
    root = tmp_path / "levir"
    names = ["train_369_10.png", "train_1_2.png", "whucd_00002.png"]
    _write_levir_like(root, names)
    split = tmp_path / "labeled.txt"
    split.write_bytes("\ufeff".encode() + b"train_369_10.png\n\ntrain_1_2.png\r\nwhucd_00002.png\n")  # BOM, blank, CRLF
    samples = read_names_split(split, root)
    assert [s.name for s in samples] == names
    assert samples[0] == Sample((root / "A" / names[0]).absolute(), (root / "label" / names[0]).absolute(), names[0])
    assert image_b(samples[0]) == (root / "B" / names[0]).absolute()
    written = tmp_path / "out.txt"
    write_names_split(written, samples, root)
    assert written.read_text(encoding="utf-8") == "".join(f"{name}\n" for name in names)
    assert read_names_split(written, root) == samples
    for text, expected in [("A/train_1_2.png\n", "expected a bare file name"), ("train_1_2.png\ntrain_1_2.png\n", "already listed on line 1"),
                           ("train_1_2.png label\n", "one bare file name per line")]:  # fmt: skip
        split.write_text(text, encoding="utf-8")
        with pytest.raises(DataError, match=expected):
            read_names_split(split, root)
    (root / "B" / "train_1_2.png").unlink()
    split.write_text("train_1_2.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"labeled.txt:1: file not found: .*B/train_1_2.png"):
        read_names_split(split, root)


def test_change_labels_are_0_255_and_anything_else_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "label.png"
    Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).save(path)
    assert read_change_mask(path).tolist() == [[0, 1], [1, 0]]
    Image.fromarray(np.array([[0, 1], [128, 255]], dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match=r"label.png: label values 1, 128 are neither 0"):
        read_change_mask(path)


def test_weak_geometry_is_shared_by_a_b_and_mask_while_strong_colour_is_drawn_per_image(tmp_path: Path) -> None:
    """A == B on disk: every weak view keeps them equal (one geometry) and the label on the bright square;
    the strong views of A and B differ (independent colour) in most samples."""
    root = tmp_path / "pairs"
    _write_levir_like(root, ["p.png"], size=80)
    (root / "A" / "p.png").write_bytes((root / "B" / "p.png").read_bytes())  # A := B (square in both)
    sample = read_names_split(_split(tmp_path, ["p.png"]), root)[0]
    labeled, unlabeled = ChangeLabeledDataset([sample], 56), ChangeUnlabeledDataset([sample], 56)
    strong_differs = 0
    for seed in range(12):
        random.seed(seed)
        pair, mask = labeled[0]
        assert torch.equal(pair[:3], pair[3:])
        changed = mask == 1
        if changed.any():  # the label sits on the square's bright pixels in both images after rescale/crop/flip
            assert pair[0][changed].mean() > 1.5 and pair[3][changed].mean() > 1.5
        weak, strong1, strong2, ignore, box1, box2 = unlabeled[0]
        assert torch.equal(weak[:3], weak[3:])
        strong_differs += not torch.equal(strong1[:3], strong1[3:])
    assert strong_differs >= 8


def _split(folder: Path, names: list[str]) -> Path:
    path = folder / "split.txt"
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path


def test_one_cutmix_box_mixes_a_and_b_alike() -> None:
    pairs = torch.arange(2 * 6 * 4 * 4, dtype=torch.float32).reshape(2, 6, 4, 4)
    box = torch.zeros(2, 4, 4, dtype=torch.int64)
    box[:, 1:3, 0:2] = 1
    mixed = cutmix_images(pairs, box)
    inside = box.bool().unsqueeze(1).expand(-1, 6, -1, -1)
    assert torch.equal(mixed[inside], pairs.flip(0)[inside]) and torch.equal(mixed[~inside], pairs[~inside])
    assert torch.equal((mixed != pairs)[:, :3], (mixed != pairs)[:, 3:])  # the same pixels of A and of B were replaced


def test_siamese_segmentor_is_symmetric_in_a_and_b_and_blind_to_identical_images() -> None:
    torch.manual_seed(0)
    model = build_segmentor("tiny", 2, input_size=56, input_images=2).eval()
    first, second = torch.randn(2, 3, 56, 56), torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert all(torch.count_nonzero(level) == 0 for level in model.features(torch.cat((first, first), dim=1)))
        forward, backward = model(torch.cat((first, second), dim=1)), model(torch.cat((second, first), dim=1))
    assert forward.shape == (2, 2, 56, 56)
    assert torch.allclose(forward, backward, atol=1e-5)
    with pytest.raises(ValueError, match="expected 6 input channels"):
        model(first)


def test_siamese_segmentor_learns_a_change_mask() -> None:
    """Behaviour, not shapes: a few dozen steps fit one pair's change mask (IoU of the changed class)."""
    torch.manual_seed(0)
    model = build_segmentor("tiny", 2, input_size=56, input_images=2)
    first = torch.randn(1, 3, 56, 56)
    second, target = first.clone(), torch.zeros(1, 56, 56, dtype=torch.int64)
    second[:, :, 14:42, 14:28] += 2.0
    target[:, 14:42, 14:28] = 1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(torch.cat((first, second), dim=1)), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    confusion = ConfusionMatrix(2)
    with torch.no_grad():
        confusion.update(model.eval()(torch.cat((first, second), dim=1)).argmax(1), target)
    assert change_scores(confusion.numpy())["iou_changed"] > 80


def test_iou_changed_and_overall_accuracy_on_a_hand_computed_case() -> None:
    confusion = ConfusionMatrix(2)
    target = torch.tensor([[[0, 1], [1, 1]]])
    prediction = torch.tensor([[[0, 1], [0, 1]]])  # TP 2, FN 1, FP 0, TN 1
    confusion.update(prediction, target)
    scores = change_scores(confusion.numpy())
    assert scores["iou_changed"] == pytest.approx(200 / 3)
    assert scores["overall_accuracy"] == pytest.approx(75.0)
    assert scores["f1_changed"] == pytest.approx(80.0)
    assert change_scores(np.array([[4, 0], [0, 0]]))["iou_changed"] == 0.0  # nothing changed, nothing predicted


def test_embedded_pairs_are_deterministic_and_label_only_real_changes(tmp_path: Path) -> None:
    small = {"n_train": 10, "n_val": 2, "size": (64, 64)}
    first, second = generate_embedded_change(tmp_path / "a", **small), generate_embedded_change(tmp_path / "b", **small)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    samples = read_names_split(first / "train.txt", first)
    assert len(samples) == 10 and all(s.mask.suffix == ".png" for s in samples)
    inside, outside = [], []
    for sample in samples:
        before, after = (np.asarray(Image.open(p), dtype=np.float64) for p in (sample.image, image_b(sample)))
        label = read_change_mask(sample.mask).astype(bool)
        difference = np.abs(before - after).mean(axis=2)
        assert difference.mean() > 1.0  # illumination, colour cast, noise, misregistration: B never equals A
        if label.any():
            inside.append(difference[label].mean())
            outside.append(difference[~label].mean())
    assert inside and np.mean(inside) > 1.5 * np.mean(outside)  # the label marks where the scene changed (beyond the nuisances)
    with pytest.raises(DataError, match="is not an embedded change-detection dataset"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "keep.txt").write_text("mine", encoding="utf-8")
        generate_embedded_change(tmp_path / "other", **small)


def test_change_detection_configs_load_and_nclass_must_be_2() -> None:
    for path in sorted((PROJECT / "configs" / "experiments").glob("*-cd_*.yaml")):
        cfg = load_config(path)
        assert (cfg.dataset.nclass, cfg.dataset.crop_size, cfg.method.teacher, cfg.dataset.labeled_epoch_samples) == (2, 252, "student", 3000)
        assert cfg.dataset.val_split.endswith("test.txt") and task_for(cfg.dataset.name).input_images == 2
    assert load_config(PROJECT / "configs" / "change_detection.yaml").model.weights == "weights/foundation/embedded-tiny.pth"
    with pytest.raises(ConfigError, match="dataset.nclass: 3, but change detection"):
        load_config(PROJECT / "configs" / "change_detection.yaml", ["dataset.nclass=3"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    """UniMatch V2 (student teacher) trained for 3 iterations on 12 generated pairs: (root, trainer, result)."""
    from unimatch.engine import Trainer

    root = tmp_path_factory.mktemp("cd")
    data = generate_embedded_change(root / "data", n_train=12, n_val=3, size=(64, 64))
    cfg = load_config(PROJECT / "configs" / "change_detection.yaml", [
        f"dataset.root={data}", "split.labeled=4", "train.batch_size=2", "dataset.crop_size=56", "train.num_workers=0",
        "train.max_iters=3", "train.epochs=1", "model.weights=null", f"output_dir={root / 'run'}", "tracking.enabled=false",
        "eval.pseudo_label_images=4",
    ])  # fmt: skip
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        trainer = Trainer(cfg, progress=False)
    return root, trainer, trainer.fit()


def test_unimatch_v2_trains_on_pairs_with_the_student_labelling_and_the_ema_evaluated(trained: tuple[Path, object, object]) -> None:
    root, trainer, result = trained
    assert trainer.teacher is trainer.model and trainer.ema is not None
    assert isinstance(trainer.val_set, ChangeEvalDataset) and trainer.val_set[0][0].shape[0] == 6
    for model in ("student", "ema"):  # one evaluation: the best scores are that evaluation's, as logged
        ((epoch, iou),) = result.history[f"val/iou_changed_{model}"]
        assert epoch == 1 and result.metrics[f"best_iou_changed_{model}"] == iou
    assert (root / "run" / "checkpoints" / "best.pth").is_file()


def test_predict_pairs_writes_change_masks_and_four_panel_overlays(trained: tuple[Path, object, object], tmp_path: Path) -> None:
    root = trained[0]
    data, out = root / "data", tmp_path / "predictions"
    base = [sys.executable, "-m", "unimatch.cli", "predict", "--config", str(PROJECT / "configs" / "change_detection.yaml"),
            "--checkpoint", str(root / "run" / "checkpoints" / "best.pth"), "--input", str(data / "A"), "--output", str(out),
            "--limit", "2", "--no-progress", f"dataset.root={data}", "dataset.crop_size=56", "model.weights=null"]  # fmt: skip
    done = subprocess.run([*base, "--input-b", str(data / "B"), "--masks", str(data / "label")], capture_output=True, text=True, cwd=PROJECT)
    assert done.returncode == 0, done.stderr[-2000:]
    labels = sorted((out / "labels").glob("*.png"))
    assert len(labels) == 2 and set(np.unique(np.asarray(Image.open(labels[0])))) <= {0, 255}
    overlay = Image.open(sorted((out / "overlays").glob("*.jpg"))[0])
    assert overlay.width > 4 * 64  # A | B | ground truth | predicted change, side by side
    missing = subprocess.run(base, capture_output=True, text=True, cwd=PROJECT)
    assert missing.returncode == 2 and "--input-b" in missing.stderr.strip().splitlines()[-1]
