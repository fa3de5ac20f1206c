"""timm models as intrakd models: the contract, timm's parameter names, starting weights from a local
file (never downloaded here), the missing-timm error, distillation between a timm model and a zoo
model, and whole runs through the command line on a tiny image folder (resume, reload as teacher)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from test_resume import crash_then_resume
from torch import nn

from intrakd.cli import main
from intrakd.config import DistillConfig
from intrakd.data.tensor_data import Batch
from intrakd.models import create_model, list_families
from intrakd.models.checkpoint import classifier_from_checkpoint, load_weights
from intrakd.objectives import create_distiller
from intrakd.objectives.distiller import TrainSetInfo
from intrakd.train import read_checkpoint

timm = pytest.importorskip("timm")

SMALL = (3, 32, 32)
ARCHITECTURES = {  # name: (stage channels, embedding size) at 32x32
    "resnet10t": ([64, 64, 128, 256, 512], 512),
    "mobilenetv3_small_050": ([16, 8, 16, 24, 288], 1024),  # the embedding is the 1024-wide head's output
    "vit_tiny_patch16_224": ([192] * 12, 192),  # every block: 2x2 maps of patch tokens
}


def images(n: int = 2, shape=SMALL, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_contract_logits_embedding_and_stage_features(name):
    torch.manual_seed(0)
    model = create_model(f"timm/{name}", num_classes=7, image_shape=SMALL).eval()
    x = images()
    out = model(x)
    channels, width = ARCHITECTURES[name]
    torch.testing.assert_close(out.logits, model.net(x), rtol=0, atol=0)  # timm's own forward
    assert out.logits.shape == (2, 7) and out.embedding.shape == (2, width) == (2, model.embedding_dim)
    torch.testing.assert_close(out.logits, model.net.get_classifier()(out.embedding))  # what the classifier reads
    assert [f.shape[1] for f in out.features] == channels and all(f.ndim == 4 for f in out.features)
    assert [f["num_chs"] for f in model.net.feature_info] == channels
    for feature, again in zip(out.features, model.stages(x), strict=True):
        torch.testing.assert_close(feature, again)
    out.logits.sum().backward()  # one graph through features, embedding and logits
    assert all(p.grad is not None for p in model.net.get_classifier().parameters())


def test_stage_features_are_timms_feature_api():
    """The features equal those of timm's features_only model of the same weights."""
    model = create_model("timm/resnet10t", num_classes=5, image_shape=SMALL).eval()
    backbone = timm.create_model("resnet10t", features_only=True).eval()
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")})
    x = images()
    for ours, theirs in zip(model(x).features, backbone(x), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_state_dict_has_timms_names_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create_model("timm/resnet10t", num_classes=5, image_shape=SMALL).eval()
    assert list(model.state_dict()) == list(model.net.state_dict())  # no wrapper prefix
    other = create_model("timm/resnet10t", num_classes=5, image_shape=SMALL).eval()
    load_weights(other, model.state_dict(), "a state dict", "timm/resnet10t")
    wrapped = nn.ModuleDict({"student": other})  # nested: the prefix of the parent stays
    assert all(k.startswith("student.") and ".net." not in k for k in wrapped.state_dict())
    x = images()
    torch.testing.assert_close(other(x).logits, model(x).logits)
    # a bare timm state dict (as timm saves it) is a teacher checkpoint, given the architecture
    torch.save(model.net.state_dict(), tmp_path / "timm.pth")
    teacher, _ = classifier_from_checkpoint(tmp_path / "timm.pth", "timm/resnet10t", 5, SMALL)
    torch.testing.assert_close(teacher.eval()(x).logits, model(x).logits)


def test_fixed_size_models_are_built_for_the_images():
    model = create_model("timm/vit_tiny_patch16_224", num_classes=3, image_shape=(1, 48, 64)).eval()
    out = model(torch.zeros(2, 1, 48, 64))
    assert out.features[0].shape == (2, 192, 3, 4) and out.logits.shape == (2, 3)


def test_a_model_with_classifiers_other_than_a_class_and_a_distillation_head_is_refused():
    """timm's distilled models (a class and a distillation head) are models of two heads (test_deit.py)."""
    from intrakd.models.timm_models import TimmClassifier

    class ThreeHeads(torch.nn.Module):
        num_classes, num_features = 3, 4

        def get_classifier(self):
            return tuple(torch.nn.Linear(4, 3) for _ in range(3))

    with pytest.raises(ValueError, match="has 3 classifiers: intrakd's models have one, or a class and a "
                                         "distillation head"):
        TimmClassifier(ThreeHeads(), "three_heads")


def test_weights_from_a_local_file(tmp_path, capsys):
    torch.manual_seed(0)
    source = create_model("timm/resnet10t", num_classes=5, image_shape=SMALL).eval()
    torch.save(source.net.state_dict(), tmp_path / "resnet10t.pth")
    torch.save({"model": source.state_dict(), "model_name": "timm/resnet10t"}, tmp_path / "intrakd.pt")
    x = images()
    for path in (tmp_path / "resnet10t.pth", tmp_path / "intrakd.pt"):
        same = create_model("timm/resnet10t", num_classes=5, image_shape=SMALL, weights=path).eval()
        torch.testing.assert_close(same(x).logits, source(x).logits)
    assert capsys.readouterr().err == ""
    # another number of classes: the classifier starts new (said so), the rest is loaded
    fewer = create_model("timm/resnet10t", num_classes=3, image_shape=SMALL, weights=tmp_path / "resnet10t.pth")
    torch.testing.assert_close(fewer.eval()(x).embedding, source(x).embedding)
    assert "holds a 5-class classifier: timm/resnet10t starts with a new 3-class classifier" in capsys.readouterr().err
    torch.save({k: v for k, v in source.net.state_dict().items() if not k.startswith("fc.")}, tmp_path / "body.pth")
    headless = create_model("timm/resnet10t", num_classes=3, image_shape=SMALL, weights=tmp_path / "body.pth")
    torch.testing.assert_close(headless.eval()(x).embedding, source(x).embedding)
    assert "holds no classifier" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"does not fit timm model 'resnet14t' .*Missing key"):
        create_model("timm/resnet14t", num_classes=5, weights=tmp_path / "resnet10t.pth")
    with pytest.raises(FileNotFoundError, match="absent.pth does not exist"):
        create_model("timm/resnet10t", num_classes=5, weights=tmp_path / "absent.pth")


def test_torchvision_weights_load_into_timms_resnet(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    torch.save(tv.state_dict(), tmp_path / "resnet18.pth")
    model = create_model("timm/resnet18", num_classes=4, image_shape=SMALL, weights=tmp_path / "resnet18.pth")
    x = images()
    torch.testing.assert_close(model.eval()(x).logits, tv(x))


def test_hub_weights_only_when_asked(monkeypatch):
    calls = []
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        if pretrained and "pretrained_cfg_overlay" not in kwargs:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    create_model("timm/resnet10t", num_classes=3)
    assert calls == [False]
    with pytest.raises(ValueError, match=r"pretrained=true needs a network .*weights=PATH"):
        create_model("timm/resnet10t", num_classes=3, pretrained=True)
    with pytest.raises(ValueError, match="choose one"):
        create_model("timm/resnet10t", num_classes=3, pretrained=True, weights="w.pth")
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        create_model("timm/no_such_net", num_classes=3)
    with pytest.raises(ValueError, match="model 'resnet8' takes no pretrained"):
        create_model("resnet8", num_classes=3, pretrained=True)


def test_missing_timm_names_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    with pytest.raises(ValueError, match=r"timm models need the timm package.*pip install 'intrakd\[timm\]'"):
        create_model("timm/resnet10t", num_classes=3)
    assert main(["models"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("timm/")]
    assert line.split(None, 1)[1] == "any timm architecture, once timm is installed: pip install 'intrakd[timm]'"
    assert main(["train-teacher", "--out", str(tmp_path / "run"), "model=timm/resnet10t", "data.dataset=digits",
                 "device=cpu"]) == 2
    assert "pip install 'intrakd[timm]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_models_command_summarises_and_filters(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"timm {timm.__version__}'s" in out and "intrakd models --timm PATTERN" in out
    assert len(out.splitlines()) < 60  # a summary line, not timm's 1,000 names
    assert "timm/" in list_families()
    assert main(["models", "--timm", "resnet1?t"]) == 0
    listed = capsys.readouterr().out.split("\n")[:2]
    assert listed == ["timm/resnet10t  (1 pretrained)", "timm/resnet14t  (1 pretrained)"]


@pytest.mark.parametrize("method", ["fitnet", "at"])
def test_distill_step_between_a_timm_teacher_and_a_zoo_student(method):
    torch.manual_seed(0)
    teacher = create_model("timm/resnet10t", num_classes=3, image_shape=SMALL).eval().requires_grad_(False)
    student = create_model("imagenet_resnet18", num_classes=3)  # five stage features, like resnet10t
    cfg = DistillConfig(method=method)
    cfg.validate()
    objective = create_distiller(cfg, student, teacher, TrainSetInfo(3, torch.tensor([0, 1, 2]), SMALL))
    result = objective(student, Batch((images(4),), torch.tensor([0, 1, 2, 0])), teacher)
    assert set(result.losses) == {"ce", method} and result.losses[method] > 0
    sum(result.losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_distill_step_from_a_zoo_teacher_into_a_timm_vit():
    teacher = create_model("resnet8", num_classes=3).eval().requires_grad_(False)
    student = create_model("timm/vit_tiny_patch16_224", num_classes=3, image_shape=SMALL)
    cfg = DistillConfig(method="fitnet")
    cfg.fitnet.hint_layer = -1  # the ViT's last block (2x2) and resnet8's last stage (8x8)
    cfg.validate()
    objective = create_distiller(cfg, student, teacher, TrainSetInfo(3, torch.tensor([0, 1, 2]), SMALL))
    result = objective(student, Batch((images(4),), torch.tensor([0, 1, 2, 0])), teacher)
    assert set(result.losses) == {"ce", "fitnet"} and torch.isfinite(result.losses["fitnet"])


# ----- whole runs through the command line -----

def make_folder(root: Path, classes=("cat", "dog", "fox"), per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def folder_args(root: Path) -> list[str]:
    return ["data.dataset=imagefolder", f"data.root={root}", "data.image_size=32", "data.workers=0",
            "data.batch_size=4", "optim.epochs=2", "optim.milestones=[1]", "device=cpu", "intra.delta=null"]


@pytest.mark.slow
def test_timm_teacher_run_resumes_exactly_and_teaches_a_zoo_student(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "folder")
    common = ["model=timm/resnet10t", *folder_args(data), "checkpoint.every_steps=2"]
    assert main(["train-teacher", "--out", str(tmp_path / "straight"), *common]) == 0

    crash_then_resume(monkeypatch, "train-teacher", tmp_path / "crashed", common, step=4)
    straight = read_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    crashed = read_checkpoint(tmp_path / "crashed" / "checkpoints" / "last.pt")
    assert straight["model_name"] == "timm/resnet10t" and straight["model"].keys() == crashed["model"].keys()
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, crashed["model"][name]), name

    # its checkpoint reloads as a teacher, for a zoo student
    teacher = tmp_path / "straight" / "checkpoints" / "last.pt"
    model, _ = classifier_from_checkpoint(teacher, num_classes=3, image_shape=SMALL)
    assert model.net.default_cfg["architecture"] == "resnet10t"
    student_args = [a for a in folder_args(data) if not a.startswith("intra.")]
    assert main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "student"), "model=resnet8",
                 "distill.method=fitnet", *student_args]) == 0
    record = json.loads((tmp_path / "student" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["fitnet"] > 0


@pytest.mark.slow
def test_timm_student_from_local_weights_through_the_cli(tmp_path, capsys):
    data = make_folder(tmp_path / "folder")
    torch.manual_seed(0)
    start = create_model("timm/mobilenetv3_small_050", num_classes=10, image_shape=SMALL)
    torch.save(start.net.state_dict(), tmp_path / "start.pth")
    teacher = tmp_path / "teacher"
    assert main(["train-teacher", "--out", str(teacher), "model=resnet8", *folder_args(data)]) == 0
    capsys.readouterr()
    args = [a for a in folder_args(data) if not a.startswith("intra.")]
    assert main(["distill", "--teacher", str(teacher / "checkpoints" / "last.pt"), "--out", str(tmp_path / "s"),
                 "model=timm/mobilenetv3_small_050", f"weights={tmp_path / 'start.pth'}", *args]) == 0
    assert "holds a 10-class classifier: timm/mobilenetv3_small_050 starts with a new 3-class" in \
        capsys.readouterr().err
    state = read_checkpoint(tmp_path / "s" / "checkpoints" / "last.pt")
    assert state["provenance"]["weights_sha256"] and state["config"]["weights"] == str(tmp_path / "start.pth")
