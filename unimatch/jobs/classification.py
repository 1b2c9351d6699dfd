"""The semi-supervised classification benchmark (SPEC §9, Tables 15-17) as jobs: per-class splits per seed,
one tracked training per method and seed on the shared engine, an evaluation of each best EMA model (top-1,
top-5, and the final pseudo-label quality: confident share, precision), and the report in the tables' layout
(seed columns, mean last) as markdown, CSV and a figure.

The ZenML pipeline (``pipelines/classification.py``) and the DVC stage (``unimatch classification``) compose
these; neither holds logic of its own.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ..config import ExperimentConfig, follow_method_name, load_config, validate
from ..data.classification import ClassificationEval, read_split, read_subset
from ..engine.classification import classification_splits
from ..engine.data import split_folder
from ..engine.evaluate import checkpoint_model
from ..engine.inference import pseudo_label_quality
from ..engine.setup import resolve_device
from ..errors import ConfigError
from ..figures import plot_seed_means
from ..methods import METHODS
from ..settings import scoring_threshold
from ..tasks import task_for
from ..utils.atomic import write_text_atomic
from .training import run_training

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "configs/classification/embedded.yaml"
# The table's rows: a registered method, or a registered method with options (FixMatch + DA is FixMatch with
# method.distribution_alignment), with its label.
VARIANTS = {
    "labeled_only": ("labeled_only", (), "supervised-only"),
    "fixmatch": ("fixmatch", (), "FixMatch"),
    "fixmatch_da": ("fixmatch", ("distribution_alignment",), "FixMatch + DA"),
    "unimatch_v2": ("unimatch_v2", (), "UniMatch V2"),
}
DEFAULT_METHODS = tuple(VARIANTS)
DEFAULT_SEEDS = (0, 1)
# --quick: one seed, a few iterations per method (the pipeline end to end in about a minute on 2 cores)
QUICK_OVERRIDES = ("train.max_iters=8", "train.epochs=1", "eval.pseudo_label_images=100")
QUICK_SEEDS = (0,)
TABLE_TAGS = {"table": "classification"}  # on every run of the benchmark
TOP5_CLASSES = 100


def report_title(base: dict[str, Any]) -> str:
    return f"{base['dataset']['name']}: semi-supervised classification"


def reports_top5(base: dict[str, Any]) -> bool:
    """Top-5 is reported beside top-1 for many classes (Table 18: ImageNet-1K), not for 10 or fewer."""
    return base["dataset"]["nclass"] >= TOP5_CLASSES


def classification_methods() -> list[str]:
    """The rows a classification table may have: the variants, then the other registered methods defined for
    classification (their registry declaration)."""
    defined = [name for name, cls in METHODS.items() if "classification" in cls.tasks and not cls.staged]
    return [*VARIANTS, *(name for name in defined if name not in VARIANTS)]


def variant(name: str) -> tuple[str, tuple[str, ...], str]:
    """(registered method, its boolean options switched on, report label) of a table row."""
    return VARIANTS.get(name) or (name, (), METHODS.entry(name).label)


@dataclass
class ClassificationResult:
    """One method and seed: the best EMA model's evaluation and its pseudo labels' quality (percent)."""

    method: str
    seed: int
    top1: float  # the best EMA checkpoint's top-1 on the test subset
    top5: float
    confident_share: float  # unlabeled images whose pseudo label clears the threshold
    precision: float  # of those, the share whose pseudo label is right
    best_top1_during_training: float  # the training's best EMA evaluation (the logs' "best eval accuracy")
    checkpoint: str
    run_id: str | None


def benchmark_base(config: str, overrides: list[str], quick: bool) -> dict[str, Any]:
    """The benchmark's base config (validated, as a dict) with ``overrides`` and the quick budget."""
    cfg = load_config(config, [*(QUICK_OVERRIDES if quick else ()), *overrides])
    if task_for(cfg.dataset.name).name != "classification":
        raise ConfigError(f"dataset.name: {cfg.dataset.name} is not a classification dataset")
    return cfg.to_dict()


def run_config(base: dict[str, Any], row: str, seed: int) -> ExperimentConfig:
    """``base`` for one row (:func:`variant`) and seed: the seed draws the labeled split and the training's
    randomness; each run writes under ``<base output_dir>/<row>-seed<seed>``, the seed's splits under
    ``splits/``."""
    method, options, _ = variant(row)
    tree = {**base}
    root = Path(base["output_dir"])
    tree["split"] = {**base["split"], "seed": seed, "dir": str(root / "splits" / f"seed{seed}")}
    tree["train"] = {**base["train"], "seed": seed}
    tree["output_dir"] = str(root / f"{row}-seed{seed}")
    tree["method"] = {**follow_method_name(base["method"], method), **dict.fromkeys(options, True)}
    return validate(tree)


def make_splits(cfg: ExperimentConfig) -> dict[str, str]:
    """The labeled and unlabeled split files of ``cfg``'s seed (written once; identical files untouched), after
    the test and extra unlabeled subsets are read too: a missing or corrupt file fails before any run opens."""
    splits = classification_splits(cfg)
    for subset in ("test", "unlabeled"):
        read_subset(cfg.dataset.name, cfg.dataset.root, subset)
    return {"labeled": str(splits.labeled_file), "unlabeled": str(splits.unlabeled_file)}


@torch.no_grad()
def evaluate_classifier(cfg: ExperimentConfig, checkpoint: str | Path) -> dict[str, float]:
    """Top-1 / top-5 (percent) of ``checkpoint``'s EMA on the test subset, and its pseudo labels' quality on the
    unlabeled images of ``cfg``'s split (confident share and precision at ``method.threshold``)."""
    device = resolve_device(cfg.train.device)
    model = checkpoint_model(cfg, checkpoint, "ema").to(device).eval()
    data, size, task = cfg.dataset, cfg.dataset.crop_size, task_for(cfg.dataset.name)
    test = read_subset(data.name, data.root, "test")
    hits = {1: 0, 5: 0}
    for images, masks, _ in DataLoader(
        ClassificationEval(test, range(len(test)), size), batch_size=task.eval_batch_size
    ):
        logits = model(images.to(device)).flatten(1)
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()
        labels = masks[:, 0, 0]
        for k in hits:
            hits[k] += int((ranked[:, :k] == labels[:, None]).any(dim=1).sum())
    train = read_subset(data.name, data.root, "train")
    unlabeled = read_split(split_folder(cfg) / "unlabeled.txt", train)
    threshold = scoring_threshold(cfg.method)
    batches = DataLoader(ClassificationEval(train, unlabeled, size), batch_size=task.eval_batch_size)
    quality = pseudo_label_quality(model, batches, threshold, data.nclass, device, background=task.background_class)
    return {
        "top1": 100.0 * hits[1] / len(test),
        "top5": 100.0 * hits[5] / len(test),
        "confident_share": quality.mask_ratio,
        "precision": quality.precision,
    }


def train_classifier(
    cfg: ExperimentConfig, row: str, tags: dict[str, str], progress: bool = True, tracking_uri: str | None = None
) -> dict[str, Any]:
    """One tracked training of ``cfg`` (table row ``row``) on the shared engine (resumed if interrupted): its
    best checkpoint, run and best EMA top-1 during training."""
    tags = {**tags, "method": cfg.method.name, "row": row, "seed": str(cfg.split.seed)}
    result = run_training(cfg, tags, tracking_uri=tracking_uri, progress=progress)
    return {
        "row": row,
        "checkpoint": str(result.best_checkpoint),
        "run_id": result.run_id,
        "best_top1_ema": float(result.metrics["best_top1_ema"]),
    }


def evaluate_trained(cfg: ExperimentConfig, trained: dict[str, Any]) -> ClassificationResult:
    """The evaluation of a :func:`train_classifier` output."""
    scores = evaluate_classifier(cfg, trained["checkpoint"])
    return ClassificationResult(
        trained["row"],
        cfg.split.seed,
        scores["top1"],
        scores["top5"],
        scores["confident_share"],
        scores["precision"],
        trained["best_top1_ema"],
        trained["checkpoint"],
        trained["run_id"],
    )


def _mean_or_nan(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def report_tables(results: list[ClassificationResult], top5: bool = False) -> dict[str, pd.DataFrame]:
    """Tables 15-17's layout: a row per method (:data:`VARIANTS` order), a column per seed, the mean last; top-1
    (and top-5, Table 18's second number); the pseudo-label quality per method, averaged over seeds."""
    present = {r.method for r in results}
    labels = {row: variant(row)[2] for row in present}
    order = [row for row in classification_methods() if row in present]
    seeds = sorted({r.seed for r in results})
    tables = {}
    for metric in ("top1", "top5") if top5 else ("top1",):
        rows = {}
        for method in order:
            values = {f"seed {r.seed}": getattr(r, metric) for r in results if r.method == method}
            rows[labels[method]] = {**{f"seed {s}": values.get(f"seed {s}", np.nan) for s in seeds}}
            rows[labels[method]]["mean"] = float(np.nanmean(list(values.values())))
        tables[metric] = pd.DataFrame.from_dict(rows, orient="index").round(2)
    quality = {
        labels[m]: {
            "confident share %": float(np.mean([r.confident_share for r in results if r.method == m])),
            # NaN when no pseudo label of any seed clears the threshold
            "precision %": _mean_or_nan([r.precision for r in results if r.method == m]),
        }
        for m in order
    }
    tables["pseudo_labels"] = pd.DataFrame.from_dict(quality, orient="index").round(1)
    return tables


def report_markdown(tables: dict[str, pd.DataFrame], title: str) -> str:
    """The :func:`report_tables` as markdown under ``title``."""
    parts = [f"# {title}\n"]
    for name, table in tables.items():
        caption = {"top1": "Top-1 accuracy (%)", "top5": "Top-5 accuracy (%)", "pseudo_labels": ""}[name]
        caption = caption or "Pseudo labels of the best EMA model on the unlabeled images (mean over seeds)"
        parts.append(f"## {caption}\n\n{table.to_markdown()}\n")
    return "\n".join(parts)


def write_report(
    results: list[ClassificationResult], out_dir: str | Path, title: str, top5: bool = False
) -> dict[str, str]:
    """``<out_dir>/classification.{md,csv,png}``, ``results.csv`` (one row per run) and ``metrics.json``;
    ``top5``: a top-5 table too (Table 18: ImageNet's 1000 classes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = report_tables(results, top5)
    markdown = report_markdown(tables, title)
    write_text_atomic(out / "classification.md", markdown)
    write_text_atomic(out / "classification.csv", tables["top1"].to_csv())
    write_text_atomic(out / "results.csv", pd.DataFrame([asdict(r) for r in results]).to_csv(index=False))
    metrics = {  # what `dvc metrics show` compares: per method, the mean top-1 and its pseudo labels
        name: {"top1_mean": float(tables["top1"].loc[name, "mean"]), **tables["pseudo_labels"].loc[name].to_dict()}
        for name in tables["top1"].index
    }
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot_seed_means(tables["top1"], out / "classification.png", title, "top-1 accuracy (%)")
    return {
        "markdown": str(out / "classification.md"),
        "csv": str(out / "classification.csv"),
        "figure": str(out / "classification.png"),
    }


def benchmark_grid(methods: list[str] | None, seeds: list[int] | None, quick: bool) -> tuple[list[str], list[int]]:
    """The methods and seeds a benchmark runs: the given ones, else the table's (one seed when quick)."""
    default_seeds = QUICK_SEEDS if quick else DEFAULT_SEEDS
    return list(methods or DEFAULT_METHODS), list(seeds if seeds is not None else default_seeds)


def run_benchmark(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    out_dir: str | None = None,
    progress: bool = True,
) -> tuple[dict[str, str], str]:
    """Splits -> each method per seed -> evaluation -> report, in this process (the DVC stage, `unimatch
    classification`); returns the report files and the markdown."""
    base = benchmark_base(config, list(overrides or []), quick)
    methods, seeds = benchmark_grid(methods, seeds, quick)
    results = []
    for seed in seeds:
        make_splits(run_config(base, methods[0], seed))
        for method in methods:
            cfg = run_config(base, method, seed)
            trained = train_classifier(cfg, method, dict(TABLE_TAGS), progress)
            results.append(evaluate_trained(cfg, trained))
    experiment = base["tracking"]["experiment"]
    title, top5 = report_title(base), reports_top5(base)
    files = write_report(results, out_dir or f"outputs/{experiment}", title, top5)
    return files, report_markdown(report_tables(results, top5), title)
