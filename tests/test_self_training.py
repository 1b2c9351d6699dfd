"""ST / ST++ stages (SPEC §11 CPU notes): stability of identical masks, TTA symmetry, CutOut's ignored region,
re-initialised students, the 50/50 split, the students' data, the label-next list."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from unimatch.apps.pseudo_labels import (
    mask_miou,
    rank_by_stability,
    split_reliable,
    stability_scores,
    subset_pseudo_labels,
    tta_probabilities,
    write_label_next,
    write_pseudo_labels,
)  # fmt: skip
from unimatch.config import load_config
from unimatch.data import IGNORE_INDEX, cutout, generate_embedded, list_dataset, read_pseudo_labels
from unimatch.engine import Trainer
from unimatch.methods import method_class
from unimatch.methods.base import Pools
from unimatch.models import build_segmentor


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=7, n_train=14, n_val=2, size=(70, 56))


def test_stability_of_identical_masks_is_one_and_a_hand_case():
    mask = np.array([[0, 0, 1], [1, 2, 2]])
    assert stability_scores([[mask], [mask.copy()]], [mask], nclass=3) == [1.0]
    other = np.array([[0, 1, 1], [1, 2, 2]])  # class 0: 1/2, class 1: 2/3, class 2: 2/2
    assert mask_miou(other, mask, 3) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert mask_miou(np.zeros((2, 2), int), np.zeros((2, 2), int), 5) == 1.0  # absent classes are skipped


def test_tta_of_a_flip_symmetric_image_is_flip_symmetric():
    torch.manual_seed(0)
    model = build_segmentor("tiny", 4).eval()  # an arbitrary, not flip-equivariant model
    half = torch.randn(1, 3, 56, 35)
    image = torch.cat((half, half.flip(-1)), dim=-1)
    probs = tta_probabilities(model, image)
    assert probs.shape == (1, 4, 56, 70)
    assert torch.allclose(probs.sum(1), torch.full((1, 56, 70), 10.0), atol=1e-4)  # 5 scales x 2 flips
    torch.testing.assert_close(probs, probs.flip(-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(image).softmax(1), model(image).softmax(1).flip(-1), atol=1e-3)  # TTA made it so


def test_cutout_ignores_exactly_the_pixels_it_replaces():
    image, mask = np.full((64, 64, 3), 7, np.uint8), np.ones((64, 64), np.uint8)
    out, out_mask = cutout(image, mask, p=1.0, rng=random.Random(3))
    ignored = out_mask == IGNORE_INDEX
    rows, cols = np.nonzero(ignored)
    assert ignored.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # one rectangle
    assert 0.02 * 64 * 64 * 0.8 <= ignored.sum() <= 0.4 * 64 * 64
    assert (out[~ignored] == 7).all() and (out_mask[~ignored] == 1).all()  # untouched outside
    assert (out[ignored] != 7).any(axis=-1).mean() > 0.9  # random pixels inside
    assert cutout(image, mask, p=0.0)[1] is mask


def test_reliable_half_is_the_most_stable():
    samples = [type("S", (), {"name": f"img{i}"})() for i in range(7)]
    ranking = rank_by_stability(samples, [0.1, 0.9, 0.5, 0.7, 0.2, 0.9, 0.3])
    reliable, unreliable = split_reliable(ranking)
    assert reliable == ["img1", "img5", "img3"] and len(unreliable) == 4  # the reference's len // 2
    assert set(reliable).isdisjoint(unreliable)


def _pseudo_labels(dataset, tmp_path, model):
    """Single-scale pseudo labels of 10 training images (the other 4 are the labeled split's, split.labeled=4)."""
    samples = list_dataset("embedded", dataset, "train")[4:]
    return samples, write_pseudo_labels(model, samples, dataset, tmp_path / "pseudo", 7, torch.device("cpu"), scales=(1.0,), progress=False)


def test_pseudo_labels_are_scored_and_read_back(dataset, tmp_path):
    torch.manual_seed(0)
    samples, result = _pseudo_labels(dataset, tmp_path, build_segmentor("tiny", 7))
    assert result.images == len(samples) == 10 and 0 <= result.miou <= 100
    read = read_pseudo_labels(result.split_file, dataset)
    assert [s.name for s in read] == [s.name for s in samples] and all(s.mask.is_file() for s in read)
    subset = subset_pseudo_labels(result.split_file, dataset, {samples[0].name, samples[3].name}, tmp_path / "reliable")
    kept = read_pseudo_labels(subset, dataset)
    assert [s.name for s in kept] == [samples[0].name, samples[3].name]
    assert kept[0].mask.read_bytes() == read[0].mask.read_bytes() and kept[0].mask.parent.parent == tmp_path / "reliable"


def _student_config(dataset, out, split_file, *overrides):
    return load_config("configs/embedded.yaml", [
        f"dataset.root={dataset}", "dataset.crop_size=42", f"output_dir={out}", "split.labeled=4", "train.batch_size=2",
        "train.epochs=1", "train.max_iters=2", "train.num_workers=0", "tracking.enabled=false", "eval.pseudo_label_images=0",
        "method.name=st", f"method.pseudo_labels=[{split_file}]", *overrides,
    ])  # fmt: skip


def test_student_draws_repeated_labeled_and_pseudo_labelled_crops(dataset, tmp_path):
    torch.manual_seed(0)
    _, result = _pseudo_labels(dataset, tmp_path, build_segmentor("tiny", 7))
    trainer = Trainer(_student_config(dataset, tmp_path / "st", result.split_file), progress=False)
    stream, batch = trainer.streams["labeled"]
    assert set(trainer.streams) == {"labeled"} and batch == 4
    labeled, pseudo = stream.base.datasets
    assert (len(labeled), len(pseudo)) == (4 * 3, 10)  # 4 labeled x ceil(10 / 4), then the 10 pseudo-labelled
    assert trainer.iters_per_epoch == 22 // 4
    plan = method_class("st")(method_class("st").Settings(pseudo_labels=["x"]), nn.CrossEntropyLoss())
    assert plan.schedule(Pools(4, 22, 10, "l", "u", None), batch=2, world=1).iterations_per_epoch == 5


def test_students_start_from_the_configured_weights_not_the_teacher(dataset, tmp_path):
    torch.manual_seed(0)
    teacher = build_segmentor("tiny", 7)
    _, result = _pseudo_labels(dataset, tmp_path, teacher)
    trainer = Trainer(_student_config(dataset, tmp_path / "st", result.split_file), progress=False)
    shipped = torch.load("weights/foundation/embedded-tiny.pth", weights_only=True)
    student = trainer.model.encoder.state_dict()
    assert all(torch.equal(student[key], value) for key, value in shipped.items() if key in student)  # re-initialised
    assert not torch.equal(student["blocks.0.attn.qkv.weight"], teacher.encoder.state_dict()["blocks.0.attn.qkv.weight"])


def test_a_student_without_pseudo_labels_names_the_key(dataset, tmp_path):
    from unimatch.errors import ConfigError

    cfg = load_config("configs/embedded.yaml", [f"dataset.root={dataset}", "dataset.crop_size=42", f"output_dir={tmp_path}",
                                                 "split.labeled=4", "tracking.enabled=false", "method.name=st++"])  # fmt: skip
    with pytest.raises(ConfigError, match="method.pseudo_labels: st\\+\\+ trains on pseudo labels"):
        Trainer(cfg, progress=False)


def test_label_next_lists_the_least_stable_first(dataset, tmp_path):
    samples = list_dataset("embedded", dataset, "train")[:4]
    final = [np.zeros((56, 70), np.int64) for _ in samples]
    earlier = [[np.where(np.arange(70) < 10 * i, 1, 0)[None].repeat(56, 0) for i in range(4)]]  # image i: 10*i columns differ
    ranking = rank_by_stability(samples, stability_scores(earlier, final, 7))
    csv, sheet = write_label_next(ranking, samples, final, earlier, 7, tmp_path, sheet_images=2)
    lines = csv.read_text().splitlines()
    assert lines[0] == "rank,image,stability" and lines[1].startswith(f"1,{samples[3].name},")
    assert [line.split(",")[1] for line in lines[1:]] == [s.name for s in samples[::-1]]
    assert sheet.stat().st_size > 10_000
