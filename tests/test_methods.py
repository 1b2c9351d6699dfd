"""Each method's losses against a hand-written computation of the SPEC formulas on fixed tensors."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from unimatch.methods import method_class
from unimatch.engine.ema import ema_decay, update_ema
from unimatch.engine.losses import OhemCrossEntropy
from unimatch.methods import LabeledBatch, UnlabeledBatch, build_method
from unimatch.models import build_segmentor

NCLASS, SIZE, BATCH = 4, 28, 4


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    student = build_segmentor("tiny", NCLASS, undropped_fraction=1.0)  # every pair undropped: deterministic
    teacher = copy.deepcopy(student)
    with torch.no_grad():  # a teacher that differs from the student, as an EMA teacher does
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return student, teacher


@pytest.fixture(scope="module")
def batches():
    g = torch.Generator().manual_seed(1)
    labeled = LabeledBatch(torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, NCLASS, (BATCH, SIZE, SIZE), generator=g))
    labeled.mask[0, :5] = 255
    ignore = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.long)
    ignore[1, :, 20:] = 255  # padding on the right of sample 1
    box1 = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.long)
    box1[0, 3:15, 4:20] = 1
    box1[2, 10:25, 0:9] = 1
    box2 = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.long)
    box2[1, 0:14, 14:28] = 1
    unlabeled = UnlabeledBatch(
        torch.randn(BATCH, 3, SIZE, SIZE, generator=g),
        torch.randn(BATCH, 3, SIZE, SIZE, generator=g),
        torch.randn(BATCH, 3, SIZE, SIZE, generator=g),
        ignore, box1, box2,
    )
    return labeled, unlabeled


def hand_mix(array: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Pixel by pixel: inside sample i's box take sample B-1-i."""
    mixed = array.copy()
    count = array.shape[0]
    for i in range(count):
        for y, x in zip(*np.nonzero(box[i])):
            mixed[i, ..., y, x] = array[count - 1 - i, ..., y, x]
    return mixed


def hand_ce(logits: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-pixel cross-entropy, (B, C, H, W) logits and (B, H, W) targets."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.take_along_axis(log_probs, target[:, None], axis=1)[:, 0]


def hand_pixel_loss(student, teacher, weak, strong, box, ignore, threshold) -> float:
    with torch.no_grad():
        teacher_probs = torch.softmax(teacher.eval()(weak), dim=1).numpy()
        mixed_image = torch.from_numpy(hand_mix(strong.numpy(), box.numpy()))
        student_logits = student.eval()(mixed_image).numpy()
    label = hand_mix(teacher_probs.argmax(1), box.numpy())
    confidence = hand_mix(teacher_probs.max(1), box.numpy())
    padding = hand_mix(ignore.numpy(), box.numpy()) == 255
    loss = hand_ce(student_logits, label) * ((confidence >= threshold) & ~padding)
    return loss.sum() / (~padding).sum()  # normalised by ALL non-padding pixels


def hand_labeled_loss(student, labeled) -> float:
    with torch.no_grad():
        logits = student.eval()(labeled.image).numpy()
    target = labeled.mask.numpy()
    valid = target != 255
    return hand_ce(logits, np.where(valid, target, 0))[valid].mean()


def threshold_for(teacher, weak) -> float:
    with torch.no_grad():
        return float(torch.softmax(teacher.eval()(weak), 1).max(1).values.median())  # about half the pixels confident


def run(name, student, teacher, labeled, unlabeled, **options):
    method = build_method(method_class(name).Settings(**options), nn.CrossEntropyLoss(ignore_index=255))
    with torch.no_grad():
        return method.step(student, teacher, labeled, unlabeled)


def test_fixmatch_loss_matches_hand_computation(models, batches):
    student, teacher = models
    labeled, unlabeled = batches
    tau = threshold_for(teacher, unlabeled.weak)
    out = run("fixmatch", student, teacher, labeled, unlabeled, threshold=tau, unlabeled_weight=2.0)
    loss_u = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong1, unlabeled.box1, unlabeled.ignore, tau)
    loss_x = hand_labeled_loss(student, labeled)
    assert out.unlabeled.item() == pytest.approx(loss_u, rel=1e-4)
    assert out.labeled.item() == pytest.approx(loss_x, rel=1e-4)
    assert out.loss.item() == pytest.approx((loss_x + 2.0 * loss_u) / 2, rel=1e-4)


@pytest.mark.parametrize("streams", ["complementary", "image_only"])
def test_unimatch_v2_loss_matches_hand_computation(models, batches, streams):
    student, teacher = models  # undropped_fraction=1: the complementary masks are all ones
    labeled, unlabeled = batches
    tau = threshold_for(teacher, unlabeled.weak)
    out = run("unimatch_v2", student, teacher, labeled, unlabeled, threshold=tau, streams=streams)
    s1 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong1, unlabeled.box1, unlabeled.ignore, tau)
    s2 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong2, unlabeled.box2, unlabeled.ignore, tau)
    assert out.unlabeled.item() == pytest.approx((s1 + s2) / 2, rel=1e-4)
    assert out.loss.item() == pytest.approx((hand_labeled_loss(student, labeled) + (s1 + s2) / 2) / 2, rel=1e-4)


def test_mask_ratio_counts_confident_non_padding_pixels(models, batches):
    student, teacher = models
    labeled, unlabeled = batches
    tau = threshold_for(teacher, unlabeled.weak)
    out = run("unimatch_v2", student, teacher, labeled, unlabeled, threshold=tau)
    with torch.no_grad():
        conf = torch.softmax(teacher.eval()(unlabeled.weak), 1).max(1).values
    real = unlabeled.ignore != 255
    assert out.mask_ratio.item() == pytest.approx(((conf >= tau) & real).sum().item() / real.sum().item())


def test_unimatch_v1_loss_matches_hand_computation(models, batches, monkeypatch):
    import unimatch.methods.unimatch_v1 as v1

    monkeypatch.setattr(v1, "random_channel_masks", lambda b, c, device=None: torch.ones(b, c))  # no feature drop
    student, teacher = models
    labeled, unlabeled = batches
    tau = threshold_for(teacher, unlabeled.weak)
    out = run("unimatch_v1", student, teacher, labeled, unlabeled, threshold=tau)
    no_box = torch.zeros_like(unlabeled.box1)
    fp = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.weak, no_box, unlabeled.ignore, tau)
    s1 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong1, unlabeled.box1, unlabeled.ignore, tau)
    s2 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong2, unlabeled.box2, unlabeled.ignore, tau)
    assert out.unlabeled.item() == pytest.approx(0.5 * fp + 0.25 * s1 + 0.25 * s2, rel=1e-4)


def test_labeled_only_ignores_unlabeled_data(models, batches):
    student, teacher = models
    labeled, _ = batches
    out = run("labeled_only", student, teacher, labeled, None)
    assert out.loss.item() == pytest.approx(hand_labeled_loss(student, labeled), rel=1e-4)
    assert out.unlabeled.item() == 0


@pytest.mark.parametrize("streams", ["complementary", "single", "image_only", "random"])
def test_v2_variants_train_with_finite_gradients(streams):
    torch.manual_seed(0)
    student = build_segmentor("tiny", NCLASS)
    teacher = copy.deepcopy(student)
    labeled, unlabeled = _random_batches()
    method = build_method(method_class("unimatch_v2").Settings(streams=streams, threshold=0.0), nn.CrossEntropyLoss(ignore_index=255))
    out = method.step(student.train(), teacher, labeled, unlabeled)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def _random_batches():
    labeled = LabeledBatch(torch.randn(2, 3, SIZE, SIZE), torch.randint(0, NCLASS, (2, SIZE, SIZE)))
    ignore = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    box = torch.zeros(2, SIZE, SIZE, dtype=torch.long)
    return labeled, UnlabeledBatch(torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 3, SIZE, SIZE), torch.randn(2, 3, SIZE, SIZE), ignore, box, box)


def test_ema_follows_the_formula_after_k_steps():
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [p.detach().clone() for p in teacher.parameters()]
    for iteration in range(6):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        gamma = min(1 - 1 / (iteration + 1), 0.996)
        assert ema_decay(iteration) == pytest.approx(gamma)
        expected = [gamma * e + (1 - gamma) * s.detach() for e, s in zip(expected, student.parameters())]
        update_ema(student, teacher, ema_decay(iteration))
        for e, t in zip(expected, teacher.parameters()):
            torch.testing.assert_close(t, e)
    assert ema_decay(10**6) == 0.996


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = torch.tensor([4.0, 2.0, 0.0, -2.0])  # true class 0: probabilities high -> low
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    probs = torch.softmax(logits, 1)[0, 0, 0]
    ce = -torch.log(probs)
    loss = OhemCrossEntropy(threshold=0.7, min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(ce[2:].mean().item(), rel=1e-5)  # only p <= 0.7 pixels
    loss = OhemCrossEntropy(threshold=0.7, min_kept=3)(logits, target)
    assert loss.item() == pytest.approx(ce[1:].mean().item(), rel=1e-5)  # raised to the 3rd smallest
