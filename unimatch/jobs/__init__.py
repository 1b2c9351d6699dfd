"""The application layer: the one place that opens trackers, resolves pre-trained weights, starts torchrun
and publishes models. The command line (:mod:`unimatch.cli`), the ZenML steps (``steps/``) and the DVC
stage commands (``pipelines/dvc_stages.py``) are thin adapters over these jobs.

- :mod:`.units`: the units of work of the table pipelines and the records they hand on;
- :mod:`.training`: a training as a tracked run (pre-trained encoder, torchrun, figures, published model);
- :mod:`.tables`: a paper table as runs (base config, variants, tags), for any orchestrator;
- :mod:`.launch`: the torchrun launch of :mod:`unimatch.engine.worker` ranks.
"""

from .launch import launch_torchrun
from .tables import QUICK_OVERRIDES, Table, Variant, resolve_base, run_tags, slug, split_column, variant_config
from .training import pretraining_needed, run_training, train
from .units import (
    Evaluation,
    FoundationEncoder,
    Predictions,
    PretrainedEncoder,
    ProbeReport,
    PseudoLabelSet,
    ReportFiles,
    SplitFile,
    SplitSet,
    StabilityRanking,
    StaleArtifactError,
    TrainedModel,
    build_report,
    check_runs_exist,
    create_splits,
    data_fingerprint,
    derive,
    evaluate_trained,
    export_predictions,
    pretrain,
    probe_features,
    probe_foundation_encoder,
    pseudo_label,
    rank_stability,
    select_pseudo_labels,
    train_foundation_encoder,
    train_student,
    train_variant,
    unlabeled_pool,
)

__all__ = [
    "QUICK_OVERRIDES",
    "Evaluation",
    "FoundationEncoder",
    "PretrainedEncoder",
    "Predictions",
    "ProbeReport",
    "PseudoLabelSet",
    "ReportFiles",
    "SplitFile",
    "SplitSet",
    "StabilityRanking",
    "StaleArtifactError",
    "Table",
    "TrainedModel",
    "Variant",
    "build_report",
    "check_runs_exist",
    "create_splits",
    "data_fingerprint",
    "derive",
    "evaluate_trained",
    "export_predictions",
    "launch_torchrun",
    "pretrain",
    "pretraining_needed",
    "probe_features",
    "probe_foundation_encoder",
    "pseudo_label",
    "rank_stability",
    "resolve_base",
    "run_tags",
    "run_training",
    "select_pseudo_labels",
    "slug",
    "split_column",
    "train",
    "train_foundation_encoder",
    "train_student",
    "train_variant",
    "unlabeled_pool",
    "variant_config",
]
