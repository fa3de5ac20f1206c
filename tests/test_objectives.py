"""The teacher and student objectives: named terms, the gate, the cache read-before-write order."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from intrakd.config import DistillConfig, IntraConfig
from intrakd.data import Batch
from intrakd.losses import intra_class_contrastive_loss, kd_loss
from intrakd.models import ModelOutput
from intrakd.objectives import IntraClassTeacherObjective, TrainSetInfo
from intrakd.objectives.kd import KDObjective


class Fixed(nn.Module):
    """A 'model' whose embedding is its input and whose logits are a fixed linear map."""

    def __init__(self, dim=4, classes=3):
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        return ModelOutput(self.fc(x), x, (x,))


def batch(seed=0, n=8, dim=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, dim, generator=g)
    return Batch((x1, x1 + 0.1 * torch.randn(n, dim, generator=g)), torch.randint(0, classes, (n,), generator=g))


def test_vanilla_teacher_is_cross_entropy_over_views():
    model, b = Fixed(), batch()
    objective = IntraClassTeacherObjective(IntraConfig(weight=0.0), 3, 4, views=2)
    result = objective(model, b)
    assert set(result.losses) == {"ce"}
    want = (F.cross_entropy(model.fc(b.views[0]), b.labels) + F.cross_entropy(model.fc(b.views[1]), b.labels)) / 2
    torch.testing.assert_close(result.losses["ce"], want)
    one_view = IntraClassTeacherObjective(IntraConfig(weight=0.0), 3, 4, views=1)
    result = one_view(model, Batch(b.views[:1], b.labels))
    torch.testing.assert_close(result.losses["ce"], F.cross_entropy(model.fc(b.views[0]), b.labels))


def test_enriched_teacher_terms_gate_and_cache_order():
    torch.manual_seed(0)
    model = Fixed()
    cfg = IntraConfig(weight=0.5, delta=-1.0, cache_size=4)
    objective = IntraClassTeacherObjective(cfg, 3, 4)
    b1, b2 = batch(1), batch(2)
    objective(model, b1)
    memory_before, labels_before = (t.clone() for t in objective.cache.memory())
    result = objective(model, b2)
    z1, z2 = F.normalize(b2.views[0], dim=1), F.normalize(b2.views[1], dim=1)
    want = intra_class_contrastive_loss(z1, z2, b2.labels, memory=memory_before, memory_labels=labels_before,
                                        symmetric=True)
    torch.testing.assert_close(result.losses["intra"], 0.5 * want)
    assert result.stats["pass_rate"].item() == 1.0
    # after the step the cache holds batch 2's first views (normalised)
    feats, labels = objective.cache.memory()
    for row, y in zip(z1, b2.labels):
        assert any(torch.allclose(row, f) for f in feats[labels == y])


def test_gate_excludes_low_margin_anchors_from_loss_and_cache():
    model = Fixed()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # only class-0 samples have a high margin
    objective = IntraClassTeacherObjective(IntraConfig(weight=1.0, delta=0.5, cache_size=8), 3, 4)
    b = batch(3)
    result = objective(model, b)
    passed = (b.labels == 0).float().mean()
    assert result.stats["pass_rate"].item() == pytest.approx(passed.item())
    _, labels = objective.cache.memory()
    assert set(labels[labels >= 0].tolist()) <= {0}
    assert (labels == 0).sum().item() == (b.labels == 0).sum().item()


def test_clear_after_use_empties_the_classes_used():
    model = Fixed()
    objective = IntraClassTeacherObjective(IntraConfig(weight=1.0, delta=-1.0, clear_after_use=True), 3, 4)
    b = batch(4, n=12)
    objective(model, b)
    objective(model, b)  # second step uses the cache, then clears those classes and writes this batch
    _, labels = objective.cache.memory()
    assert (labels >= 0).sum().item() == 12


def test_gradient_reaches_model_and_head():
    model = Fixed()
    objective = IntraClassTeacherObjective(IntraConfig(weight=1.0, delta=-1.0, head="mlp", head_dim=3), 3, 4)
    result = objective(model, batch(5))
    sum(result.losses.values()).backward()
    assert model.fc.weight.grad is not None
    assert all(p.grad is not None for p in objective.head.parameters())


def test_kd_student_objective_terms():
    student, teacher = Fixed(), Fixed()
    cfg = DistillConfig()
    cfg.validate()
    assert (cfg.temperature, cfg.ce_weight, cfg.kd_weight) == (4.0, 0.1, 0.9)  # the benchmark recipe
    objective = KDObjective(cfg, student, teacher, TrainSetInfo(3, torch.zeros(8, dtype=torch.long), (4,)))
    b = batch(6)
    result = objective(student, Batch(b.views[:1], b.labels), teacher)
    s, t = student.fc(b.views[0]), teacher.fc(b.views[0])
    torch.testing.assert_close(result.losses["ce"], 0.1 * F.cross_entropy(s, b.labels))
    torch.testing.assert_close(result.losses["kd"], 0.9 * kd_loss(s, t, 4.0))
    sum(result.losses.values()).backward()
    assert teacher.fc.weight.grad is None and student.fc.weight.grad is not None

