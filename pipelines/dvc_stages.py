"""Stage commands of the DVC pipeline (``dvc.yaml``): the Table 5 benchmark, ST and ST++ included, without ZenML.

Each stage runs the same library job as the ZenML pipeline's step (:mod:`unimatch.jobs`; no ZenML
involved), configured from ``params.yaml``, and hands its record to the next stage as a JSON file
that DVC tracks. ``params.yaml`` sections mirror the config: every non-null key there becomes a
config override (``dvc exp run -S train.epochs=2``); null keeps the config file's value, so DVC
trains with the same budget as ``make run``.

    python -m pipelines.dvc_stages foundation | splits | pretrain | train METHOD | evaluate METHOD | report
    python -m pipelines.dvc_stages st_teacher | st_pseudo_teacher | st_stability | st_select | st_train STUDENT
                                   | st_pseudo_round1 | st_evaluate STUDENT      (STUDENT: st, stpp_round1, stpp)
    python -m pipelines.dvc_stages change_detection     (Table 14, params.yaml section change_detection)
    python -m pipelines.dvc_stages classification       (Tables 15-17's layout, params.yaml section classification)

Every output lives in git (``cache: false``), so a fresh clone's ``dvc status`` is clean: a finished training
keeps ``best.pth`` (and its snapshots), not the resume state ``latest*.pth``, which DVC never uses (it re-runs
a stage from scratch) and which would triple what git holds.

The ST / ST++ stages mirror ``pipelines/self_training.py``; their teacher is a labeled-only training of its
own (tagged ``stage=teacher``, keeping 3 snapshots), so the Table 5 row of labeled-only stays ``train@labeled_only``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from unimatch import jobs
from unimatch.apps.foundation import load_foundation_config
from unimatch.config import ExperimentConfig, flatten, validate
from unimatch.errors import ConfigError, run_guarded
from unimatch.jobs import (
    Evaluation,
    PretrainedEncoder,
    PseudoLabelSet,
    SplitSet,
    StabilityRanking,
    Table,
    TrainedModel,
    Variant,
    resolve_base,
    run_tags,
    split_column,
    variant_config,
)
from unimatch.jobs.classification import run_benchmark as run_classification_benchmark
from unimatch.utils.atomic import write_text_atomic

PARAMS_FILE = Path("params.yaml")
RecordT = TypeVar("RecordT", bound=BaseModel)
TABLE = "table5"
# ST / ST++ students: (method, pseudo-label stages they learn from, extra tags); stpp_round1 stays out of the table.
STUDENTS = {
    "st": ("st", ("st_pseudo_teacher",), {}),
    "stpp_round1": ("st++", ("st_pseudo_reliable",), {"stage": "round 1"}),
    "stpp": ("st++", ("st_pseudo_reliable", "st_pseudo_round1"), {}),
}
REPORTED_STUDENTS = ("st", "stpp")
SNAPSHOTS = 3  # ST++'s K


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
        rows = [*self.methods, *(STUDENTS[s][0] for s in REPORTED_STUDENTS)]
        self.table = Table(TABLE, "methods", rows, split_column(self.base))
        self.tags = run_tags(self.base, self.table)
        self.outputs = Path("outputs") / self.experiment

    @property
    def splits_file(self) -> Path:
        return Path(self.base["split"]["dir"]) / "splits.json"

    @property
    def encoder_file(self) -> Path:
        return Path(self.base["pretrain"]["dir"]) / "encoder.json"

    def run_dir(self, method: str) -> str:
        return f"runs/{self.experiment}/{method}"

    def model_file(self, method: str) -> Path:
        return Path(self.run_dir(method)) / "checkpoints" / "model.json"

    def eval_dir(self, method: str) -> Path:
        return self.outputs / "eval" / method

    def config(self, method: str, output_dir: str, *settings: str) -> dict[str, Any]:
        """The method's config, in a fixed directory: DVC clears a stage's outputs before re-running it,
        so no stale checkpoint can be resumed (the ZenML pipeline keys its directories instead)."""
        config = variant_config(self.base, Variant(method, [f"method.name={method}", *settings]))
        config["output_dir"] = output_dir
        return config

    def st_dir(self, name: str) -> Path:
        """Where an ST / ST++ stage writes (runs/<experiment>/st/<stage>)."""
        return Path("runs") / self.experiment / "st" / name

    @property
    def teacher_config(self) -> ExperimentConfig:
        return validate(self.config("labeled_only", str(self.st_dir("teacher")), f"train.snapshots={SNAPSHOTS}"))

    def record(self, name: str) -> Path:
        """The JSON record an ST / ST++ stage hands on (inside its output directory)."""
        return self.st_dir(name) / "record.json"


def _write(path: Path, record: BaseModel) -> None:
    write_text_atomic(path, record.model_dump_json(indent=2) + "\n")


def _write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Numbers only: DVC shows every leaf of a metrics file, paths and run ids included."""
    write_text_atomic(path, json.dumps(metrics, indent=2) + "\n")


def _drop_resume_state(run_dir: str | Path) -> None:
    """A finished training's ``latest.pth`` / ``latest.prev.pth``: not a stage output (see the module doc)."""
    for path in (Path(run_dir) / "checkpoints").glob("latest*.pth"):
        path.unlink()


def _clear(run_dir: Path) -> None:
    """A stage's working directory that is not one of its DVC outputs (DVC clears those itself): cleared
    before the stage runs, so no stale checkpoint of an earlier run is resumed."""
    shutil.rmtree(run_dir, ignore_errors=True)


def _read(model: type[RecordT], path: Path) -> RecordT:
    return model.model_validate_json(path.read_text(encoding="utf-8"))


def foundation(params: dict[str, Any]) -> None:
    """Rebuild the shipped foundation encoder (its outputs are committed to git: ``cache: false``)."""
    settings = load_foundation_config(params["foundation_config"])
    report = jobs.probe_foundation_encoder(jobs.train_foundation_encoder(settings), settings.probe)
    print(report.table())


def splits(stage: Stage) -> None:
    _write(stage.splits_file, jobs.create_splits(validate(stage.base)))


def pretrain(stage: Stage) -> None:
    """Pre-train the shared encoder; ``encoder.json`` names it (null when the config needs none)."""
    encoder = None
    base = validate(stage.base)
    if jobs.pretraining_needed(base):
        encoder = jobs.pretrain(_read(SplitSet, stage.splits_file), base, stage.tags).model_dump()
    write_text_atomic(stage.encoder_file, json.dumps(encoder, indent=2) + "\n")


def _encoder(stage: Stage) -> PretrainedEncoder | None:
    """The pretrain stage's encoder (None when the config pre-trains none)."""
    record = json.loads(stage.encoder_file.read_text(encoding="utf-8"))
    return None if record is None else PretrainedEncoder.model_validate(record)


def train(stage: Stage, method: str) -> None:
    config = validate(stage.config(method, stage.run_dir(method)))
    model = jobs.train_variant(_read(SplitSet, stage.splits_file), config, method, stage.tags, encoder=_encoder(stage))
    _drop_resume_state(model.run_dir)
    _write(stage.model_file(method), model)
    _write_metrics(stage.outputs / "train" / f"{method}.json", model.metrics)


def evaluate(stage: Stage, method: str) -> None:
    # Its figures go beside its metrics, not into the training stage's outputs.
    config = validate(stage.config(method, str(stage.eval_dir(method))))
    model = _read(TrainedModel, stage.model_file(method))
    evaluation = jobs.evaluate_trained(model, _read(SplitSet, stage.splits_file), config, stage.tags)
    _write(stage.eval_dir(method).with_suffix(".evaluation.json"), evaluation)
    _write_metrics(
        stage.eval_dir(method).with_suffix(".json"),
        {"miou": evaluation.miou, "per_class_iou": evaluation.per_class_iou},
    )


def report(stage: Stage) -> None:
    evaluations = [
        _read(Evaluation, stage.eval_dir(m).with_suffix(".evaluation.json"))
        for m in (*stage.methods, *REPORTED_STUDENTS)
    ]
    jobs.build_report(
        evaluations,
        None,
        stage.experiment,
        stage.table.layout,
        str(stage.outputs / "report"),
        stage.tags,
        stage.table.rows,
        stage.table.cols,
    )


def st_teacher(stage: Stage) -> None:
    model = jobs.train_variant(
        _read(SplitSet, stage.splits_file), stage.teacher_config, "teacher", {**stage.tags, "stage": "teacher"}
    )
    _drop_resume_state(model.run_dir)
    _write(stage.record("teacher"), model)


def st_pseudo_teacher(stage: Stage) -> None:
    splits = _read(SplitSet, stage.splits_file)
    pseudo = jobs.pseudo_label(
        _read(TrainedModel, stage.record("teacher")),
        splits.unlabeled,
        stage.teacher_config,
        "teacher",
        str(stage.st_dir("st_pseudo_teacher")),
    )
    _write(stage.record("st_pseudo_teacher"), pseudo)
    _write_metrics(stage.outputs / "pseudo_labels" / "teacher.json", {"miou": pseudo.miou})


def st_stability(stage: Stage) -> None:
    ranking = jobs.rank_stability(
        _read(TrainedModel, stage.record("teacher")),
        _read(SplitSet, stage.splits_file).unlabeled,
        stage.teacher_config,
        str(stage.outputs / "stability"),
    )
    _write(stage.outputs / "stability" / "stability.json", ranking)


def st_select(stage: Stage) -> None:
    ranking = _read(StabilityRanking, stage.outputs / "stability" / "stability.json")
    pseudo = jobs.select_pseudo_labels(
        _read(PseudoLabelSet, stage.record("st_pseudo_teacher")),
        ranking.reliable,
        stage.teacher_config,
        "reliable",
        str(stage.st_dir("st_pseudo_reliable")),
    )
    _write(stage.record("st_pseudo_reliable"), pseudo)


def st_student_config(stage: Stage, student: str) -> ExperimentConfig:
    return validate(stage.config(STUDENTS[student][0], str(stage.st_dir(student))))


def st_train(stage: Stage, student: str) -> None:
    method, sources, tags = STUDENTS[student]
    pseudo = [_read(PseudoLabelSet, stage.record(source)) for source in sources]
    model = jobs.train_student(
        _read(SplitSet, stage.splits_file),
        pseudo,
        st_student_config(stage, student),
        method,
        {**stage.tags, **tags},
        keyed_dir=False,
    )
    _drop_resume_state(model.run_dir)
    _write(stage.record(student), model)
    _write_metrics(stage.outputs / "train" / f"{student}.json", model.metrics)


def st_pseudo_round1(stage: Stage) -> None:
    ranking = _read(StabilityRanking, stage.outputs / "stability" / "stability.json")
    pseudo = jobs.pseudo_label(
        _read(TrainedModel, stage.record("stpp_round1")),
        ranking.unreliable,
        st_student_config(stage, "stpp_round1"),
        "round 1",
        str(stage.st_dir("st_pseudo_round1")),
    )
    _write(stage.record("st_pseudo_round1"), pseudo)
    _write_metrics(stage.outputs / "pseudo_labels" / "round1.json", {"miou": pseudo.miou})


def st_evaluate(stage: Stage, student: str) -> None:
    config = validate(stage.config(STUDENTS[student][0], str(stage.eval_dir(student))))
    evaluation = jobs.evaluate_trained(
        _read(TrainedModel, stage.record(student)), _read(SplitSet, stage.splits_file), config, stage.tags
    )
    _write(stage.eval_dir(student).with_suffix(".evaluation.json"), evaluation)
    _write_metrics(
        stage.eval_dir(student).with_suffix(".json"),
        {"miou": evaluation.miou, "per_class_iou": evaluation.per_class_iou},
    )


ST_STAGES = {
    "st_teacher": st_teacher,
    "st_pseudo_teacher": st_pseudo_teacher,
    "st_stability": st_stability,
    "st_select": st_select,
    "st_pseudo_round1": st_pseudo_round1,
}
ST_STUDENT_STAGES = {"st_train": st_train, "st_evaluate": st_evaluate}


def change_detection(params: dict[str, Any]) -> None:
    """Table 14 (``pipelines/change_detection.py`` without ZenML): splits, each method's training and
    evaluation, the report, overlays of the last method on the evaluation pairs, and ``metrics.json``. Its
    checkpoints (runs/<experiment>, registered in MLflow) feed no other stage and are not DVC outputs."""
    settings = params["change_detection"]
    base = resolve_base(settings["config"], [], False, settings["experiment"], "table14")
    experiment, methods = base["tracking"]["experiment"], list(settings["methods"])
    _clear(Path("runs") / experiment)
    table = Table("table14", "change", methods, split_column(base))
    tags, outputs = run_tags(base, table), Path("outputs") / experiment
    splits = jobs.create_splits(validate(base))
    evaluations, metrics, model = [], {}, None
    for method in methods:
        config = variant_config(base, Variant(method, [f"method.name={method}"]))
        config["output_dir"] = f"runs/{experiment}/{method}"  # fixed: DVC clears it before a re-run
        model = jobs.train_variant(splits, validate(config), method, tags)
        evaluations.append(
            jobs.evaluate_trained(
                model, splits, validate({**config, "output_dir": str(outputs / "eval" / method)}), tags
            )
        )
        metrics[method] = {key: model.metrics[key] for key in CHANGE_METRICS}
    jobs.build_report(
        evaluations, None, experiment, table.layout, str(outputs / "report"), tags, table.rows, table.cols
    )
    root = Path(base["dataset"]["root"])
    jobs.export_predictions(
        model,
        validate(base),
        str(root / "A"),
        str(outputs / "predictions" / methods[-1]),
        16,
        str(root / "label"),
        second_dir=str(root / "B"),
        split_file=splits.val.path,
    )
    _write_metrics(outputs / "metrics.json", metrics)


def classification(params: dict[str, Any]) -> None:
    """The classification benchmark (``unimatch classification``) into outputs/<experiment>; its checkpoints
    (runs/<experiment>, registered in MLflow) feed no other stage and are not DVC outputs."""
    settings = params["classification"]
    experiment = settings["experiment"]
    _clear(Path("runs") / experiment)
    overrides = [f"tracking.experiment={experiment}", f"output_dir=runs/{experiment}"]
    _, markdown = run_classification_benchmark(settings["config"], overrides, out_dir=f"outputs/{experiment}")
    print(markdown)


# Table 14's numbers of each method, as dvc metrics show them: the student's best epoch (IoU_c, and the OA / F1 of
# that epoch) and the EMA's.
CHANGE_METRICS = (
    "best_iou_changed_student",
    "best_overall_accuracy_student",
    "best_f1_changed_student",
    "best_iou_changed_ema",
    "best_overall_accuracy_ema",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DVC stage commands (see dvc.yaml).")
    parser.add_argument(
        "stage",
        choices=(
            "foundation",
            "splits",
            "pretrain",
            "train",
            "evaluate",
            "report",
            "change_detection",
            "classification",
            *ST_STAGES,
            *ST_STUDENT_STAGES,
        ),
    )
    parser.add_argument(
        "method", nargs="?", help="the method of a train / evaluate stage; the student of st_train / st_evaluate"
    )
    args = parser.parse_args(argv)
    if not PARAMS_FILE.is_file():
        raise ConfigError(f"{PARAMS_FILE}: not found in {Path.cwd()}; run the stages from the project root (dvc repro)")
    params = yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8"))
    own_sections = {"foundation": foundation, "change_detection": change_detection, "classification": classification}
    if args.stage in own_sections:  # their own params.yaml sections
        own_sections[args.stage](params)
        return
    stage = Stage(params)
    if args.stage in ST_STAGES:
        ST_STAGES[args.stage](stage)
    elif args.stage in ST_STUDENT_STAGES:
        if args.method not in STUDENTS:
            parser.error(f"{args.stage} needs one of the students {list(STUDENTS)}")
        ST_STUDENT_STAGES[args.stage](stage, args.method)
    elif args.stage in ("train", "evaluate"):
        if args.method not in stage.methods:
            parser.error(f"{args.stage} needs one of the params.yaml methods {stage.methods}")
        (train if args.stage == "train" else evaluate)(stage, args.method)
    else:
        {"splits": splits, "pretrain": pretrain, "report": report}[args.stage](stage)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
