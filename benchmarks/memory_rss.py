"""Resident memory (RSS) of a training run at the end of every epoch: a flat line after warm-up means no leak.

    python benchmarks/memory_rss.py [--epochs 5] [key=value ...]

Trains configs/embedded.yaml (overrides as for ``unimatch train``) with the library's trainer into a
temporary output directory, tracking off. At each end-of-epoch evaluation (every epoch unless
train.eval_every says otherwise) a Tracker hook reads the RSS of this process and of its children, the
DataLoader workers (psutil, which dvc and zenml install). Pages the workers share copy-on-write with
the main process count once per process, so the total is an upper bound; the figure to watch is its
growth from epoch 2 (after the allocator pools, the workers and the first evaluation have warmed up) to
the last epoch.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping

import psutil
from common import rss

from unimatch.config import load_config
from unimatch.jobs import train
from unimatch.tracking import Tracker

MIB = 2**20


class EpochRss(Tracker):
    """No tracking; the end-of-epoch metrics (the ones carrying 'epoch') trigger an RSS reading."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.totals: list[tuple[int, int]] = []  # (epoch, bytes)
        self.started = time.time()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "epoch" not in metrics:
            return
        epoch = int(metrics["epoch"])
        main, children, count = rss(self.process)
        self.totals.append((epoch, main + children))
        print(f"{epoch:5d} | {(main + children) / MIB:10.1f} | {main / MIB:9.1f} | {children / MIB:8.1f} ({count}) "
              f"| {time.time() - self.started:6.0f}", flush=True)  # fmt: skip


def growth(totals: list[tuple[int, int]]) -> str:
    (first_epoch, first), (last_epoch, last) = totals[1], totals[-1]
    return f"RSS growth epoch {first_epoch} -> {last_epoch}: {(last - first) / MIB:+.1f} MiB ({100 * (last - first) / first:+.1f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs to train, at least 3 (default 5)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be at least 3: growth is measured from epoch 2 to the last")
    with tempfile.TemporaryDirectory(prefix="memory-rss-") as out:
        cfg = load_config(
            "configs/embedded.yaml",
            [f"output_dir={out}", f"train.epochs={args.epochs}", "train.resume=false", *args.overrides],
        )
        print(f"{cfg.method.name}, {cfg.model.encoder} encoder, crop {cfg.dataset.crop_size}, batch {cfg.train.batch_size}, "
              f"{cfg.train.num_workers} loader workers, {cfg.train.epochs} epochs\n")  # fmt: skip
        print("epoch |  RSS (MiB) |      main | workers (n) | time (s)")
        hook = EpochRss()
        train(cfg, hook, progress=False)
    if len(hook.totals) < 3:
        raise SystemExit("fewer than 3 epochs were evaluated (train.eval_every?): no growth to report")
    print("\n" + growth(hook.totals))


if __name__ == "__main__":
    main()
