import math

import numpy as np
import pytest
import torch
from torch import nn

from unimatch.engine.inference import evaluate, nearest_multiple, predict_original, predict_sliding, window_starts
from unimatch.metrics import ConfusionMatrix, iou_per_class, mean_iou


def test_miou_on_a_tiny_fixture_equals_hand_computation():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    prediction = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    matrix = ConfusionMatrix(4)
    matrix.update(prediction, target)
    # class 0: inter 1 (pixel 0,0), union = target{2} + pred{3 counted without ignore: (0,0),(1,1)} - 1
    # pixels with target 255 are dropped, so pred (1,2)=0 does not count.
    iou0 = 1 / (2 + 2 - 1)
    iou1 = 3 / (3 + 4 - 3)  # target 1 at (0,2),(0,3),(1,3); pred 1 at (0,1),(0,2),(0,3),(1,3)
    iou2 = 1 / (2 + 1 - 1)
    ious = iou_per_class(matrix.numpy())
    np.testing.assert_allclose(ious[:3], [iou0, iou1, iou2])
    assert math.isnan(ious[3])  # class 3 absent from targets and predictions: not averaged
    assert mean_iou(matrix.numpy()) == pytest.approx(100 * (iou0 + iou1 + iou2) / 3)


def test_confusion_is_accumulated_dataset_wide_not_per_image():
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([0, 0]), torch.tensor([0, 1]))
    matrix.update(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 1]))
    # dataset-wide: class 0 = 1/2, class 1 = 4/5 (per-image averaging would give another number)
    assert mean_iou(matrix.numpy()) == pytest.approx(100 * (1 / 2 + 4 / 5) / 2)


class ColourSegmentor(nn.Module):
    """Predicts class 1 where the first channel is positive: exact at any resolution."""

    def __init__(self):
        super().__init__()
        self.sizes = []
        self.size_divisor = 14

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        positive = (x[:, :1] > 0).float()
        return torch.cat((1 - positive, positive), dim=1) * 10


def _image_and_mask(height, width):
    mask = torch.zeros(1, height, width, dtype=torch.long)
    mask[:, height // 4 : height // 2, width // 3 :] = 1
    image = torch.where(mask.bool(), 1.0, -1.0).unsqueeze(1).repeat(1, 3, 1, 1)
    return image, mask


def test_original_mode_resizes_to_multiples_of_14_and_back():
    model = ColourSegmentor()
    image, mask = _image_and_mask(75, 100)
    logits = predict_original(model, image)
    assert model.sizes == [(nearest_multiple(75, 14), nearest_multiple(100, 14))] == [(70, 98)]
    assert logits.shape[-2:] == (75, 100)
    result = evaluate(model, [(image, mask, "a")], 2, mode="original")
    assert result.miou > 90


def test_sliding_window_covers_the_image_with_full_windows():
    model = ColourSegmentor()
    image, mask = _image_and_mask(100, 150)
    probs = predict_sliding(model, image, window=56, stride_ratio=2 / 3, batch=4)
    assert probs.shape == (1, 2, 100, 150)
    assert model.sizes and all(size == (56, 56) for size in model.sizes)  # only full windows
    assert (probs.sum(dim=1) >= 1 - 1e-5).all()  # every pixel covered by at least one window
    assert (probs.argmax(1) == mask).float().mean() == 1.0
    assert window_starts(100, 56, 37) == [0, 37, 44]
    assert window_starts(40, 56, 37) == [0]


def test_sliding_window_pads_images_smaller_than_the_window():
    model = ColourSegmentor()
    image, mask = _image_and_mask(30, 40)
    result = evaluate(model, [(image, mask, "small")], 2, mode="sliding", window=56)
    assert result.miou == pytest.approx(100.0)
