"""A distillation method is one file plus one registry line: a toy method defined here runs `distill`
from a YAML config and from key=value overrides, is validated, and `intrakd methods` lists it."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import yaml
from torch import Tensor

from intrakd.cli import main
from intrakd.config import ConfigError, StudentConfig, load_config, schema, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput
from intrakd.objectives import Distiller, registry

DIGITS = ["data.dataset=digits", "optim.epochs=1", "optim.milestones=[1]", "data.batch_size=64",
          "data.train_per_class=20", "data.eval_per_class=10", "model=digits_cnn_small"]


@dataclass
class ToySettings:
    """Settings of the toy method."""

    weight: float = setting(0.5, "weight of the toy term (mean squared logit difference)", ">= 0")
    power: int = setting(2, "exponent of the logit difference", ">= 1")


class ToyObjective(Distiller):
    """Toy distillation: pull the student's logits to the teacher's with a power of their difference."""

    settings_class = ToySettings
    recipe = (0.7, 0.0)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        difference = (student.logits.float() - teacher.logits.float()).abs().pow(self.settings.power).mean()
        return {"toy": self.settings.weight * difference}, {}


@pytest.fixture
def toy_method(monkeypatch):
    """Register the toy method for one test (the registries are put back afterwards)."""
    monkeypatch.setattr(registry, "_DISTILLERS", dict(registry._DISTILLERS))
    monkeypatch.setattr(registry, "_REFERENCES", dict(registry._REFERENCES))
    monkeypatch.setattr(schema, "DISTILL_METHODS", dict(schema.DISTILL_METHODS))
    # the one registry line
    registry.register_distiller("toy", registry.ReferenceDifferences("none (a test method)"))(ToyObjective)
    yield "toy"


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "teacher"
    assert main(["train-teacher", "--vanilla", "--out", str(out), *DIGITS]) == 0
    return out / "checkpoints" / "last.pt"


def test_the_toy_method_has_a_section_a_recipe_and_rules(toy_method):
    cfg = load_config(StudentConfig, overrides=["distill.method=toy", "distill.toy.power=3"])
    assert (cfg.distill.ce_weight, cfg.distill.kd_weight) == (0.7, 0.0)
    assert cfg.distill.toy == ToySettings(weight=0.5, power=3)
    with pytest.raises(ConfigError, match=r"distill.toy.power must be >= 1, got 0"):
        load_config(StudentConfig, overrides=["distill.method=toy", "distill.toy.power=0"])
    with pytest.raises(ConfigError, match=r"unknown config key distill.toy.colour"):
        load_config(StudentConfig, overrides=["distill.toy.colour=1"])


def test_the_toy_method_is_gone_when_not_registered():
    with pytest.raises(ConfigError, match=r"distill.method: 'toy' is not one of 'kd', 'dkd'"):
        load_config(StudentConfig, overrides=["distill.method=toy"])


def test_distill_with_the_toy_method_from_a_yaml_config(toy_method, teacher_checkpoint, tmp_path):
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({"distill": {"method": "toy", "toy": {"weight": 2.0}}}))
    out = tmp_path / "student"
    assert main(["distill", "--config", str(config), "--teacher", str(teacher_checkpoint), "--out", str(out),
                 *DIGITS]) == 0
    written = yaml.safe_load((out / "config.yaml").read_text())["distill"]
    assert written["method"] == "toy" and written["toy"] == {"weight": 2.0, "power": 2}
    assert (written["ce_weight"], written["kd_weight"]) == (0.7, 0.0)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert record["toy"] > 0 and "kd" not in record
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["distill"]["toy"]["weight"] == 2.0


def test_distill_with_the_toy_method_from_overrides_and_resume(toy_method, teacher_checkpoint, tmp_path):
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher_checkpoint), "--out", str(out), "distill.method=toy",
                 "distill.toy.power=1", *DIGITS]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["distill"]["toy"] == {"weight": 0.5, "power": 1}
    assert main(["distill", "--resume", str(out)]) == 0  # a finished run resumes to the same end


def test_intrakd_methods_lists_the_toy_method(toy_method, capsys):
    assert main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert "toy: Toy distillation: pull the student's logits to the teacher's" in listing
    assert "distill.method=toy  (recipe: distill.ce_weight=0.7 distill.kd_weight=0.0)" in listing
    assert "distill.toy.power=2  exponent of the logit difference" in listing
