"""AllSpark (SPEC §12): the module's memory (FIFO, wrap-around, CSG), its attention, evaluation per image, the
EMA and checkpoints leaving the memory exact, training through the engine, configs and the full-size count."""

import math
import random
from pathlib import Path

import pytest
import torch

from unimatch.config import load_config
from unimatch.data import LabeledDataset, Sample, StrongLabeledDataset, generate_embedded
from unimatch.engine import Trainer, update_ema
from unimatch.engine.checkpoint import load_checkpoint
from unimatch.engine.evaluate import checkpoint_model
from unimatch.errors import ConfigError
from unimatch.methods import method_class
from unimatch.models import build_segmentor
from unimatch.models.allspark import AllSpark, ChannelAttention, _attend
from unimatch.models.decoders.segformer import SegFormerSettings
from unimatch.tracking import Tracker

NCLASS, CHANNELS, TOKENS = 3, 4, 9  # SPEC §12's CPU size: 3 classes, a 3 x 3 grid


def _module(dropout: float = 0.0, slots: int = CHANNELS) -> AllSpark:
    torch.manual_seed(0)
    return AllSpark(slots, NCLASS, TOKENS, heads=2, dropout=dropout)


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
    # Over many steps each class's slots, read from its pointer on, are its last CHANNELS channels, oldest first.
    written = {cls: [] for cls in range(NCLASS)}
    for cls, row in zip([0, 1, 0, 2, 0, 0, 0, 1], [*first, *second]):
        written[cls].append(row)
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        features = torch.randn(CHANNELS, TOKENS, generator=generator)
        classes = torch.randint(0, NCLASS, (CHANNELS,), generator=generator)
        module.enqueue(features, classes)
        for cls, row in zip(classes.tolist(), features):
            written[cls].append(row)
    for cls, rows in written.items():
        assert len(rows) > CHANNELS and module.pointer[cls] == len(rows) % CHANNELS
        oldest_first = module.memory[cls].roll(-int(module.pointer[cls]), dims=0)
        assert torch.equal(oldest_first, torch.stack(rows[-CHANNELS:])), cls


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


def _set(linear: torch.nn.Linear, rows: list[list[float]]) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(rows))


# Softmax of an instance-normalised 2 x 2 map whose rows are [1, 0] and [0, 1]: the map normalises to
# [[1, -1], [-1, 1]] (mean 1/2, standard deviation 1/2), so each row's weights are SIGMA and 1 - SIGMA.
SIGMA = 1 / (1 + math.exp(-2))


def test_unlabeled_self_attention_by_hand_two_channels_two_heads():
    """One image of 2 tokens, the one-hot vectors e0 and e1, so every projection's output per token is a column of
    its weight. Head 0: q = k = identity, scores [[1, 0], [0, 1]], weights [[s, 1-s], [1-s, s]] (s = SIGMA).
    Head 1: q swaps the channels, scores [[0, 1], [1, 0]], weights [[1-s, s], [s, 1-s]].
    Values per token (rows) and channel (columns): head 0 [[1, 2], [3, 4]], head 1 [[10, 20], [30, 40]].
    Output channel i of a head at token n is sum_j w[i, j] v[n, j]:
      head 0, channel 0: token 0  s*1 + (1-s)*2 = 2 - s,       token 1  s*3 + (1-s)*4 = 4 - s
      head 1, channel 0: token 0  (1-s)*10 + s*20 = 10 + 10s,  token 1  (1-s)*30 + s*40 = 30 + 10s
    The heads' outputs are interleaved channel by channel (c0h0, c0h1, c1h0, c1h1), so an out projection
    taking inputs 0 and 1 gives channel 0 of head 0 and channel 0 of head 1."""
    attention = ChannelAttention(2, heads=2, dropout=0.0)
    _set(attention.q_u, [[1, 0], [0, 1], [0, 1], [1, 0]])  # rows: head 0 channels 0, 1; head 1 channels 0, 1
    _set(attention.k_u, [[1, 0], [0, 1], [1, 0], [0, 1]])
    _set(attention.v_u, [[1, 3], [2, 4], [10, 30], [20, 40]])
    _set(attention.out_u, [[1, 0, 0, 0], [0, 1, 0, 0]])
    out = attention.unlabeled(torch.eye(2).unsqueeze(0))
    s = SIGMA
    assert torch.allclose(out[0], torch.tensor([[2 - s, 10 + 10 * s], [4 - s, 30 + 10 * s]]), atol=1e-4)


def test_labeled_cross_attention_by_hand_pools_the_channels_of_every_source():
    """One labeled query image and two sources, 2 tokens, 2 channels, one head, identity projections; tokens
    are one-hot (token n is e_n), the second source twice the first. Each query channel attends over the 4
    source channels (s0c0, s0c1, s1c0, s1c1): scores [[1, 0, 2, 0], [0, 1, 0, 2]], instance-normalised over
    the whole 2 x 4 map (mean 3/4, variance 11/16), softmax per row: w. The values are the same columns, so
    output channel c at token n is sum over columns of w[c, col] * value[n, col]:
      token 0: channel 0  w[0,0] + 2 w[0,2],  channel 1  w[1,0] + 2 w[1,2]
      token 1: channel 0  w[0,1] + 2 w[0,3],  channel 1  w[1,1] + 2 w[1,3]"""
    attention = ChannelAttention(2, heads=1, dropout=0.0)
    for linear in (attention.q_l2u, attention.k_l2u, attention.v_l2u, attention.out_l2u):
        _set(linear, [[1, 0], [0, 1]])
    sources = torch.stack((torch.eye(2), 2 * torch.eye(2)))
    out = attention.labeled(torch.eye(2).unsqueeze(0), sources, pooled=True)
    scores = [[1, 0, 2, 0], [0, 1, 0, 2]]
    normalised = [[(x - 0.75) / math.sqrt(11 / 16) for x in row] for row in scores]
    w = [[math.exp(z) / sum(math.exp(y) for y in row) for z in row] for row in normalised]
    expected = [[w[0][0] + 2 * w[0][2], w[1][0] + 2 * w[1][2]], [w[0][1] + 2 * w[0][3], w[1][1] + 2 * w[1][3]]]
    assert torch.allclose(out[0], torch.tensor(expected), atol=1e-4)
    # Zero sources (an empty memory): every score is 0, the weights uniform over zero values: the output is 0.
    assert torch.equal(attention.labeled(torch.randn(3, 2, 2), torch.zeros(4, 2, 2), pooled=True), torch.zeros(3, 2, 2))


def test_labeled_images_read_the_unlabeled_batch_and_the_memory_as_one_pool():
    """Permuting images: each output follows its image; a labeled image's output does not depend on the
    order of its unlabeled partners (their channels are pooled), nor on the order of the memory's classes
    (each class's C slots are read as the C channels of one more partner)."""
    module = _module().train()
    maps, guide = _train_maps()
    out = module(maps, labeled=2, guide=guide)[-1]
    for order, guide_order in (([1, 0, 2, 3], [0, 1]), ([0, 1, 3, 2], [1, 0])):  # labeled, then unlabeled swapped
        permuted = _module().train()([m[order] for m in maps], labeled=2, guide=guide[guide_order])[-1]
        assert torch.allclose(permuted, out[order], atol=1e-5), order
    reader, shuffled = _module().train(), _module().train()
    reader.remember = shuffled.remember = lambda *args: None  # read the memories as set here
    shuffled.memory.copy_(reader.memory.flip(0))  # the classes' slots in reverse class order
    read = reader(maps, labeled=2, guide=guide, use_memory=True)[-1][:2]
    assert torch.allclose(shuffled(maps, labeled=2, guide=guide, use_memory=True)[-1][:2], read, atol=1e-5)


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
    assert result.metrics["best_miou_ema"] == max(value for _, value in result.history["val/miou_ema"])
    assert trainer.model.neck.pointer.sum() > 0  # the memory was written
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
