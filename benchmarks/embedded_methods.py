"""Train the four methods on one low-label split of the embedded dataset and print their EMA mIoU.

    python benchmarks/embedded_methods.py [--seeds 0 1] [--labeled 24] [key=value ...]

Each (method, seed) is a tracked MLflow run in the experiment ``embedded-methods-benchmark``; runs that
already finished are resumed from their checkpoints, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import statistics
import time

from unimatch.config import METHOD_LABELS, load_config
from unimatch.engine import train
from unimatch.tracking import tracker_from_config

METHODS = ("labeled_only", "fixmatch", "unimatch_v1", "unimatch_v2")


def run(method: str, seed: int, labeled: int, overrides: list[str]) -> float:
    cfg = load_config(
        "configs/embedded.yaml",
        [
            f"method.name={method}",
            f"train.seed={seed}",
            f"split.labeled={labeled}",
            f"output_dir=runs/benchmarks/embedded_methods/{labeled}/{method}/seed{seed}",
            "tracking.experiment=embedded-methods-benchmark",
            f"tracking.run_name={method}-seed{seed}",
            *overrides,
        ],
    )
    with tracker_from_config(cfg, tags={"kind": "train", "table": "methods", "seed": str(seed)}) as tracker:
        return train(cfg, tracker).metrics["best_miou_ema"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--labeled", type=int, default=24, help="labeled images (default 24)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    started = time.time()
    results = {m: [run(m, s, args.labeled, args.overrides) for s in args.seeds] for m in args.methods}
    print(f"\nembedded dataset, {args.labeled} labeled images, EMA mIoU (%) over seeds {args.seeds}\n")
    print(f"| method | {' | '.join(f'seed {s}' for s in args.seeds)} | mean |")
    print(f"|---|{'---|' * len(args.seeds)}---|")
    for method, values in results.items():
        cells = " | ".join(f"{v:.1f}" for v in values)
        print(f"| {METHOD_LABELS[method]} | {cells} | {statistics.mean(values):.1f} |")
    print(f"\ntotal wall time {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
