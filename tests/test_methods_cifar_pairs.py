"""Every registered distillation method, one training step on a CIFAR-100-shaped batch with the
benchmark's homogeneous pair (resnet32x4 -> resnet8x4) and a heterogeneous one (resnet32x4 ->
ShuffleV2: other channel counts, spatial sizes and number of stage features): the auxiliary modules
are sized from the models, the named losses are finite and the student and auxiliary modules step.
A method with a pre-training stage takes one step of it too."""

from __future__ import annotations

import pytest
import torch

from intrakd.config import StudentConfig, load_config
from intrakd.data import Batch
from intrakd.models import create_model
from intrakd.objectives import TrainSetInfo, create_distiller, list_distillers

pytestmark = pytest.mark.slow

PAIRS = [("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV2")]
BATCH = 4
REFUSED = {("fsp", "ShuffleV2"): "the same stage channels",
           **{("deit", s): "a distillation token needs a timm Vision Transformer" for s in ("resnet8x4", "ShuffleV2")}}
"""Pairs a method refuses, as RepDistiller does (its table of different architectures has no FSP row)."""


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", num_classes=100).eval()
    return {name: create_model(name, num_classes=100) for name in ("resnet8x4", "ShuffleV2")} | {"resnet32x4": teacher}


@pytest.mark.parametrize(("teacher_name", "student_name"), PAIRS, ids=["-".join(p) for p in PAIRS])
@pytest.mark.parametrize("method", list_distillers())
def test_one_step_on_cifar_pair(models, method, teacher_name, student_name):
    teacher, student = models[teacher_name], models[student_name]
    cfg = load_config(StudentConfig, overrides=[f"distill.method={method}", "distill.crd.num_negatives=64"])
    info = TrainSetInfo(100, torch.arange(200) % 100, (3, 32, 32))
    if (method, student_name) in REFUSED:
        with pytest.raises(ValueError, match=REFUSED[method, student_name]):
            create_distiller(cfg.distill, student, teacher, info)
        return
    objective = create_distiller(cfg.distill, student, teacher, info)
    g = torch.Generator().manual_seed(1)
    views = tuple(torch.randn(BATCH, 3, 32, 32, generator=g) for _ in range(objective.num_views))  # MLKD: two
    batch = Batch(views, torch.randint(0, 100, (BATCH,), generator=g), torch.randperm(200, generator=g)[:BATCH])
    trainable = [*student.parameters(), *objective.parameters()]
    optimizer = torch.optim.SGD(trainable, lr=0.01)
    steps = [objective.init_step, objective] if objective.init_epochs else [objective]
    terms = set()
    for step in steps:
        optimizer.zero_grad(set_to_none=True)
        result = step(student, batch, teacher)
        assert result.logits.shape == (BATCH, 100)
        assert all(torch.isfinite(v) for v in result.losses.values()), result.losses
        terms |= result.losses.keys()
        torch.stack(list(result.losses.values())).sum().backward()
        assert all(p.grad is None for p in teacher.parameters())
        assert all(torch.isfinite(p.grad).all() for p in trainable if p.grad is not None)
        optimizer.step()
    assert len(terms) >= 2, terms  # CE and at least one term of the method
