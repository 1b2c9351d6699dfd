"""Experiment configuration: layered YAML files validated by pydantic, plus ``key=value`` overrides.

The experiment (:class:`ExperimentConfig`) assembles the plain sections of :mod:`unimatch.settings` and
checks them against the registries: encoder, decoder and method names, each method's and decoder's own
settings, sizes that suit the encoder. A YAML file may name parent files under ``inherit:`` (paths relative
to itself); parents are merged first, in order, then the file itself, then the command-line overrides.
Unknown keys are rejected and every error names the offending key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .data.layouts import layout_task
from .errors import ConfigError
from .methods import method_class
from .models.classifier import NETWORKS
from .models.decoders import decoder_entry
from .models.encoders import encoder_entry
from .settings import (
    DatasetSettings,
    DecoderSettings,
    EvalConfig,
    MethodSettings,
    ModelSettings,
    PretrainConfig,
    Section,
    SplitConfig,
    TrackingConfig,
    TrainConfig,
)


class DatasetConfig(DatasetSettings):
    """The ``dataset`` section, checked against the layouts' tasks."""

    @model_validator(mode="after")
    def _classification_splits_name_no_val(self) -> "DatasetConfig":
        if layout_task(self.name) == "classification" and self.val_split is not None:
            raise ValueError(f"dataset.val_split: classification evaluates the test subset of '{self.name}'")
        return self

    @model_validator(mode="after")
    def _change_detection_is_binary(self) -> "DatasetConfig":
        if layout_task(self.name) == "change_detection" and self.nclass != 2:
            raise ValueError(
                f"dataset.nclass: {self.nclass}, but change detection ('{self.name}') has 2 classes "
                "(unchanged, changed)"
            )
        return self


def registered_encoder(name: str) -> str:
    """``name`` when it is a registered encoder, else the registry's ValueError naming the registered ones."""
    encoder_entry(name)
    return name


# A config field holding an encoder name (model.encoder, the foundation recipe's encoder).
RegisteredEncoder = Annotated[str, AfterValidator(registered_encoder)]


class ModelConfig(ModelSettings):
    """The ``model`` section, its encoder, decoder and decoder settings checked against the registries."""

    encoder: RegisteredEncoder = ModelSettings.model_fields["encoder"].default

    @field_validator("network")
    @classmethod
    def _registered_network(cls, value: str | None) -> str | None:
        if value is not None:
            NETWORKS.entry(value)  # ValueError naming the registered wide ResNets
        return value

    @field_validator("decoder")
    @classmethod
    def _registered_decoder(cls, value: str) -> str:
        decoder_entry(value)  # ValueError naming the registered decoders
        return value

    @field_validator("decoder_settings", mode="before")
    @classmethod
    def _decoder_settings(cls, value: Any, info: ValidationInfo) -> Any:
        """The section validated as its decoder's own ``Settings`` (skipped when the decoder is unknown)."""
        if "decoder" not in info.data or isinstance(value, DecoderSettings):
            return value
        return decoder_entry(info.data["decoder"]).Settings.model_validate(value or {})


DEFAULT_METHOD = "unimatch_v2"


def follow_method_name(section: dict[str, Any], name: Any) -> dict[str, Any]:
    """A method section renamed to another method keeps what the new method accepts and drops the rest
    (τ and λ survive a switch from UniMatch V2 to FixMatch; ``streams`` does not)."""
    if section.get("name", DEFAULT_METHOD) == name:
        return section
    try:
        fields = method_class(name).Settings.model_fields
    except ValueError:  # an unknown name: validation reports it with the choices
        return {**section, "name": name}
    return {**{key: value for key, value in section.items() if key in fields}, "name": name}


# Settings that default to the encoder's declaration (registry field) when a config leaves them null.
ENCODER_DEFAULTS = {"train.lr": "lr", "train.lr_multiplier": "lr_multiplier", "method.teacher": "teacher"}


class ExperimentConfig(Section):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: SerializeAsAny[MethodSettings] = Field(default_factory=lambda: method_class(DEFAULT_METHOD).Settings())
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: str = "runs/default"

    @field_validator("method", mode="before")
    @classmethod
    def _registered_method(cls, value: Any) -> Any:
        """The section validated as its method's own ``Settings`` (unknown name: the choices)."""
        if isinstance(value, MethodSettings) or not isinstance(value, dict):
            return value
        return method_class(value.get("name", DEFAULT_METHOD)).Settings.model_validate(value)

    @model_validator(mode="after")
    def _fit_the_encoder(self) -> "ExperimentConfig":
        """Fill the settings left null from the encoder's declaration; sizes must suit its divisor."""
        entry = encoder_entry(self.model.encoder)
        for dotted, field in ENCODER_DEFAULTS.items():
            section, key = dotted.split(".")
            if key in type(getattr(self, section)).model_fields and getattr(getattr(self, section), key) is None:
                getattr(self, section).__dict__[key] = getattr(
                    entry, field
                )  # no re-validation: the registry's own value
        for key, value in (("dataset.crop_size", self.dataset.crop_size), ("eval.window", self.eval.window)):
            if value is not None and value % entry.size_divisor and not self.model.network:  # a WRN: any size
                raise ValueError(
                    f"{key}: {value} is not a multiple of {entry.size_divisor}, the size divisor of "
                    f"encoder '{entry.name}'"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys that decide where a run writes and how it is watched or scheduled, not what it computes.
NON_RESULT_KEYS = (
    "output_dir",
    "tracking",
    "split.dir",
    "pretrain.dir",
    "train.resume",
    "train.num_workers",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "train.snapshots",
    "dataset.preflight",
    # issue 29: where the nodes meet and how a failure restarts; checkpointing recomputes the same gradients
    "train.rdzv_endpoint",
    "train.rdzv_id",
    "train.max_restarts",
    "train.node_rank",
    "model.activation_checkpointing",
)


def config_digest(cfg: ExperimentConfig) -> str:
    """A short digest of what decides a run's result: two runs with the same digest are the same
    experiment (reports keep one of them), whatever their output folder, store or loader workers."""
    flat = flatten(cfg.to_dict())
    kept = {
        key: value
        for key, value in flat.items()
        if not any(key == skip or key.startswith(skip + ".") for skip in NON_RESULT_KEYS)
    }
    return tree_digest(kept)


def tree_digest(tree: dict[str, Any], length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``tree`` as canonical JSON."""
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:length]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params and override keys use this dotted form."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    """``tree['a']['b']`` for ``'a.b'``."""
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_layers(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged dict of a YAML file and the files it inherits from."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: inherit cycle through {[str(p) for p in _seen]}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    parents = data.pop("inherit", []) or []
    if isinstance(parents, str):
        parents = [parents]
    merged: dict[str, Any] = {}
    for parent in parents:
        merged = _with_method_of(merged, read_layers(path.parent / parent, (*_seen, path)))
    return _with_method_of(merged, data)


def _with_method_of(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``layer`` merged over ``base``; a layer naming another method first renames ``base``'s section."""
    name = (layer.get("method") or {}).get("name") if isinstance(layer.get("method"), dict) else None
    if name is not None and isinstance(base.get("method"), dict):
        base = {**base, "method": follow_method_name(base["method"], name)}
    return deep_merge(base, layer)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    return key.split("."), yaml.safe_load(raw) if raw else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        if path == ["method", "name"] and isinstance(data.get("method"), dict):
            data["method"] = follow_method_name(data["method"], value)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[path[-1]] = value
    return data


def validate(data: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> ExperimentConfig:
    return validate_as(ExperimentConfig, data, source, overrides)


SchemaT = TypeVar("SchemaT", bound=BaseModel)


def _origin(key: str, source: str, overrides: list[str]) -> str:
    """Where the value at dotted ``key`` came from: the last command-line override that set it (or a
    section above it), else ``source`` (the YAML file)."""
    for text in reversed(overrides):
        path = text.split("=", 1)[0]
        if key == path or key.startswith(path + "."):
            return f"command-line override '{text}'"
    return source


def _did_you_mean(schema: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """`` (did you mean train.epochs?)`` for a misspelt key: the closest field of the section it sits in
    (empty when the section is not a plain model or nothing is close)."""
    section: Any = schema
    for part in loc[:-1]:
        field = section.model_fields.get(str(part)) if isinstance(section, type) else None
        section = field.annotation if field is not None else None
    if not (isinstance(section, type) and issubclass(section, BaseModel)):
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(section.model_fields), n=1)
    return f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?)" if close else ""


def validate_as(
    schema: type[SchemaT], data: dict[str, Any], source: str = "config", overrides: list[str] | None = None
) -> SchemaT:
    """``data`` validated as ``schema``; a ConfigError naming every offending key and where its value
    came from: one of ``overrides`` or ``source``."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            if item["loc"]:
                key, message = ".".join(str(part) for part in item["loc"]), f"{item['msg']}"
                if item["type"] == "extra_forbidden":
                    message += _did_you_mean(schema, item["loc"])
            else:  # a check across sections: its message starts with the key it is about
                message = item["msg"].removeprefix("Value error, ")
                key, message = message.split(": ", 1)
            problems.append(f"{_origin(key, source, overrides or [])}: {key}: {message}")
        raise ConfigError("; ".join(problems)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load ``path`` (with its inherited layers; None = built-in defaults) and apply ``key=value`` overrides."""
    data = read_layers(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return validate(data, str(path) if path else "config", overrides)
