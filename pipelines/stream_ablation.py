"""Table 6: UniMatch V2's complementary dropout streams against the three alternative designs.

python -m pipelines.stream_ablation [--quick] [--no-cache] [key=value ...]
zenml pipeline run pipelines.stream_ablation.stream_ablation -c configs/zenml/stream_ablation.yaml
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from zenml import pipeline

from steps.image import PROJECT_IMAGE
from unimatch.jobs import Table, Variant, resolve_base, split_column

from .cli import run_main
from .common import DEFAULT_CONFIG, table_dag

# method.streams values: ours, then (a) single stream, (b) two image streams, (c) two random dropouts.
STREAMS = ("complementary", "single", "image_only", "random")


@pipeline(name="stream_ablation", settings={"docker": PROJECT_IMAGE})
def stream_ablation(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
    streams: list[str] | None = None,
) -> None:
    """UniMatch V2 once per ``method.streams`` design, then the Table 6 report."""
    base = resolve_base(config, overrides, quick, experiment, "table6")
    streams = list(streams or STREAMS)
    variants = [Variant(name, ["method.name=unimatch_v2", f"method.streams={name}"]) for name in streams]
    table_dag(base, variants, Table("table6", "streams", streams, split_column(base)), gpu_count)


def _options(parser: argparse.ArgumentParser) -> Sequence[str]:
    parser.add_argument("--streams", nargs="+", choices=STREAMS, help="stream designs (default: all four)")
    return ("streams",)


if __name__ == "__main__":
    run_main(stream_ablation, "Table 6: UniMatch V2 stream designs.", _options)
