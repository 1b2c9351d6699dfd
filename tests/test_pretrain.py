"""Self-supervised MAE pre-training: the loss, determinism, caching, resume and its use by training."""

import json

import pytest
import torch

from unimatch.apps import mae as pretraining
from unimatch.apps.mae import MaskedAutoencoder, patchify, pretrained_encoder, reconstruction_loss, training_images
from unimatch.config import load_config
from unimatch.data import generate_embedded
from unimatch.engine import build_model
from unimatch.jobs import train
from unimatch.models.encoders import build_encoder
from unimatch.tracking import Tracker


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_embedded(tmp_path_factory.mktemp("data") / "embedded", seed=5, n_train=16, n_val=4, size=(84, 70))


def config(dataset, out, *overrides):
    return load_config("configs/embedded.yaml", [
        f"dataset.root={dataset}", "dataset.crop_size=56", f"output_dir={out}/run", "split.labeled=4",
        "tracking.enabled=false", "model.weights=null", "pretrain.method=mae", f"pretrain.dir={out}/pretrain", "pretrain.iterations=6",
        "pretrain.batch_size=4", "pretrain.warmup_iters=2", "pretrain.log_every=2", "pretrain.checkpoint_every=2",
        *overrides,
    ])


class RecordingTracker(Tracker):
    def __init__(self):
        self.params, self.metrics = {}, {}

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step=None):
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, value))


def test_loss_counts_hidden_patches_only():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 28, 28)  # 2 x 2 patches
    target = patchify(images)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    keep = torch.tensor([[0], [3]])
    predicted = target.clone()
    predicted[0, 0] += 5.0  # a kept patch: wrong, but not scored
    predicted[1, 3] -= 5.0
    assert reconstruction_loss(predicted, images, keep).item() == pytest.approx(0.0, abs=1e-6)
    predicted[0, 1] += 1.0  # one of the 6 hidden patches off by 1 in every value
    assert reconstruction_loss(predicted, images, keep).item() == pytest.approx(1 / 6, rel=1e-5)


def test_the_encoder_sees_only_the_kept_patches():
    torch.manual_seed(0)
    model = MaskedAutoencoder(build_encoder("tiny"), grid=2, decoder_dim=16, decoder_depth=1).eval()
    images, keep = torch.randn(1, 3, 28, 28), torch.tensor([[1, 2]])
    changed = images.clone()
    changed[..., :14, :14] += 3.0  # patch 0, hidden
    with torch.no_grad():
        assert torch.equal(model(images, keep), model(changed, keep))
        changed[..., :14, 14:] += 3.0  # patch 1, kept
        assert not torch.equal(model(images, keep), model(changed, keep))


def test_pretraining_uses_training_images_only_and_is_cached(dataset, tmp_path):
    cfg = config(dataset, tmp_path)
    names = {sample.name for sample in training_images(cfg)}
    assert len(names) == 16 and all(name.startswith("images/train/") for name in names)
    tracker = RecordingTracker()
    path = pretrained_encoder(cfg, tracker, progress=False)
    assert path.name == "encoder.pth" and path.parent.parent == tmp_path / "pretrain"
    assert sorted(p.name for p in path.parent.iterdir()) == ["encoder.pth", "pretrain.json", "reconstructions.png"]
    summary = json.loads((path.parent / "pretrain.json").read_text())
    assert summary["images"] == 16 and len(summary["losses"]) == 6
    assert [step for step, _ in tracker.metrics["pretrain/loss"]] == [2, 4, 6]
    build_encoder("tiny").load_state_dict(torch.load(path, weights_only=True), strict=True)
    stamp = path.stat().st_mtime_ns
    assert pretrained_encoder(config(dataset, tmp_path, "split.labeled=8"), progress=False) == path  # same images
    assert path.stat().st_mtime_ns == stamp
    assert pretrained_encoder(config(dataset, tmp_path, "pretrain.mask_ratio=0.5"), progress=False) != path


def test_an_interrupted_pretraining_resumes_to_the_same_weights(dataset, tmp_path, monkeypatch):
    reference = torch.load(pretrained_encoder(config(dataset, tmp_path / "a"), progress=False), weights_only=True)
    real_batch, calls = pretraining.CropSampler.batch, []

    def crash_at_the_fifth_batch(self, size):
        calls.append(size)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated crash")
        return real_batch(self, size)

    monkeypatch.setattr(pretraining.CropSampler, "batch", crash_at_the_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        pretrained_encoder(config(dataset, tmp_path / "b"), progress=False)
    (run_dir,) = (tmp_path / "b" / "pretrain").iterdir()
    assert (run_dir / "latest.pth").is_file() and not (run_dir / "encoder.pth").exists()
    monkeypatch.setattr(pretraining.CropSampler, "batch", real_batch)
    resumed = torch.load(pretrained_encoder(config(dataset, tmp_path / "b"), progress=False), weights_only=True)
    assert not (run_dir / "latest.pth").exists()
    assert all(torch.equal(reference[key], resumed[key]) for key in reference)


def test_training_starts_from_the_pretrained_encoder(dataset, tmp_path):
    cfg = config(dataset, tmp_path, "method.name=labeled_only", "train.epochs=1", "train.max_iters=1",
                 "train.batch_size=2", "train.num_workers=0")
    tracker = RecordingTracker()
    train(cfg, tracker, progress=False)
    encoder = tracker.params["pretrain.encoder"]
    assert encoder.endswith("encoder.pth") and str(tmp_path / "pretrain") in encoder
    state = torch.load(encoder, weights_only=True)
    model = build_model(cfg.model.model_copy(update={"weights": encoder}), cfg.dataset.nclass, cfg.dataset.crop_size)
    assert torch.equal(model.encoder.pos_embed, state["pos_embed"])
    untouched = build_model(cfg.model, cfg.dataset.nclass, cfg.dataset.crop_size, quiet=True)
    assert not torch.equal(untouched.encoder.pos_embed, state["pos_embed"])


def test_explicit_weights_win_over_pretraining(dataset, tmp_path):
    weights = tmp_path / "given.pth"
    torch.save(build_encoder("tiny").state_dict(), weights)
    cfg = config(dataset, tmp_path, "method.name=labeled_only", "train.max_iters=1", "train.batch_size=2",
                 "train.num_workers=0", f"model.weights={weights}")
    tracker = RecordingTracker()
    train(cfg, tracker, progress=False)
    assert "pretrain.encoder" not in tracker.params and not (tmp_path / "pretrain").exists()


def test_pretraining_on_demand_leaves_the_callers_random_stream_alone(dataset, tmp_path):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    pretrained_encoder(config(dataset, tmp_path), progress=False)  # trains: not cached yet
    assert torch.equal(torch.rand(3), expected)
