"""OFD and ReviewKD: each loss against a slow float64 computation written from the paper's definition,
the teacher inspection that places OFD's margins, ReviewKD's levels, fusion, warm-up and pair recipe."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from intrakd.config import StudentConfig, load_config
from intrakd.models import ModelOutput, create_model
from intrakd.objectives import TrainSetInfo, distill_recipe
from intrakd.objectives.ofd import OFDObjective, gaussian_margin, ofd_targets, teacher_batchnorms
from intrakd.objectives.reviewkd import ABF, ReviewKDObjective, hcl_loss

SMALL = TrainSetInfo(10, torch.arange(10), (3, 8, 8))


def distill_config(method: str, overrides: list[str] | None = None):
    return load_config(StudentConfig, overrides=[f"distill.method={method}", *(overrides or [])]).distill


def randomise_batchnorms(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Affine parameters and running statistics away from their identity initialisation."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.randn(c, generator=g)
            m.bias.data = torch.randn(c, generator=g)
            m.running_mean = torch.randn(c, generator=g)
            m.running_var = torch.rand(c, generator=g) + 0.5
    return model.eval()


# ----------------------------------------------------------------------------------------------- OFD

def slow_negative_mean(mean: float, std: float) -> float:
    """E[x | x < 0] for x ~ N(mean, std^2), by the midpoint rule over [mean - 12 std, 0]."""
    steps, low = 200_000, mean - 12 * std
    width = -low / steps
    mass = moment = 0.0
    for i in range(steps):
        x = low + (i + 0.5) * width
        density = math.exp(-0.5 * ((x - mean) / std) ** 2)
        mass += density
        moment += x * density
    return moment / mass


def test_margin_is_the_mean_of_the_negative_part_of_the_gaussian():
    bn = torch.nn.BatchNorm2d(4)
    bn.weight.data = torch.tensor([1.0, -2.0, 0.5, 1.0])  # the sign of gamma does not matter
    bn.bias.data = torch.tensor([0.0, 1.0, -0.3, 4.0])  # channel 3: P(x < 0) ~ 3e-5 -> -3 |gamma|
    margins = gaussian_margin(bn)
    for c, (gamma, beta) in enumerate([(1.0, 0.0), (2.0, 1.0), (0.5, -0.3)]):
        assert margins[c].item() == pytest.approx(slow_negative_mean(beta, gamma), rel=1e-6)
    assert margins[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-9)  # half-normal mean
    assert margins[3].item() == -3.0


def test_teacher_batchnorms_feed_or_read_each_stage():
    resnet = create_model("resnet8", num_classes=10)
    names = {m: n for n, m in resnet.named_modules()}
    assert [(names[bn], read) for bn, read in teacher_batchnorms(resnet, (3, 8, 8))] == [
        ("bn1", False), ("layer1.0.bn2", False), ("layer2.0.bn2", False), ("layer3.0.bn2", False)]
    wrn = create_model("wrn_16_1", num_classes=10)  # pre-activation: the next BN reads a stage (the
    # final bn1 reads block3: mdistiller's preact_feats[3])
    names = {m: n for n, m in wrn.named_modules()}
    assert [(names[bn], read) for bn, read in teacher_batchnorms(wrn, (3, 8, 8))] == [
        ("block1.layer.0.bn1", True), ("block2.layer.0.bn1", True), ("block3.layer.0.bn1", True),
        ("bn1", True)]
    shufflenet = create_model("ShuffleV2", num_classes=10)  # half-width BNs, concatenated: none fits
    assert teacher_batchnorms(shufflenet, (3, 16, 16))[1:4] == [None, None, None]
    with pytest.raises(ValueError, match=r"the teacher's stage feature 1 \(116x8x8\) has none"):
        OFDObjective(distill_config("ofd"), create_model("resnet8", num_classes=10), shufflenet,
                     TrainSetInfo(10, torch.arange(10), (3, 16, 16)))


def slow_ofd_position(mapped: torch.Tensor, feature: torch.Tensor, margin: torch.Tensor,
                      bn: torch.nn.BatchNorm2d | None) -> float:
    """The paper's partial L2 to ``max(P, m)`` with P the pre-ReLU response (the reading BN, on the
    batch's statistics as mdistiller's teacher in training mode, applied to the feature, or the feature
    with its exact zeros standing for clipped responses, filled with m);
    the teacher map average-pooled to the student's size by block means."""
    b_count, channels, height, width = mapped.shape
    factor = feature.shape[2] // height
    mean = [feature[:, c].mean().item() for c in range(feature.shape[1])]
    var = [((feature[:, c] - mean[c]) ** 2).mean().item() for c in range(feature.shape[1])]
    total = 0.0
    for b in range(b_count):
        for c in range(channels):
            m = float(margin[c])
            for h in range(height):
                for w in range(width):
                    values = []
                    for i in range(h * factor, (h + 1) * factor):
                        for j in range(w * factor, (w + 1) * factor):
                            f = float(feature[b, c, i, j])
                            if bn is not None:  # on the batch's statistics (biased variance)
                                f = ((f - mean[c]) / math.sqrt(var[c] + bn.eps)
                                     * float(bn.weight[c].detach()) + float(bn.bias[c].detach()))
                            values.append(m if f == 0 else f)
                    t = max(sum(values) / len(values), m)
                    s = float(mapped[b, c, h, w])
                    if not (s <= t <= 0):
                        total += (s - t) ** 2
    return total / b_count


@pytest.mark.parametrize("teacher_name", ["resnet8", "wrn_16_1"])
def test_ofd_matches_the_partial_l2_definition(teacher_name):
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10)
    teacher = randomise_batchnorms(create_model(teacher_name, num_classes=10), 1)
    objective = OFDObjective(distill_config("ofd", ["distill.ofd.weight=0.01"]), student, teacher, SMALL)
    g = torch.Generator().manual_seed(2)
    # stage features [stem, stage1, stage2, stage3] at 8, 8, 4, 2 pixels; the teacher's post-ReLU ones
    # hold exact zeros; a 4x4 student stage against the teacher's 8x8 one checks the pooling
    s_feats = (torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 16, 4, 4, generator=g),
               torch.randn(2, 32, 4, 4, generator=g), torch.randn(2, 64, 2, 2, generator=g))
    t_widths = [f.shape[1] for f in teacher(torch.zeros(1, 3, 8, 8)).features]
    t_feats = tuple(torch.randn(2, w, s, s, generator=g).clamp_min(0.0) for w, s in zip(t_widths, (8, 8, 4, 2)))
    losses, _ = objective.method_losses(ModelOutput(torch.zeros(2, 10), torch.zeros(2, 64), s_feats),
                                        ModelOutput(torch.zeros(2, 10), torch.zeros(2, 64), t_feats), None)
    expected = 0.0
    for i in range(3):
        mapped = objective.connectors[i](s_feats[i + 1]).detach().double()
        expected += slow_ofd_position(mapped, t_feats[i + 1].double(), getattr(objective, f"margin{i}").double(),
                                      objective.readers[i]) / 2 ** (2 - i)
    assert losses["ofd"].item() == pytest.approx(0.01 * expected, rel=1e-5)
    # the pre-activation source: read (Wide ResNet stages 1-3) or the stage output (the others)
    assert [bn is not None for bn in objective.readers] == ([True, True, True] if teacher_name == "wrn_16_1"
                                                             else [False, False, False])


@pytest.mark.parametrize("teacher_name", ["resnet8", "wrn_16_1"])
def test_ofd_runs_the_teacher_on_batch_statistics_and_leaves_it_unchanged(teacher_name):
    """mdistiller's OFD keeps its teacher in training mode; its running statistics stay as loaded."""
    torch.manual_seed(0)
    teacher = randomise_batchnorms(create_model(teacher_name, num_classes=10), 4).requires_grad_(False)
    objective = OFDObjective(distill_config("ofd"), create_model("resnet8", num_classes=10), teacher, SMALL)
    images = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _, out = objective.outputs(create_model("resnet8", num_classes=10), teacher, images)
    reference = copy.deepcopy(teacher).train()(images)  # the teacher in training mode
    for mine, theirs in zip(out.features, reference.features, strict=True):
        torch.testing.assert_close(mine, theirs)
    assert not teacher.training and not any(m.training for m in teacher.modules())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    if teacher_name == "wrn_16_1":  # a reading BN on the batch's statistics too, as in the teacher's forward
        bn = objective.readers[0]
        torch.testing.assert_close(objective.pre_activation(0, out.features[1]),
                                   torch.nn.functional.batch_norm(out.features[1], None, None, bn.weight, bn.bias,
                                                                  training=True, eps=bn.eps))


def test_ofd_keeps_the_teacher_batchnorms_out_of_its_state():
    teacher = randomise_batchnorms(create_model("wrn_16_1", num_classes=10), 3)
    objective = OFDObjective(distill_config("ofd"), create_model("resnet8", num_classes=10), teacher, SMALL)
    assert {n.split(".")[0] for n in objective.state_dict()} == {"connectors"}
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_params for p in objective.parameters())
    # the margins are the reading BN's, for the teacher's stage 1
    torch.testing.assert_close(objective.margin0, gaussian_margin(teacher.block2.layer[0].bn1).float())


def test_ofd_targets_fill_zeros_then_pool():
    feature = torch.tensor([[[[0.0, 2.0], [4.0, 0.0]]]])
    filled = ofd_targets(feature, torch.tensor([-1.0]), (1, 1))
    assert filled.item() == pytest.approx((-1 + 2 + 4 - 1) / 4)


# ------------------------------------------------------------------------------------------ ReviewKD

def slow_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    flat_a, flat_b = a.flatten().tolist(), b.flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(flat_a, flat_b)) / len(flat_a)


def slow_pool(f: torch.Tensor, size: int) -> torch.Tensor:
    n, c, h, _ = f.shape
    out = torch.zeros(n, c, size, size, dtype=torch.float64)
    k = h // size
    for b in range(n):
        for ch in range(c):
            for i in range(size):
                for j in range(size):
                    block = [float(f[b, ch, i * k + u, j * k + v]) for u in range(k) for v in range(k)]
                    out[b, ch, i, j] = sum(block) / k**2
    return out


def test_hcl_matches_definition():
    g = torch.Generator().manual_seed(4)
    sizes = (8, 4, 1)  # pooled levels used: 4, 2, 1 / 2, 1 / none
    fs = [torch.randn(2, 3, s, s, generator=g) for s in sizes]
    ft = [torch.randn(2, 3, s, s, generator=g) for s in sizes]
    expected = 0.0
    for a, b in zip(fs, ft):
        a, b = a.double(), b.double()
        terms, weights = [slow_mse(a, b)], [1.0]
        for level in (4, 2, 1):
            if level < a.shape[-1]:
                weights.append(weights[-1] / 2)
                terms.append(weights[-1] * slow_mse(slow_pool(a, level), slow_pool(b, level)))
        expected += sum(terms) / sum(weights)
    assert hcl_loss(fs, ft).item() == pytest.approx(expected, rel=1e-5)


def test_abf_fuses_with_attention_then_resizes_to_the_teacher():
    torch.manual_seed(5)
    abf = randomise_batchnorms(ABF(3, 4, 5, fuse=True), 6).double()
    g = torch.Generator().manual_seed(7)
    x, deeper = torch.randn(2, 3, 2, 2, generator=g).double(), torch.randn(2, 4, 1, 1, generator=g).double()
    output, fused = abf(x, deeper, (4, 4))
    reduced = abf.reduce(x).detach()
    weight, bias = abf.attention.weight.detach(), abf.attention.bias.detach()
    expected = torch.zeros(2, 4, 4, 4, dtype=torch.float64)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                # the deeper map, 1x1, upsampled by nearest: the same vector at every position
                both = [float(reduced[b, c, i, j]) for c in range(4)] + [float(deeper[b, c, 0, 0]) for c in range(4)]
                logits = [sum(float(weight[k, c, 0, 0]) * both[c] for c in range(8)) + float(bias[k])
                          for k in range(2)]
                a0, a1 = (1 / (1 + math.exp(-v)) for v in logits)
                for c in range(4):
                    value = both[c] * a0 + both[4 + c] * a1
                    for u in range(2):  # nearest upsampling 2x2 -> 4x4
                        for v in range(2):
                            expected[b, c, 2 * i + u, 2 * j + v] = value
    torch.testing.assert_close(fused.detach(), expected)
    torch.testing.assert_close(output.detach(), abf.output(expected).detach())


def test_reviewkd_reviews_from_the_deepest_level_with_warmup():
    torch.manual_seed(8)
    student, teacher = create_model("resnet8", num_classes=10), create_model("wrn_16_1", num_classes=10)
    objective = ReviewKDObjective(distill_config("reviewkd", ["distill.reviewkd.weight=2",
                                                              "distill.reviewkd.warmup_epochs=4"]),
                                  student, teacher, SMALL)
    assert [(abf.reduce[0].in_channels, abf.reduce[0].out_channels, abf.output[0].out_channels,
             abf.attention is not None) for abf in objective.abfs] == [
        (16, 64, 16, True), (32, 64, 32, True), (64, 64, 64, True), (64, 64, 64, False)]
    g = torch.Generator().manual_seed(9)
    s_out = ModelOutput(torch.zeros(2, 10), torch.randn(2, 64, generator=g),
                        tuple(torch.randn(2, c, s, s, generator=g) for c, s in ((16, 8), (16, 8), (32, 4), (64, 2))))
    t_out = ModelOutput(torch.zeros(2, 10), torch.randn(2, 64, generator=g),
                        tuple(torch.randn(2, c, s, s, generator=g) for c, s in ((16, 8), (16, 8), (32, 4), (64, 2))))
    levels_s = [*s_out.features[1:], s_out.embedding[:, :, None, None]]
    levels_t = [*t_out.features[1:], t_out.embedding[:, :, None, None]]
    outputs, fused = [None] * 4, None
    for i in (3, 2, 1, 0):
        outputs[i], fused = objective.abfs[i](levels_s[i], fused, tuple(levels_t[i].shape[-2:]))
    hcl = hcl_loss(outputs, levels_t)
    for epoch, factor in [(0, 0.25), (2, 0.75), (3, 1.0), (30, 1.0)]:
        objective.set_epoch(epoch)
        losses, stats = objective.method_losses(s_out, t_out, None)
        torch.testing.assert_close(losses["reviewkd"], 2 * factor * hcl)
        assert stats["reviewkd_warmup"].item() == pytest.approx(factor)


@pytest.mark.parametrize(("teacher_name", "student_name", "in_channels", "out_channels", "mid"), [
    # the authors' in_channels and out_channels (ReviewKD's CIFAR-100 model/reviewkd.py, build_review_kd)
    ("resnet32x4", "resnet8x4", [64, 128, 256, 256], [64, 128, 256, 256], 256),
    ("resnet32x4", "ShuffleV2", [116, 232, 464, 1024], [64, 128, 256, 256], 512),
    ("vgg13", "MobileNetV2", [12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], 512),
])
def test_reviewkd_levels_of_the_benchmark_pairs(teacher_name, student_name, in_channels, out_channels, mid):
    teacher = create_model(teacher_name, num_classes=100)
    objective = ReviewKDObjective(distill_config("reviewkd"), create_model(student_name, num_classes=100),
                                  teacher, TrainSetInfo(100, torch.arange(100), (3, 32, 32)))
    assert [abf.reduce[0].in_channels for abf in objective.abfs] == in_channels
    assert {abf.reduce[0].out_channels for abf in objective.abfs} == {mid}
    assert [abf.output[0].out_channels for abf in objective.abfs] == out_channels


def test_reviewkd_pair_recipe():
    assert distill_recipe("reviewkd", "resnet32x4", "resnet8x4")["reviewkd"] == {"weight": 5.0, "warmup_epochs": 20}
    assert distill_recipe("reviewkd", "resnet32x4", "ShuffleV2")["reviewkd"]["weight"] == 8.0
    assert distill_recipe("reviewkd", "resnet56", "resnet20")["reviewkd"]["weight"] == 0.6
    assert distill_recipe("ofd", "resnet32x4", "ShuffleV2")["ofd"] == {"weight": 0.001}

