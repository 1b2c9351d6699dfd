"""`unimatch plan-memory` on a CPU: measured peaks, the linear memory model, and recommendations that
follow the target memory."""

from __future__ import annotations

import pytest

from unimatch.apps.memory_plan import MARGIN, plan_memory
from unimatch.cli import main as cli_main
from unimatch.config import load_config

BATCH = 8  # images per process and optimizer step: train.batch_size 4 x train.accumulate 2


@pytest.fixture(scope="module")
def plan():
    cfg = load_config(
        "configs/embedded.yaml",
        ["dataset.crop_size=56", "train.batch_size=4", "train.accumulate=2", "train.device=cpu"],
    )
    return plan_memory(cfg)


def test_measured_peaks_grow_with_the_micro_batch_and_checkpointing_lowers_them(plan):
    assert plan.device == "cpu" and plan.per_process_batch == BATCH and plan.min_micro_batch == 2  # CutMix pairs
    peaks = {(m.checkpointing, m.batch): m.step.peak_bytes for m in plan.measured}
    assert peaks[(False, 2)] > peaks[(False, 1)] and peaks[(True, 2)] > peaks[(True, 1)]
    plain, checkpointed = (next(fit for fit in plan.fits if fit.checkpointing == flag) for flag in (False, True))
    assert checkpointed.bytes_per_image < plain.bytes_per_image  # the blocks' activations are not kept
    assert "| no | 2 |" in plan.table() and "| yes | 1 |" in plan.table()


def test_the_recommendation_follows_the_target_memory(plan):
    plain = next(fit for fit in plan.fits if not fit.checkpointing)
    ample = plan.recommend(100.0)
    assert (ample.batch_size, ample.accumulate, ample.checkpointing) == (BATCH, 1, False)
    # Room for 4 images but not 8: two micro-batches of 4, still without checkpointing.
    between = (plain.peak_gib(4) + plain.peak_gib(BATCH)) / 2 / MARGIN
    halved = plan.recommend(between)
    assert (halved.batch_size, halved.accumulate, halved.checkpointing) == (4, 2, False)
    assert halved.peak_gib <= MARGIN * between < ample.peak_gib
    assert halved.batch_size * halved.accumulate == BATCH  # the effective batch is kept
    # Less than the smallest micro-batch of 2 needs in any setting: nothing fits.
    smallest = min(fit.peak_gib(2) for fit in plan.fits)
    assert plan.recommend(smallest * MARGIN) is None
    assert plan.advice(smallest * MARGIN).startswith(f"nothing fits {smallest * MARGIN:g} GiB at {BATCH} images")
    assert "train.batch_size=4 train.accumulate=2" in plan.advice(between)


def test_cli_prints_the_measurements_and_the_overrides(capsys):
    args = ["plan-memory", "--gpu-memory", "100", "dataset.crop_size=56", "train.batch_size=2", "train.device=cpu"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "| checkpointing | micro-batch | peak GiB | s/step |" in out
    assert "train.batch_size=2 train.accumulate=1 model.activation_checkpointing=false" in out
