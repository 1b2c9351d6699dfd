"""ST and ST++ (the seeds' first peer, SPEC §11) as a multi-stage pipeline, with the label-next list.

    python -m pipelines.self_training [--quick] [--no-cache] [key=value ...]
    zenml pipeline run pipelines.self_training.self_training -c configs/zenml/self_training.yaml

Stages, each a cached step (re-running skips every unchanged one):
1. teacher: labeled-only on the labeled split, keeping 3 evenly spaced snapshots (the last = final model);
2. its pseudo labels of every unlabeled image (5 scales x flip, no threshold) → the ST student, re-initialised,
   on labeled ∪ pseudo-labelled images (strong augmentation and CutOut on the latter);
3. ST++: the unlabeled images ranked by how much the teacher's snapshots agree with its final model; the
   least stable ones also written as ``label_next.csv`` / ``label_next.png`` (what to annotate next);
4. ST++ round 1: a student on labeled ∪ the reliable (most stable) half, the teacher's labels;
5. its pseudo labels of the other half → the ST++ student on labeled ∪ both halves.
The teacher, ST and ST++ are evaluated and reported as Table 5 rows (``outputs/<experiment>/methods.*``);
the round-1 student is tagged ``stage=round 1`` and stays out of the table.
"""

from __future__ import annotations

from zenml import pipeline

from steps import (
    build_report,
    create_splits,
    evaluate_model,
    pseudo_label_images,
    rank_by_stability,
    select_pseudo_labels,
    train_model,
    train_student,
    unlabeled_images,
)
from steps.image import PROJECT_IMAGE
from steps.tracking import store_uri, tracker_step_options
from unimatch.config import validate
from unimatch.jobs import Table, Variant, resolve_base, run_tags, split_column, variant_config

from .cli import run_main
from .common import DEFAULT_CONFIG, train_options

ROWS = ["labeled_only", "st", "st++"]
SNAPSHOTS = 3  # ST++'s K: the teacher at T/3, 2T/3 and T iterations


@pipeline(name="self_training", settings={"docker": PROJECT_IMAGE})
def self_training(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
) -> None:
    """teacher → pseudo labels → ST; stability → reliable half → ST++ round 1 → pseudo labels of the rest → ST++."""
    base = resolve_base(config, overrides, quick, experiment, "self-training")
    table = Table("self-training", "methods", ROWS, split_column(base))
    experiment, tags = base["tracking"]["experiment"], run_tags(base, table)
    trainer = train_model.with_options(**train_options(experiment, tags, gpu_count))
    student = train_student.with_options(**train_options(experiment, tags, gpu_count))
    evaluator = evaluate_model.with_options(**tracker_step_options(experiment, tags))
    runs = f"runs/{experiment}"

    def variant(name: str, *settings: str):
        return validate(variant_config(base, Variant(name, list(settings))))

    splits = create_splits(config=validate(base))
    unlabeled = unlabeled_images(splits)
    teacher_cfg = variant("labeled_only", "method.name=labeled_only", f"train.snapshots={SNAPSHOTS}")
    teacher = trainer(splits, teacher_cfg, "labeled_only", tags, id="train_teacher")
    teacher_labels = pseudo_label_images(
        teacher, unlabeled, teacher_cfg, "teacher", f"{runs}/pseudo/teacher", id="pseudo_label_all"
    )
    st_cfg = variant("st", "method.name=st")
    st = student(splits, [teacher_labels], st_cfg, "st", tags, id="train_st")

    reliable, unreliable, _ = rank_by_stability(teacher, unlabeled, teacher_cfg, f"outputs/{experiment}/stability")
    reliable_labels = select_pseudo_labels(teacher_labels, reliable, teacher_cfg, "reliable", f"{runs}/pseudo/reliable")
    stpp_cfg = variant("st++", "method.name=st++")
    round_one = student(
        splits, [reliable_labels], stpp_cfg, "st++ round 1", {**tags, "stage": "round 1"}, id="train_stpp_round1"
    )
    rest_labels = pseudo_label_images(
        round_one, unreliable, stpp_cfg, "round 1", f"{runs}/pseudo/round1", id="pseudo_label_unreliable"
    )
    stpp = student(splits, [reliable_labels, rest_labels], stpp_cfg, "st++", tags, id="train_stpp")

    evaluations = [
        evaluator(model, splits, cfg, tags, id=f"evaluate_{name}")
        for name, model, cfg in (("teacher", teacher, teacher_cfg), ("st", st, st_cfg), ("stpp", stpp, stpp_cfg))
    ]
    build_report(
        evaluations, store_uri(), experiment, table.layout, f"outputs/{experiment}", tags, table.rows, table.cols
    )


if __name__ == "__main__":
    run_main(self_training, "ST and ST++: offline self-training in stages, with the label-next list.")
