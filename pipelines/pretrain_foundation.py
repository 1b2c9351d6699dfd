"""Rebuild the embedded world's foundation encoder (the weights `configs/datasets/embedded.yaml` loads).

    python -m pipelines.pretrain_foundation [--config configs/foundation/embedded-tiny.yaml] [--no-cache]
        [key=value ...]
    zenml pipeline run pipelines.pretrain_foundation.pretrain_foundation

Two steps, cached by the settings and the library's source: pre-training (the corpus is rendered from
its seed, so there is no data artifact to version), then the feature-quality probe of the result
(unimatch.engine.probe), whose table joins the summary JSON. The DVC stage `foundation` runs both jobs.
"""

from __future__ import annotations

import argparse
import sys

from zenml import pipeline

from steps import probe_foundation_encoder, train_foundation_encoder
from steps.image import PROJECT_IMAGE
from unimatch.apps.foundation import load_foundation_config
from unimatch.errors import run_guarded

from .cli import run_pipeline

DEFAULT_FOUNDATION_CONFIG = "configs/foundation/embedded-tiny.yaml"


@pipeline(name="pretrain_foundation", settings={"docker": PROJECT_IMAGE})
def pretrain_foundation(config: str = DEFAULT_FOUNDATION_CONFIG, overrides: list[str] | None = None) -> None:
    """foundation corpus → pre-trained encoder weights (+ SHA256SUMS, summary JSON, figure) → probe."""
    settings = load_foundation_config(config, overrides)
    probe_foundation_encoder(train_foundation_encoder(settings), settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. route=mae iterations=500")
    parser.add_argument(
        "--config", default=DEFAULT_FOUNDATION_CONFIG, help=f"foundation YAML (default: {DEFAULT_FOUNDATION_CONFIG})"
    )
    parser.add_argument("--no-cache", action="store_true", help="re-run the step even when its cache key matches")
    args = parser.parse_args()
    run_pipeline(pretrain_foundation, {"config": args.config, "overrides": args.overrides}, args.no_cache)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
