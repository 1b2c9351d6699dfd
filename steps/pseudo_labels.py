"""ST / ST++ steps: pseudo-labelling, the stability ranking, and student training (typed adapters over
:mod:`unimatch.jobs`)."""

from __future__ import annotations

from typing import Annotated

from zenml import step

from unimatch import jobs
from unimatch.config import ExperimentConfig

from .artifacts import PseudoLabelSet, SplitFile, SplitSet, StabilityRanking, TrainedModel
from .cache import LIBRARY_CACHE_POLICY
from .tracking import store_uri, with_run_tags
from .train import MATERIALIZER


@step(cache_policy=LIBRARY_CACHE_POLICY)
def pseudo_label_images(
    model: TrainedModel, images: SplitFile, config: ExperimentConfig, name: str, out_dir: str
) -> Annotated[PseudoLabelSet, "pseudo_labels"]:
    """Hard pseudo labels of ``images`` by ``model`` with multi-scale + flip test-time augmentation, as
    palette PNGs and a split file under ``out_dir``; their mIoU against ground truth where it exists."""
    return jobs.pseudo_label(model, images, config, name, out_dir)


@step
def unlabeled_images(splits: SplitSet) -> Annotated[SplitFile, "images"]:
    """The unlabeled split file of ``splits`` (what the teacher labels)."""
    return splits.unlabeled


@step(cache_policy=LIBRARY_CACHE_POLICY)
def rank_by_stability(
    teacher: TrainedModel, images: SplitFile, config: ExperimentConfig, out_dir: str
) -> tuple[
    Annotated[SplitFile, "reliable"], Annotated[SplitFile, "unreliable"], Annotated[StabilityRanking, "stability"]
]:
    """ST++'s reliable / unreliable halves of ``images`` and the label-next list (CSV and contact sheet)."""
    ranking = jobs.rank_stability(teacher, images, config, out_dir)
    return ranking.reliable, ranking.unreliable, ranking


@step(cache_policy=LIBRARY_CACHE_POLICY)
def select_pseudo_labels(
    pseudo: PseudoLabelSet, images: SplitFile, config: ExperimentConfig, name: str, out_dir: str
) -> Annotated[PseudoLabelSet, "pseudo_labels"]:
    """The pseudo labels of ``images`` only, copied to ``out_dir`` (ST++'s reliable half keeps the teacher's labels)."""
    return jobs.select_pseudo_labels(pseudo, images, config, name, out_dir)


@step(cache_policy=LIBRARY_CACHE_POLICY, output_materializers=MATERIALIZER)
def train_student(
    splits: SplitSet, pseudo_labels: list[PseudoLabelSet], config: ExperimentConfig, name: str, tags: dict[str, str]
) -> Annotated[TrainedModel, "model"]:
    """An ST / ST++ student, re-initialised (from ``model.weights``, never the teacher), on the labeled split
    and ``pseudo_labels``."""
    return jobs.train_student(splits, pseudo_labels, config, name, with_run_tags(tags), tracking_uri=store_uri())
