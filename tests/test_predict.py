"""``intrakd predict``: class names recorded in checkpoints, image files read and normalised as the run's
evaluation reads its images, clear errors for what cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_guards import TEACHER

from intrakd.analysis.analyze import load_split
from intrakd.cli import main
from intrakd.config import DataConfig
from intrakd.data import class_names
from intrakd.models import ModelInput
from intrakd.train import classifier_from_checkpoint, read_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("predict") / "run"
    assert main(["train-teacher", "--out", str(run), *TEACHER, "data.classes=[7,3,9]"]) == 0
    return run / "checkpoints" / "last.pt"


def test_checkpoints_record_their_class_names_in_label_order(checkpoint):
    assert read_checkpoint(checkpoint)["class_names"] == ["7", "3", "9"]


def test_cifar100_class_names_follow_classes_and_coarse_labels():
    root = Path("/work/shared/data")
    if not (root / "cifar-100-python" / "meta").is_file():
        pytest.skip("CIFAR-100 is not on this machine")
    assert class_names(DataConfig(dataset="cifar100", root=str(root), classes=[3, 0]))[:2] == ["bear", "apple"]
    assert class_names(DataConfig(dataset="cifar100", root=str(root), classes=["apple", "bear"],
                                  labels="coarse")) == ["fruit_and_vegetables", "large_carnivores"]


def test_predict_gives_the_models_probabilities_of_image_files(checkpoint, tmp_path, capsys):
    split = load_split(read_checkpoint(checkpoint)["config"]["data"], "test")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(split.images[i, 0].numpy(), mode="L").save(paths[-1])
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, paths), "--top", "2", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    model, state = classifier_from_checkpoint(checkpoint, None, 3, split.image_shape)  # not fed its input
    fed = ModelInput.from_dict(state["provenance"]["model_input"])  # the input the run trained it with
    with torch.no_grad():
        expected = torch.softmax(model.eval()(fed(split.images[:3])).logits, 1)
    for item, path, probs in zip(results, paths, expected):
        assert item["image"] == str(path) and len(item["top"]) == 2
        best = item["top"][0]
        assert best["class"] == ["7", "3", "9"][best["index"]] and best["index"] == int(probs.argmax())
        assert best["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert main(["predict", "--checkpoint", str(checkpoint), str(paths[0])]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(paths[0])) and len(line.split("\t")[1].split("  ")) == 3


def test_an_unreadable_image_is_exit_2_naming_it(checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", "--checkpoint", str(checkpoint), str(bad)]) == 2
    captured = capsys.readouterr()
    assert str(bad) in captured.err and captured.out == ""


def test_a_checkpoint_without_class_names_is_exit_2(checkpoint, tmp_path, capsys):
    state = read_checkpoint(checkpoint)
    del state["class_names"]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    assert main(["predict", "--checkpoint", str(old), str(image)]) == 2
    assert "records no class names" in capsys.readouterr().err
