"""Shared fixtures: a tiny dataset in the generic folder layout, written as real image files; a tiny embedded
dataset and a config factory on it for engine-level tests of methods and model hooks."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FOLDER_NCLASS = 3


def write_pair(root: Path, subset: str, name: str, size: tuple[int, int], seed: int, with_mask: bool = True) -> None:
    """An RGB PNG image and (optionally) its L mask with labels 0..FOLDER_NCLASS-1 and some 255."""
    rng = np.random.default_rng(seed)
    width, height = size
    image_path = root / "images" / subset / f"{name}.png"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(image_path)
    if with_mask:
        mask = rng.integers(0, FOLDER_NCLASS, (height, width), dtype=np.uint8)
        mask[:2] = 255
        mask_path = root / "masks" / subset / f"{name}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(mask_path)


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """ROOT with 12 train images (2 of them without masks), 4 val images and classes.txt."""
    root = tmp_path / "folder"
    for index in range(12):
        write_pair(root, "train", f"t{index:02d}", (40 + index, 30), seed=index, with_mask=index < 10)
    for index in range(4):
        write_pair(root, "val", f"v{index}", (36, 28), seed=100 + index)
    (root / "classes.txt").write_text("bg\nfoo\nbar\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 train / 2 val embedded images of 84x70."""
    from unimatch.data import generate_embedded

    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=5, n_train=16, n_val=2, size=(84, 70))


@pytest.fixture
def tiny_config(tiny_embedded: Path):
    """``make(output_dir, *overrides)``: configs/embedded.yaml on ``tiny_embedded``, 4 labeled, batch 2, 2
    iterations, random initialisation, no tracking."""
    from unimatch.config import load_config

    def make(out: Path, *overrides: str):
        return load_config("configs/embedded.yaml", [
            f"dataset.root={tiny_embedded}", "dataset.crop_size=42", f"output_dir={out}", "split.labeled=4", "train.batch_size=2",
            "train.epochs=1", "train.max_iters=2", "train.num_workers=0", "tracking.enabled=false", "model.weights=null",
            "eval.pseudo_label_images=0", *overrides,
        ])  # fmt: skip

    return make


# `python -c PAUSE_AFTER_FIRST_EVALUATION MARKER unimatch-args...`: the real command line, which, once it has
# written latest.pth after its first evaluation (best.pth beside it), creates MARKER and waits there to be
# signalled. A test that kills it then knows exactly which checkpoint the rerun must resume from.
PAUSE_AFTER_FIRST_EVALUATION = """
import os, runpy, signal, sys

marker, replace = sys.argv[1], os.replace

def replace_then_wait(source, target, *args, **kwargs):
    replace(source, target, *args, **kwargs)
    target = os.fspath(target)
    if os.path.basename(target) == "latest.pth" and os.path.exists(os.path.join(os.path.dirname(target), "best.pth")):
        open(marker, "w").close()
        while True:
            signal.pause()

os.replace = replace_then_wait
sys.argv = ["unimatch", *sys.argv[2:]]
runpy.run_module("unimatch.cli", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def start_paused_after_first_evaluation():
    """``start(args, marker, **popen)``: the ``unimatch`` command line with ``args`` in a subprocess, returned once it
    waits after its first evaluation's checkpoint (see PAUSE_AFTER_FIRST_EVALUATION). SIGINT has its default
    disposition in the child, as under a terminal, even when the suite itself runs in the background with SIGINT
    ignored. A child the test leaves waiting (a failed assertion) is killed at teardown."""
    started = []

    def start(args: list[str], marker: Path, **popen) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", PAUSE_AFTER_FIRST_EVALUATION, str(marker), *args],
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            **popen,
        )
        started.append(process)
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"the run ended (exit {process.returncode}) before its first evaluation")
            time.sleep(0.05)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list:
    """The matplotlib figures saved during the test, in order (their files are written as usual), so that a test
    can check what a figure shows instead of only that a PNG exists."""
    from matplotlib.figure import Figure

    saved, savefig = [], Figure.savefig

    def keep(figure, *args, **kwargs):
        saved.append(figure)
        return savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


# Loaded by every process torchrun starts (through PYTHONPATH): a rank other than 0 that writes a checkpoint
# or a figure fails the run.
RANK_ZERO_WRITES_ONLY = """
import os
if os.environ.get("RANK", "0") != "0":
    import matplotlib.figure, torch

    def _refuse(*args, **kwargs):
        raise PermissionError("rank " + os.environ["RANK"] + " wrote a file only rank 0 may write")

    torch.save = _refuse
    matplotlib.figure.Figure.savefig = _refuse
"""


@pytest.fixture
def rank_zero_guard(tmp_path: Path):
    """``write(extra) -> folder``: a folder whose sitecustomize.py is the rank-0 write guard followed by a
    test's own ``extra`` code, for the PYTHONPATH of the processes torchrun starts."""

    def write(extra: str = "") -> Path:
        guard = tmp_path / "guard"
        guard.mkdir(exist_ok=True)
        (guard / "sitecustomize.py").write_text(RANK_ZERO_WRITES_ONLY + extra, encoding="utf-8")
        return guard

    return write


@pytest.fixture(scope="session")
def tracked_training():
    """``run(root, data_seed, *overrides) -> (settings, cfg, result)``: a tracked 2-iteration training of
    configs/embedded.yaml (crop 56, 8 of 16 generated images labeled, random initialisation) whose MLflow
    store is ``root``/mlflow.db; ``settings``: the overrides that address it again on a command line."""
    from unimatch.config import load_config
    from unimatch.data import generate_embedded
    from unimatch.jobs import train
    from unimatch.tracking import tracker_from_config

    def run(root: Path, data_seed: int, *overrides: str):
        data = generate_embedded(root / "data", seed=data_seed, n_train=16, n_val=2, size=(84, 70))
        settings = [
            f"dataset.root={data}", f"split.dir={root / 'splits'}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            "dataset.crop_size=56", "split.labeled=8", "train.batch_size=2", "train.num_workers=0",
            "train.max_iters=2", "pretrain.method=none", "model.weights=null", "eval.pseudo_label_images=0",
            *overrides,
        ]  # fmt: skip
        cfg = load_config("configs/embedded.yaml", [f"output_dir={root / 'run'}", *settings])
        with tracker_from_config(cfg) as tracker:
            result = train(cfg, tracker, progress=False)
        return settings, cfg, result

    return run
