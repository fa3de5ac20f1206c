"""The teacher and student objectives: named terms, the gate, the cache read-before-write order."""

import pytest
import torch
import torch.nn.functional as F
from fakes import cache_memory
from torch import nn

from intrakd.config import DistillConfig, IntraConfig
from intrakd.data import Batch
from intrakd.losses import Memory, intra_class_contrastive_loss, kd_loss
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
    x2 = x1 + 0.1 * torch.randn(n, dim, generator=g)
    return Batch((x1, x2), torch.randint(0, classes, (n,), generator=g), torch.arange(n) + seed * n)


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
    memory_before, labels_before = (t.clone() for t in cache_memory(objective.cache))
    result = objective(model, b2)
    z1, z2 = F.normalize(b2.views[0], dim=1), F.normalize(b2.views[1], dim=1)
    want = intra_class_contrastive_loss(z1, z2, b2.labels, memory=[Memory.of(memory_before, labels_before)],
                                        symmetric=True)
    torch.testing.assert_close(result.losses["intra"], 0.5 * want)
    assert result.stats["pass_rate"].item() == 1.0
    # after the step the cache holds batch 2's first views (normalised)
    feats, labels = cache_memory(objective.cache)
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
    _, labels = cache_memory(objective.cache)
    assert set(labels[labels >= 0].tolist()) <= {0}
    assert (labels == 0).sum().item() == (b.labels == 0).sum().item()


def test_clear_after_use_empties_the_classes_used():
    model = Fixed()
    objective = IntraClassTeacherObjective(IntraConfig(weight=1.0, delta=-1.0, clear_after_use=True), 3, 4)
    b = batch(4, n=12)
    objective(model, b)
    objective(model, b)  # second step uses the cache, then clears those classes and writes this batch
    _, labels = cache_memory(objective.cache)
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



@pytest.mark.parametrize("exclude_self", [True, False])
def test_the_cache_never_gives_an_anchor_its_own_older_embedding(exclude_self):
    """Two steps over the same images: the second step's cache holds older embeddings of exactly
    those images. With intra.exclude_self they are no one's negatives (only other images' are)."""
    model = Fixed()
    cfg = IntraConfig(weight=1.0, delta=None, cache_size=8, exclude_self=exclude_self)
    objective = IntraClassTeacherObjective(cfg, 3, 4)
    first = batch(6, n=6)
    objective(model, first)
    cached, cached_labels = (t.clone() for t in cache_memory(objective.cache))
    cached_ids = objective.cache.ids.reshape(-1).clone()
    again = Batch(tuple(v + 0.05 for v in first.views), first.labels, first.indices)  # same images, later step
    result = objective(model, again)
    z1, z2 = (F.normalize(v, dim=1) for v in again.views)
    assert torch.isin(cached_ids, first.indices).any()
    # the reference: the flat-memory form (checked against a slow loop in test_losses), each anchor
    # skipping the cached rows of its own image when exclude_self
    want = intra_class_contrastive_loss(z1, z2, first.labels, memory=[Memory.of(cached, cached_labels, cached_ids)],
                                        anchor_ids=first.indices if exclude_self else None, symmetric=True)
    torch.testing.assert_close(result.losses["intra"], want)
    with_own = intra_class_contrastive_loss(z1, z2, first.labels, memory=[Memory.of(cached, cached_labels)],
                                            symmetric=True)
    assert (result.losses["intra"].item() == pytest.approx(with_own.item())) is not exclude_self
    assert result.stats["cache_own_entries"].item() > 0
    assert result.stats["self_negatives"].item() == (0 if exclude_self else result.stats["cache_own_entries"].item())


def test_no_gate_is_an_explicit_choice_and_the_logit_margin_takes_any_delta():
    model = Fixed()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([9.0, 0.0, 0.0]))  # logit margin 9 for class 0, -9 for the others
    b = batch(8)
    no_gate = IntraClassTeacherObjective(IntraConfig(weight=1.0, delta=None), 3, 4)(model, b)
    assert no_gate.stats["pass_rate"].item() == 1.0
    logit = IntraClassTeacherObjective(IntraConfig(weight=1.0, delta=5.0, margin="logit"), 3, 4)(model, b)
    assert logit.stats["pass_rate"].item() == pytest.approx((b.labels == 0).float().mean().item())
    # -1 is a real threshold for the logit margin: the samples at -9 do not pass
    below = IntraClassTeacherObjective(IntraConfig(weight=1.0, delta=-1.0, margin="logit"), 3, 4)(model, b)
    assert below.stats["pass_rate"].item() == pytest.approx((b.labels == 0).float().mean().item())
