"""The ``python -m pipelines.<module>`` command line shared by every pipeline.

Runs the pipeline on the active ZenML stack (the project-local default stack unless configured
otherwise), then prints each step's status (``completed`` or ``cached``) and where the report is.
A run configuration with a ``schedule:`` is registered as a ZenML schedule where the orchestrator
supports schedules; the local orchestrator does not, so the pipeline runs once now and the
equivalent crontab line is printed instead.
"""

from __future__ import annotations

import argparse
import inspect
import shlex
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from unimatch.errors import run_guarded
from unimatch.jobs import QUICK_OVERRIDES

from .common import DEFAULT_CONFIG
from .zenml_env import ensure_repository

PIPELINE_OPTIONS = ("config", "quick", "experiment", "gpu_count")
# Without it, a re-executed training step would resume its finished checkpoint (same config, same run
# directory) and log a duplicate MLflow run; with it the config, hence the run directory, differs.
NO_CACHE_OVERRIDE = "train.resume=false"


def build_parser(description: str, default_config: str = DEFAULT_CONFIG) -> argparse.ArgumentParser:
    """Options every pipeline takes. Only options given on the command line become pipeline
    parameters, so a ``--run-config`` YAML can set the others (ZenML rejects a parameter set twice)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2")
    parser.add_argument("--config", help=f"experiment YAML (default: {default_config})")
    parser.add_argument(
        "--quick", action="store_true", default=None, help="smoke-test budget: " + " ".join(QUICK_OVERRIDES)
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help=f"re-execute every step, training from scratch ({NO_CACHE_OVERRIDE}) instead of reusing results",
    )
    parser.add_argument("--experiment", help="MLflow experiment (default: <dataset>-<table>[-quick])")
    parser.add_argument(
        "--gpus", type=int, dest="gpu_count", help="GPUs requested for each training step (ResourceSettings)"
    )
    parser.add_argument("--run-config", help="ZenML run configuration YAML (what `zenml pipeline run -c` takes)")
    return parser


def parameters_from(args: argparse.Namespace, names: Sequence[str] = ()) -> dict[str, Any]:
    """Pipeline parameters from the options the user actually gave."""
    params = {name: getattr(args, name) for name in (*PIPELINE_OPTIONS, *names) if getattr(args, name) is not None}
    overrides = [*args.overrides, *([NO_CACHE_OVERRIDE] if args.no_cache else [])]
    if overrides:
        params["overrides"] = overrides
    return params


def crontab_line(cron: str, argv: Sequence[str]) -> str:
    """Run the same command line from the same working directory (relative paths resolve there)."""
    command = " ".join(shlex.quote(part) for part in (sys.executable, *argv))
    return f"{cron} cd {shlex.quote(str(Path.cwd()))} && {command}"


def _without_schedule(run_config: str, argv: Sequence[str], scratch: Path) -> str:
    """``run_config`` itself when the stack can schedule it (or it has no schedule); else a copy in
    ``scratch`` without the schedule, after telling the user how to get the same effect from cron."""
    from zenml.client import Client

    data = yaml.safe_load(Path(run_config).read_text(encoding="utf-8")) or {}
    schedule = data.get("schedule")
    orchestrator = Client().active_stack.orchestrator
    if not schedule or orchestrator.config.is_schedulable:
        return run_config
    cron = schedule.get("cron_expression", "<cron expression>")
    print(
        f"note: the '{orchestrator.name}' orchestrator ({orchestrator.flavor}) does not support schedules; "
        "running once now. To repeat it on the schedule, add this crontab line:\n  " + crontab_line(cron, argv)
    )
    data.pop("schedule")
    copy = scratch / Path(run_config).name
    copy.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(copy)


def summarize(run: Any) -> None:
    """Each step's status, then the report files."""
    from zenml.client import Client

    run = Client().get_pipeline_run(run.id)
    print(f"\npipeline run '{run.name}': {run.status.value}")
    for name, step in run.steps.items():
        print(f"  {name:32s} {step.status.value}")
    report = run.steps.get("build_report")
    if report is not None:
        files = report.outputs["report_files"][0].load()
        print(f"report: {files.markdown} (also .csv, .html)")


def run_pipeline(
    pipeline: Any,
    parameters: dict[str, Any],
    no_cache: bool = False,
    run_config: str | None = None,
    argv: Sequence[str] = (),
) -> Any:
    """Run ``pipeline`` with ``parameters`` (and a ZenML run configuration file); returns the run, or
    None when the run was registered as a schedule."""
    ensure_repository()
    options: dict[str, Any] = {"enable_cache": False} if no_cache else {}
    # ZenML reads the configuration file when the run starts, so the copy must outlive the call.
    with tempfile.TemporaryDirectory(prefix="run-config-") as scratch:
        if run_config:
            options["config_path"] = _without_schedule(run_config, argv, Path(scratch))
        run = pipeline.with_options(**options)(**parameters)
    if run is None:
        print(f"pipeline '{pipeline.name}' registered on its schedule")
    else:
        summarize(run)
    return run


def main(
    pipeline: Any,
    description: str,
    extra_options: Callable[[argparse.ArgumentParser], Sequence[str]] | None = None,
    argv: Sequence[str] | None = None,
) -> Any:
    """Entry point of ``python -m pipelines.<module>``; ``extra_options`` adds the pipeline's own
    options and returns their parameter names."""
    default_config = inspect.signature(pipeline.entrypoint).parameters["config"].default
    parser = build_parser(description, default_config)
    names = extra_options(parser) if extra_options else ()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    # Run as `python -m pipelines.x`, the module is __main__; its spec keeps the importable name.
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = ["-m", spec.name if spec is not None else pipeline.entrypoint.__module__]
    return run_pipeline(pipeline, parameters_from(args, names), args.no_cache, args.run_config, [*module, *argv])


def run_main(
    pipeline: Any,
    description: str,
    extra_options: Callable[[argparse.ArgumentParser], Sequence[str]] | None = None,
    argv: Sequence[str] | None = None,
) -> NoReturn:
    """:func:`main` behind the project's error boundary (one line and exit 2 for anticipated errors)."""
    sys.exit(run_guarded(lambda: main(pipeline, description, extra_options, argv)))
