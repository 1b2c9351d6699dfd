"""Experiment tracking on MLflow: the store adapter (:class:`Tracker`, :class:`MlflowTracker`), the store's
URI and its checks, and :func:`tracker_from_config`, which opens a run with the naming rules of
:mod:`.naming`."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from unimatch.config import ExperimentConfig, flatten
from unimatch.errors import UnimatchError, one_line

from .naming import (
    GROUP_TAG,
    MODEL_ARTIFACT,
    MODEL_TAG,
    PARENT_RUN_TAG,
    REGISTERED_TAG,
    SCORE_TAG,
    config_tags,
    default_run_name,
    format_number,
    run_params,
    sanitize_key,
    truncate,
)

log = logging.getLogger(__name__)


CHECK_TIMEOUT_S = 5


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence ``logger`` below ERROR for a moment (MLflow warns about pickling, which is chosen here)."""
    target = logging.getLogger(logger)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def using_store(uri: str) -> contextlib.AbstractContextManager[None]:
    """MLflow's global store at ``uri`` for a moment, then exactly as it was (unset included: MLflow's own
    helper, since ``set_tracking_uri`` cannot restore "unset"). The fluent API (``mlflow.pytorch.log_model``)
    and parts of MLflow that ignore a client's URI (logged-model lookups) read only the global one."""

    return _use_tracking_uri(uri)


class TrackingError(UnimatchError, RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri`` if given, else ``MLFLOW_TRACKING_URI``, else a sqlite file in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def redact(text: str, uri: str) -> str:
    """``text`` with the password of ``uri`` (if any) masked, so it can go into errors and logs."""
    password = urlsplit(uri).password
    return text.replace(password, "***") if password else text


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other schemes and in-memory databases)."""
    if not uri.startswith("sqlite://"):
        return None
    # sqlite:///rel.db is relative, sqlite:////abs.db absolute: drop exactly one slash.
    path = uri[len("sqlite://") :].split("?", 1)[0][1:]
    return Path(path).resolve() if path and path != ":memory:" else None


@contextlib.contextmanager
def _fast_http() -> Iterator[None]:
    """No retries and a short timeout for MLflow's REST client (its defaults retry for minutes).
    MLflow reads these variables per request; the process-wide change lasts only for the check."""
    fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CHECK_TIMEOUT_S)}
    saved = {key: os.environ.get(key) for key in fast}
    os.environ.update(fast)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_sqlite_location(db: Path, shown: str) -> None:
    # MLflow would silently create missing directories: a typo must not grow a new tree.
    if not db.parent.is_dir():
        raise TrackingError(f"tracking URI {shown}: directory {db.parent} does not exist")
    if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
        raise TrackingError(f"tracking URI {shown}: {db} is not writable")


def check_tracking_uri(uri: str) -> None:
    """Raise :class:`TrackingError` within seconds when the store at ``uri`` cannot be used."""

    shown = redact(uri, uri)
    db = sqlite_path(uri)
    if db is not None:
        _check_sqlite_location(db, shown)
    try:
        with _fast_http():
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:  # any failure here means the store is unusable; say which one
        raise TrackingError(
            f"tracking URI {shown} is not usable: {redact(str(error), uri)}. "
            "Fix tracking.uri / MLFLOW_TRACKING_URI, or set tracking.enabled=false."
        ) from error


class Tracker:
    """Tracking switched off: every call is a no-op."""

    @property
    def run_id(self) -> str | None:
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_model(self, model: Any, metadata: Mapping[str, Any], flavor: ModuleType, **options: Any) -> str | None:
        """Log ``model`` as an MLflow model through the flavour module ``flavor``; its URI (None when not
        tracking or already logged)."""
        return None

    def register_model(self, name: str, score: float, group: str) -> str | None:
        """Register the logged model as a version of ``name``; the version (None when not tracking)."""
        return None

    def registered_model_uri(self) -> str | None:
        """``models:/NAME/VERSION`` of the model this run registered earlier (None: none)."""
        return None

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish("FINISHED")
            return
        if not issubclass(exc_type, KeyboardInterrupt):
            try:  # why it failed, on the run page; never masking the error itself
                self.set_tags({"unimatch.error": one_line(exc)})
            except Exception as error:
                log.warning("could not record the error on the run: %s", error)
        self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


class MlflowTracker(Tracker):
    """Logs into an MLflow run through ``MlflowClient`` (no global fluent state is changed).

    If a run is already active in this process (ZenML's MLflow experiment tracker opens one per step),
    everything goes into that run, ``uri``/``experiment``/``run_name`` are ignored and :meth:`finish`
    only records the outcome in the tag ``unimatch.status``: the run belongs to whoever opened it.
    ``resume_run_id`` reopens an earlier run of ours (e.g. training resumed from a checkpoint).
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        resume_run_id: str | None = None,
    ) -> None:
        active = mlflow.active_run()
        self._owns_run = active is None
        self._store = uri if self._owns_run else mlflow.get_tracking_uri()
        self._client = MlflowClient(tracking_uri=self._store, registry_uri=self._store)  # models next to their runs
        self._uri = uri
        self._logged_params: dict[str, str] | None = None  # fetched lazily, for resume
        self._warned: set[str] = set()
        self._finished = False
        if active is not None:
            self._run_id = active.info.run_id
            self.set_tags(tags or {})
        elif resume_run_id is not None and self._reopenable(resume_run_id):
            self._run_id = resume_run_id
            self._client.update_run(resume_run_id, status="RUNNING")
            self.set_tags(tags or {})
        else:
            self._run_id = self._create_run(experiment, run_name, tags or {})

    @property
    def run_id(self) -> str | None:
        return self._run_id

    def _reopenable(self, run_id: str) -> bool:
        """Whether ``run_id`` is a live run of this store (a checkpoint may outlive its run or its store)."""

        try:
            lifecycle = self._client.get_run(run_id).info.lifecycle_stage
        except MlflowException:
            lifecycle = "missing"
        if lifecycle != "active":
            log.warning(
                "MLflow run %s is %s in %s; logging into a new run", run_id, lifecycle, redact(self._uri, self._uri)
            )
        return lifecycle == "active"

    def _create_run(self, experiment: str, run_name: str | None, tags: Mapping[str, Any]) -> str:
        # resolve_tags adds the user/source/git-commit tags that mlflow.start_run would.
        run = self._client.create_run(
            self._experiment_id(experiment), tags=resolve_tags(self._clean_tags(tags)), run_name=run_name
        )
        return run.info.run_id

    def _experiment_id(self, name: str) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is None:
            try:
                return self._client.create_experiment(name, artifact_location=self._artifact_location(name))
            except Exception:  # another process may have created it meanwhile
                found = self._client.get_experiment_by_name(name)
                if found is None:
                    raise
        if found.lifecycle_stage == "deleted":
            raise TrackingError(
                f"experiment '{name}' in {redact(self._uri, self._uri)} is deleted: restore it "
                "(mlflow experiments restore) or choose another tracking.experiment"
            )
        return found.experiment_id

    def _artifact_location(self, experiment: str) -> str | None:
        # The sqlite store's default artifact root is ./mlruns of whatever directory the process runs
        # in; keep artifacts next to the database instead.
        db = sqlite_path(self._uri)
        if db is None:
            return None
        return (db.parent / "mlartifacts" / re.sub(r"[^\w.-]", "_", experiment)).as_uri()

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self._logged_params is None:
            self._logged_params = dict(self._client.get_run(self._run_id).data.params)
        fresh = {}
        for key, value in flatten(dict(params)).items():
            # One spelling per value, as in tags: 24 (not 24.0), true (not True).
            key, text = sanitize_key(key), truncate(format_number(value), MAX_PARAM_VAL_LENGTH)
            old = self._logged_params.get(key)
            if old is None:
                fresh[key] = text
            elif old != text:
                # MLflow params are immutable: keep the first value rather than fail a resumed run.
                log.warning("param %s already logged as %r; not overwriting with %r", key, old, text)
        self._send("params", [Param(key, value) for key, value in fresh.items()], MAX_PARAMS_TAGS_PER_BATCH)
        self._logged_params.update(fresh)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        timestamp = int(time.time() * 1000)
        finite = {}
        for key, value in metrics.items():
            value = float(value)
            if math.isfinite(value):
                finite[key] = value
            elif key not in self._warned:  # once per key: a diverging loss would flood the log
                self._warned.add(key)
                log.warning("metric %s = %s at step %s is not finite; not logged", key, value, step)
        batch = [Metric(sanitize_key(key), value, timestamp, step or 0) for key, value in finite.items()]
        self._send("metrics", batch, MAX_METRICS_PER_BATCH)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self._client.log_artifacts(self._run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(self._run_id, str(path), artifact_path)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        self._client.log_figure(self._run_id, fig, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self._run_id, text, artifact_file)

    @staticmethod
    def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
        return {sanitize_key(key): truncate(format_number(value), MAX_TAG_VAL_LENGTH) for key, value in tags.items()}

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(key, value) for key, value in self._clean_tags(tags).items()]
        self._send("tags", batch, MAX_PARAMS_TAGS_PER_BATCH)

    def log_model(self, model: Any, metadata: Mapping[str, Any], flavor: ModuleType, **options: Any) -> str | None:
        """``model`` (a torch module) logged by ``mlflow.models.Model.log`` through the flavour module
        ``flavor`` (a ``save_model(path, mlflow_model, pytorch_model=..., **options)``) as this run's model
        ``model`` (an MLflow 3 logged model: ``runs:/<run>/model`` and ``models:/<model id>`` load it), with
        ``metadata`` (class names, encoder...); its ``models:/`` URI. Pickled: ``mlflow.pytorch.load_model``
        gives the segmentor back as it trained. Skipped (None) when the run already holds one (a finished
        training run again)."""
        run = self._client.get_run(self._run_id)
        if MODEL_TAG in run.data.tags:
            return None
        # Created here so that it belongs to the run's experiment and store, not the fluent API's defaults.
        logged = self._client.create_logged_model(
            run.info.experiment_id, name=MODEL_ARTIFACT, source_run_id=self._run_id
        )
        with using_store(self._store), _quiet("mlflow.pytorch"):
            info = Model.log(
                None,  # artifact_path: deprecated, MLflow 3 names the logged model instead
                name=MODEL_ARTIFACT,
                flavor=flavor,
                model_id=logged.model_id,
                run_id=self._run_id,
                metadata=dict(metadata),
                pytorch_model=model,
                serialization_format="pickle",
                **options,
            )
        self.set_tags({MODEL_TAG: info.model_uri})
        return info.model_uri

    def register_model(self, name: str, score: float, group: str) -> str | None:
        """A new version of registered model ``name`` from this run's model, tagged with its ``score``
        and ``group`` (the method); aliases ``best`` and ``best-<group>`` (``+`` spelt ``p``) then point at
        the highest scoring versions."""

        try:
            self._client.create_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        with using_store(self._store):  # MLflow's registry resolves a models:/ source in the global store
            version = self._client.create_model_version(
                name,
                self._client.get_run(self._run_id).data.tags[MODEL_TAG],
                run_id=self._run_id,
                tags={SCORE_TAG: str(score), GROUP_TAG: group},
            ).version
        versions = self._client.search_model_versions(f"name='{name}'")
        # Aliases allow letters, digits, _ and - only: st++ becomes best-stpp.
        group_alias = "best-" + re.sub(r"[^A-Za-z0-9_-]", "_", group.replace("+", "p"))
        for alias, members in (
            ("best", versions),
            (group_alias, [v for v in versions if v.tags.get(GROUP_TAG) == group]),
        ):
            scored = [v for v in members if SCORE_TAG in v.tags]
            if scored:
                top = max(scored, key=lambda v: (float(v.tags[SCORE_TAG]), int(v.version)))
                self._client.set_registered_model_alias(name, alias, top.version)
        self.set_tags({REGISTERED_TAG: f"models:/{name}/{version}"})
        return version

    def registered_model_uri(self) -> str | None:
        return self._client.get_run(self._run_id).data.tags.get(REGISTERED_TAG)

    def _send(self, kind: str, items: list[Any], limit: int) -> None:
        """One ``log_batch`` call per ``limit`` items (MLflow caps batch sizes per kind)."""
        for start in range(0, len(items), limit):
            self._client.log_batch(self._run_id, **{kind: items[start : start + limit]})

    def finish(self, status: str = "FINISHED") -> None:
        if self._finished:
            return
        self._finished = True
        if self._owns_run:
            self._client.set_terminated(self._run_id, status)
        else:
            self.set_tags({"unimatch.status": status})


def log_to_run(uri: str, run_id: str | None, path: str | Path, artifact_path: str) -> bool:
    """Add the file ``path`` to the artifacts of the existing run ``run_id`` of the store at ``uri`` (a
    finished training's run, e.g. its model's exports); False when the store does not hold that run."""
    if run_id is None or not _run_exists(uri, run_id):
        return False
    MlflowClient(tracking_uri=uri).log_artifact(run_id, str(path), artifact_path)
    return True


def _run_exists(uri: str, run_id: str) -> bool:
    try:
        return MlflowClient(tracking_uri=uri).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def tracker_from_config(
    cfg: ExperimentConfig,
    tags: Mapping[str, Any] | None = None,
    *,
    resume_run_id: str | None = None,
    parent_run_id: str | None = None,
) -> Tracker:
    """The tracker for one run of ``cfg``: a no-op :class:`Tracker` when tracking is disabled, else an
    :class:`MlflowTracker` (store checked first) with standard tags, the config as params and
    ``config.yaml`` as an artifact. ``parent_run_id`` (an evaluation's training run) nests the run
    under that run in the MLflow UI when the store holds it."""

    if not cfg.tracking.enabled:
        return Tracker()
    uri = resolve_tracking_uri(cfg.tracking.uri)
    if mlflow.active_run() is None:  # an active run's store is evidently usable
        check_tracking_uri(uri)
    all_tags = {**config_tags(cfg), **cfg.tracking.tags, **(tags or {})}
    if parent_run_id and _run_exists(uri, parent_run_id):
        all_tags[PARENT_RUN_TAG] = parent_run_id
    run_name = cfg.tracking.run_name or default_run_name(cfg)
    tracker = MlflowTracker(uri, cfg.tracking.experiment, run_name, all_tags, resume_run_id=resume_run_id)
    tracker.log_params(run_params(cfg))
    tracker.log_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), "config.yaml")
    return tracker
