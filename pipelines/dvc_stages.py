"""Stage commands of the DVC pipeline (``dvc.yaml``): the Table 5 benchmark without ZenML.

Each stage runs the same library job as the ZenML pipeline's step (:mod:`unimatch.jobs`; no ZenML
involved), configured from ``params.yaml``, and hands its record to the next stage as a JSON file
that DVC tracks. ``params.yaml`` sections mirror the config: every non-null key there becomes a
config override (``dvc exp run -S train.epochs=2``); null keeps the config file's value, so DVC
trains with the same budget as ``make run``.

    python -m pipelines.dvc_stages foundation | splits | pretrain | train METHOD | evaluate METHOD | report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from unimatch import jobs
from unimatch.config import ConfigError, ExperimentConfig, flatten, validate
from unimatch.errors import run_guarded
from unimatch.foundation import load_foundation_config
from unimatch.io_atomic import write_text_atomic
from unimatch.jobs import Evaluation, SplitSet, TrainedModel

from .common import Table, Variant, needs_pretraining, resolve_base, run_tags, split_column, variant_config

PARAMS_FILE = Path("params.yaml")
RecordT = TypeVar("RecordT", bound=BaseModel)
TABLE = "table5"


class Stage:
    """Paths and configs of one ``params.yaml`` state (what dvc.yaml templates with ${experiment})."""

    def __init__(self, params: dict[str, Any]) -> None:
        sections = {key: value for key, value in params.items() if key in ExperimentConfig.model_fields}
        overrides = [f"{key}={json.dumps(value)}" for key, value in flatten(sections).items() if value is not None]
        self.methods: list[str] = list(params["methods"])
        # The pre-trained encoder lands in the pretrain stage's output directory, where DVC tracks it.
        overrides.append(f"pretrain.dir=runs/{params['experiment']}/pretrain")
        self.base = resolve_base(params["config"], overrides, False, params["experiment"], TABLE)
        self.experiment: str = self.base["tracking"]["experiment"]
        self.table = Table(TABLE, "methods", self.methods, split_column(self.base))
        self.tags = run_tags(self.base, self.table)
        self.outputs = Path("outputs") / self.experiment

    @property
    def splits_file(self) -> Path:
        return Path(self.base["split"]["dir"]) / "splits.json"

    def run_dir(self, method: str) -> str:
        return f"runs/{self.experiment}/{method}"

    def model_file(self, method: str) -> Path:
        return Path(self.run_dir(method)) / "checkpoints" / "model.json"

    def eval_dir(self, method: str) -> Path:
        return self.outputs / "eval" / method

    def config(self, method: str, output_dir: str) -> dict[str, Any]:
        """The method's config, in a fixed directory: DVC clears a stage's outputs before re-running it,
        so no stale checkpoint can be resumed (the ZenML pipeline keys its directories instead)."""
        config = variant_config(self.base, Variant(method, [f"method.name={method}"]))
        config["output_dir"] = output_dir
        return config


def _write(path: Path, record: BaseModel) -> None:
    write_text_atomic(path, record.model_dump_json(indent=2) + "\n")


def _write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Numbers only: DVC shows every leaf of a metrics file, paths and run ids included."""
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")


def _read(model: type[RecordT], path: Path) -> RecordT:
    return model.model_validate_json(path.read_text(encoding="utf-8"))


def foundation(params: dict[str, Any]) -> None:
    """Rebuild the shipped foundation encoder (its outputs are committed to git: ``cache: false``)."""
    jobs.train_foundation_encoder(load_foundation_config(params["foundation_config"]))


def splits(stage: Stage) -> None:
    _write(stage.splits_file, jobs.create_splits(validate(stage.base)))


def pretrain(stage: Stage) -> None:
    """Pre-train the shared encoder; ``encoder.json`` names it (null when the config needs none)."""
    encoder = None
    if needs_pretraining(stage.base):
        encoder = jobs.pretrain(_read(SplitSet, stage.splits_file), validate(stage.base), stage.tags).model_dump()
    write_text_atomic(Path(stage.base["pretrain"]["dir"]) / "encoder.json", json.dumps(encoder, indent=2) + "\n")


def train(stage: Stage, method: str) -> None:
    config = validate(stage.config(method, stage.run_dir(method)))
    model = jobs.train_variant(_read(SplitSet, stage.splits_file), config, method, stage.tags)
    _write(stage.model_file(method), model)
    _write_metrics(stage.outputs / "train" / f"{method}.json", model.metrics)


def evaluate(stage: Stage, method: str) -> None:
    # Its figures go beside its metrics, not into the training stage's outputs.
    config = validate(stage.config(method, str(stage.eval_dir(method))))
    model = _read(TrainedModel, stage.model_file(method))
    evaluation = jobs.evaluate_trained(model, _read(SplitSet, stage.splits_file), config, stage.tags)
    _write(stage.eval_dir(method).with_suffix(".evaluation.json"), evaluation)
    _write_metrics(stage.eval_dir(method).with_suffix(".json"), {"miou": evaluation.miou, "per_class_iou": evaluation.per_class_iou})


def report(stage: Stage) -> None:
    evaluations = [_read(Evaluation, stage.eval_dir(m).with_suffix(".evaluation.json")) for m in stage.methods]
    jobs.build_report(evaluations, None, stage.experiment, stage.table.layout, str(stage.outputs / "report"),
                      stage.tags, stage.table.rows, stage.table.cols)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DVC stage commands (see dvc.yaml).")
    parser.add_argument("stage", choices=("foundation", "splits", "pretrain", "train", "evaluate", "report"))
    parser.add_argument("method", nargs="?", help="the method of a train / evaluate stage")
    args = parser.parse_args(argv)
    if not PARAMS_FILE.is_file():
        raise ConfigError(f"{PARAMS_FILE}: not found in {Path.cwd()}; run the stages from the project root (dvc repro)")
    params = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    if args.stage == "foundation":
        foundation(params)
        return
    stage = Stage(params)
    if args.stage in ("train", "evaluate"):
        if args.method not in stage.methods:
            parser.error(f"{args.stage} needs one of the params.yaml methods {stage.methods}")
        (train if args.stage == "train" else evaluate)(stage, args.method)
    else:
        {"splits": splits, "pretrain": pretrain, "report": report}[args.stage](stage)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
