"""AllSpark (SPEC §12): the module's memory (FIFO, wrap-around, CSG), its attention, evaluation per image, the
EMA and checkpoints leaving the memory exact, training through the engine, configs and the full-size count."""

import math
import random
from pathlib import Path

import pytest
import torch

from unimatch.config import ConfigError, load_config
from unimatch.data import LabeledDataset, Sample, StrongLabeledDataset, generate_embedded
from unimatch.engine import Trainer, update_ema
from unimatch.engine.checkpoint import load_checkpoint
from unimatch.engine.evaluate import checkpoint_model
from unimatch.methods import method_class
from unimatch.models import build_segmentor
from unimatch.models.allspark import AllSpark, _attend
from unimatch.models.decoders.segformer import SegFormerSettings
from unimatch.tracking import Tracker

NCLASS, CHANNELS, TOKENS = 3, 4, 9  # SPEC §12's CPU size: 3 classes, a 3 x 3 grid


def _module(dropout: float = 0.0, slots: int = CHANNELS) -> AllSpark:
    torch.manual_seed(0)
    return AllSpark(slots, NCLASS, TOKENS, heads=2, dropout=dropout)


def _reference_enqueue(memory, pointer, features, classes):
    """The reference's _dequeue_and_enqueue, one class at a time with explicit wrap-around."""
    size = memory.shape[1]
    for cls in sorted(set(classes.tolist())):
        rows = features[classes == cls]
        ptr, count = int(pointer[cls]), rows.shape[0]
        if ptr + count > size:
            memory[cls, ptr:] = rows[: size - ptr]
            memory[cls, : ptr + count - size] = rows[size - ptr :]
            pointer[cls] = ptr + count - size
        else:
            memory[cls, ptr : ptr + count] = rows
            pointer[cls] = (ptr + count) % size


def test_enqueue_fills_each_class_fifo_in_channel_order_and_wraps_around():
    module = _module()
    first = torch.arange(CHANNELS * TOKENS, dtype=torch.float).view(CHANNELS, TOKENS)
    module.enqueue(first, torch.tensor([0, 1, 0, 2]))
    assert module.pointer.tolist() == [2, 1, 1]
    assert torch.equal(module.memory[0, 0], first[0]) and torch.equal(module.memory[0, 1], first[2])
    assert torch.equal(module.memory[1, 0], first[1]) and torch.equal(module.memory[2, 0], first[3])
    second = -first - 1
    module.enqueue(second, torch.tensor([0, 0, 0, 1]))  # class 0: slots 2, 3, then wraps to 0
    assert module.pointer.tolist() == [1, 2, 1]
    assert torch.equal(module.memory[0, 2], second[0]) and torch.equal(module.memory[0, 3], second[1])
    assert torch.equal(module.memory[0, 0], second[2]) and torch.equal(module.memory[0, 1], first[2])  # slot 1 kept
    # Many random steps agree with the reference's loop.
    memory, pointer = module.memory.clone(), module.pointer.clone()
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        features = torch.randn(CHANNELS, TOKENS, generator=generator)
        classes = torch.randint(0, NCLASS, (CHANNELS,), generator=generator)
        module.enqueue(features, classes)
        _reference_enqueue(memory, pointer, features, classes)
    assert torch.equal(module.memory, memory) and torch.equal(module.pointer, pointer)


def test_semantic_grouping_sends_each_channel_to_the_class_map_it_resembles():
    module = _module()
    patterns = torch.zeros(NCLASS, TOKENS)
    patterns[0, :3], patterns[1, 3:6], patterns[2, 6:] = 1.0, 1.0, 1.0  # three regions of the 3 x 3 grid
    guide = 5.0 * patterns.view(1, NCLASS, 3, 3)  # logits already at the grid size
    owners = torch.tensor([2, 0, 2, 1])
    emb = (patterns[owners] + 0.1 * torch.rand(CHANNELS, TOKENS)).T.unsqueeze(0)  # (1, N, C)
    module.remember(emb, guide, (3, 3))
    assert module.pointer.tolist() == [1, 1, 2]
    assert torch.equal(module.memory[2, :2], emb[0].T[[0, 2]]) and torch.equal(module.memory[1, 0], emb[0].T[3])
    with pytest.raises(ValueError, match="dataset.crop_size"):
        module.remember(emb[:, :4], guide, (2, 2))


def _train_maps(batch: int = 4):
    torch.manual_seed(3)
    coarse = torch.randn(batch, CHANNELS, 3, 3)
    return [torch.randn(batch, 2, 12, 12), coarse], torch.randn(batch // 2, NCLASS, 12, 12)


def _reference_forward(module: AllSpark, x: torch.Tensor, use_memory: bool) -> torch.Tensor:
    """The released AllSpark + CrossAttnMem forward, transcribed (einops spelled out), on ``module``'s weights
    and its memory as updated by the step; the batch is half labeled, half unlabeled, dropout off."""
    attn, heads = module.attention, module.attention.heads
    batch, channels, height, width = x.shape
    en = module.map_in(x).flatten(2).transpose(-1, -2)
    emb_l, emb_u = torch.split(module.attn_norm(en), batch // 2, dim=0)
    _, tokens, _ = emb_u.shape

    def multi_head_rep(t):
        return t.view(*t.shape[:-1], heads, channels).permute(0, 2, 1, 3)

    instance_norm = torch.nn.InstanceNorm2d(heads)
    self_attn = torch.softmax(instance_norm(multi_head_rep(attn.q_u(emb_u)).transpose(-1, -2) @ multi_head_rep(attn.k_u(emb_u))), dim=3)
    self_attn = (self_attn @ multi_head_rep(attn.v_u(emb_u)).transpose(-1, -2)).permute(0, 3, 2, 1).contiguous()
    out_u = attn.out_u(self_attn.view(*self_attn.shape[:-2], channels * heads))
    source = module.memory.transpose(-1, -2) if use_memory else emb_u
    k, v = attn.k_l2u(source), attn.v_l2u(source)
    k = k.permute(1, 0, 2).reshape(tokens, -1).unsqueeze(0).repeat(emb_l.shape[0], 1, 1).unsqueeze(1)  # 'b n c -> n (b c)'
    v = v.permute(1, 0, 2).reshape(tokens, -1).unsqueeze(0).repeat(emb_l.shape[0], 1, 1).unsqueeze(1).transpose(-1, -2)
    cross = torch.softmax(instance_norm(attn.q_l2u(emb_l).unsqueeze(1).transpose(-1, -2) @ k), dim=3) @ v
    cross = cross.permute(0, 3, 2, 1).contiguous()
    out_l2u = attn.out_l2u(cross.view(*cross.shape[:-2], channels * heads))
    out = module.encoder_norm(torch.cat([out_l2u, out_u]) + en)
    return module.map_out(out.permute(0, 2, 1).contiguous().view(batch, channels, height, width))


@pytest.mark.filterwarnings("ignore:input's size at dim=1 does not match num_features")  # the reference's InstanceNorm2d(heads)
@pytest.mark.parametrize("use_memory", [False, True])
def test_the_module_computes_what_the_released_code_does(use_memory):
    module = _module().train()
    maps, guide = _train_maps()
    ours = module(maps, labeled=2, guide=guide, use_memory=use_memory)[-1]
    assert torch.allclose(ours, _reference_forward(module, maps[-1], use_memory), atol=1e-5)


def test_memory_is_untouched_in_eval_and_read_only_after_the_warm_up():
    module = _module()
    maps, guide = _train_maps()
    before = module.memory.clone(), module.pointer.clone()
    module.eval()
    with torch.no_grad():
        module(maps)
    assert torch.equal(module.memory, before[0]) and torch.equal(module.pointer, before[1])
    module.train()
    warm_up = module(maps, labeled=2, guide=guide, use_memory=False)[-1]
    assert not torch.equal(module.memory, before[0]) and module.pointer.sum() > 0  # filled from the first step (code)
    module.memory.normal_()  # during the warm-up the labeled images read the batch, not the memory
    assert torch.allclose(module(maps, labeled=2, guide=guide, use_memory=False)[-1], warm_up)
    after = module(maps, labeled=2, guide=guide, use_memory=True)[-1]
    assert not torch.allclose(after[:2], warm_up[:2]) and torch.allclose(after[2:], warm_up[2:])


def test_attention_rows_sum_to_one_on_both_paths_and_are_instance_normalised():
    module = _module()
    captured = []
    module.attention.attn_dropout.register_forward_hook(lambda mod, args, out: captured.append(args[0]))
    maps, guide = _train_maps()
    module.train()
    module(maps, labeled=2, guide=guide, use_memory=True)
    labeled, unlabeled = captured  # the labeled path runs first
    assert unlabeled.shape == (2, 2, CHANNELS, CHANNELS)  # per head, C x C
    assert labeled.shape == (2, 2 * CHANNELS, NCLASS * 2 * CHANNELS)  # all C*h query channels over every slot
    for weights in captured:
        assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5) and (weights >= 0).all()
    scores = torch.randn(2, 5, 7)
    assert torch.allclose(_attend(3.0 * scores + 4.0, torch.nn.Identity()), _attend(scores, torch.nn.Identity()), atol=1e-5)


def test_evaluation_is_per_image_and_keeps_every_shape():
    module = _module(dropout=0.1).eval()
    maps, _ = _train_maps(batch=3)
    with torch.no_grad():
        together = module(maps)
        alone = [module([m[i : i + 1] for m in maps])[-1] for i in range(3)]
    assert [m.shape for m in together] == [m.shape for m in maps] and together[0] is maps[0]  # other levels pass
    assert torch.allclose(together[-1], torch.cat(alone), atol=1e-6)
    module.train()
    maps, guide = _train_maps()
    assert module(maps, labeled=2, guide=guide)[-1].shape == maps[-1].shape
    with pytest.raises(ValueError, match="labeled"):
        module(maps)


def test_the_ema_takes_the_students_memory_instead_of_blending_it():
    student, teacher = _module(), _module()
    student.memory.normal_()
    student.pointer.fill_(3)
    with torch.no_grad():
        student.map_in[0].weight.add_(1.0)
    before = teacher.map_in[0].weight.clone()
    update_ema(student, teacher, decay=0.9)
    assert torch.equal(teacher.memory, student.memory) and torch.equal(teacher.pointer, student.pointer)
    assert torch.allclose(teacher.map_in[0].weight, 0.9 * before + 0.1 * student.map_in[0].weight)


# ------------------------------------------------------------------------------------------ engine


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=3, n_train=24, n_val=3, size=(112, 84))


def _config(dataset, out, *overrides):
    return load_config("configs/embedded.yaml", [
        f"dataset.root={dataset}", "dataset.crop_size=56", f"output_dir={out}", "split.labeled=8", "train.batch_size=2",
        "train.epochs=1", "train.max_iters=4", "train.num_workers=0", "train.log_every=1", "tracking.enabled=false",
        "eval.pseudo_label_images=0", "method.name=allspark", "method.threshold=0", "method.warmup_epoch=0", *overrides,
    ])  # fmt: skip


@pytest.mark.parametrize("model", [
    ("model.encoder=tiny",),  # shipped weights, DPT
    ("model.encoder=mit-tiny", "model.weights=null", "model.decoder=segformer", "model.decoder_settings.embedding_dim=16",
     "dataset.crop_size=96"),  # 3 x 3 tokens, as SPEC's CPU size
])  # fmt: skip
def test_allspark_trains_through_the_engine_and_reloads(dataset, tmp_path, model):
    cfg = _config(dataset, tmp_path, *model)
    trainer = Trainer(cfg, progress=False)
    assert trainer.teacher is trainer.model  # the reference: the student in eval mode labels
    assert isinstance(trainer.model.neck, AllSpark) and trainer.model.neck.memory.shape[-1] == (cfg.dataset.crop_size // trainer.model.size_divisor) ** 2
    assert any(p is trainer.model.neck.map_in[0].weight for p in trainer.optimizer.param_groups[-1]["params"])
    result = trainer.fit()
    assert math.isfinite(result.metrics["best_miou_ema"]) and trainer.model.neck.pointer.sum() > 0
    assert all(value == 1.0 for _, value in trainer.history["train/mask_ratio"])  # no threshold: every pixel
    reloaded = checkpoint_model(cfg, result.best_checkpoint, "model").eval()  # strict: the module and memory rebuilt
    assert torch.equal(reloaded.neck.memory, load_checkpoint(result.best_checkpoint)["model"]["neck.memory"])


class CrashingTracker(Tracker):
    def __init__(self, at_step: int):
        self.at_step = at_step

    def log_metrics(self, metrics, step=None):
        if step == self.at_step:
            raise KeyboardInterrupt("simulated crash")


def test_resume_restores_the_memory_and_pointers_exactly(dataset, tmp_path):
    overrides = ("train.max_iters=6", "train.checkpoint_every=3", "train.deterministic=true")
    uninterrupted = Trainer(_config(dataset, tmp_path / "full", *overrides), progress=False)
    uninterrupted.fit()
    stopped = Trainer(_config(dataset, tmp_path / "stopped", *overrides), CrashingTracker(at_step=5), progress=False)
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()  # crashes after the checkpoint of iteration 3
    saved = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "latest.pth")["model"]
    resumed = Trainer(_config(dataset, tmp_path / "stopped", *overrides), progress=False)
    assert resumed.iteration == 3
    assert torch.equal(resumed.model.neck.memory, saved["neck.memory"]) and resumed.model.neck.pointer.sum() > 0
    assert torch.equal(resumed.model.neck.pointer, saved["neck.pointer"])
    resumed.fit()
    for name, value in uninterrupted.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_labeled_crops_get_colour_augmentation_on_the_same_geometry(dataset):
    image = sorted((Path(dataset) / "images" / "train").iterdir())[0]
    samples = [Sample(image, Path(dataset) / "masks" / "train" / f"{image.stem}.png", image.name)]
    plain, jittered = LabeledDataset(samples, 7, 56), StrongLabeledDataset(samples, 7, 56, cutout=False)
    changed = 0
    for seed in range(6):
        random.seed(seed)
        image_plain, mask_plain = plain[0]
        random.seed(seed)
        image_jittered, mask_jittered = jittered[0]
        assert torch.equal(mask_plain, mask_jittered)
        changed += not torch.allclose(image_plain, image_jittered)
    assert changed >= 3  # colour jitter p 0.8, grayscale p 0.2, blur p 0.5


# ------------------------------------------------------------------------------------------ configs and size


CONFIGS = {
    "configs/experiments/pascal_allspark_mit-b5_183.yaml": (544, 17 * 17, "segformer"),
    "configs/experiments/cityscapes_allspark_mit-b5_186.yaml": (832, 26 * 26, "segformer"),
    "configs/experiments/coco_allspark_mit-b5_232.yaml": (544, 17 * 17, "segformer"),
    "configs/experiments/pascal_allspark_base_183.yaml": (518, 37 * 37, "dpt"),
}


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_configs_load_with_the_reference_token_grid(path):
    cfg = load_config(path)
    crop, tokens, decoder = CONFIGS[path]
    assert (cfg.method.name, cfg.dataset.crop_size, cfg.model.decoder) == ("allspark", crop, decoder)
    stride = 32 if cfg.model.encoder == "mit-b5" else 14
    assert (crop // stride) ** 2 == tokens and crop % stride == 0


def test_a_crop_off_the_token_grid_is_a_config_error():
    model = build_segmentor("tiny", NCLASS)
    settings = method_class("allspark").Settings()
    with pytest.raises(ConfigError, match="dataset.crop_size: 100 is not a multiple of 14"):
        method_class("allspark").build_model(model, settings, 100)


def test_full_size_parameter_count_matches_unimatch_v2_table_1():
    """MiT-B5 + SegFormer head (768) + AllSpark at Pascal's 21 classes: 89.3M (UniMatch V2 Table 1). smp's MiT reads
    tensor values while initialising, so it is built for real (as ``parameter_counts`` falls back to)."""
    model = build_segmentor("mit-b5", 21, decoder="segformer", decoder_settings=SegFormerSettings())
    model = method_class("allspark").build_model(model, method_class("allspark").Settings(), 544)
    millions = [sum(p.numel() for p in part.parameters()) / 1e6 for part in (model.encoder, model.head, model.neck)]
    assert round(sum(millions), 1) == 89.3
    assert [round(m, 2) for m in millions] == [81.44, 3.17, 4.72]
