"""Table 13: the real-world setting — ALL labeled images, with vs without an extra unlabeled pool.

"labeled only" trains on every labeled training image; "+ extra unlabeled" trains UniMatch V2 on the
same labels plus the ``dataset.extra_unlabeled`` pool. On the embedded dataset the pool is a second,
independently seeded embedded dataset whose images are used without their masks.

    python -m pipelines.real_world [--quick] [--no-cache] [key=value ...]
    zenml pipeline run pipelines.real_world.real_world -c configs/zenml/real_world.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zenml import pipeline

from steps import make_unlabeled_pool
from steps.image import PROJECT_IMAGE
from unimatch.config import load_config
from unimatch.data import generate_embedded, list_dataset
from unimatch.jobs import Table, Variant, resolve_base

from .cli import run_main
from .common import DEFAULT_CONFIG, table_dag

SETTINGS = ("labeled only", "+ extra unlabeled")


def labeled_images(config: str, overrides: Sequence[str]) -> int:
    """The number of training images with a mask (the embedded dataset is generated if absent)."""
    dataset = load_config(config, list(overrides)).dataset
    if dataset.name == "embedded" and not Path(dataset.root).exists():
        generate_embedded(dataset.root)
    return sum(1 for sample in list_dataset(dataset.name, dataset.root, "train") if sample.mask is not None)


def variants(pool: list[str]) -> list[Variant]:
    return [
        Variant("labeled_only", ["method.name=labeled_only"], {"setting": SETTINGS[0]}),
        Variant(
            "unimatch_v2-extra",
            ["method.name=unimatch_v2", f"dataset.extra_unlabeled={pool}"],
            {"setting": SETTINGS[1]},
        ),
    ]


@pipeline(name="real_world", settings={"docker": PROJECT_IMAGE})
def real_world(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
    extra_unlabeled: list[str] | None = None,
    pool_images: int = 400,
    pool_seed: int = 1,
) -> None:
    """Both settings, then the Table 13 report. ``extra_unlabeled``: the pool (split files or image
    folders); default on the embedded dataset: ``pool_images`` generated images (seed ``pool_seed``)."""
    overrides = list(overrides or ())
    everything = [f"split.labeled={labeled_images(config, overrides)}", *overrides]
    base = resolve_base(config, everything, quick, experiment, "table13")
    after: list[Any] = []
    if extra_unlabeled is None:
        if base["dataset"]["name"] != "embedded":
            raise ValueError("real_world: give extra_unlabeled (split files or image folders) for this dataset")
        root = f"runs/{base['tracking']['experiment']}/extra_pool-seed{pool_seed}-n{pool_images}"
        after.append(make_unlabeled_pool(root, pool_seed, pool_images))
        extra_unlabeled = [f"{root}/images/train"]
    table = Table("table13", "real_world", [base["dataset"]["name"]], list(SETTINGS))
    table_dag(base, variants(list(extra_unlabeled)), table, gpu_count, after)


def _options(parser: argparse.ArgumentParser) -> Sequence[str]:
    parser.add_argument("--extra-unlabeled", nargs="+", dest="extra_unlabeled", help="extra unlabeled pools")
    parser.add_argument("--pool-images", type=int, dest="pool_images", help="generated pool size (embedded)")
    return ("extra_unlabeled", "pool_images")


if __name__ == "__main__":
    run_main(real_world, "Table 13: real-world setting (all labels + extra unlabeled pool).", _options)
