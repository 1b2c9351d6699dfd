import math

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed

from unimatch.models import (
    CheckpointError,
    build_segmentor,
    complementary_masks,
    interpolate_pos_embed,
    load_encoder_weights,
    load_segmentor_weights,
)


def test_forward_shapes_and_feature_maps():
    model = build_segmentor("tiny", 5).eval()
    x = torch.randn(2, 3, 70, 98)
    assert model(x).shape == (2, 5, 70, 98)
    maps = model.encoder(x)
    assert len(maps) == 4
    assert all(m.shape == (2, model.encoder.embed_dim, 5, 7) for m in maps)


def test_input_not_multiple_of_the_size_divisor_is_rejected():
    with pytest.raises(ValueError, match="not a multiple of the size divisor 14 of encoder 'tiny'"):
        build_segmentor("tiny", 5)(torch.randn(1, 3, 50, 56))


def test_unknown_encoder_is_rejected():
    with pytest.raises(ValueError, match="unknown encoder 'huge'; choose one of .*giant"):
        build_segmentor("huge", 21)


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _bicubic_axis(data: np.ndarray, axis: int, scale: float, out: int) -> np.ndarray:
    """PyTorch-convention bicubic along one axis: src = (dst + 0.5) / scale - 0.5, clamped taps."""
    size = data.shape[axis]
    moved = np.moveaxis(data, axis, 0)
    result = np.zeros((out,) + moved.shape[1:])
    for i in range(out):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        for offset, weight in zip(range(-1, 3), _cubic_weights(src - base)):
            result[i] += weight * moved[min(max(base + offset, 0), size - 1)]
    return np.moveaxis(result, 0, axis)


def test_pos_embed_interpolation_follows_the_official_formula():
    torch.manual_seed(0)
    dim, side = 8, 37
    table = torch.randn(1, 1 + side * side, dim)
    grid_h, grid_w = 20, 27  # e.g. a 280 x 378 input
    ours = interpolate_pos_embed(table, grid_h, grid_w)

    grid = table[0, 1:].numpy().reshape(side, side, dim).astype(np.float64)
    expected = _bicubic_axis(grid, 0, (grid_h + 0.1) / side, grid_h)
    expected = _bicubic_axis(expected, 1, (grid_w + 0.1) / side, grid_w)
    assert ours.shape == (1, 1 + grid_h * grid_w, dim)
    assert torch.equal(ours[:, 0], table[:, 0])
    np.testing.assert_allclose(ours[0, 1:].numpy().reshape(grid_h, grid_w, dim), expected, atol=1e-5)

    # timm's size-driven resampling samples elsewhere: the official rule really is different.
    timm_resized = resample_abs_pos_embed(table, (grid_h, grid_w), (side, side), num_prefix_tokens=1)
    assert not torch.allclose(timm_resized, ours, atol=1e-3)


def test_pos_embed_is_used_as_is_at_the_training_size():
    table = torch.randn(1, 1 + 37 * 37, 4)
    assert interpolate_pos_embed(table, 37, 37) is table


def _official_layout(model) -> dict[str, torch.Tensor]:
    """The encoder's weights under DINOv2's released key names (plus its pre-training mask token)."""
    state = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    state["mask_token"] = torch.zeros(1, model.encoder.embed_dim)
    return state


def test_official_dinov2_layout_loads_strictly(tmp_path):
    source = build_segmentor("tiny", 5)
    path = tmp_path / "dinov2_vitt14_pretrain.pth"
    torch.save(_official_layout(source), path)
    target = build_segmentor("tiny", 5)
    load_encoder_weights(target, path)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.encoder.state_dict()[key], value), key


def test_official_layout_key_names():
    keys = set(build_segmentor("tiny", 5).encoder.state_dict())
    for name in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.ls1.gamma", "blocks.0.mlp.fc2.bias", "norm.weight"):
        assert name in keys
    assert build_segmentor("tiny", 5).encoder.pos_embed.shape == (1, 1370, 96)


def test_missing_or_unexpected_encoder_key_is_named(tmp_path):
    state = _official_layout(build_segmentor("tiny", 5))
    del state["blocks.1.attn.proj.weight"]
    state["blocks.9.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.proj\.weight.*blocks\.9\.extra|missing keys \['blocks\.1\.attn\.proj\.weight'\]"):
        load_encoder_weights(build_segmentor("tiny", 5), path)


# The head's parameter names in UniMatch V2's released checkpoints (DPTHead: projects, resize_layers with an
# identity at index 2, scratch.layerN_rn without bias, refinenetN with out_conv and two residual units,
# output_conv = [3x3 conv, ReLU, 1x1 classifier]), all under "module.head.".
WB = ("weight", "bias")
RELEASED_HEAD_KEYS = {
    *(f"head.projects.{i}.{p}" for i in range(4) for p in WB),
    *(f"head.resize_layers.{i}.{p}" for i in (0, 1, 3) for p in WB),
    *(f"head.scratch.layer{i}_rn.weight" for i in range(1, 5)),
    *(f"head.scratch.refinenet{i}.out_conv.{p}" for i in range(1, 5) for p in WB),
    *(f"head.scratch.refinenet{i}.resConfUnit{u}.conv{c}.{p}" for i in range(1, 5) for u in (1, 2) for c in (1, 2) for p in WB),
    *(f"head.scratch.output_conv.{i}.{p}" for i in (0, 2) for p in WB),
}


def test_released_unimatch_v2_checkpoint_loads(tmp_path):
    """A checkpoint in the released layout ("module." prefix, DINOv2 under "backbone.", the head's keys above) loads
    strictly; its classifier, set to zero weights and biases 0..4, makes every pixel's logits 0..4."""
    generator = torch.Generator().manual_seed(0)
    encoder = {k: torch.randn(v.shape, generator=generator) for k, v in build_segmentor("tiny", 5).encoder.state_dict().items()}
    shapes = {k: v.shape for k, v in build_segmentor("tiny", 5).head.state_dict().items()}
    released = {"module.backbone.mask_token": torch.zeros(1, 96), **{f"module.backbone.{k}": v for k, v in encoder.items()}}
    for key in RELEASED_HEAD_KEYS:
        ours = key.replace("head.scratch.output_conv.2.", "head.classifier.").removeprefix("head.")
        released[f"module.{key}"] = 0.02 * torch.randn(shapes.pop(ours), generator=generator)
    assert not shapes  # the released names cover the whole head
    released["module.head.scratch.output_conv.2.weight"].zero_()
    released["module.head.scratch.output_conv.2.bias"] = torch.arange(5.0)
    path = tmp_path / "unimatch_v2_released.pth"
    torch.save({"model": released, "epoch": 59}, path)
    target = build_segmentor("tiny", 5)
    load_segmentor_weights(target, path)
    assert torch.equal(target.encoder.state_dict()["blocks.0.attn.qkv.weight"], encoder["blocks.0.attn.qkv.weight"])
    with torch.no_grad():
        logits = target.eval()(torch.randn(1, 3, 56, 56))
    assert torch.allclose(logits, torch.arange(5.0).view(1, 5, 1, 1).expand_as(logits))


def test_checkpoint_of_another_class_count_is_rejected(tmp_path):
    path = tmp_path / "seg.pth"
    torch.save({"model": build_segmentor("tiny", 5).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"seg\.pth predicts 5 classes but dataset\.nclass is 7"):
        load_segmentor_weights(build_segmentor("tiny", 7), path)


def test_checkpoint_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "seg.pth"
    torch.save({"model": build_segmentor("tiny", 5).state_dict()}, path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_segmentor_weights(build_segmentor("small", 5), path)


def test_non_tensor_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": object()}}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_segmentor_weights(build_segmentor("tiny", 5), path)


def test_complementary_masks_are_disjoint_and_scaled():
    torch.manual_seed(0)
    masks = complementary_masks(64, 128, undropped_fraction=0.0)
    first, second = masks.chunk(2)
    assert set(masks.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(first + second, torch.full_like(first, 2.0))
    assert torch.all((first == 0) | (second == 0))  # a channel lives in exactly one view
    assert 0.4 < (first == 2).float().mean() < 0.6


@pytest.mark.parametrize("fraction", [0.5, 0.25, 1.0])
def test_undropped_pair_fraction(fraction):
    masks = complementary_masks(32, 64, undropped_fraction=fraction)
    first, second = masks.chunk(2)
    undropped = (first == 1).all(dim=1)
    assert torch.equal(undropped, (second == 1).all(dim=1))
    assert int(undropped.sum()) == int(16 * fraction)


def test_comp_drop_uses_one_mask_for_all_four_features(monkeypatch):
    model = build_segmentor("tiny", 5, undropped_fraction=0.0)
    seen = []
    original = model.head.fuse

    def spy(maps):
        seen.extend(maps)
        return original(maps)

    monkeypatch.setattr(model.head, "fuse", spy)
    model(torch.randn(4, 3, 28, 28), comp_drop=True)
    zero_channels = [(m == 0).all(dim=(2, 3)) for m in seen]  # (B, D): channels zeroed over the whole map
    assert len(zero_channels) == 4
    assert all(torch.equal(zero_channels[0], z) for z in zero_channels[1:])
    # pair i = (sample i, sample i + B/2): every channel is dropped in exactly one of the two views
    assert zero_channels[0][:2].logical_xor(zero_channels[0][2:]).all()


def test_odd_batch_cannot_be_split_into_views():
    with pytest.raises(ValueError, match="even batch"):
        complementary_masks(3, 8, 0.5)


def test_frozen_encoder_gets_no_gradients():
    model = build_segmentor("tiny", 5, frozen_encoder=True)
    model.train()
    model(torch.randn(2, 3, 28, 28)).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.head.parameters())
    assert not model.encoder.training
