"""Split files: parsing (incl. the official Pascal splits), writing, creation and validation errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from unimatch.data import (
    DataError,
    Sample,
    check_disjoint,
    create_split,
    list_dataset,
    list_image_folder,
    read_split,
    write_split,
)

# The official Pascal split files, shipped with the configs.
PASCAL = Path(__file__).resolve().parents[1] / "configs" / "splits" / "pascal"


def _samples(count: int, root: Path = Path("/data")) -> list[Sample]:
    return [Sample(root / f"img/{i:03d}.jpg", root / f"mask/{i:03d}.png", f"img/{i:03d}.jpg") for i in range(count)]


@pytest.mark.parametrize("count", [92, 183, 366, 732, 1464])
def test_official_pascal_splits_parse(count: int) -> None:
    labeled = read_split(PASCAL / str(count) / "labeled.txt", "/pascal", check_files=False)
    unlabeled = read_split(PASCAL / str(count) / "unlabeled.txt", "/pascal", require_masks=False, check_files=False)
    assert len(labeled) == count and len(labeled) + len(unlabeled) == 10582
    assert labeled[0].image.parts[:3] == ("/", "pascal", "JPEGImages")
    assert labeled[0].mask is not None and labeled[0].mask.parent == Path("/pascal/SegmentationClass")
    # The unlabeled lines name masks too: kept (never trained on) for the pseudo-label quality metrics.
    assert all(sample.mask is not None and sample.mask.parent == Path("/pascal/SegmentationClass") for sample in unlabeled)
    check_disjoint(labeled, unlabeled)


def test_official_pascal_val_has_1449_images() -> None:
    val = read_split(PASCAL / "val.txt", "/pascal", check_files=False)
    assert len(val) == 1449 and val[0].name == "JPEGImages/2007_000033.jpg"


def test_write_read_round_trip(folder_dataset: Path, tmp_path: Path) -> None:
    samples = list_dataset("folder", folder_dataset, "train")
    labeled = [sample for sample in samples if sample.mask is not None]
    write_split(tmp_path / "deep" / "labeled.txt", labeled, folder_dataset)
    text = (tmp_path / "deep" / "labeled.txt").read_text()
    assert text.splitlines()[0] == "images/train/t00.png masks/train/t00.png"
    assert read_split(tmp_path / "deep" / "labeled.txt", folder_dataset) == labeled
    write_split(tmp_path / "all.txt", samples, folder_dataset)  # mask-less samples: image path only
    assert read_split(tmp_path / "all.txt", folder_dataset, require_masks=False) == samples  # listed masks kept
    assert not list(tmp_path.glob("**/*.tmp"))


def test_create_split_is_reproducible(tmp_path: Path) -> None:
    samples = _samples(50)
    shuffled = random.Random(1).sample(samples, len(samples))
    texts = []
    for index, (pool, seed) in enumerate([(samples, 0), (shuffled, 0), (samples, 1)]):
        labeled, unlabeled = create_split(pool, 10, seed)
        write_split(tmp_path / f"l{index}.txt", labeled, "/data")
        write_split(tmp_path / f"u{index}.txt", unlabeled, "/data")
        texts.append((tmp_path / f"l{index}.txt").read_bytes() + (tmp_path / f"u{index}.txt").read_bytes())
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_create_split_counts_and_fractions() -> None:
    samples = _samples(20)
    labeled, unlabeled = create_split(samples, 3, seed=0)
    assert len(labeled) == 3 and len(unlabeled) == 17
    assert {s.name for s in labeled} | {s.name for s in unlabeled} == {s.name for s in samples}
    assert len(create_split(samples, 0.25, seed=0)[0]) == 5
    assert len(create_split(samples, 0.001, seed=0)[0]) == 1
    assert len(create_split(samples, 20.0, seed=0)[0]) == 20


@pytest.mark.parametrize("labeled", [21, 2.5, 0, -1])
def test_create_split_rejects_bad_counts(labeled: float) -> None:
    with pytest.raises(DataError, match=r"split.labeled"):
        create_split(_samples(20), labeled, seed=0)


def test_create_split_rejects_empty_input_and_never_labels_maskless_samples() -> None:
    with pytest.raises(DataError, match=r"empty"):
        create_split([], 1, seed=0)
    samples = [*_samples(4), Sample(Path("/data/img/x.jpg"), None, "img/x.jpg")]
    labeled, unlabeled = create_split(samples, 4, seed=0)
    assert all(s.mask is not None for s in labeled) and [s.name for s in unlabeled] == ["img/x.jpg"]


def test_overlap_is_an_error() -> None:
    samples = _samples(5)
    with pytest.raises(DataError, match=r"img/002.jpg"):
        check_disjoint(samples[:3], samples[2:])


def _split(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "split.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_missing_listed_file_names_split_line_and_path(folder_dataset: Path, tmp_path: Path) -> None:
    text = "images/train/t00.png masks/train/t00.png\n\nimages/train/nope.png masks/train/t01.png\n"
    with pytest.raises(DataError, match=r"split.txt:3: file not found: .*nope.png"):
        read_split(_split(tmp_path, text), folder_dataset)
    assert len(read_split(tmp_path / "split.txt", folder_dataset, check_files=False)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty split"),
        ("\n  \n", "empty split"),
        (b"images/train/t00.png \xff\xfe.png\n", "not UTF-8"),
        ("../outside.png masks/train/t00.png\n", "split.txt:1: path '../outside.png' escapes"),
        ("images/../../outside.png masks/a.png\n", "escapes"),
        ("/etc/passwd masks/train/t00.png\n", "split.txt:1: absolute path"),
        ("images/train/t00.png\n", "split.txt:1: expected 'IMAGE_PATH MASK_PATH'"),
        ("a.png b.png c.png\n", "3 fields"),
        ("images/train/t00.png masks/train/t00.png\nimages/train/t00.png masks/train/t00.png\n", "line 1"),
    ],
)
def test_bad_split_files_name_the_file(folder_dataset: Path, tmp_path: Path, text: str | bytes, message: str) -> None:
    with pytest.raises(DataError, match=r"split.txt") as error:
        read_split(_split(tmp_path, text), folder_dataset)
    assert message in str(error.value)


def test_missing_split_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent.txt"):
        read_split(tmp_path / "absent.txt", tmp_path)


def test_dotdot_inside_root_is_allowed(folder_dataset: Path, tmp_path: Path) -> None:
    text = "images/val/../train/t00.png masks/train/t00.png\n"
    (sample,) = read_split(_split(tmp_path, text), folder_dataset)
    assert sample.image == folder_dataset / "images/train/t00.png"


def test_write_split_refuses_paths_outside_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not under the dataset root"):
        write_split(tmp_path / "s.txt", _samples(2, Path("/elsewhere")), tmp_path)


def test_list_folder_layout(folder_dataset: Path) -> None:
    train = list_dataset("folder", folder_dataset, "train")
    assert [s.name for s in train] == [f"images/train/t{i:02d}.png" for i in range(12)]
    assert [s.mask is None for s in train] == [False] * 10 + [True] * 2
    assert len(list_dataset("embedded", folder_dataset, "val")) == 4
    (folder_dataset / "masks" / "val" / "v0.png").unlink()
    with pytest.raises(DataError, match=r"v0.png"):
        list_dataset("folder", folder_dataset, "val")
    with pytest.raises(DataError, match=r"dataset.name"):
        list_dataset("imagenet", folder_dataset, "train")


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()


def test_standard_layouts(tmp_path: Path) -> None:
    _touch(tmp_path / "voc", "JPEGImages/a.jpg", "JPEGImages/b.jpg", "JPEGImages/c.jpg", "SegmentationClass/a.png",
           "SegmentationClass/b.png", "SegmentationClass/c.png")  # fmt: skip
    (tmp_path / "voc/ImageSets/Segmentation").mkdir(parents=True)
    (tmp_path / "voc/ImageSets/Segmentation/val.txt").write_text("c\n")
    assert [s.name for s in list_dataset("pascal", tmp_path / "voc", "train")] == [
        "JPEGImages/a.jpg",
        "JPEGImages/b.jpg",
    ]
    assert list_dataset("pascal", tmp_path / "voc", "val")[0].mask == tmp_path / "voc/SegmentationClass/c.png"

    _touch(
        tmp_path / "cs",
        "leftImg8bit/val/bonn/bonn_1_leftImg8bit.png",
        "gtFine/val/bonn/bonn_1_gtFine_labelTrainIds.png",
    )
    (sample,) = list_dataset("cityscapes", tmp_path / "cs", "val")
    assert sample.mask == tmp_path / "cs/gtFine/val/bonn/bonn_1_gtFine_labelTrainIds.png"

    _touch(tmp_path / "ade", "images/training/x.jpg", "annotations/training/x.png")
    assert list_dataset("ade20k", tmp_path / "ade", "train")[0].mask == tmp_path / "ade/annotations/training/x.png"

    _touch(tmp_path / "coco", "train2017/1.jpg", "masks/train2017/1.png", "train2017/2.jpg")
    coco = list_dataset("coco", tmp_path / "coco", "train")
    assert [s.mask for s in coco] == [tmp_path / "coco/masks/train2017/1.png", None]


def test_list_image_folder_is_recursive_and_sorted(tmp_path: Path) -> None:
    _touch(tmp_path, "b/2.JPG", "a.png", "b/1.jpg", "notes.txt")
    samples = list_image_folder(tmp_path)
    assert [s.name for s in samples] == ["a.png", "b/1.jpg", "b/2.JPG"]
    assert all(s.mask is None and s.image.is_absolute() for s in samples)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images"):
        list_image_folder(tmp_path / "empty")
