"""The configuration's sections as plain, self-contained pydantic models: the bottom layer that the data,
model and method modules read. Nothing here knows a registry; :mod:`unimatch.config` assembles the
experiment from these sections and checks names and sizes against the registries."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetSettings(Section):
    """The ``dataset`` section's fields; :class:`unimatch.config.DatasetConfig` adds the layout checks."""

    # change detection (bi-temporal A/B/label pairs): levir-cd, whu-cd, change (your own), embedded-cd
    name: Literal[
        "pascal",
        "cityscapes",
        "ade20k",
        "coco",
        "folder",
        "embedded",
        "levir-cd",
        "whu-cd",
        "change",
        "embedded-cd",
        # image classification (SPEC §9; unimatch/data/classification.py)
        "cifar10",
        "svhn",
        "stl10",
        "imagenet-folder",
        "embedded-cls",
    ] = "embedded"
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


class SplitConfig(Section):
    labeled: float = Field(
        24, gt=0, description="labeled images: a count (>= 1) or a fraction (< 1); classification: per class"
    )
    seed: int = 0
    dir: str | None = None  # where created split files go; default <output_dir>/splits


class DecoderSettings(Section):
    """A decoder's config section (``model.decoder_settings``): the fields its registered ``Settings`` declares."""


class ModelSettings(Section):
    """The ``model`` section's fields; :class:`unimatch.config.ModelConfig` checks the names against the registries."""

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
    # classification only: a wide ResNet (wrn-28-2, wrn-37-2) instead of `encoder` with a pooled linear head
    network: str | None = None
    # Recompute the encoder blocks' activations in the backward pass instead of keeping them (non-reentrant
    # torch.utils.checkpoint): less memory for about one more encoder forward per step (README "Fit your hardware").
    activation_checkpointing: bool = False


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


def scoring_threshold(method: MethodSettings) -> float:
    """The confidence threshold a run's pseudo labels are scored at: the method's own, or the default one for a
    method that learns from none (labeled-only), so that its teacher's quality compares with the others'."""
    return getattr(method, "threshold", PseudoLabelSettings.model_fields["threshold"].default)


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
    # cosine: FixMatch's lr x cos(7 pi k / 16 K) (the classification recipe, SPEC §9)
    lr_schedule: Literal["poly", "cosine"] = "poly"
    # classification: unlabeled images per step = batch_size x this (FixMatch's uratio, 7)
    unlabeled_ratio: int = Field(1, ge=1)
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
    # Gradient accumulation: K micro-batches of batch_size per optimizer step, so that batch_size x K x processes
    # is the effective batch. EMA, learning-rate schedule, logging and checkpoints count optimizer steps.
    accumulate: int = Field(1, ge=1)
    # Multi-node training (torchrun's elastic rendezvous): every node runs the same `unimatch train` command with
    # train.gpus processes; nnodes > 1 needs rdzv_endpoint (host:port of one node, reachable from all).
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = None
    rdzv_id: str = "unimatch"  # one id per training: the nodes of one run meet under it
    # set: a fixed place instead of the elastic rendezvous (torchrun's static one at rdzv_endpoint); node 0 holds
    # global rank 0, hence the result and the MLflow run (a ZenML step's pod as node 0)
    node_rank: int | None = Field(None, ge=0)
    max_restarts: int = Field(0, ge=0)  # torchrun restarts the ranks this often after a failure (then: rerun)


class PretrainConfig(Section):
    """Self-supervised encoder pre-training (unimatch/apps/mae.py) for settings without DINOv2 weights."""

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
