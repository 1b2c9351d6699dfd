"""One rank of a multi-process training: ``python -m unimatch.engine.worker`` under torchrun.

Started by :func:`unimatch.jobs.launch_torchrun`, which hands over the resolved config and the pre-trained
encoder as files and has opened the MLflow run (several nodes: rank 0 opens it, wherever it runs); rank 0
logs into that run and writes its result as JSON.
Under a launcher of your own (torchrun on every node of a cluster), ``unimatch train`` trains each rank
in process instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..config import ExperimentConfig, load_config
from ..errors import run_guarded
from ..tracking import Tracker, tracker_from_config
from .distributed import init_distributed, rank_log_level, shutdown_distributed
from .trainer import Trainer, TrainResult, resumable_run_id


def write_result(result: TrainResult, path: str | Path) -> None:
    record = {
        **asdict(result),
        "best_confusion": None if result.best_confusion is None else result.best_confusion.tolist(),
    }
    Path(path).write_text(json.dumps(record, default=str), encoding="utf-8")


def read_result(path: str | Path) -> TrainResult:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    history = {name: [tuple(point) for point in points] for name, points in data.pop("history").items()}
    paths = {key: Path(data.pop(key)) for key in ("output_dir", "best_checkpoint", "last_checkpoint")}
    confusion = data.pop("best_confusion")
    return TrainResult(
        **paths, **data, history=history, best_confusion=None if confusion is None else np.array(confusion)
    )


def train_rank(
    cfg: ExperimentConfig,
    run_id: str | None,
    encoder_weights: str | None,
    progress: bool,
    tags: dict[str, str] | None = None,
) -> TrainResult | None:
    """Train this process's rank; the result on rank 0, None elsewhere. Rank 0 logs into ``run_id``, or,
    given ``tags``, into the run it opens with them (the interrupted run its checkpoint records, if any)."""
    ctx = init_distributed(cfg.train.device)
    try:
        if ctx.is_main and tags is not None:
            tracker = tracker_from_config(cfg, tags, resume_run_id=run_id or resumable_run_id(cfg))
        elif ctx.is_main and run_id:
            tracker = tracker_from_config(cfg, resume_run_id=run_id)
        else:
            tracker = Tracker()
        with tracker:
            result = Trainer(cfg, tracker, progress and ctx.is_main, encoder_weights).fit()
    finally:
        shutdown_distributed()
    return result if ctx.is_main else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unimatch.engine.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the resolved experiment config (YAML)")
    parser.add_argument("--result", required=True, help="where rank 0 writes its result (JSON)")
    parser.add_argument("--run-id", help="the MLflow run rank 0 logs into")
    parser.add_argument("--tags", type=json.loads, help="rank 0 opens the MLflow run itself, with these tags (JSON)")
    parser.add_argument("--encoder-weights", help="the pre-trained encoder that replaces model.weights")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    # as `unimatch`'s: INFO from global rank 0 only
    logging.basicConfig(level=rank_log_level(logging.INFO), format="%(levelname)s %(name)s: %(message)s")

    def work() -> None:
        cfg = load_config(args.config)
        result = train_rank(cfg, args.run_id, args.encoder_weights, not args.no_progress, args.tags)
        if result is not None:
            print(result.summary())
            write_result(result, args.result)

    return run_guarded(work)


if __name__ == "__main__":
    sys.exit(main())
