"""ZenML steps: thin, typed adapters over the ``unimatch`` library (no training logic here)."""

from .data import make_unlabeled_pool
from .evaluate import evaluate_model
from .foundation import probe_foundation_encoder, train_foundation_encoder
from .predict import export_predictions
from .pretrain import pretrain_encoder
from .pseudo_labels import pseudo_label_images, rank_by_stability, select_pseudo_labels, train_student, unlabeled_images
from .report import build_report
from .splits import create_splits
from .train import train_model

__all__ = [
    "build_report",
    "create_splits",
    "evaluate_model",
    "export_predictions",
    "make_unlabeled_pool",
    "pretrain_encoder",
    "pseudo_label_images",
    "rank_by_stability",
    "select_pseudo_labels",
    "probe_foundation_encoder",
    "train_foundation_encoder",
    "train_model",
    "train_student",
    "unlabeled_images",
]
