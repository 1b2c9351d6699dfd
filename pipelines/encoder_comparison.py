"""Table 9: UniMatch V2 (or the config's method) across encoders, with parameters and step time.

    python -m pipelines.encoder_comparison [--quick] [--encoders tiny resnet-tiny] [--weights NAME=FILE ...]
        [key=value ...]
    zenml pipeline run pipelines.encoder_comparison.encoder_comparison -c configs/zenml/encoder_comparison.yaml

Each encoder trains with its own declared defaults (learning rates, which model makes the pseudo labels)
unless the config or an override sets them, and from the weights given for it: the base config's
``model.weights`` for the base config's encoder, ``--weights NAME=FILE`` for the others, else random
initialisation (`unimatch encoders` lists the released file each one expects).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from zenml import pipeline

from steps.image import PROJECT_IMAGE
from unimatch.config import ENCODER_DEFAULTS, apply_overrides, read_layers
from unimatch.errors import ConfigError
from unimatch.jobs import Table, Variant, resolve_base, split_column
from unimatch.models.encoders import ENCODERS

from .cli import run_main
from .common import DEFAULT_CONFIG, table_dag

# Table 9 compares encoders under UniMatch V2's DPT head: the CPU-sized encoders made for it (not clip-tiny,
# whose levels feed SemiVL's language-guided decoder).
CPU_ENCODERS = tuple(sorted(name for name, entry in ENCODERS.items() if entry.cpu_sized and entry.decoder == "dpt"))


def _set(config: str, overrides: Sequence[str], dotted: str) -> bool:
    """Whether the config file (with its layers) or an override sets ``dotted``."""
    tree = apply_overrides(read_layers(config), list(overrides))
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return tree is not None


def encoder_variants(
    config: str, overrides: Sequence[str], base: dict[str, Any], encoders: Sequence[str], weights: dict[str, str]
) -> list[Variant]:
    """One variant per encoder: its weights, sizes rounded down to its size divisor (518 -> 512 for the
    patch-16 ViTs and the CNNs, the crop of the authors' BEiT runs) and, for the settings nobody set, its
    own defaults."""
    open_keys = [key for key in ENCODER_DEFAULTS if not _set(config, overrides, key)]
    base_encoder, base_weights = base["model"]["encoder"], base["model"]["weights"]
    variants = []
    for name in encoders:
        chosen = weights.get(name, base_weights if name == base_encoder else None)
        settings = [f"model.encoder={name}", f"model.weights={chosen or 'null'}", *(f"{key}=null" for key in open_keys)]
        divisor = ENCODERS[name].size_divisor
        for key, size in (("dataset.crop_size", base["dataset"]["crop_size"]), ("eval.window", base["eval"]["window"])):
            if size is not None and size % divisor:
                settings.append(f"{key}={size // divisor * divisor}")
        variants.append(Variant(name, settings))
    return variants


@pipeline(name="encoder_comparison", settings={"docker": PROJECT_IMAGE})
def encoder_comparison(
    config: str = DEFAULT_CONFIG,
    overrides: list[str] | None = None,
    quick: bool = False,
    experiment: str | None = None,
    gpu_count: int = 0,
    encoders: list[str] | None = None,
    weights: list[str] | None = None,
) -> None:
    """One training per encoder (splits shared), each evaluated, then the Table 9 report. ``weights``:
    ``ENCODER=FILE`` entries."""
    base = resolve_base(config, overrides, quick, experiment, "table9")
    encoders = list(encoders or CPU_ENCODERS)
    files = dict(_weights(entry) for entry in weights or [])
    variants = encoder_variants(config, overrides or [], base, encoders, files)
    table_dag(base, variants, Table("table9", "encoders", encoders, split_column(base)), gpu_count)


def _weights(text: str) -> tuple[str, str]:
    name, _, path = text.partition("=")
    if name not in ENCODERS or not path:
        raise ConfigError(
            f"weights: expected ENCODER=FILE with a registered encoder ({', '.join(sorted(ENCODERS))}), got '{text}'"
        )
    return name, path


def _weights_option(text: str) -> str:
    try:
        _weights(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _options(parser: argparse.ArgumentParser) -> Sequence[str]:
    parser.add_argument(
        "--encoders",
        nargs="+",
        choices=sorted(ENCODERS),
        help=f"encoders to compare (default: the CPU-sized ones, {' '.join(CPU_ENCODERS)})",
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        type=_weights_option,
        metavar="ENCODER=FILE",
        help="released weights per encoder (default: the config's model.weights for its encoder)",
    )
    return ("encoders", "weights")


if __name__ == "__main__":
    run_main(encoder_comparison, "Table 9: UniMatch V2 across encoders.", _options)
