"""Logit methods: logit standardisation (Sun et al., CVPR 2024) in every KL term, and MLKD (Jin et
al., CVPR 2023), each against a slow float64 computation written from the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch

from intrakd.config import DataConfig, StudentConfig, load_config
from intrakd.data import Batch, TensorDataset, build_datasets
from intrakd.data.augment import Augmentation
from intrakd.data.tensor_data import TensorBatches
from intrakd.losses import kd_loss, standardize_logits
from intrakd.losses.kd import STANDARDIZE_EPS
from intrakd.models import create_model
from intrakd.objectives import (
    TrainSetInfo,
    create_distiller,
    describe_methods,
    distill_recipe,
    logit_standardized_methods,
)
from intrakd.objectives.dkd import dkd_terms
from intrakd.objectives.mlkd import MLKDObjective, batch_alignment, class_alignment, low_confidence_fractions
from intrakd.presets import all_presets


def slow_standardize(row: list[float]) -> list[float]:
    """The reference code's Z-score: ``(z - mean) / std`` with the unbiased ``std = sqrt(1/(K-1) sum (z_k -
    mean)^2)`` (+ eps); the paper's formula writes ``1/K``."""
    mean = sum(row) / len(row)
    std = math.sqrt(sum((v - mean) ** 2 for v in row) / (len(row) - 1))
    return [(v - mean) / (std + STANDARDIZE_EPS) for v in row]


def slow_softmax(row: list[float], temp: float) -> list[float]:
    top = max(row)
    e = [math.exp((v - top) / temp) for v in row]
    return [v / sum(e) for v in e]


def slow_kd(s: torch.Tensor, t: torch.Tensor, temp: float, standardize: bool) -> float:
    total = 0.0
    for b in range(s.shape[0]):
        zs, zt = s[b].tolist(), t[b].tolist()
        if standardize:
            zs, zt = slow_standardize(zs), slow_standardize(zt)
        ps, pt = slow_softmax(zs, temp), slow_softmax(zt, temp)
        total += sum(q * math.log(q / r) for q, r in zip(pt, ps))
    return temp**2 * total / s.shape[0]


def slow_dkd(s: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, temp: float) -> tuple[list[float], list[float]]:
    """Per-sample TCKD and NCKD of the standardised logits, times ``T^2``."""
    tckd, nckd = [], []
    for b in range(s.shape[0]):
        ps = slow_softmax(slow_standardize(s[b].tolist()), temp)
        pt = slow_softmax(slow_standardize(t[b].tolist()), temp)
        y = int(labels[b])
        tckd.append(temp**2 * sum(q * math.log(q / r) for q, r in zip((pt[y], 1 - pt[y]), (ps[y], 1 - ps[y]))))
        others = [j for j in range(len(ps)) if j != y]
        qs = [ps[j] / (1 - ps[y]) for j in others]
        qt = [pt[j] / (1 - pt[y]) for j in others]
        nckd.append(temp**2 * sum(q * math.log(q / r) for q, r in zip(qt, qs)))
    return tckd, nckd


def logits(seed: int, shape: tuple[int, int] = (6, 10), scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# ------------------------------------------------------------------------------ logit standardisation

def test_standardize_matches_the_reference_codes_z_score():
    z = logits(0, (5, 7)).double()
    expected = torch.tensor([slow_standardize(row) for row in z.tolist()], dtype=torch.float64)
    torch.testing.assert_close(standardize_logits(z), expected, rtol=1e-12, atol=1e-12)
    out = standardize_logits(z)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    # the unbiased variance (torch's default, the LS repository's normalize) is 1, not the population one
    torch.testing.assert_close((out**2).sum(dim=1) / 6, torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0])
def test_standardized_kd_matches_slow_reference(temp):
    s, t = logits(1), logits(2, scale=8.0)
    expected = slow_kd(s.double(), t.double(), temp, standardize=True)
    assert kd_loss(s, t, temp, standardize=True).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(s.double(), t.double(), temp, standardize=True).item() == pytest.approx(expected, rel=1e-5)
    # the plain loss differs: the option changes what is computed
    assert kd_loss(s, t, temp).item() == pytest.approx(slow_kd(s.double(), t.double(), temp, False), rel=1e-5)
    assert abs(kd_loss(s, t, temp).item() - expected) > 1e-3


@pytest.mark.parametrize("temp", [2.0, 4.0])
def test_standardized_dkd_matches_slow_reference(temp):
    s, t = logits(3), logits(4, scale=6.0)
    labels = torch.tensor([0, 3, 9, 2, 2, 5])
    tckd, nckd = dkd_terms(s, t, labels, temp, standardize=True)
    ref_tckd, ref_nckd = slow_dkd(s.double(), t.double(), labels, temp)
    # computed in float32: small terms agree to float32 rounding
    torch.testing.assert_close(tckd.double(), torch.tensor(ref_tckd, dtype=torch.float64), rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(nckd.double(), torch.tensor(ref_nckd, dtype=torch.float64), rtol=1e-4, atol=2e-5)


def test_standardized_terms_ignore_each_samples_shift_and_scale():
    s, t = logits(5), logits(6)
    labels = torch.tensor([1, 2, 3, 4, 5, 6])
    g = torch.Generator().manual_seed(7)
    shift_s, shift_t = torch.randn(6, 1, generator=g) * 10, torch.randn(6, 1, generator=g) * 10
    scale_s, scale_t = torch.rand(6, 1, generator=g) * 5 + 0.1, torch.rand(6, 1, generator=g) * 5 + 0.1
    s2, t2 = s * scale_s + shift_s, t * scale_t + shift_t
    torch.testing.assert_close(kd_loss(s2, t2, 2.0, standardize=True), kd_loss(s, t, 2.0, standardize=True),
                               rtol=1e-4, atol=1e-6)
    for new, old in zip(dkd_terms(s2, t2, labels, 2.0, True), dkd_terms(s, t, labels, 2.0, True)):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-6)
    # without standardisation a scaled student is a different student
    assert abs(kd_loss(s2, t2, 2.0).item() - kd_loss(s, t, 2.0).item()) > 1e-2


def test_standardized_terms_are_finite_on_constant_logits():
    assert torch.equal(standardize_logits(torch.full((3, 10), 2.0)), torch.zeros(3, 10))  # zero std: eps
    constant = torch.full((3, 10), 4.2, requires_grad=True)  # its float32 mean rounds: equal, finite rows
    standardized = standardize_logits(constant.detach())
    assert torch.isfinite(standardized).all() and (standardized == standardized[:, :1]).all()
    teacher = logits(8, (3, 10))
    loss = kd_loss(constant, teacher, 2.0, standardize=True)
    tckd, nckd = dkd_terms(constant, teacher, torch.tensor([0, 1, 2]), 2.0, standardize=True)
    (loss + tckd.sum() + nckd.sum()).backward()
    assert torch.isfinite(loss) and torch.isfinite(tckd).all() and torch.isfinite(nckd).all()
    assert torch.isfinite(constant.grad).all()
    # a constant teacher (uniform soft labels) too
    assert torch.isfinite(kd_loss(logits(9, (3, 10)), torch.zeros(3, 10), 2.0, standardize=True))


def digits_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    return create_model("digits_cnn_small", num_classes=10), create_model("digits_cnn", num_classes=10).eval()


@pytest.mark.parametrize("method", ["kd", "dkd", "crd"])
def test_the_option_threads_from_config_to_the_terms(method):
    student, teacher = digits_pair()
    labels = torch.arange(24) % 10
    info = TrainSetInfo(10, labels, (1, 8, 8))
    images = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    batch = Batch((images,), labels[:8], torch.arange(8))
    results = {}
    for flag in (False, True):
        cfg = load_config(StudentConfig, overrides=[f"distill.method={method}", "distill.kd_weight=0.5",
                                                     "distill.crd.num_negatives=7",
                                                     f"distill.logit_standardize={str(flag).lower()}"])
        assert cfg.distill.logit_standardize is flag
        objective = create_distiller(cfg.distill, student, teacher, info)
        results[flag] = objective(student, batch, teacher).losses
    s, t = student(images).logits, teacher(images).logits
    for flag in (False, True):  # the KD term that any method may add
        torch.testing.assert_close(results[flag]["kd"], 0.5 * kd_loss(s, t, 4.0, standardize=flag))
    if method == "dkd":
        tckd, nckd = dkd_terms(s, t, batch.labels, 4.0, standardize=True)
        torch.testing.assert_close(results[True]["dkd"], (1.0 * tckd.mean() + 8.0 * nckd.mean()) / 20)
        assert not torch.allclose(results[True]["dkd"], results[False]["dkd"])


def test_logit_standardized_recipes_follow_the_reference_commands():
    assert logit_standardized_methods() == ["kd", "dkd", "mlkd"]
    # the README's command (T 2, weight 9) where the LS repository publishes no run of the pair; the
    # method's own CE weight (0.1 for KD and MLKD in its code since commit 3ec213f; DKD's 1.0)
    kd = distill_recipe("kd", logit_standardize=True)
    assert (kd["ce_weight"], kd["kd_weight"], kd["temperature"], kd["logit_standardize"]) == (0.1, 9.0, 2.0, True)
    assert distill_recipe("kd", "resnet32x4", "ShuffleV1", logit_standardize=True) == kd
    mlkd = distill_recipe("mlkd", "resnet32x4", "resnet8x4", logit_standardize=True)
    assert (mlkd["ce_weight"], mlkd["temperature"], mlkd["mlkd"]["weight"]) == (0.1, 2.0, 9.0)
    # the published run's temperature and weight (its log name), e.g. DKD resnet56 -> resnet20 T 3 weight 18
    dkd = distill_recipe("dkd", "resnet56", "resnet20", logit_standardize=True)
    assert (dkd["ce_weight"], dkd["temperature"], dkd["dkd"]["tckd_weight"], dkd["dkd"]["nckd_weight"]) == \
        (1.0, 3.0, 18.0, 36.0)  # both DKD weights times 18 (nckd 2 for this pair)
    kd = distill_recipe("kd", "vgg13", "vgg8", logit_standardize=True)
    assert (kd["ce_weight"], kd["kd_weight"], kd["temperature"]) == (0.1, 9.0, 3.0)
    kd = distill_recipe("kd", "ResNet50", "MobileNetV2", logit_standardize=True)
    assert (kd["kd_weight"], kd["temperature"]) == (1.0, 3.0)
    mlkd = distill_recipe("mlkd", "vgg13", "vgg8", logit_standardize=True)
    assert (mlkd["ce_weight"], mlkd["temperature"], mlkd["mlkd"]["weight"]) == (0.1, 2.0, 6.0)
    assert distill_recipe("kd") == {"method": "kd", "ce_weight": 0.1, "kd_weight": 0.9, "temperature": 4.0}
    with pytest.raises(ValueError, match="no logit-standardised recipe"):
        distill_recipe("crd", logit_standardize=True)
    for method in logit_standardized_methods():
        for variant in ("vanilla", "enriched"):
            cfg = all_presets()[f"cifar100/resnet32x4-resnet8x4/{method}-ls-{variant}"].config()
            assert cfg.distill.method == method and cfg.distill.logit_standardize
            assert cfg.distill.temperature == 2.0
            assert cfg.distill.ce_weight == (1.0 if method == "dkd" else 0.1)
    assert "cifar100/resnet32x4-resnet8x4/crd-ls-vanilla" not in all_presets()
    # without the option nothing changes for users: the default stays off
    assert load_config(StudentConfig).distill.logit_standardize is False


def test_methods_listing_shows_the_option_and_each_recipe():
    text = describe_methods()
    assert "distill.logit_standardize=False" in text
    assert "distill.kd_weight=9.0 distill.temperature=2.0 distill.logit_standardize=True" in text
    assert "mlkd: Multi-level logit distillation (Jin et al., CVPR 2023)" in text
    assert "distill.mlkd.extra_temperatures=[3.0, 5.0, 2.0, 6.0]" in text and "distill.mlkd.weight=0.9" in text
    assert "distill.temperature=2.0 distill.mlkd.weight=9.0 distill.logit_standardize=True" in text


# ---------------------------------------------------------------------------------------------- MLKD

def slow_gram_gap(s: torch.Tensor, t: torch.Tensor, temp: float, level: str) -> float:
    """Batch level: sum_ij (G_t - G_s)_ij^2 / B with G_ij = sum_c P_ic P_jc; class level: the same
    of M_kl = sum_b P_bk P_bl over C."""
    ps = [slow_softmax(row, temp) for row in s.tolist()]
    pt = [slow_softmax(row, temp) for row in t.tolist()]
    b, c = len(ps), len(ps[0])
    total = 0.0
    if level == "batch":
        for i in range(b):
            for j in range(b):
                gs = sum(ps[i][k] * ps[j][k] for k in range(c))
                gt = sum(pt[i][k] * pt[j][k] for k in range(c))
                total += (gt - gs) ** 2
        return total / b
    for k in range(c):
        for m in range(c):
            ms = sum(ps[i][k] * ps[i][m] for i in range(b))
            mt = sum(pt[i][k] * pt[i][m] for i in range(b))
            total += (mt - ms) ** 2
    return total / c


def slow_median(values: list[float]) -> float:
    """numpy's percentile 50 (linear interpolation)."""
    v, n = sorted(values), len(values)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def slow_fractions(t: torch.Tensor) -> tuple[float, float]:
    p = [slow_softmax(row, 1.0) for row in t.tolist()]
    confidence = [max(row) for row in p]
    per_class = [sum(row[k] for row in p) for k in range(len(p[0]))]
    return (sum(v <= slow_median(confidence) for v in confidence) / len(confidence),
            sum(v <= slow_median(per_class) for v in per_class) / len(per_class))


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_batch_and_class_alignment_match_slow_reference(temp):
    s, t = logits(10, (5, 7)), logits(11, (5, 7), scale=5.0)
    expected_batch = slow_gram_gap(s.double(), t.double(), temp, "batch")
    expected_class = slow_gram_gap(s.double(), t.double(), temp, "class")
    assert batch_alignment(s, t, temp).item() == pytest.approx(expected_batch, rel=1e-4, abs=1e-9)
    assert class_alignment(s, t, temp).item() == pytest.approx(expected_class, rel=1e-4, abs=1e-9)
    assert batch_alignment(t, t, temp).item() == 0 and class_alignment(t, t, temp).item() == 0


@pytest.mark.parametrize("batch", [6, 7])
def test_low_confidence_fractions_match_the_median_masks(batch):
    t = logits(12, (batch, 9), scale=4.0)
    samples, classes = low_confidence_fractions(t)
    ref_samples, ref_classes = slow_fractions(t.double())
    assert samples.item() == pytest.approx(ref_samples) and classes.item() == pytest.approx(ref_classes)
    assert samples.item() == pytest.approx((batch // 2 + batch % 2) / batch)  # distinct values: half (+ median)


def mlkd_setup(overrides: list[str] | None = None):
    student, teacher = digits_pair(3)
    teacher.requires_grad_(True)  # the objective itself must keep the teacher out of the graph
    labels = torch.arange(24) % 10
    cfg = load_config(StudentConfig, overrides=["distill.method=mlkd", *(overrides or [])]).distill
    objective = create_distiller(cfg, student, teacher, TrainSetInfo(10, labels, (1, 8, 8)))
    g = torch.Generator().manual_seed(4)
    views = (torch.randn(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g))
    return objective, student, teacher, Batch(views, labels[:8], torch.arange(8))


@pytest.mark.parametrize("standardize", [False, True])
def test_mlkd_objective_matches_slow_reference(standardize):
    objective, student, teacher, batch = mlkd_setup([f"distill.logit_standardize={str(standardize).lower()}",
                                                     "distill.mlkd.extra_temperatures=[3.0, 2.0]"])
    assert isinstance(objective, MLKDObjective) and (objective.num_views, objective.strong_views) == (2, 1)
    losses = objective(student, batch, teacher).losses
    assert set(losses) == {"ce", "mlkd_instance", "mlkd_batch", "mlkd_class"}
    with torch.no_grad():
        sw, ss = (student(v).logits.double() for v in batch.views)
        tw, ts = (teacher(v).logits.double() for v in batch.views)
    frac_s, frac_c = slow_fractions(tw)
    temps = [4.0, 3.0, 2.0]
    instance = sum(frac_s * slow_kd(sw, tw, T, standardize) + slow_kd(ss, ts, T, standardize) for T in temps)
    batch_level = sum(frac_s * slow_gram_gap(sw, tw, T, "batch") for T in temps)
    class_level = sum(frac_c * slow_gram_gap(sw, tw, T, "class") for T in temps)
    ce = torch.nn.functional.cross_entropy(sw, batch.labels) + torch.nn.functional.cross_entropy(ss, batch.labels)
    assert losses["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-5)
    assert losses["mlkd_instance"].item() == pytest.approx(0.9 * instance, rel=1e-4)
    assert losses["mlkd_batch"].item() == pytest.approx(0.9 * batch_level, rel=1e-4)
    assert losses["mlkd_class"].item() == pytest.approx(0.9 * class_level, rel=1e-4)


def test_mlkd_gradients_reach_the_student_never_the_teacher():
    objective, student, teacher, batch = mlkd_setup(["distill.kd_weight=0.5"])
    result = objective(student, batch, teacher)
    assert set(result.losses) == {"ce", "kd", "mlkd_instance", "mlkd_batch", "mlkd_class"}
    for name in ("mlkd_instance", "mlkd_batch", "mlkd_class"):
        student.zero_grad()
        result.losses[name].backward(retain_graph=True)
        assert all(p.grad is None for p in teacher.parameters())
        grads = [p.grad for p in student.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name


# ------------------------------------------------------------------------------ strong views (data)

def cifar_like(n: int = 16) -> TensorDataset:
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return TensorDataset(images, torch.arange(n) % 4, 4, Augmentation((0.5, 0.4, 0.3), (0.25, 0.25, 0.25)))


def test_strong_views_are_deterministic_resumable_and_leave_the_global_generator_alone():
    data = cifar_like()
    batches = TensorBatches(data, 8, 2, seed=5, strong_views=1)
    state = torch.get_rng_state()
    batches.set_epoch(2)
    first = list(batches)
    assert torch.equal(state, torch.get_rng_state())
    batches.set_epoch(2, start=1)
    (resumed,) = list(batches)
    assert all(torch.equal(a, b) for a, b in zip(first[1].views, resumed.views))
    standard = TensorBatches(data, 8, 2, seed=5)
    standard.set_epoch(2)
    plain = list(standard)
    # the weak view is the standard augmentation; the strong one adds to it
    assert torch.equal(first[0].views[0], plain[0].views[0])
    assert not torch.equal(first[0].views[1], plain[0].views[1])
    with pytest.raises(ValueError, match="strong_views=3"):
        TensorBatches(data, 8, 2, seed=5, strong_views=3)


def test_strong_augmentation_cuts_out_a_square_of_the_mean_colour():
    aug = Augmentation((0.5, 0.4, 0.3), (0.25, 0.25, 0.25), padding=0, flip=False)
    assert aug.strong.fill == (128, 102, 76)
    images = torch.full((32, 3, 32, 32), 7, dtype=torch.uint8)
    strong = aug.strong(images, torch.Generator().manual_seed(0))
    cut = (strong == torch.tensor([128, 102, 76], dtype=torch.uint8).view(3, 1, 1)).all(dim=1)  # [B, H, W]
    area = cut.sum(dim=(1, 2))
    assert (area > 0).float().mean() > 0.5 and area.max() <= 17 * 17  # side <= half the image (+ rounding)
    assert not torch.equal(strong, aug.strong(images, torch.Generator().manual_seed(1)))


def test_folder_datasets_give_strong_views_too(tmp_path):
    from test_imagefolder import make_image_folders

    make_image_folders(tmp_path, per_class=4)
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), workers=0, image_size=16, augment="pad_crop")
    train, _, _ = build_datasets(cfg)

    def views(strong_views: int) -> list[tuple[torch.Tensor, ...]]:
        batches = train.train_batches(4, 2, seed=1, device=torch.device("cpu"), strong_views=strong_views)
        batches.set_epoch(1)
        return [b.views for b in batches]

    strong, weak = views(1), views(0)
    assert all(torch.equal(a, b) for x, y in zip(strong, views(1)) for a, b in zip(x, y))  # seeded per image
    assert all(torch.equal(x[0], y[0]) for x, y in zip(strong, weak))  # the weak view is the standard one
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(strong, weak))


def test_mlkd_presets_follow_the_authors_schedules():
    """The MLKD authors' configs/cifar100/ours/*.yaml; MLKD-LS: the LS repository's configs/cifar100/mlkd."""
    def optim(pair: str, name: str) -> tuple[int, float, list[int]]:
        values = all_presets()[f"cifar100/{pair}/{name}-vanilla"].config().optim
        return values.epochs, values.lr, list(values.milestones)

    assert optim("resnet32x4-resnet8x4", "mlkd") == (240, 0.025, [150, 180, 210])
    assert optim("vgg13-MobileNetV2", "mlkd") == (480, 0.01, [150, 180, 210])
    assert optim("wrn_40_2-ShuffleV1", "mlkd")[:2] == (480, 0.01)
    assert optim("resnet32x4-ShuffleV2", "mlkd")[:2] == (960, 0.01)
    assert optim("resnet32x4-ShuffleV1", "mlkd-ls")[:2] == (960, 0.01)
    assert optim("resnet32x4-resnet8x4", "mlkd-ls")[:2] == (480, 0.025)
    assert optim("vgg13-vgg8", "mlkd-ls")[:2] == (480, 0.01)
    assert optim("resnet32x4-resnet8x4", "kd")[:2] == (240, 0.05)  # the other methods keep the benchmark's
    assert optim("resnet32x4-ShuffleV2", "dkd-ls")[:2] == (240, 0.01)
