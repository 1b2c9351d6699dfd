"""The import contract of pyproject's [tool.importlinter]: the layers hold, the library and the DVC stage
commands never import ZenML, and the check fails when a wrong import is planted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

PROJECT = Path(__file__).resolve().parents[1]
PACKAGES = ("unimatch", "steps", "pipelines")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("lint-imports")), "--config", str(root / "pyproject.toml"), "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(root)}  # the packages under root, not the installed ones
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)


def test_the_import_contract_holds() -> None:
    result = lint_imports(PROJECT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("unimatch/settings.py", "from unimatch.engine import trainer", "layers"),
        ("unimatch/models/dpt.py", "from unimatch.config import ExperimentConfig", "layers"),
        ("unimatch/engine/setup.py", "from unimatch import jobs", "layers"),
        ("unimatch/data/io.py", "import zenml", "the library never imports ZenML"),
        ("pipelines/dvc_stages.py", "from steps import train_model", "the DVC stage commands run without ZenML"),
    ],
)
def test_a_planted_wrong_import_breaks_the_contract(tmp_path: Path, module: str, planted: str, contract: str) -> None:
    copy = tmp_path / "project"
    for package in PACKAGES:
        shutil.copytree(PROJECT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "pyproject.toml", copy / "pyproject.toml")
    with open(copy / module, "a", encoding="utf-8") as handle:
        handle.write(f"\n{planted}\n")
    result = lint_imports(copy)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_nothing_config_imports_imports_config_back() -> None:
    graph = grimp.build_graph("unimatch")
    below = graph.find_modules_directly_imported_by("unimatch.config")
    cycles = {module: graph.find_shortest_chain(module, "unimatch.config") for module in below}
    assert below and not any(cycles.values()), cycles


def test_the_code_keeps_the_line_length_and_the_format() -> None:
    """pyproject's [tool.ruff] (line length 120): the library, the steps and the pipelines pass its lint and
    are formatted as `ruff format` writes them."""
    ruff = str(Path(sys.executable).with_name("ruff"))
    for command in ([ruff, "check", *PACKAGES], [ruff, "format", "--check", *PACKAGES]):
        result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
