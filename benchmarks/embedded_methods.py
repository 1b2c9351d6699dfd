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
QUALITY = ("pseudo/precision", "pseudo/foreground_recall", "pseudo/mask_ratio")


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
    """Pseudo-label quality at the epoch of the best EMA mIoU (NaN when it was not measured)."""
    curve = result.history.get("val/miou_ema", [])
    if not curve:
        return {key: float("nan") for key in QUALITY}
    best_epoch = max(curve, key=lambda point: point[1])[0]
    return {key: dict(result.history.get(key, [])).get(best_epoch, float("nan")) for key in QUALITY}


def _table(results: dict[str, list[TrainResult]], seeds: list[int]) -> dict[str, float]:
    means = {}
    print(f"| method | {' | '.join(f'seed {s}' for s in seeds)} | mean |")
    print(f"|---|{'---|' * len(seeds)}---|")
    for method, runs in results.items():
        values = [r.metrics["best_miou_ema"] for r in runs]
        means[method] = statistics.mean(values)
        print(f"| {LABELS[method]} | {' | '.join(f'{v:.1f}' for v in values)} | {means[method]:.1f} |")
    print("\npseudo-label quality of the teacher at each run's best epoch (unlabeled ground truth, mean over seeds):\n")
    print("| method | precision (%) | foreground confident & right (%) | mask ratio (%) |\n|---|---|---|---|")
    for method, runs in results.items():
        quality = [best_epoch_quality(r) for r in runs]
        means = [statistics.mean(q[key] for q in quality) for key in QUALITY]
        cells = " | ".join("—" if math.isnan(v) else f"{v:.1f}" for v in means)  # no unlabeled images: —
        print(f"| {LABELS[method]} | {cells} |")
    return means


def _verdict(means: dict[str, float]) -> None:
    """The issue's bars on the means, each printed as met or missed with its numbers."""
    lo, v2, fm, full = (means.get(k) for k in ("labeled_only", "unimatch_v2", "fixmatch", FULLY_SUPERVISED))
    checks = []
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
