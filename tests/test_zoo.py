"""The model zoo: the CIFAR-100 benchmark models against the shared reference file, the ImageNet-size
models against torchvision, loading checkpoints in the benchmark's ``{"model": state_dict}`` format."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from intrakd.cli import main
from intrakd.models import Classifier, ModelOutput, create_model, list_models
from intrakd.models.layers import channel_shuffle
from intrakd.train import classifier_from_checkpoint

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "cifar100_zoo_state_dicts.json"
CIFAR100_ZOO = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet8x4", "resnet32x4",
    "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
    "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet18", "ResNet50",
]
IMAGENET_ZOO = {
    "imagenet_resnet18": torchvision.models.resnet18, "imagenet_resnet34": torchvision.models.resnet34,
    "imagenet_resnet50": torchvision.models.resnet50, "imagenet_mobilenet_v2": torchvision.models.mobilenet_v2,
}


@pytest.fixture(scope="module")
def reference() -> dict:
    if not REFERENCE.is_file():
        pytest.skip(f"zoo reference file {REFERENCE} is absent (it lives in the project's shared folder)")
    return json.loads(REFERENCE.read_text())


def check_contract(model: Classifier, size: int, num_classes: int) -> None:
    """Forward a batch of 2 at ``size`` x ``size``: shapes, and embedding/logits consistent with the
    last stage and the head."""
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
        assert out.logits.shape == (2, num_classes)
        assert out.embedding.shape == (2, model.embedding_dim)
        assert len(out.features) >= 3 and all(f.ndim == 4 and f.shape[0] == 2 for f in out.features)
        torch.testing.assert_close(out.embedding, model.embed(out.features[-1]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.logits, getattr(model, model.head_name)(out.embedding), rtol=1e-5, atol=1e-5)
        assert torch.isfinite(out.logits).all()


# Which tensor each stage feature is: the output of the named submodule, ``relu(name)`` where the
# reference applies a functional ReLU to it. CIFAR models: the reference model files' ``feat[i]``
# (RepDistiller ``models/*.py``; mdistiller ``models/cifar/*.py`` ``feats["feats"][i]``, the same
# tensors). ImageNet models: the torchvision blocks; digits: intrakd's own. Then what the head's
# embedding pools (the reference's pooled feature before its ``avg_pool2d``).
RESNET_STAGES = (["relu", "layer1", "layer2", "layer3"], "layer3")
WRN_STAGES = (["conv1", "block1", "block2", "block3"], "relu(bn1)")
VGG_STAGES = ([f"relu(block{i})" for i in range(5)], "relu(block4)")
REFERENCE_STAGES: dict[str, tuple[list[str], str]] = {
    **{name: RESNET_STAGES for name in CIFAR100_ZOO if name.startswith("resnet")},
    **{name: WRN_STAGES for name in CIFAR100_ZOO if name.startswith("wrn")},
    **{name: VGG_STAGES for name in CIFAR100_ZOO if name.startswith("vgg")},
    "MobileNetV2": (["conv1", "blocks.1", "blocks.2", "blocks.4", "blocks.6"], "conv2"),
    "ShuffleV1": (["relu(bn1)", "layer1", "layer2", "layer3"], "layer3"),
    "ShuffleV2": (["relu(bn1)", "layer1", "layer2", "layer3"], "relu(bn2)"),
    "ResNet18": (["relu(bn1)", "layer1", "layer2", "layer3", "layer4"], "layer4"),
    "ResNet50": (["relu(bn1)", "layer1", "layer2", "layer3", "layer4"], "layer4"),
    **{name: (["maxpool", "layer1", "layer2", "layer3", "layer4"], "layer4")
       for name in ("imagenet_resnet18", "imagenet_resnet34", "imagenet_resnet50")},
    "imagenet_mobilenet_v2": ([f"features.{i}" for i in (1, 3, 6, 13, 17)], "features.18"),
    "imagenet_mobilenet_v1": ([f"model.{i}" for i in (1, 3, 5, 11, 13)], "model.13"),
    "digits_cnn": (["stage1", "stage2"], "stage2"),
    "digits_cnn_small": (["stage1", "stage2"], "stage2"),
}


def outputs_of(model: torch.nn.Module, specs: list[str], image: torch.Tensor) -> tuple[ModelOutput, list[torch.Tensor]]:
    """The model's output for ``image`` and, for each spec (``name`` or ``relu(name)``), a copy of the
    named submodule's output in its first call (before any in-place change), ReLU applied if asked."""
    names = {spec.removeprefix("relu(").removesuffix(")") for spec in specs}
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: seen.setdefault(name, out.clone())) for name in sorted(names)]
    try:
        with torch.no_grad():
            out = model(image)
    finally:
        for hook in hooks:
            hook.remove()
    tensors = []
    for spec in specs:
        name = spec.removeprefix("relu(").removesuffix(")")
        tensors.append(F.relu(seen[name]) if spec.startswith("relu(") else seen[name])
    return out, tensors


def test_every_model_has_its_stage_features_pinned():
    assert sorted(REFERENCE_STAGES) == list_models()


def reference_outputs(name: str) -> tuple[Classifier, ModelOutput, list[torch.Tensor]]:
    """Model ``name`` (10 classes, BatchNorms away from their identity initialisation so that a
    BN-ReLU shows, eval mode), its output for a fixed batch of 2, and the tensors its entry of
    :data:`REFERENCE_STAGES` names: each stage's, then the one the embedding pools."""
    stages, pooled = REFERENCE_STAGES[name]
    model = create_model(name, num_classes=10)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.randn(m.num_features, generator=g)
            m.bias.data = torch.randn(m.num_features, generator=g)
            m.running_mean = torch.randn(m.num_features, generator=g)
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    channels, size = (1, 8) if name.startswith("digits") else (3, 64 if name.startswith("imagenet") else 32)
    out, tensors = outputs_of(model.eval(), [*stages, pooled], torch.randn(2, channels, size, size, generator=g))
    return model, out, tensors


@pytest.mark.parametrize("name", sorted(REFERENCE_STAGES))
def test_stage_features_are_the_reference_blocks(name):
    """On the Wide ResNets the last stage is the raw ``block3`` output, not the final BN-ReLU; on
    ShuffleV2 and the MobileNetV2s it is the last stage, not the 1x1 head map."""
    stages = REFERENCE_STAGES[name][0]
    _, out, expected = reference_outputs(name)
    assert len(out.features) == len(stages)
    for i, (feature, block) in enumerate(zip(out.features, expected, strict=False)):
        assert torch.equal(feature, block), f"{name} features[{i}] is not {stages[i]}"


@pytest.mark.parametrize("name", sorted(REFERENCE_STAGES))
def test_embedding_pools_what_the_reference_pools_and_the_logits_are_its_head(name):
    """What the head reads did not move when the stage features did (this held before as well)."""
    model, out, expected = reference_outputs(name)
    torch.testing.assert_close(out.embedding, expected[-1].mean(dim=(2, 3)), rtol=1e-6, atol=1e-6)
    assert out.embedding.shape == (2, model.embedding_dim)
    assert torch.equal(out.logits, getattr(model, model.head_name)(out.embedding))


def test_zoo_names_are_the_reference_names(reference):
    assert sorted(reference) == sorted(CIFAR100_ZOO)
    assert set(CIFAR100_ZOO) <= set(list_models())


@pytest.mark.parametrize("name", CIFAR100_ZOO)
def test_zoo_model_matches_reference_and_runs_at_32_and_64(reference, name):
    ref = reference[name]
    model = create_model(name, num_classes=ref["num_classes"]).eval()
    layout = [[key, list(value.shape)] for key, value in model.state_dict().items()]
    assert layout == ref["state_dict"]  # names, order and shapes
    assert sum(p.numel() for p in model.parameters()) == ref["params"]
    assert ref["state_dict"][-1][0].startswith(f"{model.head_name}.")  # the head is the checkpoint's classifier
    assert ref["logits_shape"] == [2, ref["num_classes"]]  # what check_contract asserts at batch 2
    check_contract(model, 32, ref["num_classes"])
    check_contract(model, 64, ref["num_classes"])


def test_channel_shuffle_matches_a_loop():
    x = torch.randn(2, 12, 3, 3)
    for groups in (1, 2, 3, 4):
        per_group = 12 // groups
        expected = torch.empty_like(x)
        for g in range(groups):
            for i in range(per_group):
                expected[:, i * groups + g] = x[:, g * per_group + i]
        assert torch.equal(channel_shuffle(x, groups), expected)


def test_vgg_reaches_block4_at_4x4_for_32_and_64_inputs():
    model = create_model("vgg8", num_classes=10).eval()
    with torch.no_grad():
        for size in (32, 64):
            assert model(torch.randn(1, 3, size, size)).features[-1].shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", sorted(IMAGENET_ZOO))
def test_imagenet_models_keep_torchvision_names(name):
    model = create_model(name, num_classes=10).eval()
    with torch.device("meta"):  # shapes only, no initialisation
        expected = IMAGENET_ZOO[name](weights=None, num_classes=10).state_dict()
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in expected.items()]
    check_contract(model, 64, 10)


def test_mobilenet_v1_layout_and_size():
    model = create_model("imagenet_mobilenet_v1", num_classes=1000).eval()
    assert sum(p.numel() for p in model.parameters()) == 4_231_976  # MobileNetV1 1.0-224
    keys = list(model.state_dict())
    assert keys[0] == "model.0.0.weight" and keys[-2:] == ["fc.weight", "fc.bias"]
    assert "model.13.3.weight" in keys and model.state_dict()["model.13.3.weight"].shape == (1024, 1024, 1, 1)
    check_contract(model, 64, 1000)


def test_imagenet_weights_load_from_a_local_file_only(tmp_path):
    source = torchvision.models.mobilenet_v2(weights=None, num_classes=10)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(source.state_dict(), path)  # a torchvision weights file: a bare state_dict
    model = create_model("imagenet_mobilenet_v2", num_classes=10, weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="absent.pth does not exist"):
        create_model("imagenet_mobilenet_v2", num_classes=10, weights=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match=r"does not fit model 'imagenet_resnet18'.*missing keys: conv1.weight"):
        create_model("imagenet_resnet18", num_classes=10, weights=path)


def shared_format_checkpoint(reference: dict, name: str, path: Path, num_classes: int = 100) -> dict:
    """A ``{"model": state_dict}`` file with the reference's names and shapes (the classifier
    resized to ``num_classes``) and random values, as the benchmark's training scripts save them."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in reference[name]["state_dict"]:
        shape = [num_classes if (d == 100 and i == 0) else d for i, d in enumerate(shape)]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.1
    torch.save({"model": state, "epoch": 240, "best_acc": torch.tensor(75.0)}, path)
    return state


@pytest.mark.parametrize("name", ["wrn_16_2", "vgg8", "MobileNetV2", "ShuffleV1", "resnet8x4"])
def test_shared_format_checkpoint_loads_as_it_is(reference, tmp_path, name):
    path = tmp_path / f"{name}.pth"
    state = shared_format_checkpoint(reference, name, path)
    model, stored = classifier_from_checkpoint(path, name, num_classes=100)
    assert stored["epoch"] == 240
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_checkpoint_that_does_not_fit_names_the_keys(reference, tmp_path):
    state = shared_format_checkpoint(reference, "wrn_16_2", tmp_path / "ok.pth")
    broken = dict(state)
    del broken["block1.layer.0.conv1.weight"]
    broken["head.weight"] = torch.zeros(3)
    broken["conv1.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as err:
        classifier_from_checkpoint(tmp_path / "broken.pth", "wrn_16_2", num_classes=100)
    message = str(err.value)
    assert "does not fit model 'wrn_16_2'" in message
    assert "missing keys: block1.layer.0.conv1.weight" in message
    assert "unexpected keys: head.weight" in message
    assert "conv1.weight (16, 3, 5, 5) vs (16, 3, 3, 3)" in message
    with pytest.raises(ValueError, match=r"is a 100-class model but the data has 10 classes"):
        classifier_from_checkpoint(tmp_path / "ok.pth", "wrn_16_2", num_classes=10)
    with pytest.raises(ValueError, match=r"does not fit model 'wrn_40_2'"):
        classifier_from_checkpoint(tmp_path / "ok.pth", "wrn_40_2", num_classes=100)
    with pytest.raises(ValueError, match=r"the wrn_16_2 in checkpoint .*ok.pth cannot read this dataset's "
                                         r"1-channel 8x8 images \(.*channels.*\): use a checkpoint trained on"):
        classifier_from_checkpoint(tmp_path / "ok.pth", "wrn_16_2", num_classes=100, image_shape=(1, 8, 8))
    model, _ = classifier_from_checkpoint(tmp_path / "ok.pth", "wrn_16_2", num_classes=100, image_shape=(3, 32, 32))
    assert model.training


def make_tiny_imagenet(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """Tiny ImageNet's official layout with random 64x64 images (PNG-encoded under .JPEG names)."""
    rng = np.random.default_rng(0)
    wnids = [f"n{9 - c:08d}" for c in range(classes)]
    annotations = []
    for c, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        for i in range(per_class):
            image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
            image.save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", format="PNG")
    (root / "val" / "images").mkdir(parents=True)
    for j in range(2 * classes):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            root / "val" / "images" / f"val_{j}.JPEG", format="PNG")
        annotations.append(f"val_{j}.JPEG\t{wnids[j % classes]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    return root


def test_cli_evaluates_and_distils_from_a_shared_format_teacher(reference, tmp_path, capsys):
    data = make_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    teacher = tmp_path / "resnet8_teacher.pth"
    shared_format_checkpoint(reference, "resnet8", teacher, num_classes=3)
    assert main(["evaluate", "--checkpoint", str(teacher), "--model", "resnet8", "--dataset", "tiny_imagenet",
                 "--data-root", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and result["split"] == "val"
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher), "--out", str(out), "model=resnet8", "teacher_model=resnet8",
                 "data.dataset=tiny_imagenet", f"data.root={data}", "data.batch_size=4", "data.workers=0",
                 "optim.epochs=1", "device=cpu"]) == 0
    assert (out / "checkpoints" / "last.pt").is_file()


def test_cli_reports_a_class_count_mismatch(reference, tmp_path, capsys):
    make_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    teacher = tmp_path / "resnet8_cifar100.pth"
    shared_format_checkpoint(reference, "resnet8", teacher)  # 100 classes; the data has 3
    args = ["data.dataset=tiny_imagenet", f"data.root={tmp_path}", "data.batch_size=4", "data.workers=0",
            "optim.epochs=1", "device=cpu", "model=resnet8", "teacher_model=resnet8"]
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "s"), *args]) == 2
    err = capsys.readouterr().err
    assert "intrakd distill: error:" in err and "is a 100-class model but the data has 3 classes" in err
    assert main(["evaluate", "--checkpoint", str(teacher), "--model", "resnet8", "--dataset", "tiny_imagenet",
                 "--data-root", str(tmp_path)]) == 2
    assert "is a 100-class model but the data has 3 classes" in capsys.readouterr().err
