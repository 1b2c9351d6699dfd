"""Experiment configuration: layered YAML files validated by pydantic, plus ``key=value`` overrides.

A YAML file may name parent files under ``inherit:`` (paths relative to itself); parents are merged
first, in order, then the file itself, then the command-line overrides. Unknown keys are rejected and
every error names the offending key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import UnimatchError



class ConfigError(UnimatchError, ValueError):
    """A configuration that cannot be used; the message names the file and key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(Section):
    # change detection (bi-temporal A/B/label pairs): levir-cd, whu-cd, change (your own), embedded-cd
    name: Literal["pascal", "cityscapes", "ade20k", "coco", "folder", "embedded", "levir-cd", "whu-cd", "change", "embedded-cd"] = "embedded"
    root: str = "data/embedded"
    nclass: int = Field(7, ge=2)
    crop_size: int = Field(112, gt=0)
    # Split files in the community format (IMAGE_PATH MASK_PATH); null = created by ``split`` below.
    labeled_split: str | None = None
    unlabeled_split: str | None = None
    val_split: str | None = None
    # Real-world setting: extra unlabeled pools (split files or image folders) added to the unlabeled set.
    extra_unlabeled: list[str] = Field(default_factory=list)
    # Labeled-only's reference schedule (the authors' supervised.py): labeled samples per epoch, the labeled
    # list tiled to this many (Pascal and Cityscapes 3000, ADE20K 6000, COCO 30000); null: none declared.
    labeled_epoch_samples: int | None = Field(None, ge=1)
    # Checked before training: file headers and sizes (cheap), full decodes and label values, or nothing.
    preflight: Literal["headers", "decode", "off"] = "headers"

    @model_validator(mode="after")
    def _change_detection_is_binary(self) -> "DatasetConfig":
        from .data.layouts import layout_task  # the layouts declare their task (imports the data layer)

        if layout_task(self.name) == "change_detection" and self.nclass != 2:
            raise ValueError(f"dataset.nclass: {self.nclass}, but change detection ('{self.name}') has 2 classes (unchanged, changed)")
        return self


class SplitConfig(Section):
    labeled: float = Field(24, gt=0, description="labeled images: a count (>= 1) or a fraction (< 1)")
    seed: int = 0
    dir: str | None = None  # where created split files go; default <output_dir>/splits


def encoder_entry(name: str):
    """The registry entry of encoder ``name`` (imported here: the registry pulls in timm)."""
    from .models.encoders import encoder_entry as lookup

    return lookup(name)


def decoder_entry(name: str):
    """The registry entry of decoder ``name`` (imported here: the registry pulls in torch)."""
    from .models.decoders import decoder_entry as lookup

    return lookup(name)


class DecoderSettings(Section):
    """A decoder's config section (``model.decoder_settings``): the fields its registered ``Settings`` declares."""


class ModelConfig(Section):
    encoder: str = "tiny"  # a registered encoder: `unimatch encoders` lists them
    decoder: str = "dpt"  # a registered decoder (dpt: UniMatch V2's; segformer: SegFormer's all-MLP head)
    # the decoder's own settings, validated against its registered Settings (dpt has none)
    decoder_settings: SerializeAsAny[DecoderSettings] = Field(default_factory=dict, validate_default=True)
    weights: str | None = None  # the encoder's released weights file (e.g. dinov2_vitb14_pretrain.pth)
    init_checkpoint: str | None = None  # a whole segmentor (ours or the authors' released UniMatch V2)
    hub_download: bool = False  # online only: fetch DINOv2 weights from torch.hub when weights is null
    frozen: bool = False
    use_bn: bool = False
    drop_position: Literal["encoder-decoder", "decoder-classifier"] = "encoder-decoder"
    undropped_fraction: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("encoder")
    @classmethod
    def _registered(cls, value: str) -> str:
        encoder_entry(value)  # ValueError naming the registered encoders
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


def method_class(name: str):
    """The registered method ``name`` (imported here: the registry pulls in torch)."""
    from .methods import method_class as lookup

    return lookup(name)


class MethodSettings(Section):
    """A method's config section: its ``name`` and the fields its registered class declares (its
    ``Settings``), so a key exists only where it means something."""

    name: str


class PseudoLabelSettings(MethodSettings):
    """What every method that learns from a teacher's pseudo labels reads."""

    threshold: float = Field(0.95, ge=0.0, le=1.0)
    unlabeled_weight: float = Field(1.0, ge=0.0)
    teacher: Literal["ema", "student"] | None = None  # null: the encoder's default (BEiT: student)
    ema_decay: float = Field(0.996, ge=0.0, lt=1.0)


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


class TrainConfig(Section):
    epochs: int = Field(8, ge=1)
    max_iters: int | None = Field(None, ge=1)  # cap on total iterations (quick runs, tests)
    batch_size: int = Field(4, ge=1)  # per step and process: this many labeled and this many unlabeled images
    lr: float | None = Field(None, gt=0)  # encoder learning rate; null: the encoder's default (DINOv2 5e-6)
    lr_multiplier: float | None = Field(None, gt=0)  # decoder lr = lr * lr_multiplier; null: the encoder's (DINOv2 40)
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: AllSpark's recipe (with momentum below)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd
    poly_power: float = Field(0.9, ge=0)
    labeled_loss: Literal["ce", "ohem"] = "ce"
    ohem_threshold: float = Field(0.7, gt=0, le=1)
    ohem_min_kept: int = Field(200000, ge=1)
    amp: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    seed: int = 0
    deterministic: bool = False
    num_workers: int = Field(2, ge=0)
    eval_every: int = Field(1, ge=1)  # epochs
    log_every: int = Field(20, ge=1)  # iterations
    checkpoint_every: int = Field(100, ge=1)  # iterations between resumable checkpoints
    # K > 0: the weights also kept at K evenly spaced iterations, the last at the end of training, as
    # checkpoints/snapshot_<k>of<K>.pth (ST++'s stability snapshots: K = 3)
    snapshots: int = Field(0, ge=0)
    resume: bool = True  # continue from <output_dir>/checkpoints/latest.pth when it exists
    max_bad_steps: int = Field(0, ge=0)  # non-finite losses skipped before training stops
    device: str = "auto"
    # > 1: `unimatch train` and the ZenML step start this many processes (one per GPU) through torchrun;
    # batch_size is per process. Under an existing torchrun launch, torchrun's WORLD_SIZE decides.
    gpus: int = Field(1, ge=1)
    compile: bool = False  # torch.compile the ViT blocks (for CUDA; the first steps take minutes)


class PretrainConfig(Section):
    """Self-supervised encoder pre-training (unimatch/pretrain.py) for settings without DINOv2 weights."""

    method: Literal["none", "mae"] = "none"  # mae: used when model.weights and model.init_checkpoint are unset
    iterations: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1.5e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_iters: int = Field(100, ge=0)
    mask_ratio: float = Field(0.75, gt=0, lt=1)
    min_scale: float = Field(0.3, gt=0, le=1)  # smallest random-resized-crop area share
    decoder_dim: int = Field(64, ge=8)
    decoder_depth: int = Field(2, ge=1)
    seed: int = 0
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    dir: str = "runs/pretrain"  # cache: <dir>/<dataset>-<encoder>-<method>-<digest>/encoder.pth


class EvalConfig(Section):
    mode: Literal["original", "sliding"] = "original"
    window: int | None = None  # sliding window size; default crop_size
    stride_ratio: float = Field(2 / 3, gt=0, le=1)
    batch_size: int = Field(1, ge=1)
    # Unlabeled images with ground truth on which the teacher's pseudo labels are scored every epoch
    # (pseudo/* metrics); 0 switches it off. Their masks are never used for training.
    pseudo_label_images: int = Field(400, ge=0)
    # "original" mode runs one attention pass over the whole image: above this many patch tokens
    # (default ~ 1800x1800 px) an image is predicted in sliding windows instead.
    max_tokens: int = Field(16384, ge=1)


class TrackingConfig(Section):
    uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "unimatch"
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True
    # The best EMA model of a training as an MLflow model (artifact "model": mlflow.pytorch.load_model),
    # registered as a version of `registered_model` (default: the experiment name) whose aliases
    # `best` and `best-<method>` follow the highest best_miou_ema.
    log_model: bool = True
    registered_model: str | None = None


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
                getattr(self, section).__dict__[key] = getattr(entry, field)  # no re-validation: the registry's own value
        for key, value in (("dataset.crop_size", self.dataset.crop_size), ("eval.window", self.eval.window)):
            if value is not None and value % entry.size_divisor:
                raise ValueError(f"{key}: {value} is not a multiple of {entry.size_divisor}, the size divisor of "
                                 f"encoder '{entry.name}'")  # fmt: skip
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys that decide where a run writes and how it is watched or scheduled, not what it computes.
NON_RESULT_KEYS = ("output_dir", "tracking", "split.dir", "pretrain.dir", "train.resume", "train.num_workers",
                   "train.checkpoint_every", "train.log_every", "train.device", "train.snapshots", "dataset.preflight")  # fmt: skip


def config_digest(cfg: ExperimentConfig) -> str:
    """A short digest of what decides a run's result: two runs with the same digest are the same
    experiment (reports keep one of them), whatever their output folder, store or loader workers."""
    flat = flatten(cfg.to_dict())
    kept = {key: value for key, value in flat.items()
            if not any(key == skip or key.startswith(skip + ".") for skip in NON_RESULT_KEYS)}  # fmt: skip
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


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


def validate_as(schema: type[SchemaT], data: dict[str, Any], source: str = "config", overrides: list[str] | None = None) -> SchemaT:
    """``data`` validated as ``schema``; a ConfigError naming every offending key and where its value
    came from: one of ``overrides`` or ``source``."""
    try:
        return schema.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            if item["loc"]:
                key, message = ".".join(str(part) for part in item["loc"]), f"{item['msg']}"
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
