"""Image classifiers (SPEC §9): a backbone, global average pooling and a linear head, with UniMatch V2's
channel dropout on the pooled feature before the head (where the classification variant applies it: a
design decision of this project, the paper does not say).

Backbones: the wide ResNets of the FixMatch/USB logs (``wrn-28-2``: WRN-28-2, 1,469,642 parameters with a
10-class head; ``wrn-37-2``: USB's ``WideResNetVar`` for STL-10, 5,933,770), or any registered encoder,
pooled over its last feature map (so the shipped foundation encoder serves the embedded default).

The classifier's logits are (B, nclass, 1, 1): an image-level label is a 1 x 1 mask to the engine, so the
methods' losses, pseudo labels and confidence masks, the EMA, evaluation and checkpoints are the segmentation
engine's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..utils.registry import Registry
from .encoders import encoder_entry
from .segmentor import EncoderDecoder, FeatureDrop

BN_MOMENTUM = 0.001  # USB's bn_momentum (PyTorch's convention: weight of the new batch)
LEAKY_SLOPE = 0.1


class WideBlock(nn.Module):
    """Pre-activation basic block of the FixMatch/USB WideResNet (its convolutions have biases, as USB's)."""

    def __init__(self, inputs: int, outputs: int, stride: int, activate_before_residual: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs, momentum=BN_MOMENTUM)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(outputs, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=False)
        self.shortcut = None if inputs == outputs else nn.Conv2d(inputs, outputs, 1, stride, 0)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act(self.bn1(x))
        # the first block of the first group feeds the activated input to the shortcut too (as FixMatch's code)
        residual = activated if self.shortcut is not None and self.activate_before_residual else x
        out = self.conv2(self.act(self.bn2(self.conv1(activated))))
        return out + (residual if self.shortcut is None else self.shortcut(residual))


class WideResNet(nn.Module):
    """The WRN backbone up to its last activation; ``forward`` returns [the last (B, C, h, w) map]."""

    def __init__(self, depth: int, widen: int, groups: int):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        blocks = (depth - 4) // 6
        channels = [16] + [16 * widen * 2**g for g in range(groups)]
        self.conv = nn.Conv2d(3, 16, 3, 1, 1)
        layers = []
        for group in range(groups):
            for index in range(blocks):
                inputs = channels[group] if index == 0 else channels[group + 1]
                stride = 2 if group and index == 0 else 1
                layers.append(WideBlock(inputs, channels[group + 1], stride, group == 0 and index == 0))
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(channels[-1], momentum=BN_MOMENTUM)
        self.act = nn.LeakyReLU(LEAKY_SLOPE)
        self.width = channels[-1]
        for module in self.modules():  # FixMatch's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.act(self.bn(self.blocks(self.conv(x))))]


NETWORKS: Registry[Callable[[], WideResNet]] = Registry("classification network")
NETWORKS.update({"wrn-28-2": lambda: WideResNet(28, 2, 3), "wrn-37-2": lambda: WideResNet(28, 2, 4)})


class Classifier(EncoderDecoder):
    """Backbone -> global average pool -> (channel dropout) -> linear head; logits (B, nclass, 1, 1)."""

    def __init__(
        self, backbone: nn.Module, width: int, nclass: int, undropped_fraction: float = 0.5, size_divisor: int = 1
    ) -> None:
        """``backbone``: images -> feature maps whose last has ``width`` channels (a WRN or a registered encoder,
        kept as ``encoder`` so that encoder weights load as into a segmentor)."""
        super().__init__()
        if nclass < 2:
            raise ValueError(f"nclass must be at least 2, got {nclass}")
        self.encoder = backbone
        self.head = nn.Linear(width, nclass)
        nn.init.zeros_(self.head.bias)
        self.undropped_fraction = undropped_fraction
        self.size_divisor = size_divisor

    def decoder_modules(self) -> list[nn.Module]:
        return [self.head]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._encode(x)

    def decode(self, maps: Sequence[torch.Tensor], size: Sequence[int] = (), drop: FeatureDrop = None) -> torch.Tensor:
        """Logits (B, nclass, 1, 1) of the pooled last map; ``drop``: channel dropout on the pooled feature,
        ``complementary`` treating the batch's halves as the two views of each image. ``size`` is unused (the
        segmentor's signature)."""
        pooled = maps[-1].mean(dim=(2, 3))
        if drop is not None:
            pooled = pooled * self.drop_masks(drop, *pooled.shape, pooled.device)
        return self.head(pooled)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.features(x))


def build_classifier(
    encoder: str, nclass: int, network: str | None = None, input_size: int = 32, undropped_fraction: float = 0.5
) -> Classifier:
    """``network`` (a registered WRN) or, when None, the registered ``encoder`` with a pooled linear head."""
    if network is not None:
        backbone = NETWORKS.entry(network)()
        return Classifier(backbone, backbone.width, nclass, undropped_fraction)
    entry = encoder_entry(encoder)
    backbone = entry.build(input_size)
    return Classifier(backbone, backbone.feature_info[-1].channels, nclass, undropped_fraction, entry.size_divisor)
