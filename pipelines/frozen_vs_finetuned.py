"""Table 7: UniMatch V2 with the encoder finetuned vs frozen.

python -m pipelines.frozen_vs_finetuned [--quick] [--no-cache] [key=value ...]
zenml pipeline run pipelines.frozen_vs_finetuned.frozen_vs_finetuned -c configs/zenml/frozen_vs_finetuned.yaml
"""

from __future__ import annotations

from zenml import pipeline

from steps.image import PROJECT_IMAGE
from unimatch.jobs import Table, Variant, resolve_base, split_column

from .cli import run_main
from .common import DEFAULT_CONFIG, table_dag

VARIANTS = (
    Variant("finetuned", ["method.name=unimatch_v2", "model.frozen=false"]),
    Variant("frozen", ["method.name=unimatch_v2", "model.frozen=true"]),
)


@pipeline(name="frozen_vs_finetuned", settings={"docker": PROJECT_IMAGE})
def frozen_vs_finetuned(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
) -> None:
    """UniMatch V2 with ``model.frozen`` false and true, then the Table 7 report."""
    base = resolve_base(config, overrides, quick, experiment, "table7")
    table_dag(base, VARIANTS, Table("table7", "frozen", ["false", "true"], split_column(base)), gpu_count)


if __name__ == "__main__":
    run_main(frozen_vs_finetuned, "Table 7: finetuned vs frozen encoder (UniMatch V2).")
