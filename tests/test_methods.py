"""Each method's losses against a hand-written computation of the SPEC formulas on fixed tensors."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from unimatch.engine.ema import ema_decay, update_ema
from unimatch.engine.losses import OhemCrossEntropy
from unimatch.methods import LabeledBatch, UnlabeledBatch, build_method, method_class
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


def make_batches(size: int):
    g = torch.Generator().manual_seed(1)
    labeled = LabeledBatch(torch.randn(BATCH, 3, size, size, generator=g), torch.randint(0, NCLASS, (BATCH, size, size), generator=g))
    labeled.mask[0, :5] = 255
    ignore = torch.zeros(BATCH, size, size, dtype=torch.long)
    ignore[1, :, 20:] = 255  # padding on the right of sample 1
    box1 = torch.zeros(BATCH, size, size, dtype=torch.long)
    box1[0, 3:15, 4:20] = 1
    box1[2, 10:25, 0:9] = 1
    box2 = torch.zeros(BATCH, size, size, dtype=torch.long)
    box2[1, 0:14, 14:28] = 1
    unlabeled = UnlabeledBatch(
        torch.randn(BATCH, 3, size, size, generator=g),
        torch.randn(BATCH, 3, size, size, generator=g),
        torch.randn(BATCH, 3, size, size, generator=g),
        ignore, box1, box2,
    )
    return labeled, unlabeled


@pytest.fixture(scope="module")
def batches():
    return make_batches(SIZE)


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


def hand_pixel_loss(student, teacher, weak, strong, box, ignore, threshold, logits_of=None) -> float:
    """``logits_of(mixed image)``: the student's logits for the mixed view (default: its plain forward)."""
    with torch.no_grad():
        teacher_probs = torch.softmax(teacher.eval()(weak), dim=1).numpy()
        mixed_image = torch.from_numpy(hand_mix(strong.numpy(), box.numpy()))
        student_logits = (logits_of or student.eval())(mixed_image).numpy()
    label = hand_mix(teacher_probs.argmax(1), box.numpy())
    confidence = hand_mix(teacher_probs.max(1), box.numpy())
    padding = hand_mix(ignore.numpy(), box.numpy()) == 255
    loss = hand_ce(student_logits, label) * ((confidence >= threshold) & ~padding)
    return loss.sum() / (~padding).sum()  # normalised by ALL non-padding pixels


def masked_logits(student, masks):
    """``logits_of`` for a view whose encoder features are multiplied channel-wise by ``masks`` (one row per
    image; a level narrower than the mask takes its first channels, the same mask on every level), then
    decoded without any dropout."""

    def logits_of(image):
        maps = [m * masks[:, : m.shape[1], None, None] for m in student.features(image)]
        return student.decode(maps, image.shape[-2:])

    return logits_of


def recording(monkeypatch, owner, name):
    """Wrap ``owner.name`` (a mask-drawing function) so that the masks it draws are kept, in order."""
    drawn, draw = [], getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *args, **kwargs: drawn.append(draw(*args, **kwargs)) or drawn[-1])
    return drawn


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


def test_unimatch_v2_image_only_loss_matches_hand_computation(models, batches):
    student, teacher = models
    labeled, unlabeled = batches
    tau = threshold_for(teacher, unlabeled.weak)
    out = run("unimatch_v2", student, teacher, labeled, unlabeled, threshold=tau, streams="image_only")
    s1 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong1, unlabeled.box1, unlabeled.ignore, tau)
    s2 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong2, unlabeled.box2, unlabeled.ignore, tau)
    assert out.unlabeled.item() == pytest.approx((s1 + s2) / 2, rel=1e-4)
    assert out.loss.item() == pytest.approx((hand_labeled_loss(student, labeled) + (s1 + s2) / 2) / 2, rel=1e-4)


def test_unimatch_v2_complementary_loss_matches_hand_computation_with_the_drawn_masks(models, batches, monkeypatch):
    """The reference's mix (half the pairs undropped): the masks the step draws are checked to be complementary,
    then the two views' losses are computed by hand with those masks applied to the encoder features."""
    student, teacher = models
    student = copy.deepcopy(student)
    student.undropped_fraction = 0.5
    labeled, unlabeled = batches
    drawn = recording(monkeypatch, student, "drop_masks")
    tau = threshold_for(teacher, unlabeled.weak)
    torch.manual_seed(3)
    out = run("unimatch_v2", student, teacher, labeled, unlabeled, threshold=tau)
    (masks,) = drawn
    first, second = masks.chunk(2)  # view 1 and view 2 of the BATCH pairs
    undropped = (first == 1).all(1)
    assert undropped.sum() == BATCH // 2 and torch.equal(second[undropped], first[undropped])
    dropped_first, dropped_second = first[~undropped], second[~undropped]
    assert set(dropped_first.unique().tolist()) == {0.0, 2.0} and torch.equal(dropped_first + dropped_second, torch.full_like(dropped_first, 2.0))
    s1 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong1, unlabeled.box1, unlabeled.ignore, tau, masked_logits(student, first))
    s2 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong2, unlabeled.box2, unlabeled.ignore, tau, masked_logits(student, second))
    assert out.unlabeled.item() == pytest.approx((s1 + s2) / 2, rel=1e-4)
    assert out.loss.item() == pytest.approx((hand_labeled_loss(student, labeled) + (s1 + s2) / 2) / 2, rel=1e-4)
    plain = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong1, unlabeled.box1, unlabeled.ignore, tau)
    assert s1 != pytest.approx(plain, rel=1e-4)  # the dropout changes the loss by more than the comparison allows


def test_mask_ratio_counts_confident_non_padding_pixels(models, batches):
    student, teacher = models
    labeled, unlabeled = batches
    tau = threshold_for(teacher, unlabeled.weak)
    out = run("unimatch_v2", student, teacher, labeled, unlabeled, threshold=tau)
    with torch.no_grad():
        conf = torch.softmax(teacher.eval()(unlabeled.weak), 1).max(1).values
    real = unlabeled.ignore != 255
    assert out.mask_ratio.item() == pytest.approx(((conf >= tau) & real).sum().item() / real.sum().item())


def test_unimatch_v1_loss_matches_hand_computation_with_the_drawn_feature_dropout(models, batches, monkeypatch):
    """V1's feature-perturbed stream: Dropout2d(0.5) per level on the weak view's features (kept channels x2),
    each level its own draw; the hand computation applies the drawn masks level by level."""
    import unimatch.methods.unimatch_v1 as v1

    drawn = recording(monkeypatch, v1, "random_channel_masks")
    student, teacher = models
    labeled, unlabeled = batches
    tau = threshold_for(teacher, unlabeled.weak)
    out = run("unimatch_v1", student, teacher, labeled, unlabeled, threshold=tau)
    levels = student.features(unlabeled.weak)
    assert [m.shape for m in drawn] == [(BATCH, level.shape[1]) for level in levels]
    assert all(set(m.unique().tolist()) == {0.0, 2.0} for m in drawn)

    def perturbed(image):
        return student.decode([level * m[:, :, None, None] for level, m in zip(student.features(image), drawn)], image.shape[-2:])

    no_box = torch.zeros_like(unlabeled.box1)
    fp = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.weak, no_box, unlabeled.ignore, tau, perturbed)
    s1 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong1, unlabeled.box1, unlabeled.ignore, tau)
    s2 = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.strong2, unlabeled.box2, unlabeled.ignore, tau)
    assert out.unlabeled.item() == pytest.approx(0.5 * fp + 0.25 * s1 + 0.25 * s2, rel=1e-4)
    unperturbed = hand_pixel_loss(student, teacher, unlabeled.weak, unlabeled.weak, no_box, unlabeled.ignore, tau)
    assert fp != pytest.approx(unperturbed, rel=1e-4)  # the dropout changes the loss by more than the comparison allows


def hand_guidance_loss(logits: torch.Tensor, labels: np.ndarray) -> float:
    """CE on the guided pixels (label != 255), summed and divided by all pixels."""
    guided = labels != 255
    return float((hand_ce(logits.numpy(), np.where(guided, labels, 0)) * guided).sum() / labels.size)


def test_semivl_step_matches_hand_computation(monkeypatch):
    """L = 1/2 (L_x + 1/2 L_fp + 1/4 L_s1 + 1/4 L_s2) + lambda(t) (1/2 L_dc,fp + 1/4 L_dc,s1 + 1/4 L_dc,s2), pseudo labels
    from the student itself, lambda(t) = 0.1 (1 - t / T): at t = 250 of T = 1000, 0.075."""
    import unimatch.methods.semivl as semivl
    from unimatch.config import load_config
    from unimatch.methods.base import Progress

    torch.manual_seed(0)
    size = 32  # CLIP's 16 px patches
    model = build_segmentor("clip-tiny", NCLASS, input_size=size, decoder="vlg").eval()  # no dropout anywhere
    settings = method_class("semivl").Settings(threshold=0.0, guidance_threshold=0.0)
    method = build_method(settings, nn.CrossEntropyLoss(ignore_index=255))
    method.on_device(model, load_config("configs/embedded.yaml", ["model.weights=null"]).model, torch.device("cpu"))
    with torch.no_grad():  # the guide stays as built, the student moves on: they must differ for the test to tell
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    labeled, unlabeled = make_batches(size)
    tau = threshold_for(model, unlabeled.weak)
    method.cfg = settings.model_copy(update={"threshold": tau})
    method.progress = Progress(250, 1000, 100)
    drawn = recording(monkeypatch, semivl, "random_channel_masks")
    with torch.no_grad():
        out = method.step(model, model, labeled, unlabeled)

        def perturbed(image):
            return model.decode([level * m[:, :, None, None] for level, m in zip(model.features(image), drawn)], image.shape[-2:])

        no_box = torch.zeros_like(unlabeled.box1)
        fp = hand_pixel_loss(model, model, unlabeled.weak, unlabeled.weak, no_box, unlabeled.ignore, tau, perturbed)
        s1 = hand_pixel_loss(model, model, unlabeled.weak, unlabeled.strong1, unlabeled.box1, unlabeled.ignore, tau)
        s2 = hand_pixel_loss(model, model, unlabeled.weak, unlabeled.strong2, unlabeled.box2, unlabeled.ignore, tau)
        loss_x = hand_labeled_loss(model, labeled)
        guided = method.guide_labels(unlabeled.weak, unlabeled.ignore).numpy()
        mixed = [torch.from_numpy(hand_mix(image.numpy(), box.numpy())) for image, box in
                 ((unlabeled.strong1, unlabeled.box1), (unlabeled.strong2, unlabeled.box2))]  # fmt: skip
        loss_dc = (0.5 * hand_guidance_loss(perturbed(unlabeled.weak), guided)
                   + 0.25 * hand_guidance_loss(model(mixed[0]), hand_mix(guided, unlabeled.box1.numpy()))
                   + 0.25 * hand_guidance_loss(model(mixed[1]), hand_mix(guided, unlabeled.box2.numpy())))  # fmt: skip
    loss_u = 0.5 * fp + 0.25 * s1 + 0.25 * s2
    assert np.array_equal(guided != 255, unlabeled.ignore.numpy() != 255) and loss_dc > 0  # zeta = 0: all but padding guided
    assert out.labeled.item() == pytest.approx(loss_x, rel=1e-4) and out.unlabeled.item() == pytest.approx(loss_u, rel=1e-4)
    assert out.loss.item() == pytest.approx((loss_x + loss_u) / 2 + 0.075 * loss_dc, rel=1e-4)


def test_allspark_step_matches_hand_computation_and_reads_the_memory_from_warmup_epoch():
    """(CE_l + CE_u) / 2, CE_u over every non-padding pixel (no threshold) against the argmax of the model's own
    eval-mode prediction (per image, no memory); the labeled images read the batch before epoch
    ``warmup_epoch`` (2 here) and the memory from it on."""
    from unimatch.methods.base import Progress

    torch.manual_seed(0)
    settings = method_class("allspark").Settings(warmup_epoch=2, attention_dropout=0.0)
    model = method_class("allspark").build_model(build_segmentor("tiny", NCLASS, input_size=SIZE), settings, SIZE)
    method = build_method(settings, nn.CrossEntropyLoss(ignore_index=255))
    with torch.no_grad():  # sharper logits and a stronger cross-attention, so that reading the memory shows in the loss
        model.head.classifier.weight.mul_(50.0)
        model.neck.attention.out_l2u.weight.mul_(10.0)
    labeled, unlabeled = make_batches(SIZE)
    padding = unlabeled.ignore.numpy() == 255

    def hand_loss(state, reads_memory: bool) -> float:
        with torch.no_grad():
            guide = state.eval()(unlabeled.weak)
            state.train()
            maps = state.features(torch.cat((labeled.image, unlabeled.weak)))
            preds = state.decode(state.neck(maps, labeled=BATCH, guide=guide, use_memory=reads_memory), (SIZE, SIZE)).numpy()
        target = labeled.mask.numpy()
        valid = target != 255
        loss_x = hand_ce(preds[:BATCH], np.where(valid, target, 0))[valid].mean()
        loss_u = hand_ce(preds[BATCH:], guide.argmax(1).numpy())[~padding].sum() / (~padding).sum()
        return (loss_x + loss_u) / 2

    for iteration, reads_memory in ((150, False), (250, True)):  # epochs 1 and 2 of 100 iterations
        method.progress = Progress(iteration, 1000, 100)
        before = copy.deepcopy(model)
        with torch.no_grad():
            out = method.step(model.train(), model, labeled, unlabeled)
        expected = hand_loss(copy.deepcopy(before), reads_memory)
        assert out.loss.item() == pytest.approx(expected, rel=1e-5), iteration
        assert out.loss.item() != pytest.approx(hand_loss(copy.deepcopy(before), not reads_memory), rel=1e-4)


def test_labeled_only_ignores_unlabeled_data(models, batches):
    student, teacher = models
    labeled, _ = batches
    out = run("labeled_only", student, teacher, labeled, None)
    assert out.loss.item() == pytest.approx(hand_labeled_loss(student, labeled), rel=1e-4)
    assert out.unlabeled.item() == 0


@pytest.mark.parametrize("streams", ["complementary", "single", "image_only", "random"])
def test_v2_variants_draw_their_streams_dropouts_and_train_encoder_and_decoder(streams, monkeypatch):
    """Table 6: (a) single: one strong view, random dropout; (b) image_only: two views, no dropout; (c) random:
    two views, independent random dropouts; ours: two views, complementary dropouts. Gradients reach both parts."""
    torch.manual_seed(0)
    student = build_segmentor("tiny", NCLASS, undropped_fraction=0.0)
    teacher = copy.deepcopy(student)
    labeled, unlabeled = _random_batches()
    drawn = recording(monkeypatch, student, "drop_masks")
    method = build_method(method_class("unimatch_v2").Settings(streams=streams, threshold=0.0), nn.CrossEntropyLoss(ignore_index=255))
    method.step(student.train(), teacher, labeled, unlabeled).loss.backward()
    views = {"single": 1, "image_only": 2, "random": 2, "complementary": 2}[streams]
    if streams == "image_only":
        assert drawn == []
    else:
        (masks,) = drawn
        assert masks.shape[0] == 2 * views  # one row per image of each view (2 unlabeled images)
        assert set(masks.unique().tolist()) == {0.0, 2.0}
        first, second = masks.chunk(2) if views == 2 else (masks, None)
        if streams == "complementary":
            assert torch.equal(first + second, torch.full_like(first, 2.0))
        elif streams == "random":
            assert not torch.equal(first + second, torch.full_like(first, 2.0))
    assert student.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert student.head.classifier.weight.grad.abs().sum() > 0


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
