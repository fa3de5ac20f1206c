"""Distillation methods: each loss against a slow computation of its published definition, gradient
flow (student and auxiliary modules, never the teacher), configuration, and CRD's memory state."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from intrakd.config import ConfigError, DistillConfig, StudentConfig, load_config
from intrakd.data import Batch
from intrakd.losses import kd_loss
from intrakd.models import ModelOutput, create_model
from intrakd.objectives import TrainSetInfo, distill_recipe, list_distillers, method_settings
from intrakd.objectives.at import at_loss
from intrakd.objectives.crd import CRDObjective, nce_loss, sample_other_class
from intrakd.objectives.dkd import DKDObjective, dkd_terms
from intrakd.objectives.fitnet import FitNetObjective
from intrakd.objectives.pkt import pkt_loss
from intrakd.objectives.registry import _DISTILLERS
from intrakd.objectives.rkd import rkd_losses
from intrakd.objectives.sp import sp_loss
from intrakd.objectives.stages import conv_regressor

METHODS = ["kd", "dkd", "crd", "rkd", "fitnet", "at", "sp", "pkt", "vid", "cc", "nst", "kdsvd", "ofd", "reviewkd",
           "mlkd", "ab", "ft", "fsp", "dist"]
DIGITS_OVERRIDES = {"fitnet": ["distill.fitnet.hint_layer=1"],  # the digits CNNs have 2 stage features
                    "kdsvd": ["distill.kdsvd.first_stage=0"],  # KDSVD relates consecutive stages: needs both
                    "ab": ["distill.ab.first_stage=0"]}
DIGITS_TEACHER = {"fsp": "digits_cnn_small"}  # FSP needs the student's stage channels


def distill_config(method: str, overrides: list[str] | None = None) -> DistillConfig:
    cfg = load_config(StudentConfig, overrides=[f"distill.method={method}", *(overrides or [])])
    return cfg.distill


def digits_pair(seed: int = 0, teacher: str = "digits_cnn") -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    student = create_model("digits_cnn_small", num_classes=10)
    return student, create_model(teacher, num_classes=10).eval()


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


# ----------------------------------------------------------------------------------------------- DKD

def slow_dkd(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
             temp: float) -> tuple[list[float], list[float]]:
    tckd, nckd = [], []
    for b in range(s.shape[0]):
        ps = [math.exp(v / temp) for v in s[b].tolist()]
        pt = [math.exp(v / temp) for v in t[b].tolist()]
        ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
        y = int(labels[b])
        bs, bt = (ps[y], 1 - ps[y]), (pt[y], 1 - pt[y])
        tckd.append(temp**2 * sum(q * math.log(q / r) for q, r in zip(bt, bs)))
        others = [j for j in range(len(ps)) if j != y]
        qs = [ps[j] / (1 - ps[y]) for j in others]
        qt = [pt[j] / (1 - pt[y]) for j in others]
        nckd.append(temp**2 * sum(q * math.log(q / r) for q, r in zip(qt, qs)))
    return tckd, nckd


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_dkd_terms_match_definition(temp):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 3
    labels = torch.tensor([0, 3, 6, 3, 1])
    tckd, nckd = dkd_terms(s, t, labels, temp)
    ref_tckd, ref_nckd = slow_dkd(s.double(), t.double(), labels, temp)
    torch.testing.assert_close(tckd, torch.tensor(ref_tckd, dtype=torch.float32), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(nckd, torch.tensor(ref_nckd, dtype=torch.float32), rtol=1e-4, atol=1e-6)


def test_dkd_decomposes_classic_kd():
    """KD = TCKD + (1 - p_target^teacher) * NCKD, per sample (the paper's identity)."""
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 10, generator=g) * 2, torch.randn(6, 10, generator=g) * 2
    labels = torch.randint(0, 10, (6,), generator=g)
    tckd, nckd = dkd_terms(s, t, labels, 4.0)
    p_target = F.softmax(t / 4.0, dim=1).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close((tckd + (1 - p_target) * nckd).mean(), kd_loss(s, t, 4.0), rtol=1e-5, atol=1e-6)


def test_dkd_is_finite_for_extreme_logits():
    s = torch.tensor([[1e4, -1e4, 0.0], [-3e3, 3e3, 1.0]], requires_grad=True)
    t = torch.tensor([[2e4, -1e4, 5.0], [0.0, 1e4, -1e4]])
    tckd, nckd = dkd_terms(s, t, torch.tensor([0, 2]), 4.0)
    (tckd.sum() + nckd.sum()).backward()
    assert torch.isfinite(tckd).all() and torch.isfinite(nckd).all() and torch.isfinite(s.grad).all()


def test_dkd_objective_weights_and_linear_warmup():
    student, teacher = digits_pair()
    cfg = distill_config("dkd", ["distill.dkd.tckd_weight=0.5", "distill.dkd.nckd_weight=3"])
    objective = DKDObjective(cfg, student, teacher, TrainSetInfo(10, torch.arange(10), (1, 8, 8)))
    g = torch.Generator().manual_seed(3)
    s_out = ModelOutput(torch.randn(4, 10, generator=g), torch.zeros(4, 16), ())
    t_out = ModelOutput(torch.randn(4, 10, generator=g), torch.zeros(4, 64), ())
    batch = Batch((torch.zeros(4, 1, 8, 8),), torch.tensor([1, 2, 3, 4]))
    tckd, nckd = dkd_terms(s_out.logits, t_out.logits, batch.labels, 4.0)
    for epoch, factor in [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)]:
        objective.set_epoch(epoch)
        losses, stats = objective.method_losses(s_out, t_out, batch)
        expected = factor * (0.5 * tckd.mean() + 3 * nckd.mean())
        torch.testing.assert_close(losses["dkd"], expected)
        assert stats["dkd_warmup"].item() == pytest.approx(factor)


def test_dkd_pair_recipe():
    assert distill_recipe("dkd", "resnet56", "resnet20")["dkd"]["nckd_weight"] == 2.0
    assert distill_recipe("dkd", "vgg13", "vgg8")["dkd"]["nckd_weight"] == 6.0
    assert distill_recipe("dkd", "resnet32x4", "resnet8x4")["dkd"]["nckd_weight"] == 8.0
    assert distill_recipe("dkd") == {"method": "dkd", "ce_weight": 1.0, "kd_weight": 0.0, "temperature": 4.0,
                                     "dkd": {"tckd_weight": 1.0, "nckd_weight": 8.0, "warmup_epochs": 20}}


# ----------------------------------------------------------------------------------------------- CRD

def slow_nce(scores: list[list[float]], num_data: int) -> float:
    """CRD eq. 18 with explicit sums; ``scores`` are normalised P values, the positive first."""
    total = 0.0
    for row in scores:
        k = len(row) - 1
        noise = k / num_data
        total += math.log(row[0] / (row[0] + noise))
        total += sum(math.log(noise / (p + noise)) for p in row[1:])
    return -total / len(scores)


def test_nce_loss_matches_explicit_sums():
    g = torch.Generator().manual_seed(4)
    probs = torch.rand(3, 6, generator=g, dtype=torch.float64) * 0.5 + 1e-3
    torch.testing.assert_close(nce_loss(probs.log(), 40), torch.tensor(slow_nce(probs.tolist(), 40),
                                                                        dtype=torch.float64))


def make_crd(seed: int = 0, labels: torch.Tensor | None = None,
             overrides: list[str] | None = None) -> CRDObjective:
    student, teacher = digits_pair(0)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 1, 2, 0, 2]) if labels is None else labels
    cfg = distill_config("crd", ["distill.crd.feat_dim=4", "distill.crd.num_negatives=5", *(overrides or [])])
    torch.manual_seed(seed)
    return CRDObjective(cfg, student, teacher, TrainSetInfo(3, labels, (1, 8, 8)))


def slow_crd_side(anchor: torch.Tensor, memory: torch.Tensor, contrast: torch.Tensor, tau: float,
                  z: float | None, num_data: int) -> tuple[float, float]:
    """(loss, Z) for anchors scored against ``memory`` rows ``contrast`` (Z estimated when None)."""
    raw = [[math.exp(float(memory[c] @ anchor[b]) / tau) for c in contrast[b].tolist()]
           for b in range(len(anchor))]
    if z is None:
        z = sum(map(sum, raw)) / sum(map(len, raw)) * num_data
    return slow_nce([[v / z for v in row] for row in raw], num_data), z


def test_crd_step_matches_definition_and_updates_memory():
    objective = make_crd()
    g = torch.Generator().manual_seed(5)
    contrasts = [torch.randint(0, 12, (4, 5), generator=g) for _ in range(2)]
    index_steps = [torch.tensor([3, 7, 0, 11]), torch.tensor([2, 3, 9, 5])]
    z_s = z_t = None
    for step in range(2):
        index = index_steps[step]
        s_out = ModelOutput(torch.zeros(4, 10), torch.randn(4, 16, generator=g), ())
        t_out = ModelOutput(torch.zeros(4, 10), torch.randn(4, 64, generator=g), ())
        batch = Batch((torch.zeros(4, 1, 8, 8),), torch.tensor([1, 0, 0, 2]), index)
        negatives = contrasts[step]
        objective.sample_negatives = lambda labels, negatives=negatives: negatives
        mem_s, mem_t = objective.memory_student.clone(), objective.memory_teacher.clone()
        v_s = F.normalize(objective.embed_student(s_out.embedding), dim=1).detach()
        v_t = F.normalize(objective.embed_teacher(t_out.embedding), dim=1).detach()
        # the reference in float64 from the same inputs
        mem_s64, mem_t64, v_s64, v_t64 = mem_s.double(), mem_t.double(), v_s.double(), v_t.double()
        contrast = torch.cat([index[:, None], negatives], 1)
        loss_s, z_s = slow_crd_side(v_s64, mem_t64, contrast, 0.07, z_s, 12)
        loss_t, z_t = slow_crd_side(v_t64, mem_s64, contrast, 0.07, z_t, 12)
        losses, _ = objective.method_losses(s_out, t_out, batch)
        assert losses["crd"].item() == pytest.approx(0.8 * (loss_s + loss_t), rel=1e-5)
        # Z was estimated on the first batch only and kept
        assert objective.z_student.item() == pytest.approx(z_s, rel=1e-5)
        assert objective.z_teacher.item() == pytest.approx(z_t, rel=1e-5)
        for memory, old, v in ((objective.memory_student, mem_s, v_s), (objective.memory_teacher, mem_t, v_t)):
            for row in range(12):
                if row in index.tolist():
                    mixed = 0.5 * old[row] + 0.5 * v[index.tolist().index(row)]
                    torch.testing.assert_close(memory[row], mixed / mixed.norm())
                else:
                    assert torch.equal(memory[row], old[row])


def test_crd_other_class_negatives_are_uniform_over_other_classes():
    labels = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 2, 0])  # class sizes 4, 2, 4
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=3)
    query = torch.tensor([0, 1, 2]).repeat_interleave(20)
    torch.manual_seed(6)
    drawn = sample_other_class(query, 2000, order, torch.cumsum(counts, 0) - counts, counts, 8)
    assert drawn.shape == (60, 2000)  # more than any class's others: with replacement, as RepDistiller
    for c in range(3):
        rows = drawn[query == c].flatten()
        assert not (labels[rows] == c).any()
        others = (labels != c).nonzero().squeeze(1)
        frequency = torch.bincount(rows, minlength=10)[others].double() / rows.numel()
        assert frequency.min() > 0.9 / len(others) and frequency.max() < 1.1 / len(others)


def test_crd_other_class_negatives_are_distinct_when_there_are_enough():
    """RepDistiller (dataset/cifar100.py, mode exact): np.random.choice(others, K, replace=K > len(others))."""
    labels = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 2, 0, 1, 1, 1])  # class sizes 4, 5, 4: others 9, 8, 9
    order, counts = torch.argsort(labels, stable=True), torch.bincount(labels, minlength=3)
    query = torch.tensor([0, 1, 2]).repeat_interleave(300)
    torch.manual_seed(8)
    for k in (8, 9):
        drawn = sample_other_class(query, k, order, torch.cumsum(counts, 0) - counts, counts, 9)
        assert drawn.shape == (900, k) and not (labels[drawn] == query[:, None]).any()
        distinct = torch.tensor([len(set(row.tolist())) for row in drawn])
        # class 1 has 8 others: all of them at k=8, with replacement at k=9; the others' rows are distinct
        assert torch.equal(distinct[query != 1], torch.full(((query != 1).sum(),), k))
        assert (distinct[query == 1] == 8).all() if k == 8 else (distinct[query == 1] < 9).all()
    drawn = sample_other_class(torch.zeros(4000, dtype=torch.long), 3, order, torch.cumsum(counts, 0) - counts,
                               counts, 9)
    share = torch.bincount(drawn.flatten(), minlength=13)[labels != 0].double() / 4000  # rows holding each
    assert share.min() > 0.9 / 3 and share.max() < 1.1 / 3  # a uniform subset: each other in 3/9 of rows


def test_crd_uniform_negatives_and_single_class_error():
    objective = make_crd(overrides=["distill.crd.negatives=uniform"])
    torch.manual_seed(7)
    drawn = objective.sample_negatives(torch.zeros(50, dtype=torch.long))
    assert drawn.shape == (50, 5) and drawn.min() == 0 and drawn.max() == 11
    with pytest.raises(ValueError, match="needs at least two classes"):
        make_crd(labels=torch.zeros(12, dtype=torch.long))


def test_crd_needs_sample_indices():
    objective = make_crd()
    out = ModelOutput(torch.zeros(2, 10), torch.zeros(2, 16), ())
    with pytest.raises(ValueError, match="Batch.indices"):
        objective.method_losses(out, ModelOutput(torch.zeros(2, 10), torch.zeros(2, 64), ()),
                                Batch((torch.zeros(2, 1, 8, 8),), torch.tensor([0, 1])))


def test_crd_memory_saved_and_restored_with_state_dict():
    objective = make_crd(seed=0)
    g = torch.Generator().manual_seed(8)
    s_out = ModelOutput(torch.zeros(4, 10), torch.randn(4, 16, generator=g), ())
    t_out = ModelOutput(torch.zeros(4, 10), torch.randn(4, 64, generator=g), ())
    batch = Batch((torch.zeros(4, 1, 8, 8),), torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 5, 10]))
    objective.method_losses(s_out, t_out, batch)
    state = objective.state_dict()
    assert {"memory_student", "memory_teacher", "z_student", "z_teacher"} <= state.keys()
    assert "class_order" not in state  # derived from the data, not state
    fresh = make_crd(seed=1)
    assert not torch.equal(fresh.memory_student, objective.memory_student)
    fresh.load_state_dict(state)
    for name in ("memory_student", "memory_teacher", "z_student", "z_teacher"):
        assert torch.equal(getattr(fresh, name), getattr(objective, name))
    assert objective.z_student > 0
    negatives = torch.randint(0, 12, (4, 5), generator=g)
    objective.sample_negatives = fresh.sample_negatives = lambda labels: negatives
    assert torch.equal(objective.method_losses(s_out, t_out, batch)[0]["crd"],
                       fresh.method_losses(s_out, t_out, batch)[0]["crd"])


# ----------------------------------------------------------------------------------------------- RKD

def slow_rkd(s: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    b = len(s)

    def dist(e, i, j):
        return float((e[i] - e[j]).norm())

    def mean_dist(e):
        return sum(dist(e, i, j) for i in range(b) for j in range(b) if i != j) / (b * (b - 1))

    ms, mt = mean_dist(s), mean_dist(t)
    distance = sum(huber(dist(s, i, j) / ms - dist(t, i, j) / mt) for i in range(b) for j in range(b)) / b**2

    def cos(e, i, j, k):  # angle at e_j
        u, v = e[i] - e[j], e[k] - e[j]
        if u.norm() == 0 or v.norm() == 0:
            return 0.0
        return float(u @ v / (u.norm() * v.norm()))

    triplets = itertools.product(range(b), repeat=3)
    angle = sum(huber(cos(s, i, j, k) - cos(t, i, j, k)) for i, j, k in triplets) / b**3
    return distance, angle


@pytest.mark.parametrize("duplicate", [False, True])
def test_rkd_matches_triple_loops(duplicate):
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g) * 2
    if duplicate:  # a repeated embedding: zero distance off the diagonal, undefined angles count as 0
        s[3], t[1] = s[0], t[4]
    distance, angle = rkd_losses(s, t)
    ref_distance, ref_angle = slow_rkd(s.double(), t.double())
    assert distance.item() == pytest.approx(ref_distance, rel=1e-5)
    assert angle.item() == pytest.approx(ref_angle, rel=1e-5)


def test_rkd_gradient_is_finite_with_duplicates():
    s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, -1.0]], requires_grad=True)
    distance, angle = rkd_losses(s, torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]]))
    (distance + angle).backward()
    assert torch.isfinite(s.grad).all()


# -------------------------------------------------------------------------------------- AT, SP, PKT

def slow_attention(f: torch.Tensor, p: float) -> list[list[float]]:
    maps = []
    for b in range(f.shape[0]):
        a = [sum(abs(float(f[b, c, h, w])) ** p for c in range(f.shape[1])) / f.shape[1]
             for h in range(f.shape[2]) for w in range(f.shape[3])]
        norm = math.sqrt(sum(v * v for v in a))
        maps.append([v / norm for v in a])
    return maps


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_matches_definition(p):
    g = torch.Generator().manual_seed(10)
    fs, ft = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 5, 4, 4, generator=g)
    qs, qt = slow_attention(fs.double(), p), slow_attention(ft.double(), p)
    expected = sum((x - y) ** 2 for rs, rt in zip(qs, qt) for x, y in zip(rs, rt)) / (3 * 16)
    assert at_loss(fs, ft, p).item() == pytest.approx(expected, rel=1e-5)


def test_at_pools_the_larger_map():
    g = torch.Generator().manual_seed(11)
    fs, ft = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    pooled = fs.reshape(2, 3, 4, 2, 4, 2).mean(dim=(3, 5))  # 2x2 block means
    assert at_loss(fs, ft, 2.0).item() == pytest.approx(at_loss(pooled, ft, 2.0).item(), rel=1e-6)


def test_sp_matches_definition():
    g = torch.Generator().manual_seed(12)
    fs, ft = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 6, 2, 2, generator=g)

    def gram(f):
        flat = f.double().flatten(1)
        rows = [[float(flat[i] @ flat[j]) for j in range(4)] for i in range(4)]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]

    gs, gt = gram(fs), gram(ft)
    expected = sum((gs[i][j] - gt[i][j]) ** 2 for i in range(4) for j in range(4)) / 16
    assert sp_loss(fs, ft).item() == pytest.approx(expected, rel=1e-5)


def test_pkt_matches_definition():
    g = torch.Generator().manual_seed(13)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 7, generator=g)

    def probs(e):
        unit = [row / row.norm() for row in e.double()]
        kernel = [[(float(unit[i] @ unit[j]) + 1) / 2 for j in range(5)] for i in range(5)]
        return [[v / sum(row) for v in row] for row in kernel]

    ps, pt = probs(s), probs(t)
    pairs = itertools.product(range(5), repeat=2)
    expected = sum(pt[i][j] * math.log((pt[i][j] + 1e-7) / (ps[i][j] + 1e-7)) for i, j in pairs) / 25
    assert pkt_loss(s, t).item() == pytest.approx(expected, rel=1e-5)


# -------------------------------------------------------------------------------------------- FitNet

@pytest.mark.parametrize(("student_shape", "teacher_shape", "kernel", "stride", "padding", "transposed"), [
    ((8, 8, 8), (32, 8, 8), (1, 1), (1, 1), (0, 0), False),  # equal sizes: 1x1 (ConvReg's 1 + s_H - t_H)
    ((8, 8, 8), (32, 4, 4), (3, 3), (2, 2), (1, 1), False),  # twice the teacher's: 3x3, stride 2
    ((8, 6, 6), (32, 4, 4), (3, 3), (1, 1), (0, 0), False),  # larger: unpadded 1 + 6 - 4
    ((8, 4, 4), (32, 8, 8), (4, 4), (2, 2), (1, 1), True),   # half: transposed 4x4, stride 2, padding 1
    ((8, 2, 2), (32, 8, 8), (4, 4), (4, 4), (0, 0), True),   # beyond ConvReg: a quarter, transposed 4x4 stride 4
])
def test_conv_regressor_is_convreg(student_shape, teacher_shape, kernel, stride, padding, transposed):
    """RepDistiller's and mdistiller's ConvReg: the convolution has a bias, then BN and (FitNet) ReLU."""
    for relu in (True, False):
        module = conv_regressor(student_shape, teacher_shape, "FitNet", relu=relu)
        conv = module[0]
        assert isinstance(conv, torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d)
        assert (conv.kernel_size, conv.stride, conv.padding) == (kernel, stride, padding)
        assert conv.bias is not None and isinstance(module[1], torch.nn.BatchNorm2d)
        assert len(module) == (3 if relu else 2) and (not relu or isinstance(module[2], torch.nn.ReLU))
        assert module(torch.randn(2, *student_shape)).shape == (2, *teacher_shape)


def test_fitnet_builds_convreg_at_equal_sizes():
    student, teacher = digits_pair()
    objective = FitNetObjective(distill_config("fitnet", ["distill.fitnet.hint_layer=0"]), student, teacher,
                                TrainSetInfo(10, torch.arange(10), (1, 8, 8)))
    conv = objective.connector[0]
    assert type(conv) is torch.nn.Conv2d and conv.kernel_size == (1, 1) and conv.bias is not None


def test_conv_regressor_rejects_smaller_student_maps():
    with pytest.raises(ValueError, match="FitNet cannot connect a student feature of spatial size 3x3 to a teacher "
                                         "feature of 4x4: the student's must be at least as large, or the teacher's "
                                         "an integer multiple of it"):
        conv_regressor((8, 3, 3), (16, 4, 4), "FitNet")


def test_fitnet_loss_and_hint_layer_check():
    student, teacher = digits_pair()
    info = TrainSetInfo(10, torch.arange(10), (1, 8, 8))
    with pytest.raises(ValueError, match=r"hint_layer=2, but the student has 2 stage features \(valid: -2 to 1\)"):
        FitNetObjective(distill_config("fitnet"), student, teacher, info)
    objective = FitNetObjective(distill_config("fitnet", ["distill.fitnet.hint_layer=0"]), student, teacher, info)
    g = torch.Generator().manual_seed(14)
    fs, ft = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 32, 8, 8, generator=g)
    losses, _ = objective.method_losses(ModelOutput(torch.zeros(2, 10), torch.zeros(2, 16), (fs,)),
                                        ModelOutput(torch.zeros(2, 10), torch.zeros(2, 64), (ft,)), None)
    mapped = objective.connector(fs)
    assert losses["fitnet"].item() == pytest.approx(100 * ((mapped - ft) ** 2).sum().item() / ft.numel(), rel=1e-5)


# ------------------------------------------------------------------------------------- gradient flow

@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_student_and_auxiliary_modules_never_teacher(method):
    """Over both stages of a method with a pre-training stage (its init terms and its main terms)."""
    student, teacher = digits_pair(teacher=DIGITS_TEACHER.get(method, "digits_cnn"))
    teacher.requires_grad_(True)  # the objective itself must keep the teacher out of the graph
    labels = torch.arange(24) % 10
    cfg = distill_config(method, [*DIGITS_OVERRIDES.get(method, []), "distill.crd.num_negatives=7"])
    objective = _DISTILLERS[method](cfg, student, teacher, TrainSetInfo(10, labels, (1, 8, 8)))
    g = torch.Generator().manual_seed(15)
    views = tuple(torch.randn(8, 1, 8, 8, generator=g) for _ in range(objective.num_views))
    batch = Batch(views, labels[:8], torch.arange(8))
    result = objective(student, batch, teacher)
    assert "ce" in result.losses and all(torch.isfinite(v) for v in result.losses.values())
    method_terms = [v for k, v in result.losses.items() if k != "ce"]
    if objective.init_epochs:
        init = objective.init_step(student, batch, teacher)
        assert "ce" not in init.losses and all(torch.isfinite(v) for v in init.losses.values())
        method_terms += list(init.losses.values())
    assert method_terms, f"{method} returned no distillation term"
    torch.stack(method_terms).sum().backward()
    assert all(p.grad is None for p in teacher.parameters())
    for name, p in student.named_parameters():
        if method not in ("kd", "dkd", "mlkd") and name.startswith("fc."):
            continue  # feature methods act on the backbone; the classifier learns from CE
        assert p.grad is not None and p.grad.abs().sum() > 0, f"student parameter {name} gets no gradient"
    for name, p in objective.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"auxiliary parameter {name} gets no gradient"


def test_auxiliary_modules_exist_where_expected():
    student, _ = digits_pair()
    info = TrainSetInfo(10, torch.arange(20) % 10, (1, 8, 8))
    counts = {m: sum(p.numel() for p in _DISTILLERS[m](distill_config(m, DIGITS_OVERRIDES.get(m, [])), student,
                                                       digits_pair(teacher=DIGITS_TEACHER.get(m, "digits_cnn"))[1],
                                                       info).parameters()) for m in METHODS}
    assert counts["crd"] == (16 + 1) * 128 + (64 + 1) * 128
    assert counts["fitnet"] == 16 * 64 + 64 + 2 * 64  # ConvReg at equal sizes: 1x1 conv with bias + BN
    assert counts["vid"] == 16 * 64 + 2 * 64 * 64 + 64  # three 1x1 convs (no bias) + a variance per channel
    assert counts["cc"] == (16 + 1) * 128
    assert counts["ofd"] == 16 * 64 + 2 * 64  # one position (stage 2): 1x1 conv (no bias) + BN
    # two levels (stage 2, the embedding), mid width 16: 1x1 conv + BN, 3x3 conv + BN, attention (stage 2 only)
    assert counts["reviewkd"] == 2 * (16 * 16 + 2 * 16 + 16 * 64 * 9 + 2 * 64) + (2 * 16 * 2 + 2)
    assert counts["ab"] == (8 * 32 + 3 * 32) + (16 * 64 + 3 * 64)  # ConvReg without ReLU: 1x1 conv (bias) + BN
    paraphraser = sum(9 * a * b + b for a, b in ((64, 64), (64, 32), (32, 32), (32, 32), (32, 64), (64, 64)))
    translator = sum(9 * a * b + 3 * b for a, b in ((16, 16), (16, 32), (32, 32)))  # conv (bias) + BN
    assert counts["ft"] == paraphraser + translator
    assert all(counts[m] == 0 for m in ("kd", "dkd", "mlkd", "rkd", "at", "sp", "pkt", "nst", "kdsvd", "fsp"))


def test_kd_weight_adds_kd_to_any_method():
    student, teacher = digits_pair()
    info = TrainSetInfo(10, torch.arange(20) % 10, (1, 8, 8))
    batch = Batch((torch.randn(4, 1, 8, 8),), torch.tensor([1, 2, 3, 4]), torch.arange(4))
    plain = _DISTILLERS["pkt"](distill_config("pkt"), student, teacher, info)(student, batch, teacher)
    combined = _DISTILLERS["pkt"](distill_config("pkt", ["distill.kd_weight=1"]), student, teacher, info)(
        student, batch, teacher)
    assert set(plain.losses) == {"ce", "pkt"} and set(combined.losses) == {"ce", "kd", "pkt"}
    with torch.no_grad():
        s, t = student(batch.views[0]).logits, teacher(batch.views[0]).logits
    torch.testing.assert_close(combined.losses["kd"], kd_loss(s, t, 4.0))


# ------------------------------------------------------------------------------------- configuration

def test_every_method_is_registered_with_recipe():
    assert sorted([*METHODS, "deit"]) == list_distillers()  # deit needs a ViT student: tests/test_deit.py
    for method in [*METHODS, "deit"]:
        cfg = load_config(StudentConfig, base={"distill": distill_recipe(method)})
        assert cfg.distill.method == method
        expected = {"kd": (0.1, 0.9), "mlkd": (0.1, 0.0), "deit": (0.5, 0.0)}.get(method, (1.0, 0.0))
        assert (cfg.distill.ce_weight, cfg.distill.kd_weight) == expected
    assert method_settings("kd") == {}
    assert method_settings("crd") == {"weight": 0.8, "feat_dim": 128, "num_negatives": 16384, "temperature": 0.07,
                                      "momentum": 0.5, "negatives": "other_class"}
    assert method_settings("rkd") == {"distance_weight": 25.0, "angle_weight": 50.0}
    assert method_settings("fitnet") == {"hint_weight": 100.0, "hint_layer": 2}
    assert method_settings("at")["weight"] == 1000.0 and method_settings("sp")["weight"] == 3000.0
    assert method_settings("pkt")["weight"] == 30000.0
    assert method_settings("vid") == {"weight": 1.0, "init_variance": 5.0, "eps": 1e-5, "first_stage": 1}
    assert method_settings("cc") == {"weight": 100.0, "feat_dim": 128, "gamma": 0.4, "order": 2}
    assert method_settings("nst") == {"weight": 50.0, "first_stage": 1}
    assert method_settings("kdsvd") == {"weight": 1.0, "k": 1, "vectors_over": "width", "first_stage": 1}
    assert method_settings("ofd") == {"weight": 0.001}
    assert method_settings("reviewkd") == {"weight": 5.0, "warmup_epochs": 20}
    assert method_settings("ab") == {"init_epochs": 30, "init_lr": None, "weight": 0.003, "margin": 1.0,
                                     "first_stage": 1}
    assert method_settings("ft") == {"init_epochs": 30, "init_lr": 0.01, "weight": 200.0, "rate": 0.5,
                                     "factor_map": "attention"}
    assert method_settings("fsp") == {"init_epochs": 30, "init_lr": None, "weight": 1.0}


def test_weights_default_to_the_method_recipe_unless_set():
    assert (distill_config("kd").ce_weight, distill_config("kd").kd_weight) == (0.1, 0.9)
    assert (distill_config("dkd").ce_weight, distill_config("dkd").kd_weight) == (1.0, 0.0)
    cfg = distill_config("crd", ["distill.kd_weight=1", "distill.ce_weight=0.5"])
    assert (cfg.ce_weight, cfg.kd_weight) == (0.5, 1.0)


@pytest.mark.parametrize(("override", "message"), [
    ("distill.dkd.alpha=1", ("unknown config key distill.dkd.alpha; valid keys here: distill.dkd.tckd_weight, "
                             "distill.dkd.nckd_weight, distill.dkd.warmup_epochs")),
    ("distill.method=mgd",
     ("distill.method: 'mgd' is not one of 'kd', 'dkd', 'crd', 'rkd', 'fitnet', 'at', 'sp', 'pkt', 'vid', 'cc', "
      "'nst', 'kdsvd', 'ofd', 'reviewkd', 'mlkd', 'ab', 'ft', 'fsp', 'dist', 'deit'")),
    ("distill.kdsvd.vectors_over=rows", "distill.kdsvd.vectors_over: 'rows' is not one of 'width', 'channels'"),
    ("distill.vid.init_variance=0", "distill.vid.init_variance must be > 0, got 0.0"),
    ("distill.crd.momentum=1", "distill.crd.momentum must be in [0, 1), got 1.0"),
    ("distill.crd.negatives=hard", "distill.crd.negatives: 'hard' is not one of 'other_class', 'uniform'"),
    ("distill.rkd.angle_weight=-1", "distill.rkd.angle_weight must be >= 0, got -1.0"),
    ("distill.kd_weight=-0.5", "distill.kd_weight must be >= 0, got -0.5"),
    ("distill.crd.num_negatives=0", "distill.crd.num_negatives must be >= 1, got 0"),
    ("distill.temperature=0", "distill.temperature must be > 0 (or a learned temperature: ctkd), got 0.0"),
    ("distill.temperature=warm",
     "distill.temperature: expected a number, or 'ctkd', got 'warm'"),
])
def test_config_errors(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(StudentConfig, overrides=[override])
    assert str(info.value) == message


# ------------------------------------------------------------------------------ the teacher's autograd mode

def test_the_teacher_keeps_no_autograd_state_unless_the_method_uses_its_tensors_in_the_graph():
    """KD's teacher runs under inference_mode; FitNet's (whose loss saves the teacher's features for
    backward) and any method's with a learned temperature (which divides the teacher's logits by a
    tensor that takes a gradient) under no_grad."""
    seen = {}
    for name, overrides in (("kd", []), ("fitnet", DIGITS_OVERRIDES["fitnet"]), ("ctkd", ["distill.temperature=ctkd"])):
        student, teacher = digits_pair()
        method = "kd" if name == "ctkd" else name
        objective = _DISTILLERS[method](distill_config(method, overrides), student, teacher,
                                        TrainSetInfo(10, torch.arange(10), (1, 8, 8)))
        _, out = objective.outputs(student, teacher, torch.randn(4, 1, 8, 8))
        seen[name] = out.logits.is_inference()
    assert seen == {"kd": True, "fitnet": False, "ctkd": False}


def test_fitnet_under_inference_mode_fails_so_its_declaration_is_needed():
    student, teacher = digits_pair()
    objective = FitNetObjective(distill_config("fitnet", DIGITS_OVERRIDES["fitnet"]), student, teacher,
                                TrainSetInfo(10, torch.arange(10), (1, 8, 8)))
    objective.teacher_in_graph = False
    batch = Batch((torch.randn(4, 1, 8, 8),), torch.arange(4), torch.arange(4))
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        torch.stack(list(objective(student, batch, teacher).losses.values())).sum().backward()


@pytest.mark.parametrize("method", ["kd", "dkd", "mlkd", "dist", "rkd", "at"])
def test_inference_mode_gives_the_losses_and_gradients_of_no_grad_bit_for_bit(method):
    grads = []
    for in_graph in (True, False):
        student, teacher = digits_pair()
        cfg = distill_config(method, DIGITS_OVERRIDES.get(method, []))
        objective = _DISTILLERS[method](cfg, student, teacher, TrainSetInfo(10, torch.arange(8) % 10, (1, 8, 8)))
        objective.teacher_in_graph = in_graph
        g = torch.Generator().manual_seed(3)
        batch = Batch(tuple(torch.randn(8, 1, 8, 8, generator=g) for _ in range(objective.num_views)),
                      torch.arange(8), torch.arange(8))
        losses = objective(student, batch, teacher).losses
        torch.stack(list(losses.values())).sum().backward()
        grads.append(([v.item() for v in losses.values()], [p.grad.clone() for p in student.parameters()]))
    assert grads[0][0] == grads[1][0]
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))
