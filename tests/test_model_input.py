"""Per-model input: the data layer yields uint8 views and each model normalises and resizes them to its
own input. Zoo models are fed exactly what the pipeline fed them before; a teacher is fed what it was
trained with (a wrong normalisation costs it accuracy); a teacher at 224 px teaches a student at 128."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn
from torchvision.transforms.v2.functional import resize

from intrakd.cli import main
from intrakd.config import ConfigError, StudentConfig, load_config
from intrakd.data import Augmentation, TensorDataset, build_datasets, load_digits_splits
from intrakd.data.augment import StrongAugment
from intrakd.models import ModelInput, create_model, feed_with, model_input_of, resolve_input
from intrakd.models.checkpoint import classifier_from_checkpoint, read_checkpoint
from intrakd.runs import data_input
from intrakd.train.evaluate import evaluate

CPU = torch.device("cpu")

# sha256 (first 16 hex digits) of the normalised views of batches 0-1 of epochs 0-1 (two views, the
# second strongly augmented: RandAugment + Cutout) and of the first eval batch, as the pipeline before
# per-model inputs computed them (commit 609ac52: the data layer normalised with the dataset's statistics)
PREVIOUS_PIPELINE = {
    "digits": ["16049d6a0e267eae", "556287ce29b1b0c0", "a5b90cdae1210a59", "08eafa7cecffd870", "3d35273ddf69a57f",
               "9548356d478d0001", "8d2eac4c7f4d44e0", "5a978a6bd13bb7f7", "0348816252821575"],
    "rgb": ["060a3cf17374a329", "c8bcd61205e81ca9", "ff88d37431cf2a1f", "5c11a2b0711b4c71", "58a7c21b9812045e",
            "c570b0179510cc9b", "c0239062cb8769a2", "ff1a0d47248dc92f", "db3309e5050bdfe9"],
}


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()[:16]


def _rgb_split() -> TensorDataset:
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (24, 3, 12, 12), dtype=torch.uint8, generator=g)
    return TensorDataset(images, torch.arange(24) % 4, 4,
                         Augmentation((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), padding=2))


@pytest.mark.parametrize("name", ["digits", "rgb"])
def test_a_zoo_model_is_fed_bit_for_bit_what_the_previous_pipeline_fed_it(name):
    data = load_digits_splits()[0] if name == "digits" else _rgb_split()
    fed = data_input(data)  # a zoo model's default: the dataset's statistics at its size
    batches = data.train_batches(8, 2, seed=0, device=CPU, strong_views=1)
    found = []
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        for i, batch in zip(range(2), batches):
            found += [_digest(fed(view)) for view in batch.views]
    images, _ = next(iter(data.eval_batches(16, CPU)))
    found.append(_digest(fed(images)))
    assert found == PREVIOUS_PIPELINE[name]


def test_cutout_fills_with_the_dataset_mean_whatever_the_model_subtracts():
    aug = Augmentation((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    images = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    filled = StrongAugment(aug.strong.fill).apply(images, torch.tensor([0]), torch.tensor([[1.0, 0.5, 0.5]]))
    assert filled[0, :, 4, 4].tolist() == [129, 124, 112]  # round(255 * mean), as before: about 0 once normalised
    rounding = 0.5 / 255 / min(aug.std)
    assert ModelInput(aug.mean, aug.std)(filled)[0, :, 4, 4].abs().max() < rounding


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        return x.mean()


def test_a_model_resizes_and_normalises_uint8_views_on_the_batch_and_takes_floats_as_they_are():
    model = feed_with(Recorder(), ModelInput((0.5,), (0.5,), size=4))
    images = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    images[:, :, :, :4] = 0
    model(images)
    (seen,) = model.seen
    assert seen.dtype == torch.float32 and seen.shape == (2, 1, 4, 4)
    expected = (resize(images.float() / 255, [4, 4], antialias=True) - 0.5) / 0.5  # torchvision's antialiased resize
    assert torch.allclose(seen, expected, atol=1e-6)
    assert seen[0, 0, 0].tolist() == [-1.0, -0.75, 0.75, 1.0]  # the edge blurred: antialiased, not sampled
    float_input = torch.randn(2, 1, 8, 8)
    model(float_input)
    assert model.seen[1] is float_input
    assert model_input_of(model) == ModelInput((0.5,), (0.5,), 4)


class Pretrained(nn.Module):
    pretrained_stats = ((0.5, 0.25, 0.75), (0.25, 0.25, 0.25))


def test_the_input_is_the_setting_else_the_recorded_else_the_weights_else_the_data():
    rgb = ModelInput((0.1, 0.2, 0.3), (0.3, 0.3, 0.3), 32)
    assert resolve_input(nn.Identity(), rgb) == rgb
    assert resolve_input(Pretrained(), rgb) == ModelInput((0.5, 0.25, 0.75), (0.25, 0.25, 0.25), 32)
    recorded = {"mean": [0.6] * 3, "std": [0.1] * 3, "size": 64}
    assert resolve_input(Pretrained(), rgb, recorded=recorded) == ModelInput((0.6,) * 3, (0.1,) * 3, 64)
    given = {"mean": None, "std": [0.5] * 3, "size": 16}
    assert resolve_input(Pretrained(), rgb, given, recorded) == ModelInput((0.6,) * 3, (0.5,) * 3, 16)
    grey = ModelInput((0.3,), (0.4,), 8)  # timm sums its first layer over RGB: the channels' mean
    assert resolve_input(Pretrained(), grey) == ModelInput((0.5,), (0.25,), 8)
    with pytest.raises(ConfigError, match="one value per channel"):
        resolve_input(nn.Identity(), grey, {"mean": [0.5] * 3, "std": [0.5] * 3})


def test_a_timm_model_from_weights_is_fed_timms_statistics_and_one_from_scratch_the_datas(tmp_path):
    pytest.importorskip("timm")
    shape = (3, 32, 32)
    own = ModelInput((0.1, 0.2, 0.3), (0.3, 0.3, 0.3), 32)
    scratch = create_model("timm/convnext_zepto_rms", num_classes=3, image_shape=shape)
    assert resolve_input(scratch, own) == own
    torch.save(scratch.state_dict(), tmp_path / "zepto.pth")
    started = create_model("timm/convnext_zepto_rms", num_classes=3, image_shape=shape, weights=tmp_path / "zepto.pth")
    assert resolve_input(started, own) == ModelInput((0.5,) * 3, (0.5,) * 3, 32)  # its pretrained_cfg's
    teacher, _ = classifier_from_checkpoint(tmp_path / "zepto.pth", "timm/convnext_zepto_rms", 3, shape, own)
    assert model_input_of(teacher) == ModelInput((0.5,) * 3, (0.5,) * 3, 32)  # a timm file as a teacher too


@pytest.mark.parametrize("override", ["model_input.std=[0.5,0]", "teacher_input.size=0", "model_input.mean=[]",
                                      "teacher_input.mean=[0.5,0.5]"])
def test_bad_model_input_settings_are_refused(override):
    extra = ["teacher_input.std=[0.5]"] if override.startswith("teacher_input.mean") else []
    with pytest.raises(ConfigError, match="_input"):
        load_config(StudentConfig, overrides=[override, *extra])


DIGITS = ["device=cpu", "data.dataset=digits", "data.batch_size=64", "data.train_per_class=60"]


@pytest.fixture(scope="module")
def half_teacher(tmp_path_factory):
    """A digits teacher trained on inputs normalised with mean = std = 0.5 (as many timm ViTs are)."""
    out = tmp_path_factory.mktemp("half") / "teacher"
    assert main(["train-teacher", "--out", str(out), *DIGITS, "model=digits_cnn_small", "intra.weight=0", "views=1",
                 "optim.epochs=6", "optim.milestones=[5]", "model_input.mean=[0.5]", "model_input.std=[0.5]"]) == 0
    return out / "checkpoints" / "last.pt"


def test_a_teacher_fed_the_wrong_normalisation_loses_accuracy_and_is_fed_its_own(half_teacher, tmp_path):
    _, test, _ = build_datasets(load_config(StudentConfig, overrides=DIGITS).data)
    own_data = data_input(test)
    assert read_checkpoint(half_teacher)["provenance"]["model_input"] == {"mean": [0.5], "std": [0.5], "size": 8}
    fed, _ = classifier_from_checkpoint(half_teacher, None, 10, test.image_shape, own_data)
    wrong, _ = classifier_from_checkpoint(half_teacher, None, 10, test.image_shape, own_data,
                                          {"mean": list(own_data.mean), "std": list(own_data.std)})
    own_acc, wrong_acc = evaluate(fed, test)["acc"], evaluate(wrong, test)["acc"]
    print(f"teacher accuracy: fed its own normalisation {own_acc:.1f}%, the dataset's {wrong_acc:.1f}%")
    assert own_acc >= wrong_acc + 10
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(half_teacher), "--out", str(out), *DIGITS, "model=digits_cnn_small",
                 "optim.epochs=1"]) == 0
    state = read_checkpoint(out / "checkpoints" / "last.pt")
    assert state["provenance"]["teacher_input"] == {"mean": [0.5], "std": [0.5], "size": 8}  # fed as it was trained
    assert '# teacher_input as fed: {"mean": [0.5], "std": [0.5], "size": 8}' in (out / "config.yaml").read_text()
    assert json.loads((out / "summary.json").read_text())["inputs"]["teacher_input"]["mean"] == [0.5]
    assert state["provenance"]["model_input"]["mean"] == list(own_data.mean)  # the zoo student: the data's own


def test_a_teacher_at_224_teaches_a_student_at_128_end_to_end(tmp_path, capsys):
    """timm's test ViT is built for one input size: each model reading the other's size would fail."""
    pytest.importorskip("timm")
    data = ["device=cpu", "data.dataset=digits", "data.image_size=224", "data.train_per_class=2",
            "data.eval_per_class=1", "data.batch_size=10", "optim.epochs=1", "optim.milestones=[1]"]
    teacher = tmp_path / "teacher"
    assert main(["train-teacher", "--out", str(teacher), *data, "model=timm/test_vit", "intra.weight=0",
                 "views=1"]) == 0
    student = tmp_path / "student"
    capsys.readouterr()
    assert main(["distill", "--teacher", str(teacher / "checkpoints" / "last.pt"), "--out", str(student), *data,
                 "model=timm/test_vit", "model_input.size=128", "distill.method=kd"]) == 0
    intro = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  input")]
    assert intro and "at 128 px; teacher mean" in intro[0] and intro[0].endswith("at 224 px")
    assert len((student / "metrics.jsonl").read_text().splitlines()) == 1
    assert main(["evaluate", "--checkpoint", str(student / "checkpoints" / "last.pt")]) == 0  # fed at 128 again


def test_a_store_records_the_teacher_input_and_refuses_a_run_feeding_the_teacher_otherwise(half_teacher, tmp_path,
                                                                                           capsys):
    run = [*DIGITS, "model=digits_cnn_small", "optim.epochs=1"]
    store = tmp_path / "store"
    assert main(["teacher-outputs", "--teacher", str(half_teacher), "--out", str(store), *run]) == 0
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["teacher_input"] == {"mean": [0.5], "std": [0.5], "size": 8}
    capsys.readouterr()
    assert main(["distill", f"teacher_outputs={store}", "--out", str(tmp_path / "other"), *run,
                 "teacher_input.mean=[0.3]"]) == 2
    assert "teacher_input.mean: the store has [0.5], this run [0.3]" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    assert main(["distill", f"teacher_outputs={store}", "--out", str(tmp_path / "stored"), *run]) == 0
    state = read_checkpoint(tmp_path / "stored" / "checkpoints" / "last.pt")
    assert state["provenance"]["teacher_input"] == manifest["teacher_input"]
