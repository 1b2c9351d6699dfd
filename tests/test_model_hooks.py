"""The model extension points: the decoder registry (DPT by default, unchanged), a method's model hooks
(``build_model``, ``on_device``, ``progress``) and buffers the EMA copies instead of blending."""


import pytest
import torch
from pydantic import Field
import torch.nn.functional as F
from torch import nn

from unimatch.config import load_config
from unimatch.engine import Trainer, update_ema
from unimatch.engine.evaluate import checkpoint_model
from unimatch.errors import ConfigError
from unimatch.jobs import train
from unimatch.methods import METHODS, register_method
from unimatch.methods.fixmatch import FixMatch
from unimatch.models import build_segmentor, read_checkpoint
from unimatch.models.decoders import DECODERS, Decoder, register_decoder
from unimatch.models.dpt import DPTHead
from unimatch.settings import DecoderSettings


def dpt_by_hand(head: DPTHead, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """DPT (Ranftl et al., 2021) for a ViT at patch stride s, written out with functional ops on the head's weights:
    each level projected (1x1) and resampled to strides s/4, s/2, s, 2s (x4 and x2 transposed convs, as is, a
    3x3 stride-2 conv), a 3x3 conv without bias to the fusion width; fusion from the coarsest level: residual
    units (ReLU, 3x3, ReLU, 3x3, plus the input), the next finer level, refined by its own unit, added, bilinear
    upsampling (corners aligned) to that level's size (x2 after the finest), a 1x1 conv; then 3x3 + ReLU, the 1x1
    classifier, and bilinear resizing to the input."""

    def residual(x, unit):
        hidden = F.conv2d(F.relu(x), unit.conv1.weight, unit.conv1.bias, padding=1)
        return x + F.conv2d(F.relu(hidden), unit.conv2.weight, unit.conv2.bias, padding=1)

    resample = (lambda x, m: F.conv_transpose2d(x, m.weight, m.bias, stride=4), lambda x, m: F.conv_transpose2d(x, m.weight, m.bias, stride=2),
                lambda x, m: x, lambda x, m: F.conv2d(x, m.weight, m.bias, stride=2, padding=1))  # fmt: skip
    levels = []
    for index, x in enumerate(maps):
        x = resample[index](F.conv2d(x, head.projects[index].weight, head.projects[index].bias), head.resize_layers[index])
        levels.append(F.conv2d(x, getattr(head.scratch, f"layer{index + 1}_rn").weight, padding=1))
    path = levels[3]
    for index in (3, 2, 1, 0):
        block = getattr(head.scratch, f"refinenet{index + 1}")
        if index < 3:
            path = path + residual(levels[index], block.resConfUnit1)
        path = residual(path, block.resConfUnit2)
        finer = levels[index - 1].shape[-2:] if index else (2 * path.shape[-2], 2 * path.shape[-1])
        path = F.conv2d(F.interpolate(path, finer, mode="bilinear", align_corners=True), block.out_conv.weight, block.out_conv.bias)
    features = F.relu(F.conv2d(path, head.scratch.output_conv[0].weight, head.scratch.output_conv[0].bias, padding=1))
    logits = F.conv2d(features, head.classifier.weight, head.classifier.bias)
    return F.interpolate(logits, size, mode="bilinear", align_corners=True)


def test_the_default_decoder_is_dpt():
    assert load_config("configs/embedded.yaml").model.decoder == "dpt"
    torch.manual_seed(0)
    model = build_segmentor("tiny", 5).eval()
    assert isinstance(model.head, DPTHead)
    with torch.no_grad():  # non-zero biases, so that each one's place in the computation counts
        for name, parameter in model.head.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.1)
    x = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        assert torch.allclose(model(x), dpt_by_hand(model.head, model.encoder(x), (56, 70)), atol=1e-5)


class LastLevelSettings(DecoderSettings):
    width: int = Field(8, ge=1)


class LastLevelDecoder(Decoder):
    """Reads only the coarsest level: a decoder need not take DPT's four."""

    def __init__(self, nclass, levels, width):
        super().__init__()
        self.project = nn.Conv2d(levels[-1].channels, width, 1)
        self.classifier = nn.Conv2d(width, nclass, 1)

    def fuse(self, maps):
        return torch.relu(self.project(maps[-1]))


def test_a_decoder_registered_here_is_configured_by_its_own_settings_and_trains(tiny_config, tmp_path):
    @register_decoder("test_last_level", "last level only", LastLevelSettings)
    def last_level(nclass, levels, encoder, settings, use_bn):
        return LastLevelDecoder(nclass, levels, settings.width)

    try:
        cfg = tiny_config(tmp_path, "train.epochs=2", "train.max_iters=4", "model.decoder=test_last_level", "model.decoder_settings.width=6", "method.name=fixmatch")
        assert cfg.model.decoder_settings.width == 6
        with pytest.raises(ConfigError, match=r"model\.decoder_settings\.width: Input should be greater than or equal to 1"):
            tiny_config(tmp_path, "train.epochs=2", "train.max_iters=4", "model.decoder=test_last_level", "model.decoder_settings.width=0")
        result = train(cfg, progress=False)
        assert result.metrics["best_miou_ema"] == max(value for _, value in result.history["val/miou_ema"])
        model = checkpoint_model(cfg, result.best_checkpoint)  # the same architecture rebuilt from the config
        assert isinstance(model.head, LastLevelDecoder) and model.head.project.out_channels == 6
        # channel dropout at the decoder-classifier position works on any decoder's fused features
        with torch.no_grad():
            logits = model.decode(model.features(torch.randn(2, 3, 42, 42)), (42, 42), "complementary")
        assert logits.shape == (2, 7, 42, 42)
    finally:
        DECODERS.pop("test_last_level")


class Bias(nn.Module):
    """A neck that shifts the last level by a learned vector and counts its calls in a copied buffer."""

    ema_copied_buffers = ("calls",)

    def __init__(self, channels):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))
        self.register_buffer("calls", torch.zeros(()))
        self.register_buffer("average", torch.zeros(()))

    def forward(self, maps):
        if self.training:
            self.calls += 1
            self.average += 1
        return [*maps[:-1], maps[-1] + self.shift[:, None, None]]


def test_a_method_changes_its_model_everywhere_and_keeps_frozen_models_outside_it(tiny_config, tmp_path):
    seen = {}

    @register_method("test_necked", "necked")
    class Necked(FixMatch):
        @classmethod
        def build_model(cls, model, settings, input_size):
            model.neck = Bias(model.encoder.feature_info[-1].channels)
            return model

        def on_device(self, model, model_cfg, device):
            self.guide = build_segmentor(model_cfg.encoder, 2).to(device).requires_grad_(False)
            seen["device"] = next(model.parameters()).device

        def step(self, student, teacher, labeled, unlabeled):
            seen.setdefault("epochs", []).append((self.progress.iteration, self.progress.epoch))
            maps = student.neck(student.features(labeled.image))
            loss = self.labeled_loss(student.decode(maps, labeled.image.shape[-2:]), labeled.mask)
            zero = torch.zeros((), device=loss.device)
            return self.combine(loss, zero, zero)

    try:
        cfg = tiny_config(tmp_path, "method.name=test_necked", "train.max_iters=null", "train.epochs=2")
        trainer = Trainer(cfg, progress=False)
        decoder_group = trainer.optimizer.param_groups[-1]
        assert any(p is trainer.model.neck.shift for p in decoder_group["params"])  # trains at the decoder's rate
        assert seen["device"] == trainer.device and not any(k.startswith("guide") for k in trainer.model.state_dict())
        result = trainer.fit()
        per_epoch = trainer.iters_per_epoch
        assert seen["epochs"] == [(i, i // per_epoch) for i in range(2 * per_epoch)]
        state = read_checkpoint(result.best_checkpoint)
        assert torch.any(state["model"]["neck.shift"] != 0)
        # The EMA teacher took the student's call count (copied) but averaged the other buffer.
        steps = 2 * per_epoch
        assert state["ema"]["neck.calls"] == state["model"]["neck.calls"] == steps
        assert 0 < state["ema"]["neck.average"] < steps
        rebuilt = checkpoint_model(cfg, result.best_checkpoint, "model")  # strict: the neck is rebuilt
        assert torch.equal(rebuilt.neck.shift, state["model"]["neck.shift"])
    finally:
        METHODS.pop("test_necked")


def test_update_ema_copies_declared_buffers_and_blends_the_rest():
    student, teacher = Bias(3), Bias(3)
    student.calls.fill_(10.0)
    student.average.fill_(10.0)
    with torch.no_grad():
        student.shift.fill_(1.0)
    update_ema(student, teacher, decay=0.9)
    assert teacher.calls.item() == 10.0 and teacher.average.item() == pytest.approx(1.0)
    assert torch.allclose(teacher.shift, torch.full((3,), 0.1))
