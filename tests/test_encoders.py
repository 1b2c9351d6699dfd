"""The encoder registry: declared sizes against the authors' logs (SPEC §7), every encoder's forward, released
key layouts loading strictly, DINOv2's giant against an independent computation, DPT on hierarchical maps."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from unimatch.config import load_config
from unimatch.engine.inference import predict_image
from unimatch.errors import ConfigError
from unimatch.models import ENCODERS, build_segmentor, load_encoder_weights
from unimatch.models.dpt import pyramid_factors
from unimatch.models.encoders import DINOv2Encoder, FeatureLevel, build_encoder, parameter_counts

# (encoder, decoder) millions at 21 classes: the authors' training logs (SPEC §7). The giant has no logged
# row: its encoder is timm's vit_giant_patch14_dinov2 (1136.5M) under the DINOv2-G head of SPEC §3.
LOGGED_MILLIONS = {
    "small": (22.1, 2.7), "base": (86.6, 10.9), "large": (304.4, 31.2), "giant": (1136.5, 122.3),
    "resnet152": (58.3, 20.3), "mit-b5": (81.4, 17.7), "beit-b": (86.2, 10.9), "beit-l": (304.6, 31.2),
    "sam-b": (88.9, 10.9), "sam-l": (307.4, 31.2),
    "clip-b16": (86.8, 2.2),  # SemiVL: Table 7's full ViT-B/16 at 512 and its language-guided decoder (the reference's widths)
}  # fmt: skip
FULL_SIZE = sorted(name for name, entry in ENCODERS.items() if not entry.cpu_sized)
CPU_SIZED = sorted(name for name, entry in ENCODERS.items() if entry.cpu_sized)


def test_every_full_size_encoder_has_a_pinned_count():
    assert sorted(LOGGED_MILLIONS) == FULL_SIZE
    assert CPU_SIZED == ["clip-tiny", "mit-tiny", "resnet-tiny", "tiny"]


@pytest.mark.parametrize("name", FULL_SIZE)
def test_parameter_counts_match_the_logs(name):
    encoder, decoder = parameter_counts(name)
    assert (round(encoder / 1e6, 1), round(decoder / 1e6, 1)) == LOGGED_MILLIONS[name]


@pytest.mark.parametrize("name, millions", [("small", 24.8), ("base", 97.5), ("large", 335.6)])
def test_dinov2_totals_match_the_paper(name, millions):
    assert round(sum(parameter_counts(name)) / 1e6, 1) == millions


def _input_side(name: str) -> int:
    divisor = ENCODERS[name].size_divisor
    return divisor * max(2, -(-56 // divisor))  # the smallest multiple >= 56


@pytest.mark.parametrize("name", FULL_SIZE + CPU_SIZED)
def test_forward_gives_the_declared_feature_maps(name):
    side = _input_side(name)
    entry = ENCODERS[name]
    model = build_segmentor(name, 5, input_size=side, decoder=entry.decoder).eval()
    levels = model.encoder.feature_info
    # DPT fuses four levels; CLIP encoders give the language-guided decoder two skips and the dense embedding
    assert len(levels) == {"dpt": 4, "vlg": 3}[entry.decoder] and max(level.stride for level in levels) == entry.size_divisor
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        maps = model.features(x)
        logits = model.decode(maps, x.shape[-2:])
    for level, feature in zip(levels, maps):
        assert feature.shape == (1, level.channels, side // level.stride, side // level.stride)
    assert logits.shape == (1, 5, side, side) and torch.isfinite(logits).all()


# clip-tiny trains through the language-guided decoder on the embedded data in tests/test_semivl.py.
@pytest.mark.parametrize("name", [name for name in CPU_SIZED if ENCODERS[name].decoder == "dpt"])
def test_cpu_sized_encoders_overfit_one_batch(name):
    torch.manual_seed(0)
    side = ENCODERS[name].size_divisor * -(-112 // ENCODERS[name].size_divisor)  # 112, or 128 for stride-32 MiT
    model = build_segmentor(name, 3, input_size=side)
    images = torch.randn(2, 3, side, side)
    masks = torch.zeros(2, side, side, dtype=torch.long)
    masks[0, 20:70, 30:90], masks[1, 50:100, 10:60] = 1, 2
    images[:, 0] += masks.float()  # learnable: the class is written in the red channel
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    accuracy = (model.eval()(images).argmax(1) == masks).float().mean()
    assert accuracy > 0.95


def test_giant_uses_swiglu_with_silu_as_dinov2():
    with torch.device("meta"):
        giant = build_encoder("giant")
    mlp = giant.blocks[0].mlp
    assert isinstance(mlp.act, nn.SiLU)
    assert (mlp.fc1.out_features, mlp.fc2.in_features) == (8192, 4096)  # w12 packs both halves of 4096


# ------------------------------------------------------------------- DINOv2 against an independent computation


def _official_dinov2_state(dim: int, depth: int, swiglu: bool, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights under the key names and shapes of DINOv2's released ``dinov2_vit*14_pretrain.pth``."""
    def rand(*shape, std=0.1):
        return torch.randn(*shape, generator=generator) * std

    state = {"cls_token": rand(1, 1, dim), "pos_embed": rand(1, 1370, dim), "mask_token": rand(1, dim),
             "patch_embed.proj.weight": rand(dim, 3, 14, 14, std=0.02), "patch_embed.proj.bias": rand(dim),
             "norm.weight": 1 + rand(dim), "norm.bias": rand(dim)}  # fmt: skip
    hidden = 4096 if swiglu else 4 * dim
    for i in range(depth):
        b = f"blocks.{i}."
        state |= {b + "norm1.weight": 1 + rand(dim), b + "norm1.bias": rand(dim), b + "attn.qkv.weight": rand(3 * dim, dim, std=0.03),
                  b + "attn.qkv.bias": rand(3 * dim), b + "attn.proj.weight": rand(dim, dim, std=0.03), b + "attn.proj.bias": rand(dim),
                  b + "ls1.gamma": 1 + rand(dim), b + "norm2.weight": 1 + rand(dim), b + "norm2.bias": rand(dim),
                  b + "ls2.gamma": 1 + rand(dim)}  # fmt: skip
        if swiglu:
            state |= {b + "mlp.w12.weight": rand(2 * hidden, dim, std=0.03), b + "mlp.w12.bias": rand(2 * hidden),
                      b + "mlp.w3.weight": rand(dim, hidden, std=0.03), b + "mlp.w3.bias": rand(dim)}  # fmt: skip
        else:
            state |= {b + "mlp.fc1.weight": rand(hidden, dim, std=0.03), b + "mlp.fc1.bias": rand(hidden),
                      b + "mlp.fc2.weight": rand(dim, hidden, std=0.03), b + "mlp.fc2.bias": rand(dim)}  # fmt: skip
    return state


def _reference_dinov2(w: dict[str, torch.Tensor], x: torch.Tensor, heads: int, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """DINOv2's forward written from its released code: conv patches, +0.1 bicubic positions, pre-norm blocks
    with layer scale, SwiGLU (w12 -> silu(x1) * x2 -> w3) or GELU MLP, final norm on each returned layer."""
    patches = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=14)
    batch, dim, grid_h, grid_w = patches.shape
    table = w["pos_embed"][:, 1:].reshape(1, 37, 37, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, scale_factor=((grid_h + 0.1) / 37, (grid_w + 0.1) / 37), mode="bicubic", antialias=False)
    pos = torch.cat((w["pos_embed"][:, :1], table.flatten(2).transpose(1, 2)), dim=1)
    t = torch.cat((w["cls_token"].expand(batch, -1, -1), patches.flatten(2).transpose(1, 2)), dim=1) + pos

    def norm(y, name):
        return F.layer_norm(y, (dim,), w[name + ".weight"], w[name + ".bias"], eps=1e-6)

    outputs = []
    for i in range(max(layers) + 1):
        b = f"blocks.{i}."
        q, k, v = F.linear(norm(t, b + "norm1"), w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"]).reshape(
            batch, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)  # fmt: skip
        attention = ((q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5).softmax(-1)
        mixed = (attention @ v).transpose(1, 2).reshape(batch, -1, dim)
        t = t + w[b + "ls1.gamma"] * F.linear(mixed, w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
        y = norm(t, b + "norm2")
        if b + "mlp.w12.weight" in w:
            x1, x2 = F.linear(y, w[b + "mlp.w12.weight"], w[b + "mlp.w12.bias"]).chunk(2, dim=-1)
            y = F.linear(F.silu(x1) * x2, w[b + "mlp.w3.weight"], w[b + "mlp.w3.bias"])
        else:
            y = F.linear(F.gelu(F.linear(y, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])), w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
        t = t + w[b + "ls2.gamma"] * y
        if i in layers:
            outputs.append(norm(t, "norm")[:, 1:].transpose(1, 2).reshape(batch, dim, grid_h, grid_w))
    return outputs


@pytest.mark.parametrize("case", ["small", "giant-2-blocks"])
def test_dinov2_from_official_keys_matches_the_reference_computation(case, tmp_path):
    if case == "small":  # the registry's encoder, whole
        encoder, dim, depth, heads, swiglu = build_encoder("small"), 384, 12, 6, False
    else:  # the giant's blocks (width 1536, SwiGLU) as timm defines them, two deep to stay cheap
        vit = timm.create_model("vit_giant_patch14_dinov2", depth=2, num_classes=0, dynamic_img_size=True, img_size=518)
        encoder, dim, depth, heads, swiglu = DINOv2Encoder(vit, (0, 1)), 1536, 2, 24, True
    state = _official_dinov2_state(dim, depth, swiglu, torch.Generator().manual_seed(0))
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(state, path)
    load_encoder_weights(encoder, path)  # strict: every official key used, none missing
    x = torch.randn(1, 3, 42, 70, generator=torch.Generator().manual_seed(1))  # a 3 x 5 grid: positions interpolated
    with torch.no_grad():
        ours = encoder.eval()(x)
        expected = _reference_dinov2(state, x, heads, encoder.layer_indices)
    assert len(ours) == len(expected) == len(encoder.layer_indices)
    for a, b in zip(ours, expected):
        assert a.shape == b.shape == (1, dim, 3, 5)
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)
    if swiglu:  # what the missing SiLU cost: GELU in the gate gives other features
        for block in encoder.blocks:
            block.mlp.act = nn.GELU()
        with torch.no_grad():
            assert (encoder(x)[-1] - expected[-1]).abs().max() > 1e-2


# --------------------------------------------------------------------------- released layouts of the others


def _save(state, tmp_path, name):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_released_resnet152s_layout_loads_strictly(tmp_path):
    source = timm.create_model("resnet152s", num_classes=1000).eval()  # timm's released layout, ImageNet head included
    model = build_segmentor("resnet152", 21).eval()
    load_encoder_weights(model, _save(source.state_dict(), tmp_path, "resnet152s.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(model.encoder(x), source.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)):
            assert torch.equal(ours, theirs)


def test_released_sam_file_loads_strictly(tmp_path):
    source = timm.create_model("samvit_base_patch16", num_classes=0).eval()  # with its neck, as SAM ships it
    released = {"image_encoder." + key.replace("mlp.fc", "mlp.lin"): value for key, value in source.state_dict().items()}
    released |= {"prompt_encoder.point_embeddings.0.weight": torch.zeros(1, 256), "mask_decoder.iou_token.weight": torch.zeros(1, 256)}
    model = build_segmentor("sam-b", 21).eval()
    load_encoder_weights(model, _save(released, tmp_path, "sam_vit_b_01ec64.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(model.encoder(x), source.forward_intermediates(x, indices=[2, 5, 8, 11], intermediates_only=True)):
            assert torch.equal(ours, theirs)


def test_released_beit_file_loads_strictly_with_its_tables_resized(tmp_path):
    source = timm.create_model("beit_base_patch16_224", num_classes=1000)
    released = dict(source.state_dict())
    for name, module in source.named_modules():  # the unilm files also carry the index buffers
        if hasattr(module, "relative_position_index"):
            released[f"{name}.relative_position_index"] = module.relative_position_index
    model = build_segmentor("beit-b", 21, input_size=64)
    load_encoder_weights(model, _save({"model": released}, tmp_path, "beit_base.pth"))
    table = model.encoder.model.blocks[0].attn.relative_position_bias_table
    assert table.shape == ((2 * 4 - 1) ** 2 + 3, 12) != released["blocks.0.attn.relative_position_bias_table"].shape
    assert torch.equal(model.encoder.model.blocks[3].attn.qkv.weight, released["blocks.3.attn.qkv.weight"])


def test_released_mit_b5_file_loads_strictly(tmp_path):
    model = build_segmentor("mit-b5", 21).eval()
    source = build_segmentor("mit-b5", 21).eval()
    released = {key.removeprefix("model."): value for key, value in source.encoder.state_dict().items()}
    assert "block3.39.attn.sr.weight" in released and "block4.0.attn.sr.weight" not in released  # NVlabs' names (sr 2 / 1)
    released |= {"head.weight": torch.zeros(1000, 512), "head.bias": torch.zeros(1000)}  # the ImageNet head
    load_encoder_weights(model, _save(released, tmp_path, "mit_b5.pth"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, theirs in zip(model.encoder(x), source.encoder(x)):
            assert torch.equal(ours, theirs)


# ------------------------------------------------------------------------------ DPT and dropout on any encoder


def test_dpt_resizes_a_vit_and_keeps_a_pyramid():
    def levels(*strides):
        return [FeatureLevel(8, stride) for stride in strides]

    assert pyramid_factors(levels(14, 14, 14, 14)) == [4, 2, 1, 0.5]
    assert pyramid_factors(levels(4, 8, 16, 32)) == [1, 1, 1, 1]
    assert pyramid_factors(levels(4, 8, 16, 16)) == [1, 1, 1, 0.5]  # a dilated last stage
    head = build_segmentor("resnet152", 21).head
    assert all(isinstance(layer, nn.Identity) for layer in head.resize_layers)


def test_complementary_dropout_on_levels_of_different_widths(monkeypatch):
    model = build_segmentor("resnet-tiny", 5, undropped_fraction=0.0, input_size=64)
    seen = []
    original = model.head.fuse
    monkeypatch.setattr(model.head, "fuse", lambda maps: seen.extend(maps) or original(maps))
    model(torch.randn(4, 3, 64, 80), comp_drop=True)
    zeroed = [(m == 0).all(dim=(2, 3)) for m in seen]
    assert [z.shape[1] for z in zeroed] == [24, 48, 96, 192]
    for z in zeroed:
        assert z[:2].logical_xor(z[2:]).all()  # each channel dropped in exactly one view of a pair
        assert torch.equal(z, zeroed[-1][:, : z.shape[1]])  # one mask, narrower levels take its first channels


def test_fixed_input_encoder_is_evaluated_in_windows_of_its_size():
    model = build_segmentor("beit-b", 3, input_size=64).eval()
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        logits = predict_image(model, torch.randn(1, 3, 80, 100), "original", None)
    assert logits.shape == (1, 3, 80, 100)
    assert sizes and set(sizes) == {(64, 64)}


# ------------------------------------------------------------------------------------- config declarations


def test_encoder_defaults_fill_what_the_config_leaves_open():
    beit = load_config("configs/embedded.yaml", ["model.encoder=beit-b", "dataset.crop_size=128"])
    assert (beit.train.lr, beit.train.lr_multiplier, beit.method.teacher) == (1e-5, 10.0, "student")
    tiny = load_config("configs/embedded.yaml")
    assert (tiny.train.lr, tiny.train.lr_multiplier, tiny.method.teacher) == (1e-4, 10.0, "ema")
    pascal = load_config("configs/experiments/pascal_unimatch_v2_base_92.yaml")
    assert (pascal.train.lr, pascal.train.lr_multiplier) == (5e-6, 40.0)
    chosen = load_config("configs/embedded.yaml", ["model.encoder=beit-b", "dataset.crop_size=128", "train.lr=3e-5", "method.teacher=ema"])
    assert (chosen.train.lr, chosen.method.teacher) == (3e-5, "ema")


@pytest.mark.parametrize("override, message", [
    ("model.encoder=resnet152", r"dataset\.crop_size: 112 is not a multiple of 32, the size divisor of encoder 'resnet152'"),
    ("eval.window=100", r"command-line override 'eval\.window=100': eval\.window: 100 is not a multiple of 14"),
    ("model.encoder=vit-huge", r"model\.encoder: Value error, unknown encoder 'vit-huge'; choose one of .*resnet152"),
])  # fmt: skip
def test_config_checks_sizes_against_the_encoder(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/embedded.yaml", [override])


@pytest.mark.parametrize("name", ["resnet152", "mit-b5", "beit-b", "beit-l", "sam-b", "sam-l", "small", "base", "large", "giant"])
def test_encoder_configs_layer_onto_a_dataset(name):
    from unimatch.config import deep_merge, read_layers, validate

    cfg = validate(deep_merge(read_layers("configs/datasets/pascal.yaml"), read_layers(f"configs/encoders/{name}.yaml")))
    entry = ENCODERS[name]
    assert cfg.model.encoder == name and cfg.dataset.crop_size % entry.size_divisor == 0
    assert (cfg.train.lr, cfg.method.teacher) == (entry.lr, entry.teacher)


def test_table9_example_experiment():
    cfg = load_config("configs/experiments/pascal_unimatch_v2_beit-b_183.yaml")
    assert (cfg.model.encoder, cfg.dataset.crop_size, cfg.method.teacher, cfg.train.lr) == ("beit-b", 512, "student", 1e-5)
