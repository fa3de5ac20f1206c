"""MixUp and CutMix of training batches (data.mixup, data.cutmix): the settings, the mixed images and
their soft targets, what each model is fed, and draws that a resumed or data-parallel run repeats."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from intrakd.cli import main
from intrakd.config import ConfigError, DataConfig, StudentConfig, TeacherConfig, load_config
from intrakd.data import build_datasets
from intrakd.data.mixing import MixedBatches, describe_mixing, mix_batch, mixing_transform
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelInput, create_model, feed_with
from intrakd.objectives import create_distiller
from intrakd.objectives.teacher import IntraClassTeacherObjective
from intrakd.progress import RunPlan, run_intro
from intrakd.runs import data_input

DIGITS = ["data.dataset=digits", "model=digits_cnn_small", "optim.epochs=1", "device=cpu"]


@pytest.fixture(scope="module")
def digits():
    train_set, _, _ = build_datasets(DataConfig(dataset="digits"))
    return train_set


def batch_of(digits, size: int = 32, views: int = 1) -> Batch:
    batches = digits.train_batches(size, views, seed=0, device=torch.device("cpu"))
    batches.set_epoch(0)
    return next(iter(batches))


@pytest.mark.parametrize("override, message", [
    ("data.mixup=-0.2", "data.mixup must be >= 0, got -0.2"),
    ("data.cutmix=-1", "data.cutmix must be >= 0, got -1.0"),
])
def test_negative_alpha_is_refused(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    assert main(["train-teacher", "--out", str(out), *DIGITS, "intra.weight=0", override]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("weight", ["0.1", "auto"])
def test_intra_class_loss_with_mixing_is_refused_without_trace(tmp_path, capsys, weight):
    out = tmp_path / "run"
    assert main(["train-teacher", "--out", str(out), *DIGITS, f"intra.weight={weight}", "data.cutmix=1"]) == 2
    err = capsys.readouterr().err
    assert "a mixed image (data.mixup, data.cutmix) has no single class" in err and "intra.weight=0" in err
    assert not out.exists()


def test_a_store_of_teacher_outputs_with_mixing_is_refused(tmp_path, capsys):
    """Read (the teacher must see the mixed images) or written (it would hold unmixed views' logits)."""
    with pytest.raises(ConfigError, match="must see the mixed image: distil from the teacher itself"):
        load_config(StudentConfig, None, ["teacher_outputs=store", "data.mixup=0.2"])
    out = tmp_path / "store"
    assert main(["teacher-outputs", "--teacher", str(tmp_path / "t.pt"), "--out", str(out), *DIGITS,
                 "data.cutmix=1"]) == 2
    assert "a store holds the teacher's logits of unmixed views" in capsys.readouterr().err and not out.exists()


def test_mixup_then_feeding_is_the_hand_computation(digits):
    """Each image blended with the one before it at the ratio its target shows, rounded to uint8 pixels,
    then normalised by the model's input: within half a pixel step of blending the normalised images."""
    batch = batch_of(digits)
    mixed = mix_batch(batch, mixing_transform(0.4, 0.0, digits.num_classes), seed=7)
    x, y = batch.views[0].float(), batch.labels
    other = y.roll(1)
    rows = (y != other).nonzero().squeeze(1)
    lam = mixed.mixed_targets[rows, y[rows]]  # the image's own share
    assert torch.allclose(mixed.mixed_targets[rows, other[rows]], 1 - lam)
    assert torch.allclose(lam, lam[0].expand_as(lam)) and 0 < lam[0] < 1  # one ratio for the batch
    lam = lam[0].item()
    blend = lam * x + (1 - lam) * x.roll(1, 0)
    assert mixed.views[0].dtype == torch.uint8 and torch.equal(mixed.views[0], blend.round().to(torch.uint8))
    model_input = ModelInput((0.3,), (0.2,))
    fed = model_input(mixed.views[0])
    assert torch.allclose(fed, (mixed.views[0].float() / 255 - 0.3) / 0.2)
    exact = lam * model_input(batch.views[0]) + (1 - lam) * model_input(batch.views[0].roll(1, 0))
    assert (fed - exact).abs().max() <= 0.5 / 255 / 0.2 + 1e-5
    # the dominant class: the image's own where it holds at least half
    assert torch.equal(mixed.labels[rows], y[rows] if lam > 0.5 else other[rows])


def test_cutmix_pastes_a_box_and_mixes_the_targets_by_its_area(digits):
    batch = batch_of(digits)
    images = torch.arange(32, dtype=torch.uint8).view(32, 1, 1, 1).expand(32, 1, 8, 8).contiguous()
    batch = Batch((images,), torch.arange(32) % 10, batch.indices)
    mixed = mix_batch(batch, mixing_transform(0.0, 1.0, 10), seed=3)
    pasted = mixed.views[0] != images  # every pixel of the box comes from the image before
    assert torch.equal(mixed.views[0][pasted], images.roll(1, 0)[pasted])
    share = 1 - pasted[0].float().mean()
    assert 0 < share < 1
    assert torch.allclose(mixed.mixed_targets[1, 1], share) and torch.allclose(mixed.mixed_targets[1, 0], 1 - share)


def test_both_pick_one_per_batch_as_torchvision_random_choice():
    transform = mixing_transform(0.2, 1.0, 10)
    assert isinstance(transform, v2.RandomChoice) and transform.p == [0.5, 0.5]
    assert [type(t) for t in transform.transforms] == [v2.MixUp, v2.CutMix]


def test_every_view_mixed_alike(digits):
    batch = batch_of(digits, views=2)
    mixed = mix_batch(batch, mixing_transform(1.0, 0.0, digits.num_classes), seed=1)
    lam = mixed.mixed_targets.max(1).values.min().item()
    for view, original in zip(mixed.views, batch.views):
        expected = [(a * original.float() + (1 - a) * original.float().roll(1, 0)).round() for a in (lam, 1 - lam)]
        assert any(torch.equal(view.float(), e) for e in expected)


def test_draws_are_keyed_by_position_and_rank_and_leave_the_global_generator(digits):
    inner = digits.train_batches(64, 1, seed=0, device=torch.device("cpu"))
    mixed = MixedBatches(inner, 0.2, 1.0, digits.num_classes, seed=5)
    mixed.set_epoch(1)
    before = torch.get_rng_state()
    full = list(mixed)
    assert torch.equal(torch.get_rng_state(), before)
    mixed.set_epoch(1, 4)  # resumed at batch 4
    for resumed, uninterrupted in zip(list(mixed), full[4:], strict=True):
        assert torch.equal(resumed.views[0], uninterrupted.views[0])
        assert torch.equal(resumed.mixed_targets, uninterrupted.mixed_targets)
    other_rank = MixedBatches(inner, 0.2, 1.0, digits.num_classes, seed=5, rank=1)
    other_rank.set_epoch(1)
    assert any(not torch.equal(a.mixed_targets, b.mixed_targets) for a, b in zip(other_rank, full))


def test_teacher_and_student_see_the_same_mixed_images_and_ce_takes_the_soft_targets(digits):
    """A KD step on a mixed batch: both models are fed the mixed view (recorded before their input
    hooks), and the ce term is the label-smoothed cross-entropy against the mixed targets."""
    inner = digits.train_batches(32, 1, seed=0, device=torch.device("cpu"))
    batches = MixedBatches(inner, 0.4, 0.0, digits.num_classes, seed=0)
    batches.set_epoch(0)
    inner.set_epoch(0)
    batch, unmixed = next(iter(batches)), next(iter(inner))
    seen: dict[str, torch.Tensor] = {}
    models = {}
    for name, arch in (("student", "digits_cnn_small"), ("teacher", "digits_cnn")):
        model = feed_with(create_model(arch, num_classes=10), data_input(digits))
        model.register_forward_pre_hook(lambda _, args, name=name: seen.__setitem__(name, args[0]), prepend=True)
        models[name] = model
    cfg = load_config(StudentConfig, None, ["distill.method=kd"]).distill
    objective = create_distiller(cfg, models["student"], models["teacher"].eval(), digits)
    objective.label_smoothing = 0.1
    result = objective(models["student"], batch, models["teacher"])
    assert seen["student"] is batch.views[0] and seen["teacher"] is batch.views[0]
    assert not torch.equal(batch.views[0], unmixed.views[0])
    smoothed = batch.mixed_targets * 0.9 + 0.1 / 10
    by_hand = -(smoothed * F.log_softmax(result.logits.float(), 1)).sum(1).mean()
    assert torch.allclose(result.losses["ce"], objective.ce_weight * by_hand)
    plain = F.cross_entropy(result.logits.float(), batch.labels, label_smoothing=0.1)
    assert not torch.allclose(result.losses["ce"], objective.ce_weight * plain)


def test_a_vanilla_teacher_takes_the_mixed_targets_of_both_views(digits):
    batch = mix_batch(batch_of(digits, views=2), mixing_transform(0.4, 1.0, digits.num_classes), seed=2)
    model = feed_with(create_model("digits_cnn_small", num_classes=10), data_input(digits))
    cfg = load_config(TeacherConfig, None, ["intra.weight=0"]).intra
    objective = IntraClassTeacherObjective(cfg, digits.num_classes, model.embedding_dim, views=2)
    result = objective(model, batch)
    logits = model(torch.cat(batch.views)).logits
    by_hand = -(batch.mixed_targets.repeat(2, 1) * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(result.losses["ce"], by_hand)


def test_the_introduction_says_how_batches_are_mixed():
    assert describe_mixing(0.0, 0.0) == ""
    assert describe_mixing(0.2, 0.0) == "MixUp alpha 0.2"
    assert describe_mixing(0.8, 1.0) == "MixUp alpha 0.8 or CutMix alpha 1 (one of the two per batch)"
    plan = RunPlan("train-teacher", "vanilla teacher", "runs/t", None, "digits", 1347, 10, "test", 450, "digits_cnn",
                   21, 3, 64, "cpu", "fp32", mixing=describe_mixing(0.0, 1.0))
    assert run_intro(plan)[1].endswith("evaluated on test: 450 images; batches mixed: CutMix alpha 1")
    assert "mixed" not in run_intro(dataclasses.replace(plan, mixing=""))[1]
