"""The feature-quality probe: a frozen probe never moves the encoder, a fine-tuned one does, and the scores
are those of the model it trained (a head that fits its labeled images scores them well)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from unimatch.data.embedded import render_world
from unimatch.engine.probe import DEV_WORLD_SEED, ProbeSettings, probe_encoder, probe_table, train_probe
from unimatch.models import build_segmentor


def _encoder_state(model) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.encoder.state_dict().items()}


def test_frozen_probe_trains_the_head_only_and_finetuned_moves_the_encoder() -> None:
    images, masks = render_world(DEV_WORLD_SEED, "train", 2)
    settings = ProbeSettings(labeled=2, iterations=3, batch_size=2)
    for frozen in (True, False):
        torch.manual_seed(0)
        model = build_segmentor("tiny", 7, input_size=112)
        if frozen:
            model.freeze_encoder()
        encoder, head = _encoder_state(model), {k: v.clone() for k, v in model.head.state_dict().items()}
        train_probe(model, frozen, images, masks, settings, torch.device("cpu"))
        encoder_moved = any(not torch.equal(value, model.encoder.state_dict()[key]) for key, value in encoder.items())
        head_moved = any(not torch.equal(value, model.head.state_dict()[key]) for key, value in head.items())
        assert head_moved
        assert encoder_moved is not frozen
        if frozen:
            assert all(parameter.grad is None for parameter in model.encoder.parameters())


def test_development_world_is_not_the_benchmark() -> None:
    """Seed 17 renders other images than the benchmark's data seed 0, deterministically."""
    dev, again, benchmark = render_world(DEV_WORLD_SEED, "val", 2), render_world(DEV_WORLD_SEED, "val", 2), render_world(0, "val", 2)
    assert np.array_equal(dev[0], again[0]) and np.array_equal(dev[1], again[1])
    assert not np.array_equal(dev[0], benchmark[0])


def test_probe_reports_both_modes_with_scores_in_range() -> None:
    results = probe_encoder("tiny", None, ProbeSettings(labeled=2, iterations=2, batch_size=2))
    assert [result.mode for result in results] == ["frozen", "finetuned"]
    for result in results:
        assert 0 <= result.miou <= 100 and 0 <= result.foreground_accuracy <= 100
        assert math.isnan(result.object_precision) or 0 <= result.object_precision <= 100
        assert result.foreground_recall <= result.foreground_accuracy + 1e-9  # confident-and-right is a subset of right
    table = probe_table(results).splitlines()
    assert len(table) == 4 and table[2].startswith("| frozen | ") and f"{results[1].miou:.1f}" in table[3]


def test_probe_settings_name_a_bad_mode() -> None:
    with pytest.raises(ValidationError, match="modes"):
        ProbeSettings(modes=("frozen", "linear"))
