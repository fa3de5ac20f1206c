"""``intrakd export``: the exported file takes uint8 images, normalisation included, and gives PyTorch's
logits; a bad request changes nothing on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_guards import TEACHER

from intrakd.analysis.analyze import load_split
from intrakd.analysis.export import run_exported
from intrakd.cli import main
from intrakd.models import ModelInput
from intrakd.train import classifier_from_checkpoint, read_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("export") / "run"
    assert main(["train-teacher", "--out", str(run), *TEACHER]) == 0
    return run / "checkpoints" / "last.pt"


def _pytorch_logits(checkpoint: Path, images: torch.Tensor) -> torch.Tensor:
    """The logits of the run's own evaluation path: the data layer's normalisation, then the model."""
    split = load_split(read_checkpoint(checkpoint)["config"]["data"], "test")
    state = read_checkpoint(checkpoint)
    model, _ = classifier_from_checkpoint(checkpoint, None, split.num_classes, split.image_shape)  # not fed
    with torch.no_grad():  # the input the run recorded it trained the model with, applied by hand
        return model.eval()(ModelInput.from_dict(state["provenance"]["model_input"])(images)).logits


def _export(checkpoint: Path, fmt: str, out: Path, capsys) -> dict:
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "max |logit difference|" in captured.err and f"written: {out}" in captured.err
    return result


@pytest.mark.parametrize("fmt", ["torchscript", "pt2", "onnx"])
def test_exported_model_takes_raw_images_and_gives_pytorchs_logits(checkpoint, tmp_path, capsys, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    out = tmp_path / f"model.{fmt}"
    result = _export(checkpoint, fmt, out, capsys)
    assert result["input"]["dtype"] == "uint8" and result["input"]["shape"] == ["batch", 1, 8, 8]
    assert result["max_abs_difference"] <= result["tolerance"]
    images = load_split(read_checkpoint(checkpoint)["config"]["data"], "test").images[-5:]  # not the checked ones
    got = run_exported(out.read_bytes(), fmt, images)
    assert got.shape == (5, 10)
    assert torch.allclose(got, _pytorch_logits(checkpoint, images), atol=1e-4)


def test_export_refuses_to_overwrite_the_checkpoint(checkpoint, capsys):
    before = checkpoint.read_bytes()
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(checkpoint)]) == 2
    assert "is the checkpoint itself" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before


def test_an_export_that_differs_from_pytorch_is_an_error_and_writes_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    from intrakd.analysis import export

    monkeypatch.setattr(export, "run_exported", lambda data, fmt, images: torch.zeros(len(images), 10) + 5.0)
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 2
    assert "differs from PyTorch by up to" in capsys.readouterr().err
    assert not out.exists()
