"""Every registered method's loss against the reference code's formula as that code writes it (issue #24,
item 2): fixed small float64 inputs, value and gradient with respect to the student's inputs.

Each reference below is a slow, plain computation written from reading the reference file the method's
``REFERENCE`` names (mdistiller, RepDistiller, the MLKD and DeiT authors' code): its masks, epsilons,
reductions and pooling as that code has them. Where a method declares a difference from that code
(its row of docs/methods.md's "Differences from the reference code"), the reference is the declared
formula and the test names the row. Learned modules (connectors, regressors, embedding heads) are the
objective's own, built from the models; where the reference is a functional formula of them (ConvReg,
VID's regressor) it is written out with their weights. intrakd computes these terms in float32 (they
run under autocast), hence the tolerances. DIST and the CTKD temperature: tests/test_dist_ctkd.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from intrakd.config import StudentConfig, load_config
from intrakd.data import Batch
from intrakd.models import ModelOutput, create_model
from intrakd.objectives import TrainSetInfo, create_distiller, list_distillers
from intrakd.objectives.deit import deit_token_term
from intrakd.objectives.registry import _REFERENCES
from intrakd.objectives.reviewkd import hcl_loss

B = 4
CIFAR = TrainSetInfo(10, torch.arange(12) % 10, (3, 8, 8))
"""resnet8 stage features at 8x8 images: 16x8x8, 16x8x8, 32x4x4, 64x2x2; embedding 64."""


def objective(method: str, overrides: list[str] | None = None, student: str = "resnet8", teacher: str = "resnet8",
              info: TrainSetInfo = CIFAR):
    torch.manual_seed(0)
    cfg = load_config(StudentConfig, overrides=[f"distill.method={method}", *(overrides or [])]).distill
    made = create_distiller(cfg, create_model(student, num_classes=10), create_model(teacher, num_classes=10).eval(),
                            info)
    return made.double()


def tensor(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def stage_features(seed: int, channels=(16, 16, 32, 64), sizes=(8, 8, 4, 2)) -> list[torch.Tensor]:
    return [tensor(seed + i, B, c, s, s) for i, (c, s) in enumerate(zip(channels, sizes))]


def assert_matches(ours, reference, inputs: list[torch.Tensor], rtol: float = 1e-5, grad_atol: float = 1e-5) -> None:
    """``ours(*xs)`` and ``reference(*xs)`` (scalars) agree in value and in gradient with respect to
    ``inputs`` (the student's side; each gradient to ``grad_atol`` of its largest entry); the reference
    runs in float64."""
    mine = [x.detach().clone().requires_grad_(True) for x in inputs]
    theirs = [x.detach().clone().requires_grad_(True) for x in inputs]
    value, expected = ours(*mine), reference(*theirs)
    assert expected.dtype == torch.float64
    assert value.item() == pytest.approx(expected.item(), rel=rtol, abs=1e-10)
    grads = zip(torch.autograd.grad(value, mine, allow_unused=True),
                torch.autograd.grad(expected, theirs, allow_unused=True), strict=True)
    for x, (g, h) in zip(inputs, grads, strict=True):  # None: an input the loss does not read (a stem)
        g, h = (torch.zeros_like(x) if v is None else v.double() for v in (g, h))
        torch.testing.assert_close(g, h, rtol=1e-4, atol=grad_atol * float(h.abs().max()) + 1e-12)


def row(method: str, text: str) -> None:
    """The declared difference the reference of a test follows: it must be in the method's table row."""
    assert any(text in d.what for d in _REFERENCES[method].differences), f"{method}: no row {text!r}"


def batch(labels: torch.Tensor, indices: torch.Tensor | None = None) -> Batch:
    return Batch((torch.zeros(labels.shape[0], 1),), labels, indices)


def out(logits=None, embedding=None, features=()) -> ModelOutput:
    return ModelOutput(torch.zeros(B, 10, dtype=torch.float64) if logits is None else logits,
                       torch.zeros(B, 64, dtype=torch.float64) if embedding is None else embedding, tuple(features))


def softmax_rows(x: torch.Tensor) -> list[list[torch.Tensor]]:
    rows = []
    for i in range(x.shape[0]):
        e = [torch.exp(v) for v in x[i]]
        total = sum(e)
        rows.append([v / total for v in e])
    return rows


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """RepDistiller's Normalize(2): ``x / ||x||`` (no epsilon)."""
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def batch_norm_train(x: torch.Tensor, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """A BatchNorm in training mode: the batch's mean and biased variance per channel."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    weight, bias = bn.weight.double()[None, :, None, None], bn.bias.double()[None, :, None, None]
    return (x - mean) / torch.sqrt(var + bn.eps) * weight + bias


# ------------------------------------------------------------------------- KD (mdistiller distillers/KD.py)

def reference_kd(s: torch.Tensor, t: torch.Tensor, temp: float) -> torch.Tensor:
    """``kl_div(log_softmax(s/T), softmax(t/T), reduction=none).sum(1).mean() * T^2``."""
    ps, pt = softmax_rows(s / temp), softmax_rows(t / temp)
    total = sum(q * (torch.log(q) - torch.log(p)) for i in range(s.shape[0]) for p, q in zip(ps[i], pt[i]))
    return total / s.shape[0] * temp**2


def test_kd():
    made = objective("kd", ["distill.temperature=4"])
    t = tensor(2, B, 10, scale=3.0)
    assert_matches(lambda s: made.kd_term(s, t), lambda s: reference_kd(s, t, 4.0), [tensor(1, B, 10, scale=3.0)])


def reference_standardize(z: torch.Tensor) -> torch.Tensor:
    """The LS repository's normalize: ``(z - mean) / (1e-7 + std)`` per row, ``std`` torch's default
    (unbiased, ``/ (K - 1)``), written out."""
    mean = z.sum(1, keepdim=True) / z.shape[1]
    std = (((z - mean) ** 2).sum(1, keepdim=True) / (z.shape[1] - 1)).sqrt()
    return (z - mean) / (1e-7 + std)


def test_kd_logit_standardized():
    made = objective("kd", ["distill.temperature=2", "distill.logit_standardize=true"])
    t = tensor(2, B, 10, scale=3.0)
    assert_matches(lambda s: made.kd_term(s, t),
                   lambda s: reference_kd(reference_standardize(s), reference_standardize(t), 2.0),
                   [tensor(1, B, 10, scale=3.0)])


# ----------------------------------------------------------------------- DKD (mdistiller distillers/DKD.py)

def reference_dkd(s, t, labels, temp, alpha, beta, epoch, warmup):
    """mdistiller's dkd_loss: binary target/other KL, then the non-target KL with the target logit
    pushed down by 1000, both summed over the batch and divided by it, times T^2; warm-up min(epoch / 20, 1)."""
    gt = F.one_hot(labels, s.shape[1]).double()
    ps, pt = torch.softmax(s / temp, dim=1), torch.softmax(t / temp, dim=1)
    bs = torch.stack([(ps * gt).sum(1), (ps * (1 - gt)).sum(1)], dim=1)
    bt = torch.stack([(pt * gt).sum(1), (pt * (1 - gt)).sum(1)], dim=1)
    tckd = (bt * (torch.log(bt) - torch.log(bs))).sum() * temp**2 / s.shape[0]
    log_qs = torch.log_softmax(s / temp - 1000.0 * gt, dim=1)
    qt = torch.softmax(t / temp - 1000.0 * gt, dim=1)
    nckd = torch.where(qt > 0, qt * (torch.log(qt) - log_qs), torch.zeros_like(qt)).sum() * temp**2 / s.shape[0]
    return min(epoch / warmup, 1.0) * (alpha * tckd + beta * nckd)


def test_dkd():
    made = objective("dkd", ["distill.temperature=4", "distill.dkd.nckd_weight=8", "distill.dkd.tckd_weight=1"])
    made.set_epoch(4)  # mdistiller's epoch 5 (1-based): warm-up factor 5/20
    labels, t = torch.tensor([0, 3, 9, 3]), tensor(2, B, 10, scale=3.0)
    assert_matches(lambda s: made.method_losses(out(s), out(t), batch(labels))[0]["dkd"],
                   lambda s: reference_dkd(s, t, labels, 4.0, 1.0, 8.0, 5, 20), [tensor(1, B, 10, scale=3.0)])


# ------------------------------------------------------- MLKD (the MLKD authors' mdistiller/distillers/MLKD.py)

class LogitsAreImages(torch.nn.Module):
    """A stand-in model whose logits are its input images times ``scale`` (the views are the logits)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, images: torch.Tensor) -> ModelOutput:
        return ModelOutput(images * self.scale, images, ())


def reference_mlkd(s_weak, s_strong, t_weak, t_strong, temps, weight):
    """The reference's weak-view terms: KD (batch-averaged) times the median confidence mask, averaged; its
    bc_loss ``((P_t P_t^T - P_s P_s^T)^2).sum() / B`` likewise; cc_loss ``((P_t^T P_t - P_s^T P_s)^2).sum() / C``
    times the class mask, averaged (numpy percentile 50 thresholds). The strong-view instance terms follow
    the declared row (every temperature on the strong view)."""
    p = torch.softmax(t_weak.detach(), dim=1)
    confidence, per_class = p.max(dim=1).values, p.sum(dim=0)
    mask = (confidence <= float(np.percentile(confidence.numpy(), 50))).double()
    class_mask = (per_class <= float(np.percentile(per_class.numpy(), 50))).double()

    def bc(s, t, temp):
        ps, pt = torch.softmax(s / temp, 1), torch.softmax(t / temp, 1)
        return ((pt @ pt.T - ps @ ps.T) ** 2).sum() / s.shape[0]

    def cc(s, t, temp):
        ps, pt = torch.softmax(s / temp, 1), torch.softmax(t / temp, 1)
        return ((pt.T @ pt - ps.T @ ps) ** 2).sum() / s.shape[1]

    total = 0.0
    for temp in temps:
        total = total + (reference_kd(s_weak, t_weak, temp) * mask).mean() + reference_kd(s_strong, t_strong, temp)
        total = total + (bc(s_weak, t_weak, temp) * mask).mean() + (cc(s_weak, t_weak, temp) * class_mask).mean()
    return weight * total


def test_mlkd():
    row("mlkd", "every strong-view instance term is taken on the strong view")
    made = objective("mlkd", ["distill.temperature=4"])
    student, teacher = LogitsAreImages(1.0), LogitsAreImages(1.7)
    labels = torch.tensor([1, 2, 3, 4])

    def ours(weak, strong):
        terms = made(student, Batch((weak, strong), labels), teacher).losses
        return terms["mlkd_instance"] + terms["mlkd_batch"] + terms["mlkd_class"]

    def reference(weak, strong):
        return reference_mlkd(weak, strong, 1.7 * weak.detach(), 1.7 * strong.detach(), [4.0, 3.0, 5.0, 2.0, 6.0], 0.9)

    assert_matches(ours, reference, [tensor(1, B, 10, scale=2.0), tensor(2, B, 10, scale=2.0)])


# ------------------------------------------- CRD (RepDistiller crd/criterion.py ContrastLoss, crd/memory.py)

def reference_contrast_loss(x: torch.Tensor, n_data: int) -> torch.Tensor:
    """ContrastLoss: ``-(sum log(P_0 / (P_0 + K Pn + eps)) + sum log(K Pn / (P_k + K Pn + eps))) / B``, eps 1e-7."""
    eps, k, pn = 1e-7, x.shape[1] - 1, 1.0 / n_data
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + k * pn + eps))
    log_d0 = torch.log((k * pn) / (x[:, 1:] + k * pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


def test_crd():
    made = objective("crd", ["distill.crd.num_negatives=5", "distill.crd.feat_dim=8"]).float()  # casts to float32
    n, tau = made.num_data, made.settings.temperature
    indices, labels = torch.tensor([0, 5, 7, 2]), CIFAR.labels[[0, 5, 7, 2]]
    negatives = torch.tensor([[1, 3, 4, 6, 8], [0, 2, 3, 9, 11], [1, 2, 4, 10, 11], [0, 1, 4, 5, 8]])
    made.sample_negatives = lambda labels: negatives
    memory_s, memory_t = made.memory_student.clone(), made.memory_teacher.clone()
    heads = [(m.weight.detach().double(), m.bias.detach().double()) for m in (made.embed_student, made.embed_teacher)]
    t_embedding = tensor(2, B, 64)
    contrast = torch.cat([indices[:, None], negatives], dim=1)

    def ours(e):
        made.memory_student.copy_(memory_s), made.memory_teacher.copy_(memory_t)
        made.z_student.zero_(), made.z_teacher.zero_()
        return made.method_losses(out(embedding=e), out(embedding=t_embedding), batch(labels, indices))[0]["crd"]

    def reference(e):
        v1 = normalize_rows(e @ heads[0][0].T + heads[0][1])
        v2 = normalize_rows(t_embedding @ heads[1][0].T + heads[1][1])
        out_v1 = torch.exp(torch.einsum("bkd,bd->bk", memory_t.double()[contrast], v1) / tau)  # the teacher's memory
        out_v2 = torch.exp(torch.einsum("bkd,bd->bk", memory_s.double()[contrast], v2) / tau)  # the student's
        out_v1 = out_v1 / (out_v1.mean() * n).detach()  # Z from the first batch, a constant
        out_v2 = out_v2 / (out_v2.mean() * n).detach()
        return made.settings.weight * (reference_contrast_loss(out_v1, n) + reference_contrast_loss(out_v2, n))

    assert_matches(ours, reference, [tensor(1, B, 64)])


# ------------------------------------------------------------------------------ RKD (RepDistiller RKD.py)

def reference_pdist(e: torch.Tensor) -> torch.Tensor:
    square = e.pow(2).sum(1)
    d = (square[:, None] + square[None, :] - 2 * e @ e.T).clamp(min=1e-12).sqrt().clone()
    d[range(e.shape[0]), range(e.shape[0])] = 0
    return d


def reference_rkd(s: torch.Tensor, t: torch.Tensor, w_d: float, w_a: float) -> torch.Tensor:
    """Distances divided by the mean of the positive ones, angles of normalised differences; smooth L1 each."""
    with torch.no_grad():
        t_d = reference_pdist(t)
        t_d = t_d / t_d[t_d > 0].mean()
        td = F.normalize(t[None, :, :] - t[:, None, :], p=2, dim=2)
        t_angle = torch.bmm(td, td.transpose(1, 2)).flatten()
    d = reference_pdist(s)
    d = d / d[d > 0].mean()
    sd = F.normalize(s[None, :, :] - s[:, None, :], p=2, dim=2)
    s_angle = torch.bmm(sd, sd.transpose(1, 2)).flatten()
    return w_d * F.smooth_l1_loss(d, t_d) + w_a * F.smooth_l1_loss(s_angle, t_angle)


def test_rkd():
    made = objective("rkd")
    t = tensor(2, B, 64)

    def ours(e):
        terms = made.method_losses(out(embedding=e), out(embedding=t), batch(torch.zeros(B, dtype=torch.long)))[0]
        return terms["rkd_distance"] + terms["rkd_angle"]

    assert_matches(ours, lambda e: reference_rkd(e, t, 25.0, 50.0), [tensor(1, B, 64)])


# --------------------------------------------- FitNet (RepDistiller FitNet.py HintLoss, models/util.py ConvReg)

@pytest.mark.parametrize(("student", "teacher", "layer"), [("resnet8", "resnet8x4", 2), ("resnet8", "resnet8", 1)])
def test_fitnet(student, teacher, layer):
    made = objective("fitnet", [f"distill.fitnet.hint_layer={layer}"], student, teacher)
    conv, bn = made.connector[0], made.connector[1]
    (s_channels, t_channels, size) = (32, 128, 4) if teacher == "resnet8x4" else (16, 16, 8)
    t_feature = tensor(2, B, t_channels, size, size)
    assert conv.kernel_size == (1, 1) and conv.bias is not None  # equal sizes: ConvReg's 1 + s_H - t_H

    def ours(f):
        features = [f if i == layer else None for i in range(4)]
        t_features = [t_feature if i == layer else None for i in range(4)]
        return made.method_losses(out(features=features), out(features=t_features), None)[0]["fitnet"]

    def reference(f):
        regressed = torch.relu(batch_norm_train(F.conv2d(f, conv.weight, conv.bias), bn))  # ConvReg, use_relu
        return 100.0 * F.mse_loss(regressed, t_feature)  # HintLoss: nn.MSELoss, times -b 100

    assert_matches(ours, reference, [tensor(1, B, s_channels, size, size)])


# -------------------------------------------------------------------------------- AT (RepDistiller AT.py)

def test_at():
    made = objective("at", student="resnet8", teacher="resnet8x4")
    t_feats = [tensor(10 + i, B, c, s, s) for i, (c, s) in enumerate(zip((32, 64, 128, 256), (8, 8, 4, 2)))]

    def at(f):  # F.normalize(f.pow(p).mean(1).view(B, -1))
        return F.normalize(f.pow(2).mean(1).view(f.shape[0], -1))

    def reference(*s):
        return 1000.0 * sum((at(f_s) - at(f_t)).pow(2).mean() for f_s, f_t in zip(s[1:], t_feats[1:]))

    def ours(*s):
        return made.method_losses(out(features=s), out(features=t_feats), None)[0]["at"]

    assert_matches(ours, reference, stage_features(1))


# -------------------------------------------------------------------------------- SP (RepDistiller SP.py)

def test_sp():
    made = objective("sp", student="resnet8", teacher="resnet8x4")
    t_last = tensor(5, B, 256, 2, 2)

    def reference(f):
        g_s, g_t = f.view(B, -1) @ f.view(B, -1).T, t_last.view(B, -1) @ t_last.view(B, -1).T
        diff = F.normalize(g_t) - F.normalize(g_s)
        return 3000.0 * (diff * diff).view(-1, 1).sum(0)[0] / (B * B)

    def ours(f):
        return made.method_losses(out(features=[None, None, None, f]), out(features=[None, None, None, t_last]),
                                  None)[0]["sp"]

    assert_matches(ours, reference, [tensor(1, B, 64, 2, 2)])


# ------------------------------------------------------------------------------ PKT (RepDistiller PKT.py)

def test_pkt():
    made = objective("pkt", student="resnet8", teacher="resnet8x4")
    t = tensor(2, B, 256)

    def similarity(x, eps=1e-7):
        norm = torch.sqrt(torch.sum(x**2, dim=1, keepdim=True))
        x = x / (norm + eps)
        kernel = (x @ x.T + 1.0) / 2.0
        return kernel / torch.sum(kernel, dim=1, keepdim=True)

    def reference(e, eps=1e-7):
        target, model = similarity(t), similarity(e)
        return 30000.0 * torch.mean(target * torch.log((target + eps) / (model + eps)))

    def ours(e):
        return made.method_losses(out(embedding=e), out(embedding=t), None)[0]["pkt"]

    # float32 sums of nearly cancelling terms (the float64 formula run in float32 is off by 1.2e-5 too)
    assert_matches(ours, reference, [tensor(1, B, 64)], rtol=3e-5)


# ------------------------------------------------------------------------------ VID (RepDistiller VID.py)

def test_vid():
    made = objective("vid", student="resnet8", teacher="resnet8x4")
    t_feats = [tensor(10 + i, B, c, s, s) for i, (c, s) in enumerate(zip((32, 64, 128, 256), (8, 8, 4, 2)))]
    for alpha in made.alphas:  # log scales away from their common initial value
        alpha.data += tensor(3, alpha.shape[0]) * 0.1

    def reference(*s):
        total = 0.0
        for f_s, f_t, head, alpha in zip(s[1:], t_feats[1:], made.regressors, made.alphas):
            w1, w2, w3 = head[0].weight, head[2].weight, head[4].weight
            mean = F.conv2d(torch.relu(F.conv2d(torch.relu(F.conv2d(f_s, w1)), w2)), w3)
            variance = (torch.log(1.0 + torch.exp(alpha)) + 1e-5).view(1, -1, 1, 1)
            total = total + torch.mean(0.5 * ((mean - f_t) ** 2 / variance + torch.log(variance)))
        return total

    def ours(*s):
        return made.method_losses(out(features=s), out(features=t_feats), None)[0]["vid"]

    assert_matches(ours, reference, stage_features(1))


# ----------------------------------------------------------- CC (the declared formula: the paper's RBF kernel)

def test_cc():
    row("cc", "the correlation is the paper's RBF kernel (order 2)")
    made = objective("cc", student="resnet8", teacher="resnet8x4")
    t, gamma, order = tensor(2, B, 256), made.settings.gamma, made.settings.order

    def correlations(e):
        unit = e / e.norm(dim=1, keepdim=True)
        cos = unit @ unit.T
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cos**p for p in range(order + 1))

    def reference(e):
        head = e @ made.embed_student.weight.T + made.embed_student.bias
        return made.settings.weight * ((correlations(head) - correlations(t)) ** 2).mean()

    def ours(e):
        return made.method_losses(out(embedding=e), out(embedding=t), None)[0]["cc"]

    assert_matches(ours, reference, [tensor(1, B, 64)])


# ------------------------------------------------------------------------------ NST (RepDistiller NST.py)

def test_nst():
    made = objective("nst", student="resnet8", teacher="resnet8x4")
    t_feats = [tensor(10 + i, B, c, s, s) for i, (c, s) in enumerate(zip((32, 64, 128, 256), (8, 8, 4, 2)))]

    def poly_kernel(a, b):
        return (a.unsqueeze(1) * b.unsqueeze(2)).sum(-1).pow(2)

    def nst(f_s, f_t):
        f_s = F.normalize(f_s.view(f_s.shape[0], f_s.shape[1], -1), dim=2)
        f_t = F.normalize(f_t.view(f_t.shape[0], f_t.shape[1], -1), dim=2)
        return poly_kernel(f_t, f_t).mean().detach() + poly_kernel(f_s, f_s).mean() - 2 * poly_kernel(f_s, f_t).mean()

    def reference(*s):
        return 50.0 * sum(nst(f_s, f_t) for f_s, f_t in zip(s[1:], t_feats[1:]))

    def ours(*s):
        return made.method_losses(out(features=s), out(features=t_feats), None)[0]["nst"]

    assert_matches(ours, reference, stage_features(1))


# ----------------------------------------------------------- OFD (mdistiller OFD.py feat_loss, ofd_loss)

def test_ofd():
    """Pre-activation teacher responses without exact zeros at the student's sizes, where the declared
    rows (zeros filled, pooling order) do not apply: mdistiller's feat_loss on the connectors' outputs."""
    made = objective("ofd", student="resnet8", teacher="resnet8").float()  # casts to float32
    t_feats = stage_features(20)
    margins = [getattr(made, f"margin{i}") for i in range(3)]

    def feat_loss(source, target, margin):
        margin = margin.view(1, -1, 1, 1)
        loss = ((source - margin) ** 2 * ((source > margin) & (target <= margin)).double()
                + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0)).double()
                + (source - target) ** 2 * (target > 0).double())
        return torch.abs(loss).mean(dim=0).sum()

    def reference(*s):
        total = 0.0
        for i, (f_s, f_t) in enumerate(zip(s[1:], t_feats[1:])):
            conv, bn = made.connectors[i][0], made.connectors[i][1]
            mapped = batch_norm_train(F.conv2d(f_s, conv.weight.double()), bn)
            total = total + feat_loss(mapped, f_t, margins[i].double()) / 2 ** (3 - i - 1)
        return 1e-3 * total

    def ours(*s):
        return made.method_losses(out(features=s), out(features=t_feats), None)[0]["ofd"]

    assert_matches(ours, reference, stage_features(1))


# -------------------------------------------------------------- ReviewKD (mdistiller ReviewKD.py hcl_loss)

def test_reviewkd_hcl():
    teacher = [tensor(10 + i, B, 3, s, s) for i, s in enumerate((8, 4, 2, 1))]

    def reference(*student):
        total = 0.0
        for fs, ft in zip(student, teacher):
            loss, cnt, tot = F.mse_loss(fs, ft, reduction="mean"), 1.0, 1.0
            for size in (4, 2, 1):
                if size >= fs.shape[2]:
                    continue
                cnt /= 2.0
                loss = loss + F.mse_loss(F.adaptive_avg_pool2d(fs, (size, size)),
                                         F.adaptive_avg_pool2d(ft, (size, size)), reduction="mean") * cnt
                tot += cnt
            total = total + loss / tot
        return total

    assert_matches(lambda *s: hcl_loss(list(s), teacher), reference,
                   [tensor(i, B, 3, s, s) for i, s in enumerate((8, 4, 2, 1))])


# ------------------------------------------------- AB (RepDistiller AB.py criterion_alternative_L2, pretrain)

def test_ab():
    made = objective("ab", student="resnet8", teacher="resnet8")
    t_feats = stage_features(20)
    margin, n = 1.0, 3

    def hinge(source, target):
        loss = ((source + margin) ** 2 * ((source > -margin) & (target <= 0)).double()
                + (source - margin) ** 2 * ((source <= margin) & (target > 0)).double())
        return torch.abs(loss).sum()

    def reference(*s):
        mapped = [made.connectors[i](f) for i, f in enumerate(s[1:])]
        return 0.003 * sum(hinge(m, t) / B * 2 ** (i - n + 1) for i, (m, t) in enumerate(zip(mapped, t_feats[1:])))

    def ours(*s):
        losses, *_ = made.init_losses(out(features=s), out(features=t_feats), batch(torch.zeros(B, dtype=torch.long)))
        return losses["ab"]

    assert_matches(ours, reference, stage_features(1))


# ------------------------------------------------------------------------------ FT (RepDistiller FT.py)

def test_ft():
    made = objective("ft", student="resnet8", teacher="resnet8x4")
    t_last = tensor(5, B, 256, 2, 2)

    def factor(f):
        return F.normalize(f.pow(2).mean(1).view(f.size(0), -1))

    def reference(f):
        with torch.no_grad():
            t_factor = made.paraphraser.encoder(t_last)
        return made.settings.weight * F.l1_loss(factor(made.translator(f)), factor(t_factor))

    def ours(f):
        return made.method_losses(out(features=[None, None, None, f]), out(features=[None, None, None, t_last]),
                                  None)[0]["ft"]

    assert_matches(ours, reference, [tensor(1, B, 64, 2, 2)])


# ------------------------------------------------------------------------------ FSP (RepDistiller FSP.py)

def test_fsp():
    made = objective("fsp", student="resnet8", teacher="resnet8")
    t_feats = stage_features(20)

    def fsp_matrices(g):
        matrices = []
        for bot, top in itertools.pairwise(g):
            if bot.shape[2] > top.shape[2]:
                bot = F.adaptive_avg_pool2d(bot, (top.shape[2], top.shape[3]))
            bot, top = bot.view(bot.shape[0], bot.shape[1], -1), top.view(top.shape[0], top.shape[1], -1)
            matrices.append(torch.bmm(bot, top.transpose(1, 2)) / bot.shape[2])
        return matrices

    def reference(*s):
        return made.settings.weight * sum((m_s - m_t).pow(2).mean()
                                          for m_s, m_t in zip(fsp_matrices(s), fsp_matrices(t_feats)))

    def ours(*s):
        return made.init_losses(out(features=s), out(features=t_feats), None)[0]["fsp"]

    assert_matches(ours, reference, stage_features(1))


# -------------------------------------------------------------- DeiT (facebookresearch/deit losses.py)

@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_deit_token(variant):
    t, temp = tensor(2, B, 10, scale=3.0), 2.0

    def reference(s):
        if variant == "hard":
            return F.cross_entropy(s, t.argmax(dim=1))
        kl = F.kl_div(F.log_softmax(s / temp, dim=1), F.log_softmax(t / temp, dim=1), reduction="sum",
                      log_target=True)
        return kl * (temp * temp) / s.numel()

    assert_matches(lambda s: deit_token_term(s, t, variant, temp), reference, [tensor(1, B, 10, scale=3.0)])


# ------------------------------------------------------------------------- KDSVD (mdistiller KDSVD.py)

def test_kdsvd():
    """mdistiller's kdsvd_loss on feats[1:] ([C*H, W] matrices), its teacher vectors given the declared fixed sign."""
    row("kdsvd", "singular vectors get a fixed sign")
    made = objective("kdsvd", ["distill.kdsvd.k=2"], student="resnet8", teacher="resnet8x4")
    t_feats = [tensor(10 + i, B, c, s, s) for i, (c, s) in enumerate(zip((32, 64, 128, 256), (8, 8, 4, 2)))]

    def removenan(x):
        return torch.where(torch.isfinite(x), x, torch.zeros_like(x))

    def svd(feat, n):
        _, s, v = torch.svd(feat.reshape(feat.shape[0], feat.shape[1] * feat.shape[2], feat.shape[3]))
        return F.normalize(removenan(s)[:, :n], dim=1), F.normalize(removenan(v)[:, :, :n], dim=1)

    def fixed_sign(v):  # the declared row: each teacher vector's largest-magnitude entry positive
        largest = v.gather(1, v.abs().argmax(dim=1, keepdim=True))
        return v * torch.where(largest < 0, -1.0, 1.0)

    def reference(*s, k=2):
        losses, previous = [], None
        for f_s, f_t in zip(s[1:], t_feats[1:]):
            s_t, v_t = svd(f_t, k)
            _, v_s = svd(f_s, k + 3)
            v_t = fixed_sign(v_t)
            cosine = v_s.transpose(-2, -1) @ v_t  # align_rsv
            best = cosine.abs().max(dim=1, keepdim=True).values
            v_s = v_s @ torch.where(torch.eq(best, cosine.abs()), torch.sign(cosine), torch.zeros_like(cosine))
            v_t, v_s = v_t * s_t.unsqueeze(1), v_s * s_t.unsqueeze(1)
            if previous is not None:
                s_rbf = torch.exp(-(v_s.unsqueeze(2) - previous[0].unsqueeze(1)).pow(2) / 8)
                t_rbf = torch.exp(-(v_t.unsqueeze(2) - previous[1].unsqueeze(1)).pow(2) / 8)
                l2 = (s_rbf - t_rbf.detach()).pow(2)
                losses.append(torch.where(torch.isfinite(l2), l2, torch.zeros_like(l2)).sum())
            previous = v_s, v_t
        return made.settings.weight * sum(loss / B for loss in losses)

    def ours(*s):
        return made.method_losses(out(features=s), out(features=t_feats), None)[0]["kdsvd"]

    # the SVD's backward in float32 (differences of squared singular values in its denominators)
    assert_matches(ours, reference, stage_features(1), grad_atol=1e-4)


# ------------------------------------------------------------------------------------- every method

TESTED_ELSEWHERE = {"dist": "tests/test_dist_ctkd.py (float64 loop reference of the authors' formula)"}


def test_every_registered_method_has_a_reference_test():
    tested = {name.removeprefix("test_").split("_")[0] for name in globals() if name.startswith("test_")}
    assert set(list_distillers()) <= tested | set(TESTED_ELSEWHERE)
