"""The ``unimatch`` command line: make-data, split, check-data, pretrain, foundation, train, plan-memory, evaluate,
export, predict, report, encoders, text-embeddings, classification. Each command parses its arguments, calls
:mod:`unimatch.jobs` and prints."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: `unimatch --help` must not wait for torch
    from .config import ExperimentConfig

DEFAULT_CONFIG = "configs/embedded.yaml"
DATA_DIR = "data"  # what data.dvc tracks: make-data's default roots live in it
MODEL_HELP = (
    "checkpoint file (.pth: ours or the authors' released UniMatch V2), or an MLflow model of the config's "
    "tracking store: models:/NAME@best, models:/NAME/VERSION, runs:/RUN_ID/model"
)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. method.name=fixmatch train.epochs=2"
    )


def _load(args: argparse.Namespace) -> ExperimentConfig:
    from .config import load_config

    path = args.config
    if path == DEFAULT_CONFIG and not Path(path).exists():  # run outside a checkout: built-in defaults
        path = None
    return load_config(path, args.overrides)


def cmd_make_data(args: argparse.Namespace) -> None:
    from .data import generate_embedded
    from .data.embedded_change import generate_embedded_change

    path = generate_embedded(args.root, seed=args.seed, force=args.force)
    print(f"embedded dataset ready at {path}")
    path = generate_embedded_change(args.change_root, seed=args.seed, force=args.force)
    print(f"embedded change-detection dataset ready at {path}")
    if Path(args.root).parent == Path(args.change_root).parent == Path(DATA_DIR):  # the data.dvc checkout layout
        from .jobs.commands import cache_tracked_data

        print(cache_tracked_data(Path(DATA_DIR)))


def cmd_split(args: argparse.Namespace) -> None:
    from .engine.data import prepare_splits

    cfg = _load(args)
    splits = prepare_splits(cfg)
    for role in ("labeled", "unlabeled", "val"):
        path = getattr(splits, role)
        lines = sum(1 for _ in open(path, encoding="utf-8"))
        print(f"{role:9s} {lines:6d} images  {path}")


def cmd_check_data(args: argparse.Namespace) -> None:
    from .jobs.commands import check_data

    found = check_data(_load(args), args.decode, progress=not args.no_progress)
    for problem in found.problems:
        print(problem)
    found.raise_if_bad()
    print(f"{found.files} files checked ({'decode' if args.decode else 'headers'}): no problems")


def cmd_train(args: argparse.Namespace) -> None:
    from .jobs import run_training

    nodes = [f"train.nnodes={args.nnodes}"] if args.nnodes else []
    nodes += [f"train.rdzv_endpoint={args.rdzv_endpoint}"] if args.rdzv_endpoint else []
    nodes += [f"train.node_rank={args.node_rank}"] if args.node_rank is not None else []
    args.overrides = [*args.overrides, *nodes]
    result = run_training(_load(args), {"kind": "train"}, run_id=args.mlflow_run_id, progress=not args.no_progress)
    if result is not None:  # rank 0
        print(result.summary())


def cmd_plan_memory(args: argparse.Namespace) -> None:
    from .apps.memory_plan import plan_memory

    cfg = _load(args)
    plan = plan_memory(cfg)
    print(plan.table())
    print(plan.advice(args.gpu_memory))


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .jobs.commands import pretrain_encoder

    print(f"pre-trained encoder {pretrain_encoder(_load(args), progress=not args.no_progress)}")


def cmd_foundation(args: argparse.Namespace) -> None:
    from .apps.foundation import load_foundation_config
    from .jobs.commands import foundation_encoder

    settings = load_foundation_config(args.config, args.overrides)
    path, report = foundation_encoder(
        settings, args.uri, tracked=not args.no_tracking, progress=not args.no_progress, probe=not args.no_probe
    )
    print(f"foundation encoder {path}")
    if report:
        print(report.table())


def cmd_probe(args: argparse.Namespace) -> None:
    from .config import apply_overrides, validate_as
    from .engine.probe import ProbeSettings
    from .jobs.commands import probe_weights

    settings = validate_as(ProbeSettings, apply_overrides({}, args.overrides), "probe settings", args.overrides)
    report = probe_weights(args.encoder, args.weights, settings, args.uri, tracked=not args.no_tracking)
    print(
        f"probe of {args.weights or 'random initialisation'} ({args.encoder}), {settings.labeled} labeled "
        f"development-world images, {settings.iterations} iterations:"
    )
    print(report.table())


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .jobs.commands import evaluate

    result = evaluate(_load(args), args.checkpoint, args.split, args.weights, progress=not args.no_progress)
    print(f"mIoU {result.miou:.2f}")
    for name, iou in result.per_class_iou.items():
        print(f"  {name:24s} {iou:6.2f}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .jobs.commands import predict

    written = predict(
        _load(args),
        args.checkpoint,
        args.weights,
        args.input,
        args.output,
        args.limit,
        args.masks,
        args.input_b,
        progress=not args.no_progress,
    )
    print(f"wrote {len(written)} predictions to {args.output} (labels/ and overlays/)")


def cmd_export(args: argparse.Namespace) -> None:  # issue 30
    from .jobs.commands import export

    exported, run_id = export(_load(args), args.checkpoint, args.weights, args.format, args.output)
    print(f"wrote {exported.path} ({args.format}; largest logit difference to PyTorch {exported.max_difference:.1e})")
    print(f"SHA-256 in {exported.sha256}" + (f", logged to MLflow run {run_id} (exports/)" if run_id else ""))


def cmd_report(args: argparse.Namespace) -> None:
    from .apps.report import report
    from .tracking import resolve_tracking_uri

    paths = report(resolve_tracking_uri(args.uri), args.experiment, args.table, args.out)
    for kind, path in paths.items():
        print(f"{kind:5s} {path}")


def cmd_classification(args: argparse.Namespace) -> None:  # issue 28
    from .jobs.classification import run_benchmark

    files, markdown = run_benchmark(args.config, args.overrides, args.quick, args.methods, args.seeds, args.out)
    print(markdown)
    print("report: " + ", ".join(files.values()))


def cmd_encoders(args: argparse.Namespace) -> None:
    from .models.encoders import ENCODERS, parameter_counts

    print(
        f"{'encoder':12s} {'divisor':>7s} {'lr':>7s} {'x dec':>5s} {'teacher':>7s} "
        f"{'params M (enc / dec)':>21s}  description"
    )
    for name, entry in sorted(ENCODERS.items(), key=lambda item: (not item[1].cpu_sized, item[0])):
        counts = "/".join(f"{c / 1e6:.1f}" for c in parameter_counts(name)) if args.params else "-"
        print(
            f"{name:12s} {entry.size_divisor:7d} {entry.lr:7.0e} {entry.lr_multiplier:5g} {entry.teacher:>7s} "
            f"{counts:>21s}  "
            f"{entry.summary}{'; inputs exactly crop x crop' if entry.fixed_input else ''}"
            f"{'; weights: ' + entry.weights_hint if entry.weights_hint else ''}"
        )


def cmd_text_embeddings(args: argparse.Namespace) -> None:
    import numpy as np

    from .data import class_names
    from .data.embedded import CLASSES as EMBEDDED_CLASSES
    from .models import text

    built_in = {
        "embedded": list(EMBEDDED_CLASSES),
        **{name: class_names(name, nclass=n) for name, n in (("pascal", 21), ("cityscapes", 19))},
    }
    source = args.classes
    classes = [[name] for name in built_in[source]] if source in built_in else text.read_class_concepts(source)
    rows = sum(len(concepts) for concepts in classes)
    if args.random is not None:
        embeddings = text.random_text_embeddings(rows, args.width, args.random)
    elif args.weights:
        model, tokenizer = text.open_clip_text_encoder(args.architecture, args.weights, quick_gelu=not args.gelu)
        embeddings = text.encode_class_concepts(classes, model, tokenizer)
    else:
        raise text.TextEmbeddingError("give --weights (a CLIP file, with open_clip installed) or --random SEED")
    if args.average_concepts:
        embeddings, rows = text.average_concepts(embeddings, classes), len(classes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, embeddings)
    kind = (
        f"RANDOM unit vectors (seed {args.random}, a plumbing check)"
        if args.random is not None
        else f"CLIP {args.architecture} text embeddings"
    )
    print(f"wrote {out}: {embeddings.shape[0]} rows x {embeddings.shape[1]} ({len(classes)} classes), {kind}")
    if rows != len(classes):
        print(f"concept rows: set the decoder's concepts (or method.guidance_concepts) to {source}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unimatch", description="UniMatch V2 semi-supervised semantic segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    make_data = sub.add_parser(
        "make-data", help="generate the embedded datasets: segmentation and change detection (offline, deterministic)"
    )
    make_data.add_argument(
        "--root", default="data/embedded", help="where to write the segmentation data (default: data/embedded)"
    )
    make_data.add_argument(
        "--change-root",
        default="data/embedded-cd",
        help="where to write the change-detection pairs (default: data/embedded-cd)",
    )
    make_data.add_argument("--seed", type=int, default=0)
    make_data.add_argument("--force", action="store_true", help="regenerate even if a complete copy exists")
    make_data.set_defaults(func=cmd_make_data)

    split = sub.add_parser("split", help="create (or validate) the labeled / unlabeled / val split files")
    _config_args(split)
    split.set_defaults(func=cmd_split)

    check = sub.add_parser(
        "check-data",
        help="check every image and mask of the splits in one pass (headers and "
        "sizes; --decode: full decodes and label values) and list each problem",
    )
    _config_args(check)
    check.add_argument("--decode", action="store_true", help="decode every file and check label values (slower)")
    check.add_argument("--no-progress", action="store_true")
    check.set_defaults(func=cmd_check_data)

    train = sub.add_parser(
        "train",
        help="train a method; resumes from <output_dir>/checkpoints/latest.pth; "
        "multi-GPU with train.gpus=N or under torchrun",
    )
    _config_args(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    train.add_argument(
        "--mlflow-run-id", metavar="ID", help="log into this existing MLflow run instead of creating one"
    )
    # issue 29: multi-node training (torchrun's elastic rendezvous); the same command on every node
    train.add_argument(
        "--nnodes", type=int, metavar="N", help="nodes of the run (train.nnodes); each starts train.gpus ranks"
    )
    train.add_argument(
        "--rdzv-endpoint", metavar="HOST:PORT", help="where the nodes meet (train.rdzv_endpoint): one node's address"
    )
    train.add_argument(
        "--node-rank", type=int, metavar="R", help="this node's fixed place (train.node_rank; 0 holds global rank 0)"
    )
    train.set_defaults(func=cmd_train)

    plan = sub.add_parser(
        "plan-memory",
        help="measure a few training steps of the config at small micro-batches on this device and recommend "
        "train.batch_size, train.accumulate and model.activation_checkpointing for a GPU of --gpu-memory GiB",
    )
    _config_args(plan)
    plan.add_argument("--gpu-memory", type=float, required=True, metavar="GIB", help="the target GPU's memory in GiB")
    plan.set_defaults(func=cmd_plan_memory)

    pretrain = sub.add_parser(
        "pretrain",
        help="self-supervised (MAE) pre-training of the encoder on the training "
        "images, cached; training does it on demand when pretrain.method is set",
    )
    _config_args(pretrain)
    pretrain.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    pretrain.set_defaults(func=cmd_pretrain)

    foundation = sub.add_parser(
        "foundation",
        help="pre-train the embedded world's foundation encoder on the "
        "foundation corpus (never a benchmark image or class); writes the shipped weights",
    )
    foundation.add_argument(
        "--config",
        "-c",
        default="configs/foundation/embedded-tiny.yaml",
        help="foundation YAML (default: configs/foundation/embedded-tiny.yaml)",
    )
    foundation.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. route=mae iterations=500")
    foundation.add_argument("--uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    foundation.add_argument("--no-tracking", action="store_true", help="no MLflow run")
    foundation.add_argument("--no-progress", action="store_true")
    foundation.add_argument("--no-probe", action="store_true", help="skip the feature-quality probe of the result")
    foundation.set_defaults(func=cmd_foundation)

    probe = sub.add_parser(
        "probe",
        help="feature-quality probe of an encoder: a DPT head on 24 labels of the development world (data seed "
        "17), encoder frozen and fine-tuned; mIoU and object-pixel scores (a few minutes on a CPU)",
    )
    probe.add_argument("--encoder", default="tiny", help="a registered encoder (default: tiny)")
    probe.add_argument("--weights", help="encoder weights file (default: none, random initialisation)")
    probe.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. labeled=48 iterations=600 modes=[frozen]"
    )
    probe.add_argument("--uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    probe.add_argument("--no-tracking", action="store_true", help="no MLflow run")
    probe.set_defaults(func=cmd_probe)

    evaluate = sub.add_parser(
        "evaluate", help="mIoU of a checkpoint (ours or the authors' released UniMatch V2) on a split"
    )
    _config_args(evaluate)
    evaluate.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, help=MODEL_HELP)
    evaluate.add_argument(
        "--weights",
        default="ema",
        choices=("ema", "model"),
        help="which weights of a training checkpoint (default: ema)",
    )
    evaluate.add_argument("--split", help="split file to evaluate (default: the config's val split)")
    evaluate.add_argument("--no-progress", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="predict a folder of images: label PNGs and colour overlays")
    _config_args(predict)
    predict.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, help=MODEL_HELP)
    predict.add_argument("--weights", default="ema", choices=("ema", "model"))
    predict.add_argument(
        "--input",
        required=True,
        help="folder of images (searched recursively); change detection: the A (before) images",
    )
    predict.add_argument(
        "--input-b", help="change detection: folder of the B (after) images, same relative paths as --input"
    )
    predict.add_argument("--output", required=True, help="output folder")
    predict.add_argument(
        "--masks", help="ground-truth folder (<masks>/<relative image path>.png): shown beside each prediction"
    )
    predict.add_argument("--limit", type=int, help="at most this many images (the first, sorted by path)")
    predict.add_argument("--no-progress", action="store_true")
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser(  # issue 30
        "export",
        help="export a model to ONNX or TorchScript (evaluation mode, dynamic height and width: multiples of the "
        "encoder's size divisor; normalised float32 in, logits out), verified against PyTorch, SHA-256 beside it",
    )
    _config_args(export)
    export.add_argument("--checkpoint", "--model", dest="checkpoint", required=True, help=MODEL_HELP)
    export.add_argument("--weights", default="ema", choices=("ema", "model"))
    export.add_argument(
        "--format", required=True, metavar="onnx|torchscript", help="onnx (ONNX Runtime) or torchscript"
    )
    export.add_argument(
        "--output", required=True, help="file to write, e.g. model.onnx; its SHA-256 goes to FILE.sha256"
    )
    export.set_defaults(func=cmd_export)

    encoders = sub.add_parser("encoders", help="list the registered encoders (model.encoder=NAME) and their defaults")
    encoders.add_argument("--params", action="store_true", help="also count encoder / decoder parameters (21 classes)")
    encoders.set_defaults(func=cmd_encoders)

    embed = sub.add_parser(
        "text-embeddings",
        help="class text embeddings for SemiVL's decoder (.npy) from a CLIP text "
        "encoder (open_clip, the optional extra 'clip'), prompt 'a photo of a {class}'",
    )
    embed.add_argument(
        "--classes",
        required=True,
        help="embedded, pascal, cityscapes, or a classes file: one class per "
        "line, its concepts separated by | (one row per concept)",
    )
    embed.add_argument(
        "--weights", help="CLIP weights: OpenAI's ViT-B-16.pt or an open_clip checkpoint of --architecture"
    )
    embed.add_argument("--architecture", default="ViT-B-16", help="open_clip model name (default: ViT-B-16)")
    embed.add_argument(
        "--gelu",
        action="store_true",
        help="the weights' model uses GELU (open_clip's own trainings); default QuickGELU, as OpenAI's",
    )
    embed.add_argument(
        "--average-concepts",
        action="store_true",
        help="one row per class: the mean of its concepts' "
        "embeddings (SemiVL's Cityscapes decoder text), instead of one row per concept",
    )
    embed.add_argument(
        "--random", type=int, metavar="SEED", help="seeded random unit vectors instead (a plumbing check, not CLIP)"
    )
    embed.add_argument(
        "--width", type=int, default=512, help="width of --random vectors (default: 512, CLIP ViT-B/16's)"
    )
    embed.add_argument("--out", required=True, help="output .npy (float16, rows x width)")
    embed.set_defaults(func=cmd_text_embeddings)

    report = sub.add_parser("report", help="rebuild a paper table from MLflow runs (Markdown, CSV, HTML)")
    report.add_argument("--experiment", required=True, help="MLflow experiment name")
    report.add_argument(
        "--table", default="methods", help="layout: methods, streams, frozen, encoders, real_world, sweep"
    )
    report.add_argument("--out", default="reports", help="output folder (default: reports)")
    report.add_argument("--uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    report.set_defaults(func=cmd_report)

    # issue 28: semi-supervised classification (SPEC §9)
    classify = sub.add_parser(
        "classification",
        help="semi-supervised classification benchmark (Tables 15-17): splits, each method per seed, report",
    )
    classify.add_argument(
        "--config", "-c", default="configs/classification/embedded.yaml", help="classification experiment YAML"
    )
    classify.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. split.labeled=25")
    classify.add_argument("--quick", action="store_true", help="smoke-test budget: one seed, 8 iterations per method")
    classify.add_argument(
        "--methods",
        nargs="+",
        help="table rows, default: labeled_only fixmatch fixmatch_da unimatch_v2 (fixmatch_da: fixmatch with "
        "method.distribution_alignment=true; any registered method defined for classification)",
    )
    classify.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 (--quick: 0)")
    classify.add_argument("--out", help="report folder (default: outputs/<tracking.experiment>)")
    classify.set_defaults(func=cmd_classification)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .engine.distributed import rank_log_level  # under torchrun: INFO from global rank 0 only

    level = rank_log_level(logging.DEBUG if args.verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .errors import run_guarded

    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
