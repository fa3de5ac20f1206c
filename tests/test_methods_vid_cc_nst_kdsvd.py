"""VID, CC, NST and KDSVD: each loss against a slow float64 computation written from its paper's
formula, the stage pairing and pooling they share, KDSVD's finiteness on degenerate feature maps,
and the objectives' checks of the models they are given."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from intrakd.config import StudentConfig, load_config
from intrakd.models import ModelOutput, create_model
from intrakd.objectives import TrainSetInfo
from intrakd.objectives.cc import CCObjective, cc_loss, correlation_matrix
from intrakd.objectives.kdsvd import KDSVDObjective, kdsvd_loss
from intrakd.objectives.nst import NSTObjective, nst_loss
from intrakd.objectives.stages import pool_to_smaller, stage_pairs
from intrakd.objectives.vid import VIDObjective, regressor, vid_loss

DIGITS = TrainSetInfo(10, torch.arange(20) % 10, (1, 8, 8))


def distill_config(method: str, overrides: list[str] | None = None):
    return load_config(StudentConfig, overrides=[f"distill.method={method}", *(overrides or [])]).distill


def digits_pair():
    torch.manual_seed(0)
    return create_model("digits_cnn_small", num_classes=10), create_model("digits_cnn", num_classes=10).eval()


def outputs(features: list[torch.Tensor], embedding: torch.Tensor | None = None) -> ModelOutput:
    b = features[0].shape[0]
    return ModelOutput(torch.zeros(b, 10), torch.zeros(b, 4) if embedding is None else embedding, tuple(features))


def block_mean(f: torch.Tensor, factor: int) -> torch.Tensor:
    b, c, h, w = f.shape
    return f.reshape(b, c, h // factor, factor, w // factor, factor).mean(dim=(3, 5))


# ------------------------------------------------------------------------------------ shared stages

def test_stage_pairs_zip_from_first_stage_and_drop_the_longer_tail():
    s, t = [torch.zeros(1, i) for i in range(5)], [torch.ones(1, i) for i in range(4)]
    pairs = stage_pairs(s, t, 1)
    assert [(a.shape[1], b.shape[1]) for a, b in pairs] == [(1, 1), (2, 2), (3, 3)]


def test_pool_to_smaller_pools_each_side_to_the_smaller_size():
    g = torch.Generator().manual_seed(0)
    big, small = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    pooled, same = pool_to_smaller(big, small)
    torch.testing.assert_close(pooled, block_mean(big, 2))
    assert same is small
    first, second = pool_to_smaller(small, big)
    assert first is small and torch.equal(second, pooled)


# ---------------------------------------------------------------------------------------------- VID

def slow_vid(fs: torch.Tensor, ft: torch.Tensor, weights: list[torch.Tensor], alpha: torch.Tensor,
             eps: float) -> float:
    """mean over b, c, h, w of log sigma_c + (t - mu)^2 / (2 sigma_c^2), mu = W3 relu(W2 relu(W1 x))."""
    w1, w2, w3 = (w.detach().double()[:, :, 0, 0] for w in weights)
    b, c, h, w = ft.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                mu = w3 @ (w2 @ (w1 @ fs[i, :, y, x]).clamp_min(0)).clamp_min(0)
                for ch in range(c):
                    variance = math.log1p(math.exp(float(alpha[ch]))) + eps
                    total += 0.5 * math.log(variance) + (float(ft[i, ch, y, x]) - float(mu[ch])) ** 2 / (2 * variance)
    return total / (b * c * h * w)


def test_vid_loss_matches_gaussian_likelihood():
    torch.manual_seed(1)
    head = regressor(3, 4)
    g = torch.Generator().manual_seed(2)
    fs, ft = torch.randn(2, 3, 2, 3, generator=g), torch.randn(2, 4, 2, 3, generator=g)
    alpha = torch.randn(4, generator=g)
    weights = [head[0].weight, head[2].weight, head[4].weight]
    expected = slow_vid(fs.double(), ft.double(), weights, alpha.double(), 1e-5)
    with torch.no_grad():
        assert vid_loss(head(fs), ft, alpha, 1e-5).item() == pytest.approx(expected, rel=1e-5)


def test_vid_objective_starts_at_the_initial_variance_and_pools_the_larger_map():
    student, teacher = digits_pair()
    objective = VIDObjective(distill_config("vid", ["distill.vid.first_stage=0", "distill.vid.weight=2"]),
                             student, teacher, DIGITS)
    assert len(objective.regressors) == 2
    for alpha in objective.alphas:
        torch.testing.assert_close(torch.nn.functional.softplus(alpha) + 1e-5, torch.full_like(alpha, 5.0))
    g = torch.Generator().manual_seed(3)
    fs = [torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 16, 4, 4, generator=g)]
    ft = [torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 64, 8, 8, generator=g)]  # stage 2 larger
    losses, _ = objective.method_losses(outputs(fs), outputs(ft), None)
    weights = [[head[i].weight for i in (0, 2, 4)] for head in objective.regressors]
    expected = (slow_vid(fs[0].double(), ft[0].double(), weights[0], objective.alphas[0].detach(), 1e-5)
                + slow_vid(fs[1].double(), block_mean(ft[1], 2).double(), weights[1],
                           objective.alphas[1].detach(), 1e-5))
    assert losses["vid"].item() == pytest.approx(2 * expected, rel=1e-5)


def test_vid_rejects_a_variance_below_its_floor():
    student, teacher = digits_pair()
    with pytest.raises(ValueError, match="init_variance=1e-06 must exceed distill.vid.eps=1e-05"):
        VIDObjective(distill_config("vid", ["distill.vid.init_variance=1e-6"]), student, teacher, DIGITS)


# ----------------------------------------------------------------------------------------------- CC

def slow_correlations(e: torch.Tensor, gamma: float, order: int) -> list[list[float]]:
    unit = [row / row.norm() for row in e.double()]
    n = len(unit)
    return [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * float(unit[i] @ unit[j]) ** p
                 for p in range(order + 1)) for j in range(n)] for i in range(n)]


@pytest.mark.parametrize(("gamma", "order"), [(0.4, 2), (1.0, 3), (0.4, 0)])
def test_cc_matches_taylor_expanded_rbf(gamma, order):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(5, 3, generator=g), torch.randn(5, 7, generator=g)
    cs, ct = slow_correlations(s, gamma, order), slow_correlations(t, gamma, order)
    expected = sum((cs[i][j] - ct[i][j]) ** 2 for i in range(5) for j in range(5)) / 25
    assert cc_loss(s, t, gamma, order).item() == pytest.approx(expected, rel=1e-5)


def test_cc_kernel_is_the_gaussian_rbf_as_the_order_grows():
    g = torch.Generator().manual_seed(5)
    e = torch.randn(6, 4, generator=g, dtype=torch.float64)
    unit = e / e.norm(dim=1, keepdim=True)
    rbf = torch.exp(-0.4 * torch.cdist(unit, unit).pow(2))
    torch.testing.assert_close(correlation_matrix(e, 0.4, 12).double(), rbf, rtol=1e-6, atol=1e-6)


def test_cc_objective_embeds_the_student_only():
    student, teacher = digits_pair()
    objective = CCObjective(distill_config("cc"), student, teacher, DIGITS)
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(4, 16, generator=g), torch.randn(4, 64, generator=g)
    losses, _ = objective.method_losses(outputs([s], s), outputs([t], t), None)
    with torch.no_grad():
        expected = 100 * cc_loss(objective.embed_student(s), t, 0.4, 2)
    torch.testing.assert_close(losses["cc"], expected)


# ---------------------------------------------------------------------------------------------- NST

def slow_nst(fs: torch.Tensor, ft: torch.Tensor) -> float:
    def channels(f, i):
        rows = [[float(v) for v in f[i, c].flatten()] for c in range(f.shape[1])]
        return [[v / math.sqrt(sum(x * x for x in row)) for v in row] for row in rows]

    def mean_kernel(a, b):
        return sum(sum(x * y for x, y in zip(u, v)) ** 2 for u in a for v in b) / (len(a) * len(b))

    total = 0.0
    for i in range(fs.shape[0]):
        s, t = channels(fs, i), channels(ft, i)
        total += mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)
    return total / fs.shape[0]


def test_nst_matches_polynomial_mmd():
    g = torch.Generator().manual_seed(7)
    fs, ft = torch.randn(3, 4, 3, 3, generator=g), torch.randn(3, 6, 3, 3, generator=g)
    assert nst_loss(fs, ft).item() == pytest.approx(slow_nst(fs.double(), ft.double()), rel=1e-5)
    assert nst_loss(ft, ft).item() == pytest.approx(0.0, abs=1e-6)


def test_nst_objective_pools_and_sums_stages():
    student, teacher = digits_pair()
    objective = NSTObjective(distill_config("nst", ["distill.nst.first_stage=0"]), student, teacher, DIGITS)
    g = torch.Generator().manual_seed(8)
    fs = [torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 16, 4, 4, generator=g)]
    ft = [torch.randn(2, 32, 4, 4, generator=g), torch.randn(2, 64, 4, 4, generator=g)]  # stage 1 smaller
    losses, _ = objective.method_losses(outputs(fs), outputs(ft), None)
    expected = slow_nst(block_mean(fs[0], 2).double(), ft[0].double()) + slow_nst(fs[1].double(), ft[1].double())
    assert losses["nst"].item() == pytest.approx(50 * expected, rel=1e-5)


# -------------------------------------------------------------------------------------------- KDSVD

def slow_kdsvd(pairs: list[tuple[torch.Tensor, torch.Tensor]], k: int, vectors_over: str) -> float:
    """The SVD per sample in float64 (numpy), everything after it in loops."""
    def matrix(f, i):
        c, h, w = f.shape[1:]
        if vectors_over == "width":
            return np.array([[float(f[i, ch, y, x]) for x in range(w)] for ch in range(c) for y in range(h)])
        return np.array([[float(f[i, ch, y, x]) for ch in range(c)] for y in range(h) for x in range(w)])

    def svd(f, i, count):
        _, sigma, vh = np.linalg.svd(matrix(f, i), full_matrices=False)
        top = sigma[:count]
        return [list(vh[j]) for j in range(min(count, len(vh)))], list(top / math.sqrt(sum(v * v for v in top)))

    batch, total = pairs[0][0].shape[0], 0.0
    for i in range(batch):
        previous = None
        for f_s, f_t in pairs:
            if vectors_over == "width":
                f_s, f_t = pool_to_smaller(f_s, f_t)
            teacher, sigma = svd(f_t, i, k)
            teacher = [v if v[max(range(len(v)), key=lambda n: abs(v[n]))] > 0 else [-x for x in v] for v in teacher]
            candidates, _ = svd(f_s, i, k + 3)
            student = []
            for v in teacher:
                cosines = [sum(a * b for a, b in zip(u, v)) for u in candidates]
                best = max(range(len(cosines)), key=lambda n: abs(cosines[n]))
                student.append([math.copysign(1.0, cosines[best]) * x for x in candidates[best]])
            student = [[x * sigma[j] for x in v] for j, v in enumerate(student)]
            teacher = [[x * sigma[j] for x in v] for j, v in enumerate(teacher)]
            if previous is not None:
                for j in range(k):
                    for a_s, a_t in zip(student[j], teacher[j]):
                        for b_s, b_t in zip(previous[0][j], previous[1][j]):
                            total += (math.exp(-(a_s - b_s) ** 2 / 8) - math.exp(-(a_t - b_t) ** 2 / 8)) ** 2
            previous = student, teacher
    return total / batch


def kdsvd_features(seed: int, student_channels: tuple[int, ...], teacher_channels: tuple[int, ...],
                   sizes: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, cs, *s_size, generator=g), torch.randn(2, ct, *t_size, generator=g))
            for cs, ct, (s_size, t_size) in zip(student_channels, teacher_channels, sizes)]


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_width_matrices_match_definition(k):
    # other channel counts; the teacher's middle stage larger (pooled), the last stage not square
    pairs = kdsvd_features(9, (3, 4, 5), (6, 2, 7), [((8, 8), (8, 8)), ((4, 4), (8, 8)), ((2, 4), (2, 4))])
    expected = slow_kdsvd(pairs, k, "width")
    assert kdsvd_loss(pairs, k, "width").item() == pytest.approx(expected, rel=1e-4)


def test_kdsvd_channel_matrices_match_definition():
    pairs = kdsvd_features(10, (5, 6, 4), (5, 6, 4), [((4, 4), (4, 4)), ((4, 4), (2, 2)), ((2, 2), (2, 2))])
    expected = slow_kdsvd(pairs, 1, "channels")
    assert kdsvd_loss(pairs, 1, "channels").item() == pytest.approx(expected, rel=1e-4)


def test_kdsvd_is_the_same_whatever_sign_the_teacher_svd_returns():
    pairs = kdsvd_features(11, (3, 4), (5, 6), [((4, 4), (4, 4)), ((4, 4), (4, 4))])
    flipped = [(f_s, -f_t) for f_s, f_t in pairs]  # negating a matrix negates its singular vectors
    assert kdsvd_loss(flipped, 1, "width").item() == pytest.approx(kdsvd_loss(pairs, 1, "width").item(), rel=1e-5)


def test_kdsvd_is_finite_on_degenerate_maps_and_spares_the_other_samples():
    pairs = kdsvd_features(12, (3, 4), (5, 6), [((4, 4), (4, 4)), ((4, 4), (4, 4))])
    degenerate = []
    for f_s, f_t in pairs:
        f_s, f_t = f_s.clone(), f_t.clone()
        f_s[1], f_t[1] = 0.0, 1.0  # an all-zero student map, a constant teacher map
        degenerate.append((f_s.requires_grad_(True), f_t))
    loss = kdsvd_loss(degenerate, 1, "width")
    loss.backward()
    assert torch.isfinite(loss)
    for f_s, _ in degenerate:
        assert torch.isfinite(f_s.grad).all() and f_s.grad[1].abs().sum() == 0 and f_s.grad[0].abs().sum() > 0
    alone = [(f_s[:1].detach().clone().requires_grad_(True), f_t[:1]) for f_s, f_t in degenerate]
    (kdsvd_loss(alone, 1, "width") / 2).backward()  # the batch of two divides by 2
    for (f_s, _), (one, _) in zip(degenerate, alone):
        torch.testing.assert_close(f_s.grad[:1], one.grad)


def test_kdsvd_objective_checks_the_models():
    student, teacher = digits_pair()
    with pytest.raises(ValueError, match=r"first_stage=1, but the student has 2 and the teacher 2 stage features: "
                                         r"KDSVD needs 2 pair\(s\)"):
        KDSVDObjective(distill_config("kdsvd"), student, teacher, DIGITS)
    with pytest.raises(ValueError, match="stage 0 has 8 student and 32 teacher channels"):
        KDSVDObjective(distill_config("kdsvd", ["distill.kdsvd.first_stage=0", "distill.kdsvd.vectors_over=channels"]),
                       student, teacher, DIGITS)
    with pytest.raises(ValueError, match="k=5, but the teacher's stage 1 has only 4 singular vectors"):
        KDSVDObjective(distill_config("kdsvd", ["distill.kdsvd.first_stage=0", "distill.kdsvd.k=5"]),
                       student, teacher, DIGITS)
    objective = KDSVDObjective(distill_config("kdsvd", ["distill.kdsvd.first_stage=0", "distill.kdsvd.weight=3"]),
                               student, teacher, DIGITS)
    g = torch.Generator().manual_seed(13)
    fs = [torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 16, 4, 4, generator=g)]
    ft = [torch.randn(2, 32, 8, 8, generator=g), torch.randn(2, 64, 4, 4, generator=g)]
    losses, _ = objective.method_losses(outputs(fs), outputs(ft), None)
    assert losses["kdsvd"].item() == pytest.approx(3 * slow_kdsvd(list(zip(fs, ft)), 1, "width"), rel=1e-4)
