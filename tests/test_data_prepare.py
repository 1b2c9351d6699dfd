"""prepare_splits / extra_unlabeled_samples from an ExperimentConfig, class names and the palette."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unimatch.config import ExperimentConfig
from unimatch.data import DataError, class_names, palette, read_split, write_split
from unimatch.engine.data import extra_unlabeled_samples, prepare_splits


def _config(root: Path, tmp_path: Path, **dataset: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "dataset": {"name": "folder", "root": str(root), "nclass": 3, **dataset},
            "split": {"labeled": 4, "seed": 3},
            "output_dir": str(tmp_path / "run"),
        }
    )


def test_created_splits_are_stable_and_not_rewritten(folder_dataset: Path, tmp_path: Path) -> None:
    cfg = _config(folder_dataset, tmp_path)
    files = prepare_splits(cfg)
    assert files.labeled == tmp_path / "run" / "splits" / "labeled.txt"
    labeled = read_split(files.labeled, folder_dataset)
    unlabeled = read_split(files.unlabeled, folder_dataset, require_masks=False)
    assert len(labeled) == 4 and len(unlabeled) == 8 and len(read_split(files.val, folder_dataset)) == 4
    before = {
        path: (path.read_bytes(), path.stat().st_mtime_ns) for path in (files.labeled, files.unlabeled, files.val)
    }
    assert prepare_splits(cfg) == files
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in before} == before


def test_given_files_are_used_and_split_dir_is_honoured(folder_dataset: Path, tmp_path: Path) -> None:
    created = prepare_splits(_config(folder_dataset, tmp_path))
    given = _config(
        folder_dataset,
        tmp_path,
        labeled_split=str(created.labeled),
        unlabeled_split=str(created.unlabeled),
        val_split=str(created.val),
    )
    assert prepare_splits(given) == created
    elsewhere = _config(folder_dataset, tmp_path)
    elsewhere.split.dir = str(tmp_path / "elsewhere")
    files = prepare_splits(elsewhere)
    assert files.labeled == tmp_path / "elsewhere" / "labeled.txt"
    assert files.labeled.read_bytes() == created.labeled.read_bytes()


def test_given_files_are_validated(folder_dataset: Path, tmp_path: Path) -> None:
    created = prepare_splits(_config(folder_dataset, tmp_path))
    with pytest.raises(DataError, match=r"given together"):
        prepare_splits(_config(folder_dataset, tmp_path, labeled_split=str(created.labeled)))
    with pytest.raises(DataError, match=r"both the labeled and the unlabeled"):
        same = str(created.labeled)
        prepare_splits(_config(folder_dataset, tmp_path, labeled_split=same, unlabeled_split=same))
    with pytest.raises(DataError, match=r"both the training and the val"):
        prepare_splits(_config(folder_dataset, tmp_path, val_split=str(created.labeled)))
    (tmp_path / "missing.txt").write_text("images/val/gone.png masks/val/v0.png\n")
    with pytest.raises(DataError, match=r"missing.txt:1"):
        prepare_splits(_config(folder_dataset, tmp_path, val_split=str(tmp_path / "missing.txt")))


def test_extra_unlabeled_pools(folder_dataset: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "sub").mkdir(parents=True)
    for name in ("b.jpg", "sub/a.png"):
        (pool / name).write_bytes(b"")
    listed = tmp_path / "extra.txt"  # paths inside are relative to the dataset root
    listed.write_text("images/train/t10.png\nimages/train/t11.png masks/whatever.png\n")
    cfg = _config(folder_dataset, tmp_path, extra_unlabeled=[str(pool), str(listed)])
    samples = extra_unlabeled_samples(cfg)
    assert [s.image for s in samples] == [pool / "b.jpg", pool / "sub/a.png", folder_dataset / "images/train/t10.png",
                                          folder_dataset / "images/train/t11.png"]  # fmt: skip
    # A listed mask is kept (not checked: the file may be absent) for the pseudo-label quality metrics.
    assert [s.mask for s in samples] == [None, None, None, folder_dataset / "masks/whatever.png"]
    cfg.dataset.extra_unlabeled = [str(tmp_path / "nothing")]
    with pytest.raises(DataError, match=r"dataset.extra_unlabeled\[0\]"):
        extra_unlabeled_samples(cfg)


def test_class_names(folder_dataset: Path, tmp_path: Path) -> None:
    assert class_names("pascal", None, 21)[:2] == ["background", "aeroplane"]
    assert len(class_names("cityscapes", None, 19)) == 19
    assert class_names(_config(folder_dataset, tmp_path).dataset) == ["bg", "foo", "bar"]
    assert class_names("ade20k", tmp_path, 3) == ["class_0", "class_1", "class_2"]
    with pytest.raises(DataError, match=r"dataset.nclass"):
        class_names("folder", folder_dataset, 4)


def test_palette() -> None:
    colours = palette(256)
    assert colours.shape == (256, 3) and colours.dtype == np.uint8
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in colours}) == 256


def test_write_split_rejects_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"empty"):
        write_split(tmp_path / "s.txt", [], tmp_path)
