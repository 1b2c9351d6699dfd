"""What users of the command line, DVC and MLflow expect from bad input and from the run records: a typo'd
dataset root fails in one line without writing anything, a misspelt key gets a suggestion, every missing
mask is listed, and runs carry the data version DVC pins."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unimatch.data import DataError
from unimatch.data.layouts import list_dataset
from unimatch.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[1]
UNIMATCH = str(Path(sys.executable).with_name("unimatch"))


def _unimatch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store: ./mlflow.db, which must not appear
    return subprocess.run([UNIMATCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A working directory with the project's configs and no data."""
    shutil.copytree(PROJECT / "configs", tmp_path / "configs")
    return tmp_path


def _files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if "configs" not in path.relative_to(root).parts}


@pytest.mark.parametrize("command", ["train", "check-data"])
def test_a_typod_dataset_root_exits_2_in_one_line_and_creates_nothing(checkout: Path, command: str) -> None:
    """Was: `train dataset.root=data/embeded` generated a new embedded dataset there and trained on it, and
    `check-data` on a nonexistent root created it and reported no problems."""
    for root in ("data/embeded", str(checkout / "nonexistent" / "data")):
        result = _unimatch(checkout, command, f"dataset.root={root}")
        assert result.returncode == 2, result.stderr
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert lines == [lines[0]] and lines[0].startswith(f"error: dataset.root={root}: not found"), lines
        assert "unimatch make-data --root" in lines[0]
        assert _files(checkout) == set(), _files(checkout)  # no data, no run folder, no mlflow.db


def test_the_default_root_is_still_generated_on_first_use(tiny_config, tmp_path: Path, monkeypatch) -> None:
    """At its default root (relative to the working directory) the embedded data is written on first use."""
    from unimatch.data.embedded import generate_on_first_use

    monkeypatch.chdir(tmp_path)
    made = []
    generate_on_first_use("data/embedded", "data/embedded", lambda root: made.append(root), "hint")
    generate_on_first_use(tmp_path / "data" / "embedded", "data/embedded", lambda root: made.append(root), "hint")
    assert len(made) == 2
    with pytest.raises(DataError, match=r"dataset.root=data/embeded: not found .*hint"):
        generate_on_first_use("data/embeded", "data/embedded", lambda root: made.append(root), "hint")
    assert len(made) == 2


def test_a_misspelt_key_gets_the_closest_key(checkout: Path) -> None:
    from unimatch.config import load_config

    with pytest.raises(ConfigError) as error:
        load_config(checkout / "configs" / "embedded.yaml", ["train.epoch=2", "dataset.crop_sise=56"])
    message = str(error.value)
    assert "train.epoch: Extra inputs are not permitted (did you mean train.epochs?)" in message
    assert "(did you mean dataset.crop_size?)" in message
    with pytest.raises(ConfigError) as error:
        load_config(checkout / "configs" / "embedded.yaml", ["train.zzzz=2"])
    assert "did you mean" not in str(error.value)  # nothing close: no guess


def test_every_missing_validation_mask_is_listed(folder_dataset: Path) -> None:
    """Was: the first missing mask stopped the listing, so fixing a dataset took one run per file."""
    for name in ("v0", "v2", "v3"):
        (folder_dataset / "masks" / "val" / f"{name}.png").unlink()
    with pytest.raises(DataError) as error:
        list_dataset("folder", folder_dataset, "val")
    message = str(error.value)
    assert message.startswith("3 files not found: ")
    assert all(f"val/{name}.png: mask of validation image" in message for name in ("v0", "v2", "v3"))
    assert "v1.png: mask" not in message


def test_check_data_lists_every_missing_file_of_a_split(folder_dataset: Path, tmp_path: Path) -> None:
    splits = tmp_path / "splits"
    splits.mkdir()
    lines = [f"images/train/t0{index}.png masks/train/t0{index}.png" for index in range(4)]
    (splits / "labeled.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for index in (1, 3):
        (folder_dataset / "masks" / "train" / f"t0{index}.png").unlink()
    from unimatch.data import read_split

    with pytest.raises(DataError) as error:
        read_split(splits / "labeled.txt", folder_dataset)
    message = str(error.value)
    assert message.startswith("2 files not found: ") and "labeled.txt:2:" in message and "labeled.txt:4:" in message


def test_runs_carry_the_data_version_dvc_pins(tmp_path: Path) -> None:
    from unimatch.tracking.naming import data_version

    (tmp_path / "data" / "embedded").mkdir(parents=True)
    assert data_version(tmp_path / "data" / "embedded") is None  # nothing tracks it
    (tmp_path / "data.dvc").write_text(
        "outs:\n- md5: 74cc50b98f218006b048cf85c872d01b.dir\n  path: data\n", encoding="utf-8"
    )
    assert data_version(tmp_path / "data" / "embedded") == "data.dvc:74cc50b98f218006b048cf85c872d01b"
    assert data_version(PROJECT / "data" / "embedded").startswith("data.dvc:")  # the checkout's own


def test_a_bar_in_a_log_ends_on_its_final_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a non-TTY log the evaluation bar (leave=False) stayed at its first line, `0/100`."""
    import io

    from unimatch.utils.progress import progress_bar

    log = io.StringIO()  # not a TTY, like a log file or a scheduler's output
    monkeypatch.setattr(sys, "stderr", log)
    assert sum(progress_bar(range(100), desc="evaluate", unit="img", leave=False)) == 4950
    lines = log.getvalue().splitlines()
    assert "0/100" in lines[0] and "100/100" in lines[-1], lines


def test_undefined_pseudo_label_shares_are_not_logged() -> None:
    """Precision with no confident pixel is undefined: left out of the metrics (was: a NaN the tracker warned
    about, three times per quick run), while the defined shares stay."""
    import math

    from unimatch.engine.inference import PseudoLabelQuality

    quality = PseudoLabelQuality(float("nan"), float("nan"), 0.0, 0.0, 12.5, 0.0, {"disk": float("nan"), "ring": 3.0})
    metrics = quality.metrics()
    assert metrics == {
        "pseudo/foreground_coverage": 0.0,
        "pseudo/foreground_recall": 0.0,
        "pseudo/foreground_accuracy": 12.5,
        "pseudo/mask_ratio": 0.0,
        "pseudo/class_recall/ring": 3.0,
    }
    assert all(math.isfinite(value) for value in metrics.values())


def test_make_venv_installs_what_zenml_login_local_needs() -> None:
    """`zenml login --local` ended in a traceback: the server extra that `zenml stack describe` recommends was
    not installed. `make venv` installs the project's `server` extra, and this environment satisfies every
    requirement of ZenML's own `server` extra."""
    import re
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    install = re.search(r'pip install -q -e "\.\[([a-z,]+)\]"', (PROJECT / "Makefile").read_text(encoding="utf-8"))
    assert install and "server" in install.group(1).split(",")
    missing = []
    for text in requires("zenml") or []:
        requirement = Requirement(text)
        if requirement.marker is None or not requirement.marker.evaluate({"extra": "server"}):
            continue
        if requirement.marker.evaluate({"extra": ""}):  # a core requirement, not the extra's
            continue
        try:
            if not requirement.specifier.contains(version(requirement.name), prereleases=True):
                missing.append(f"{requirement} (have {version(requirement.name)})")
        except PackageNotFoundError:
            missing.append(str(requirement))
    assert not missing, missing


STACK_SCRIPT = """
import json, os
import pipelines
from pipelines.zenml_env import ensure_repository
from zenml.client import Client
from zenml.enums import StackComponentType as Kind

def state():
    client = Client()
    tracker = client.get_stack_component(Kind.EXPERIMENT_TRACKER, "unimatch-mlflow")
    return [client.active_stack_model.name, tracker.configuration["tracking_uri"], sorted(
        kind.value for kind in client.active_stack_model.components)]

ensure_repository()
first = state()
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///elsewhere.db"
Client().activate_stack("default")  # the user's choice
ensure_repository()
print(json.dumps([first, state()]))
"""


def test_the_project_stack_has_the_mlflow_tracker_and_registry(tmp_path: Path) -> None:
    """Registered and activated on first use (was: the default stack, no MLflow component); the tracker follows
    MLFLOW_TRACKING_URI; a stack the user activates afterwards stays active."""
    import json

    env = {key: value for key, value in os.environ.items() if not key.startswith("ZENML_")}
    env.update(HOME=str(tmp_path / "home"), ZENML_REPOSITORY_PATH=str(tmp_path), PYTHONPATH=str(PROJECT),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", STACK_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert first[0] == "unimatch" and first[1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert {"experiment_tracker", "model_registry", "orchestrator", "artifact_store"} <= set(first[2])
    assert (tmp_path / ".zen" / "config.yaml").is_file()  # `zenml init` at the repository root
    assert second[0] == "default" and second[1] == "sqlite:///elsewhere.db"
