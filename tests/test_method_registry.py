"""The method registry: each method's own config section, switching methods, what the engine reads from the
declarations (unlabeled data, teacher, schedule), and a new method added in one place."""

from pathlib import Path

import pytest
import torch
from pydantic import Field

from unimatch.config import load_config
from unimatch.engine import Trainer
from unimatch.errors import ConfigError
from unimatch.jobs import train
from unimatch.methods import METHODS, Method, method_class, method_labels, register_method, single_training_methods
from unimatch.methods.base import Pools, StepLosses, joint_forward
from unimatch.settings import PseudoLabelSettings, scoring_threshold


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"method: Value error, unknown method 'st\+\+\+'; choose one of allspark, fixmatch, labeled_only, semivl, st, st\+\+, unimatch_v1, unimatch_v2"):
        load_config("configs/embedded.yaml", ["method.name=st+++"])
    assert single_training_methods() == ["labeled_only", "fixmatch", "unimatch_v1", "unimatch_v2", "allspark", "semivl"]  # ST runs in stages


def test_each_method_section_holds_only_its_own_settings():
    v2 = load_config("configs/embedded.yaml", ["method.threshold=0.9"])
    assert v2.method.streams == "complementary"
    fixmatch = load_config("configs/embedded.yaml", ["method.threshold=0.9", "method.name=fixmatch"])
    assert fixmatch.method.threshold == 0.9 and not hasattr(fixmatch.method, "streams")  # τ survives the switch
    labeled = load_config("configs/embedded.yaml", ["method.name=labeled_only"])
    assert labeled.to_dict()["method"] == {"name": "labeled_only", "schedule": "auto"}
    with pytest.raises(ConfigError, match=r"'method\.streams=single': method\.streams: Extra inputs are not permitted"):
        load_config("configs/embedded.yaml", ["method.name=fixmatch", "method.streams=single"])


def test_pseudo_labels_are_scored_at_the_methods_threshold_or_the_default_one():
    """labeled-only has no threshold: its teacher is scored at the default 0.95, comparable with the others'."""
    labeled_only = load_config("configs/embedded.yaml", ["method.name=labeled_only"])
    assert not hasattr(labeled_only.method, "threshold") and scoring_threshold(labeled_only.method) == 0.95
    fixmatch = load_config("configs/embedded.yaml", ["method.name=fixmatch", "method.threshold=0.8"])
    assert scoring_threshold(fixmatch.method) == 0.8


def test_a_yaml_layer_naming_another_method_drops_the_settings_it_does_not_have(tmp_path):
    layer = tmp_path / "fixmatch.yaml"
    layer.write_text(f"inherit: [{Path('configs/embedded.yaml').resolve()}]\nmethod:\n  name: fixmatch\n")
    cfg = load_config(layer)
    assert cfg.method.name == "fixmatch" and cfg.method.threshold == 0.95


def test_labeled_only_loads_no_unlabeled_data_and_keeps_no_teacher(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(tmp_path, "method.name=labeled_only"), progress=False)
    assert set(trainer.streams) == {"labeled"} and trainer.teacher is trainer.model
    assert trainer.streams["labeled"][1] == 4  # the labeled batch doubled, as the reference does
    fixmatch = Trainer(tiny_config(tmp_path / "fm", "method.name=fixmatch"), progress=False)
    assert set(fixmatch.streams) == {"labeled", "unlabeled"} and fixmatch.teacher is not fixmatch.model


def _labeled_only(schedule: str):
    return method_class("labeled_only")(method_class("labeled_only").Settings(schedule=schedule), torch.nn.CrossEntropyLoss())


def test_labeled_only_reference_schedule_is_the_authors_one():
    pascal_92 = Pools(92, 92, 10582 - 92, "labeled.txt", "unlabeled.txt", labeled_epoch_samples=3000)
    reference = _labeled_only("auto").schedule(pascal_92, batch=16, world=1)
    assert (reference.iterations_per_epoch, reference.labeled_batch) == (93, 32)  # the authors' Pascal-92 log
    matched = _labeled_only("unlabeled").schedule(pascal_92, batch=16, world=1)
    assert (matched.iterations_per_epoch, matched.labeled_batch) == (655, 32)
    long_list = Pools(10582, 10582, 0, "all.txt", "none.txt", labeled_epoch_samples=3000)
    assert _labeled_only("reference").schedule(long_list, batch=16, world=2).iterations_per_epoch == 10582 // 64
    embedded = Pools(24, 24, 376, "l.txt", "u.txt", labeled_epoch_samples=None)
    assert _labeled_only("auto").schedule(embedded, batch=8, world=1).iterations_per_epoch == 47
    with pytest.raises(ConfigError, match="method.schedule: 'reference' needs dataset.labeled_epoch_samples"):
        _labeled_only("reference").schedule(embedded, batch=8, world=1)


def test_pascal_config_declares_the_reference_schedule():
    cfg = load_config("configs/experiments/pascal_unimatch_v2_base_92.yaml", ["method.name=labeled_only"])
    assert (cfg.dataset.labeled_epoch_samples, cfg.method.schedule) == (3000, "auto")


class HalfWeightSettings(PseudoLabelSettings):
    weight_of_strong: float = Field(0.5, ge=0, le=1)


def test_a_new_method_is_one_class_and_its_registration(tiny_config, tmp_path):
    """A FixMatch variant written here, registered, configured by its own key and trained by the engine."""

    @register_method("test_half_fixmatch", "half FixMatch")
    class HalfFixMatch(Method):
        Settings = HalfWeightSettings

        def step(self, student, teacher, labeled, unlabeled) -> StepLosses:
            from unimatch.methods import cutmix_images, cutmix_pseudo, pixel_loss, pseudo_label
            from unimatch.methods.base import mask_ratio

            pseudo = pseudo_label(teacher, unlabeled.weak, unlabeled.ignore)
            pred_x, pred_s = joint_forward(student, labeled.image, [cutmix_images(unlabeled.strong1, unlabeled.box1)])
            loss_u = self.cfg.weight_of_strong * pixel_loss(pred_s, cutmix_pseudo(pseudo, unlabeled.box1), self.cfg.threshold)
            return self.combine(self.labeled_loss(pred_x, labeled.mask), loss_u, mask_ratio(pseudo, self.cfg.threshold))

    try:
        cfg = tiny_config(tmp_path, "method.name=test_half_fixmatch", "method.weight_of_strong=0.25")
        assert cfg.method.weight_of_strong == 0.25 and cfg.method.teacher == "ema"
        result = train(cfg, progress=False)
        assert result.metrics["best_miou_ema"] == max(value for _, value in result.history["val/miou_ema"])
        assert method_labels()["test_half_fixmatch"] == "half FixMatch"
        with pytest.raises(ConfigError, match="weight_of_strong"):
            tiny_config(tmp_path, "method.name=test_half_fixmatch", "method.weight_of_strong=2")
    finally:
        METHODS.pop("test_half_fixmatch")
