"""SemiVL (SPEC §13): MaskCLIP's value path, spatial fine-tuning, OpenAI's CLIP keys loading strictly with the
position table resized, the language-guided decoder (shapes, concept max-aggregation), the dense CLIP guidance
(schedule, masking, loss), the text-embedding files and command, and training on the embedded data."""

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unimatch.cli import main as cli_main
from unimatch.config import load_config
from unimatch.data import generate_embedded
from unimatch.engine import Trainer
from unimatch.errors import ConfigError
from unimatch.methods.base import Progress
from unimatch.methods.semivl import guidance_labels, guidance_loss
from unimatch.models import CheckpointError, build_segmentor
from unimatch.models.decoders.vlg import UpBlock, VLGHead
from unimatch.models.encoders import build_encoder, parameter_counts
from unimatch.models.encoders.clip import clip_vit, value_path
from unimatch.models.text import (
    aggregate_concepts,
    concept_classes,
    load_text_embeddings,
    random_text_embeddings,
    read_class_concepts,
)
from unimatch.models.weights import _load_strict, encoder_state_from

EMBEDDED_TEXT = "configs/text_embeddings/embedded_random.npy"
TINY_DECODER = ["model.decoder_settings.channels=32", "model.decoder_settings.text_channels=32",
                "model.decoder_settings.up_channels=[32,16]", "model.decoder_settings.skip_channels=[16,8]"]  # fmt: skip


# ------------------------------------------------------------------------------ encoder


def test_value_path_keeps_each_patch_embedding_local():
    """One block: the dense embedding of a patch depends on that patch only, while the block's ordinary
    (attention) output mixes every patch."""
    torch.manual_seed(0)
    encoder = clip_vit(64, 32, 1, 2, ()).eval()
    x = torch.randn(1, 3, 64, 64)
    changed = x.clone()
    changed[:, :, 16:32, 32:48] += 3.0  # patch (1, 2) of the 4 x 4 grid
    with torch.no_grad():
        dense, dense_changed = encoder(x)[-1], encoder(changed)[-1]
        tokens, tokens_changed = encoder.embed(x)[0], encoder.embed(changed)[0]
        attended = encoder.blocks[0](tokens) - encoder.blocks[0](tokens_changed)
    moved = (dense - dense_changed).abs().amax(dim=1)[0]
    assert moved[1, 2] > 1e-3 and moved.flatten().topk(2).values[1] < 1e-6  # only that patch moved
    assert (attended[0, 1:].abs().amax(dim=-1) > 1e-4).all()  # through attention every patch would have
    assert torch.allclose(dense.norm(dim=1), torch.ones(1, 4, 4))  # L2-normalised
    assert torch.allclose(value_path(encoder.blocks[0], tokens)[:, 1:], value_path(encoder.blocks[0], tokens[:, 1:]))


def test_spatial_fine_tuning_trains_attention_and_positions_only():
    with torch.device("meta"):
        encoder = build_encoder("clip-b16", 512)
    trainable = {name: p.numel() for name, p in encoder.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == 12 * 2_362_368 + 1025 * 768  # 29.1M: the paper's Table 7 count
    assert round(sum(trainable.values()) / 1e6, 1) == 29.1
    assert all("attn" in name or name == "pos_embed" for name in trainable)
    frozen = {name for name, p in encoder.named_parameters() if not p.requires_grad}
    assert {"cls_token", "patch_embed.proj.weight", "proj.weight", "norm.weight", "blocks.0.mlp.fc1.weight", "blocks.0.norm1.weight"} <= frozen
    assert round(sum(p.numel() for p in encoder.parameters()) / 1e6, 1) == 86.8  # Table 7's full fine-tuning


def test_full_size_parameter_counts_next_to_the_papers():
    encoder, decoder = parameter_counts("clip-b16")  # at the 518 default crop: a 32 x 32 grid, as 512
    assert (round(encoder / 1e6, 2), round(decoder / 1e6, 2)) == (86.83, 2.17)
    # UniMatch V2's Table 1 lists SemiVL at 88.0M: the trunk at CLIP's 224 grid without the projection + this decoder
    trunk_at_224 = encoder - (1025 - 197) * 768 - 768 * 512
    assert round((trunk_at_224 + decoder) / 1e6, 1) == 88.0


def _openai_visual_state(width: int = 768, layers: int = 12, grid: int = 14, embed: int = 512) -> dict[str, torch.Tensor]:
    """Random tensors under the exact key names and shapes of OpenAI's ViT-B-16.pt image tower (plus text keys)."""
    g = torch.Generator().manual_seed(0)
    state = {
        "visual.class_embedding": torch.randn(width, generator=g),
        "visual.positional_embedding": torch.randn(grid * grid + 1, width, generator=g),
        "visual.proj": torch.randn(width, embed, generator=g),
        "visual.conv1.weight": torch.randn(width, 3, 16, 16, generator=g),
        "visual.ln_pre.weight": torch.rand(width, generator=g), "visual.ln_pre.bias": torch.zeros(width),
        "visual.ln_post.weight": torch.rand(width, generator=g), "visual.ln_post.bias": torch.zeros(width),
        "token_embedding.weight": torch.zeros(8, embed), "text_projection": torch.zeros(embed, embed), "logit_scale": torch.zeros(()),
    }  # fmt: skip
    for i in range(layers):
        block = f"visual.transformer.resblocks.{i}."
        state |= {
            block + "ln_1.weight": torch.ones(width), block + "ln_1.bias": torch.zeros(width),
            block + "attn.in_proj_weight": torch.randn(3 * width, width, generator=g) * 0.02, block + "attn.in_proj_bias": torch.zeros(3 * width),
            block + "attn.out_proj.weight": torch.randn(width, width, generator=g) * 0.02, block + "attn.out_proj.bias": torch.zeros(width),
            block + "ln_2.weight": torch.ones(width), block + "ln_2.bias": torch.zeros(width),
            block + "mlp.c_fc.weight": torch.zeros(4 * width, width), block + "mlp.c_fc.bias": torch.zeros(4 * width),
            block + "mlp.c_proj.weight": torch.zeros(width, 4 * width), block + "mlp.c_proj.bias": torch.zeros(width),
        }  # fmt: skip
    return state


def test_openai_clip_keys_load_strictly_with_positions_resized_to_the_crop():
    released = _openai_visual_state()
    encoder = build_encoder("clip-b16", 512)
    state = encoder_state_from(released, encoder)
    _load_strict(encoder, state, "ViT-B-16.pt")
    assert encoder.pos_embed.shape == (1, 1025, 768)  # 197 -> 1025 at 512
    table = released["visual.positional_embedding"]
    grid = F.interpolate(table[1:].reshape(1, 14, 14, 768).permute(0, 3, 1, 2), size=(32, 32), mode="bicubic", align_corners=False)
    assert torch.allclose(encoder.pos_embed[0, 1:], grid.permute(0, 2, 3, 1).reshape(1024, 768), atol=1e-5)
    assert torch.equal(encoder.pos_embed[0, 0], table[0]) and torch.equal(encoder.cls_token[0, 0], released["visual.class_embedding"])
    assert torch.equal(encoder.proj.weight, released["visual.proj"].T)  # x @ proj as a linear layer
    assert torch.equal(encoder.blocks[7].attn.qkv.weight, released["visual.transformer.resblocks.7.attn.in_proj_weight"])
    assert torch.equal(encoder.norm_pre.weight, released["visual.ln_pre.weight"]) and torch.equal(encoder.norm.weight, released["visual.ln_post.weight"])
    assert torch.equal(encoder.patch_embed.proj.weight, released["visual.conv1.weight"]) and encoder.patch_embed.proj.bias is None
    del released["visual.ln_post.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys \['norm.bias'\]"):
        _load_strict(encoder, encoder_state_from(released, encoder), "ViT-B-16.pt")
    released["visual.ln_post.bias"], released["visual.ln_post.extra"] = torch.zeros(768), torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['norm.extra'\]"):
        _load_strict(encoder, encoder_state_from(released, encoder), "ViT-B-16.pt")


def test_torchscript_archives_are_read_as_state_dicts(tmp_path):
    """OpenAI ships ViT-B-16.pt as a TorchScript archive, which weights-only loading refuses."""
    from unimatch.models import read_checkpoint

    module = torch.nn.Linear(3, 2)
    torch.jit.save(torch.jit.script(module), tmp_path / "archive.pt")
    state = read_checkpoint(tmp_path / "archive.pt")
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], module.weight)


# ------------------------------------------------------------------------------ decoder


def test_concepts_are_max_aggregated_to_their_class():
    scores = torch.tensor([0.1, 0.7, 0.3, -0.2, 0.5]).view(1, 5, 1, 1)  # rows of classes 0, 0, 1, 2, 2
    aggregated = aggregate_concepts(scores, torch.tensor([0, 0, 1, 2, 2]), 3)
    assert aggregated.flatten().tolist() == pytest.approx([0.7, 0.3, 0.5])
    assert torch.equal(aggregate_concepts(scores[:, :3], torch.arange(3), 3), scores[:, :3])  # one row per class: as is


def test_decoder_shapes_and_concept_rows():
    torch.manual_seed(0)
    encoder = build_encoder("clip-tiny", 64)
    widths = dict(channels=32, text_channels=32, up_channels=(32, 16), skip_channels=(16, 8))
    rows = [0, 0, 1, 2, 2, 2, 3]
    head = VLGHead(4, encoder.feature_info, torch.from_numpy(random_text_embeddings(7, 512, 1)).float(), rows, **widths)
    maps = encoder(torch.randn(2, 3, 64, 80))
    fused = head.fuse(maps)
    assert fused.shape == (2 * 7, 16, 16, 20)  # per image and row, at stride 4
    logits = head(maps)
    assert logits.shape == (2, 4, 16, 20)
    per_row = head.classifier.conv(fused).view(2, 7, 16, 20)
    assert torch.equal(logits[:, 2], per_row[:, 3:6].amax(dim=1)) and torch.equal(logits[:, 1], per_row[:, 2])
    with pytest.raises(ValueError, match="must cover the 4 classes"):
        VLGHead(4, encoder.feature_info, torch.randn(7, 512), [0, 0, 1, 1, 1, 1, 1], **widths)


def test_up_block_fuses_each_class_map_with_its_own_images_skip():
    """The paper's up block: 2x2 transposed conv (x2), then [map ‖ skip of the same image] through a 3x3 conv
    and a second conv, GroupNorm + ReLU after each; written out here per map with one conv on the concatenation."""
    torch.manual_seed(0)
    block = UpBlock(16, 16, 8).eval()
    images, classes = 2, 3
    maps, skip = torch.randn(images * classes, 16, 4, 5), torch.randn(images, 8, 8, 10)  # skip already at 2x: no resize
    out = block(maps, skip)
    assert out.shape == (6, 16, 8, 10)
    joint = torch.cat((block.fuse_map.weight, block.fuse_skip.weight), dim=1)  # one conv over 16 + 8 input channels
    for row in range(images * classes):
        concatenated = torch.cat((block.upsample(maps[row : row + 1]), skip[row // classes : row // classes + 1]), dim=1)
        expected = block.refine(F.conv2d(concatenated, joint, padding=1))
        assert torch.allclose(out[row : row + 1], expected, atol=1e-5), row


def test_segmentor_with_the_language_guided_decoder_predicts_at_input_size():
    model = build_segmentor("clip-tiny", 5, input_size=48, decoder="vlg").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 64)).shape == (1, 5, 48, 64)


def test_decoder_settings_are_validated_by_key(tmp_path):
    with pytest.raises(ConfigError, match=r"model.decoder_settings.heads"):
        load_config("configs/experiments/embedded_semivl.yaml", ["model.decoder_settings.heads=5"])
    with pytest.raises(ConfigError, match=r"model.decoder_settings.channels"):
        load_config("configs/experiments/embedded_semivl.yaml", ["model.decoder_settings.channels=40"])
    with pytest.raises(ConfigError, match="model.decoder: semivl trains the language-guided decoder"):
        from unimatch.engine.setup import build_model

        cfg = load_config("configs/embedded.yaml", ["method.name=semivl", "model.decoder=dpt"])
        build_model(cfg.model, 7, 112, cfg.method, quiet=True)


@pytest.mark.parametrize("name, lr, multiplier", [
    ("pascal_semivl_clip-b16_92", 1e-6, 1000), ("cityscapes_semivl_clip-b16_186", 5e-6, 100),
    ("coco_semivl_clip-b16_232", 4e-7, 10000), ("ade20k_semivl_clip-b16_316", 4e-7, 10000),
])  # fmt: skip
def test_paper_configs_map_semivl_learning_rates_onto_the_engine(name, lr, multiplier):
    """SemiVL's base lr with the backbone multiplier (0.01 / 0.1 / 0.001 / 0.001) is the encoder lr; the decoder's x10
    of the base lr is the decoder multiplier."""
    cfg = load_config(f"configs/experiments/{name}.yaml")
    assert (cfg.model.encoder, cfg.model.decoder, cfg.method.name, cfg.method.teacher) == ("clip-b16", "vlg", "semivl", "student")
    assert cfg.train.lr == pytest.approx(lr) and cfg.train.lr_multiplier == pytest.approx(multiplier)
    assert cfg.dataset.crop_size % 16 == 0 and cfg.model.decoder_settings.text_embeddings.endswith(".npy")


# ------------------------------------------------------------------------------ dense CLIP guidance


def test_guidance_weight_decays_linearly_to_zero_over_training():
    cfg = load_config("configs/experiments/embedded_semivl.yaml")
    from unimatch.methods import build_method

    method = build_method(cfg.method, torch.nn.CrossEntropyLoss())
    weights = []
    for iteration in (0, 250, 500, 1000):
        method.progress = Progress(iteration, 1000, 100)
        weights.append(method.guidance_weight())
    assert weights == pytest.approx([0.1, 0.075, 0.05, 0.0])


def test_guidance_labels_are_confident_zero_shot_classes_with_concepts_and_padding_masked():
    text = torch.eye(4)  # rows: class 0, class 1 (two concepts), class 2
    dense = torch.zeros(1, 4, 1, 3)
    dense[0, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # class 0, confidently
    dense[0, :, 0, 1] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # class 1 through its second concept
    dense[0, :, 0, 2] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # cos 0.71 with classes 0 and 2: a tie, not confident
    ignore = torch.zeros(1, 1, 3, dtype=torch.long)
    labels = guidance_labels(dense, text, torch.tensor([0, 1, 1, 2]), 3, ignore, threshold=0.9)
    assert labels.tolist() == [[[0, 1, 255]]]
    ignore[0, 0, 1] = 255  # padding
    assert guidance_labels(dense, text, torch.tensor([0, 1, 1, 2]), 3, ignore, threshold=0.9).tolist() == [[[0, 255, 255]]]
    assert guidance_labels(dense, text, torch.tensor([0, 1, 1, 2]), 3, ignore * 0, threshold=0.4).tolist() == [[[0, 1, 0]]]


def test_guidance_loss_divides_by_all_pixels():
    logits = torch.zeros(1, 3, 2, 2)
    labels = torch.tensor([[[0, 255], [255, 255]]])
    assert guidance_loss(logits, labels).item() == pytest.approx(math.log(3) / 4)


# ------------------------------------------------------------------------------ text embeddings


def test_shipped_embedded_text_embeddings_are_unit_rows_for_its_classes():
    embeddings = load_text_embeddings(EMBEDDED_TEXT, rows=7)
    assert embeddings.shape == (7, 512) and torch.allclose(embeddings.norm(dim=1), torch.ones(7), atol=1e-3)
    assert np.load(EMBEDDED_TEXT).dtype == np.float16  # as SemiVL's files


def test_text_embeddings_command_writes_concept_rows(tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("background | sky | wall\ndisk\nsquare | box\n")
    assert read_class_concepts(classes) == [["background", "sky", "wall"], ["disk"], ["square", "box"]]
    assert concept_classes(read_class_concepts(classes)) == [0, 0, 0, 1, 2, 2]
    out = tmp_path / "rows.npy"
    assert cli_main(["text-embeddings", "--classes", str(classes), "--random", "3", "--out", str(out)]) == 0
    assert np.load(out).shape == (6, 512) and "RANDOM" in capsys.readouterr().out
    assert cli_main(["text-embeddings", "--classes", str(classes), "--random", "3", "--average-concepts", "--out", str(tmp_path / "avg.npy")]) == 0
    averaged, rows = np.load(tmp_path / "avg.npy").astype(np.float32), np.load(out).astype(np.float32)
    mean = rows[4:6].mean(axis=0)  # class 2's concepts: rows 4 and 5
    assert averaged.shape == (3, 512) and np.allclose(averaged[2], mean / np.linalg.norm(mean), atol=2e-3)
    assert np.allclose(averaged[1], rows[3], atol=2e-3)  # a single concept stays itself
    assert cli_main(["text-embeddings", "--classes", "embedded", "--random", "0", "--out", str(tmp_path / "e.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "e.npy"), np.load(EMBEDDED_TEXT))  # the shipped file is reproducible


def test_text_embeddings_command_without_open_clip_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # an environment without the extra: the import fails
    weights = tmp_path / "ViT-B-16.pt"
    weights.write_bytes(b"")
    assert cli_main(["text-embeddings", "--classes", "pascal", "--weights", str(weights), "--out", str(tmp_path / "p.npy")]) == 2
    assert "needs open_clip: pip install 'unimatch-pipeline[clip]'" in capsys.readouterr().err


def test_open_clip_text_tower(tmp_path):
    """A tiny randomly initialised open_clip model saved to a file: the command embeds every concept prompt."""
    import open_clip  # the extra 'clip', installed by `make test`

    from unimatch.models import text

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}  # fmt: skip
    model = open_clip.CLIP(**config, quick_gelu=True)  # as OpenAI's releases
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    (tmp_path / "tiny-clip.json").write_text(__import__("json").dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-clip.json")
    loaded, tokenizer = text.open_clip_text_encoder("tiny-clip", tmp_path / "tiny.pt")
    embeddings = text.encode_class_concepts([["cat", "kitten"], ["dog"]], loaded, tokenizer)
    assert embeddings.shape == (3, 32) and np.allclose(np.linalg.norm(embeddings.astype(np.float32), axis=1), 1, atol=1e-3)
    expected = F.normalize(model.encode_text(tokenizer(["a photo of a cat", "a photo of a kitten", "a photo of a dog"])), dim=-1)
    assert np.allclose(embeddings, expected.detach().numpy(), atol=2e-3)


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=5, n_train=16, n_val=2, size=(84, 70))


def test_semivl_trains_on_the_embedded_data_with_a_frozen_guide(dataset, tmp_path):
    cfg = load_config("configs/experiments/embedded_semivl.yaml", [
        f"dataset.root={dataset}", "dataset.crop_size=48", f"output_dir={tmp_path}", "split.labeled=4", "train.batch_size=2",
        "train.epochs=1", "train.max_iters=3", "train.num_workers=0", "tracking.enabled=false", "eval.pseudo_label_images=0",
        "method.guidance_threshold=0.0",  # random text: every pixel guided, so the guidance loss surely acts
    ])  # fmt: skip
    trainer = Trainer(cfg, progress=False)
    assert trainer.teacher is trainer.model  # the released code: no EMA teacher
    initial = {name: p.detach().clone() for name, p in trainer.model.encoder.named_parameters()}
    result = trainer.fit()
    assert result.metrics["best_miou_ema"] == max(value for _, value in result.history["val/miou_ema"])
    after = dict(trainer.model.encoder.named_parameters())
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], initial["blocks.0.attn.qkv.weight"])  # attention trains
    assert torch.equal(after["blocks.0.mlp.fc1.weight"], initial["blocks.0.mlp.fc1.weight"])  # the MLPs stay
    guide = dict(trainer.method.guide.named_parameters())
    assert all(torch.equal(guide[name], value) for name, value in initial.items())  # the guide keeps the original weights
    assert not any(key.startswith("guide") for key in torch.load(result.last_checkpoint, weights_only=True)["model"])
    resumed = Trainer(cfg.model_copy(update={"train": cfg.train.model_copy(update={"max_iters": 4})}), progress=False)
    assert all(torch.equal(p, initial[name]) for name, p in resumed.method.guide.named_parameters())  # not the fine-tuned student
    assert resumed.iteration == 3
