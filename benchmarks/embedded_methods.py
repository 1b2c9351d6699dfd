"""Train the methods on one low-label split of the embedded dataset and print their EMA mIoU, with a fully
supervised reference (every training image labeled, the same number of iterations) as the ceiling.

    python benchmarks/embedded_methods.py [--seeds 0 1] [--labeled 24] [--methods ...] [--name NAME] [key=value ...]

Each (method, seed) is a tracked MLflow run in the experiment ``embedded-methods-benchmark``; runs that
already finished are resumed from their checkpoints, so an interrupted benchmark continues. ``--name``
keeps a variant (e.g. ``--name random-init model.weights=null``) in run directories of its own. Every run
starts from the configuration's encoder (the shipped foundation weights by default; ``model.weights=null``
for random initialisation). Besides mIoU it prints the teacher's pseudo-label quality at each run's best
epoch (precision of the confident pixels, confident-and-right share of the foreground, mask ratio),
measured on the unlabeled images' ground truth, which training never reads.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from unimatch.config import load_config
from unimatch.data import list_dataset
from unimatch.engine import TrainResult
from unimatch.jobs import train
from unimatch.methods import method_labels, single_training_methods
from unimatch.tracking import tracker_from_config

FULLY_SUPERVISED = "fully_supervised"
LABELS = {**method_labels(), FULLY_SUPERVISED: "fully supervised"}
QUALITY = {
    "pseudo/precision": "precision",
    "pseudo/object_precision": "object-class precision",
    "pseudo/foreground_recall": "object pixels confident & right",
    "pseudo/foreground_accuracy": "object pixels right (arg-max)",
    "pseudo/mask_ratio": "mask ratio",
}
CLASS_RECALL = "pseudo/class_recall/"


def _config(method: str, seed: int, labeled: int, overrides: list[str], name: str):
    base = load_config("configs/embedded.yaml", overrides)
    extra: list[str] = []
    row = method
    if method == FULLY_SUPERVISED:
        # Every training image labeled, for as many iterations as the low-label runs (same schedule).
        images = len(list_dataset(base.dataset.name, base.dataset.root, "train"))
        iterations = (images - labeled) // base.train.batch_size * base.train.epochs
        if base.train.max_iters:
            iterations = min(iterations, base.train.max_iters)
        method, labeled = "labeled_only", images
        extra = [f"train.max_iters={iterations}"]
    return load_config(
        "configs/embedded.yaml",
        [
            f"method.name={method}",
            f"train.seed={seed}",
            f"split.labeled={labeled}",
            f"output_dir=runs/benchmarks/embedded_methods/{name}/{labeled}/{row}/seed{seed}",
            "tracking.experiment=embedded-methods-benchmark",
            f"tracking.run_name={row}-{labeled}-seed{seed}-{name}",
            *overrides,
            *extra,
        ],
    )


def run(method: str, seed: int, labeled: int, overrides: list[str], name: str) -> TrainResult:
    cfg = _config(method, seed, labeled, overrides, name)
    tags = {"kind": "train", "table": "methods", "seed": str(seed), "benchmark_row": method, "benchmark": name}
    with tracker_from_config(cfg, tags=tags) as tracker:
        return train(cfg, tracker)


def best_epoch_quality(result: TrainResult) -> dict[str, float]:
    """Pseudo-label quality (QUALITY and per class) at the epoch of the best EMA mIoU (NaN when not measured)."""
    curve = result.history.get("val/miou_ema", [])
    keys = [*QUALITY, *sorted(key for key in result.history if key.startswith(CLASS_RECALL))]
    if not curve:
        return {key: float("nan") for key in keys}
    best_epoch = max(curve, key=lambda point: point[1])[0]
    return {key: dict(result.history.get(key, [])).get(best_epoch, float("nan")) for key in keys}


def _cell(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"  # no unlabeled images with ground truth: —


def _table(results: dict[str, list[TrainResult]], seeds: list[int]) -> dict[str, float]:
    means = {}
    print(f"| method | {' | '.join(f'seed {s}' for s in seeds)} | mean |")
    print(f"|---|{'---|' * len(seeds)}---|")
    for method, runs in results.items():
        values = [r.metrics["best_miou_ema"] for r in runs]
        means[method] = statistics.mean(values)
        print(f"| {LABELS[method]} | {' | '.join(f'{v:.1f}' for v in values)} | {means[method]:.1f} |")
    print("\npseudo-label quality of the teacher at each run's best epoch (unlabeled ground truth, τ as the method's "
          "or 0.95, mean over seeds, %):\n")
    qualities = {method: [best_epoch_quality(r) for r in runs] for method, runs in results.items()}
    classes = sorted({key for runs in qualities.values() for q in runs for key in q if key.startswith(CLASS_RECALL)})
    columns = [*QUALITY, *classes]
    titles = [*QUALITY.values(), *(f"{key.removeprefix(CLASS_RECALL)} confident & right" for key in classes)]
    print(f"| method | {' | '.join(titles)} |\n|---|{'---|' * len(titles)}")
    for method, quality in qualities.items():
        averaged = {key: statistics.mean(q.get(key, float("nan")) for q in quality) for key in columns}
        print(f"| {LABELS[method]} | {' | '.join(_cell(averaged[key]) for key in columns)} |")
        means.update({f"{method}:{key}": averaged[key] for key in QUALITY})
    return means


def _verdict(means: dict[str, float]) -> None:
    """The issue's bars on the means, each printed as met or missed with its numbers."""
    lo, v2, fm, full = (means.get(k) for k in ("labeled_only", "unimatch_v2", "fixmatch", FULLY_SUPERVISED))
    checks = []
    if lo is not None:  # the premise: a labeled-only teacher that is right, and confidently right, on objects
        accuracy, precision, recall = (means["labeled_only:pseudo/" + k] for k in ("foreground_accuracy", "object_precision", "foreground_recall"))
        checks.append((f"labeled-only object pixels right >= 70 % ({accuracy:.1f})", accuracy >= 70))
        checks.append((f"labeled-only confident object-class labels right >= 85 % ({precision:.1f})", precision >= 85))
        checks.append((f"labeled-only object pixels confident and right >= 30 % ({recall:.1f})", recall >= 30))
    if lo is not None and full is not None:
        checks.append((f"fully supervised >= labeled-only + 10 ({full:.1f} vs {lo + 10:.1f})", full >= lo + 10))
    if lo is not None and v2 is not None:
        checks.append((f"UniMatch V2 >= labeled-only + 5 ({v2:.1f} vs {lo + 5:.1f})", v2 >= lo + 5))
        if full is not None and full > lo:
            closed = (v2 - lo) / (full - lo)
            checks.append((f"UniMatch V2 closes >= 40 % of the gap ({closed:.0%})", closed >= 0.4))
    if None not in (lo, v2, fm):
        checks.append((f"UniMatch V2 >= FixMatch > labeled-only ({v2:.1f} / {fm:.1f} / {lo:.1f})", v2 >= fm > lo))
    for text, met in checks:
        print(f"  [{'met' if met else 'MISSED'}] {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--labeled", type=int, default=24, help="labeled images (default 24)")
    rows = [*single_training_methods(), FULLY_SUPERVISED]
    parser.add_argument("--methods", nargs="+", default=rows, choices=rows, help="rows (default: all)")
    parser.add_argument("--name", default="default", help="variant name: its own run directories (default: default)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    started = time.time()
    results = {m: [run(m, s, args.labeled, args.overrides, args.name) for s in args.seeds] for m in args.methods}
    print(f"\nembedded dataset, {args.labeled} labeled images, best EMA mIoU (%) over seeds {args.seeds}\n")
    means = _table(results, args.seeds)
    print()
    _verdict(means)
    print(f"\ntotal wall time {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
