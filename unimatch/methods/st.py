"""ST and ST++ students (SPEC §11): plain cross-entropy on the labeled images and on pseudo-labelled ones,
the latter strongly augmented with CutOut. The stages that make the pseudo labels (a supervised teacher,
test-time-augmented labelling, ST++'s stability ranking) are :mod:`unimatch.apps.pseudo_labels`; a student
only reads their split files (``method.pseudo_labels``) and starts from the configured initial weights,
never from the teacher (re-initialised, as the paper)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field
from torch.utils.data import ConcatDataset, Dataset

from ..data import LabeledDataset, Sample, StrongLabeledDataset, read_pseudo_labels
from ..errors import ConfigError
from ..settings import MethodSettings
from .base import Pools, Schedule, register_method
from .labeled_only import LabeledOnly

if TYPE_CHECKING:
    from ..tasks import SegmentationTask as Task


class SelfTrainingSettings(MethodSettings):
    # split files of pseudo-labelled images (image relative to dataset.root, pseudo mask to the file's folder),
    # written by the pseudo-labelling stage of `python -m pipelines.self_training`
    pseudo_labels: list[str] = Field(default_factory=list)


@register_method("st", "ST")
class SelfTraining(LabeledOnly):
    Settings = SelfTrainingSettings
    staged = True
    tasks = ("segmentation",)  # its pseudo-label stages write class masks of single images

    def labeled_dataset(self, labeled: Sequence[Sample], root: str, nclass: int, crop: int, task: Task) -> Dataset:
        """The labeled list repeated ceil(|U| / |L|) times, then the pseudo-labelled images (the reference's
        dataset: about as many labeled as pseudo-labelled samples, drawn uniformly)."""
        if not self.cfg.pseudo_labels:
            raise ConfigError(
                f"method.pseudo_labels: {self.name} trains on pseudo labels; make them with "
                "`python -m pipelines.self_training` (or list split files of image + pseudo mask)"
            )
        pseudo = [sample for path in self.cfg.pseudo_labels for sample in read_pseudo_labels(path, root)]
        repeats = math.ceil(len(pseudo) / len(labeled))
        return ConcatDataset(
            [
                LabeledDataset(list(labeled) * repeats, nclass, crop),
                StrongLabeledDataset(pseudo, nclass, crop, cutout=True),
            ]
        )

    def schedule(self, pools: Pools, batch: int, world: int) -> Schedule:
        """One pass over that dataset per epoch, with labeled-only's doubled batch."""
        return Schedule(
            pools.labeled_set // (2 * batch * world),
            2 * batch,
            pools.labeled_set,
            f"labeled and pseudo-labelled samples ({', '.join(self.cfg.pseudo_labels)})",
        )


@register_method("st++", "ST++")
class SelfTrainingPlusPlus(SelfTraining):
    """The same student; ST++ differs in which pseudo labels it is given (reliable images first, then all)."""
