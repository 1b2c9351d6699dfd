"""The shared training engine: data streams, optimiser, EMA teacher, AMP, logging, checkpoints."""

from .checkpoint import TrainingError
from .ema import ema_decay, update_ema
from .setup import build_model, resolve_device
from .trainer import Trainer, TrainResult, resumable_run_id

__all__ = [
    "TrainResult",
    "Trainer",
    "TrainingError",
    "build_model",
    "ema_decay",
    "resolve_device",
    "resumable_run_id",
    "update_ema",
]
