"""Cost of one training iteration of the classification benchmark's methods on this machine: the engine's
``Trainer.train_step`` (compute) and the loader's batch (weak + two strong RandAugment views), in seconds,
and what the full embedded default (configs/classification/embedded.yaml: 4 methods x 2 seeds) then costs.

    python benchmarks/classification_step.py                 # the embedded default's sizes
    python benchmarks/classification_step.py --iters 5 train.batch_size=8

Prints figures only: the load of the machine (other processes) shows in the wall times, so the load average
is printed beside them, with the CPU seconds of this process (all its threads, data-loading workers excluded),
which load changes much less: on idle cores a step takes about its CPU seconds / the threads.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

from common import describe_device

from unimatch.config import load_config
from unimatch.engine import Trainer
from unimatch.jobs.classification import DEFAULT_CONFIG, DEFAULT_METHODS, DEFAULT_SEEDS


def measure(method: str, overrides: list[str], iters: int, scratch: str) -> tuple[float, float, int, int]:
    """(seconds of compute per step, seconds waiting for a batch, iterations of a run, evaluations of a run)."""
    cfg = load_config(
        DEFAULT_CONFIG,
        [f"method.name={method}", f"output_dir={scratch}/{method}", "tracking.enabled=false", *overrides],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(cfg, progress=False)
    iterators = trainer._iterators()
    compute, waiting, cpu = [], [], []
    for _ in range(iters + 1):  # the first step warms up (allocator, workers starting)
        started = time.perf_counter()
        labeled, unlabeled = trainer._next_batches(iterators)
        loaded, cpu_started = time.perf_counter(), time.process_time()
        trainer.train_step(labeled, unlabeled)
        trainer.iteration += 1
        waiting.append(loaded - started)
        compute.append(time.perf_counter() - loaded)
        cpu.append(time.process_time() - cpu_started)
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.evaluate_models()
    trainer.score_pseudo_labels()
    evaluation, evaluation_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(
        f"{method:14s} compute {sum(compute[1:]) / iters:6.3f} s/it ({sum(cpu[1:]) / iters:6.3f} CPU s)  "
        f"loading {sum(waiting[1:]) / iters:6.3f} s/it  evaluation {evaluation:5.1f} s ({evaluation_cpu:5.1f} CPU s)"
    )
    evaluations = -(-trainer.total_iters // trainer.iters_per_epoch) // cfg.train.eval_every
    return sum(compute[1:]) / iters + sum(waiting[1:]) / iters, evaluation, trainer.total_iters, evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--iters", type=int, default=4)
    args = parser.parse_args()
    print(describe_device(__import__("torch").device("cpu")), "| load average", os.getloadavg())
    total = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        for method in DEFAULT_METHODS:
            per_iteration, evaluation, iterations, evaluations = measure(method, args.overrides, args.iters, scratch)
            total += (per_iteration * iterations + evaluation * evaluations) * len(DEFAULT_SEEDS)
    print(
        f"full embedded default ({len(DEFAULT_METHODS)} methods x {len(DEFAULT_SEEDS)} seeds): about "
        f"{total / 60:.1f} min of training and evaluation at this load"
    )


if __name__ == "__main__":
    main()
