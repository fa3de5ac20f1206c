"""Image-by-image comparison of two models, and the split of several models' accuracy spread."""

import math

import pytest
import torch

from intrakd.analysis.agreement import (
    accuracy_spread,
    fixed_test_set_se,
    prediction_agreement,
    soft_label_kl,
    teacher_student_split,
)


def _logits(predicted: list[int], classes: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).double() * 5.0


def test_prediction_agreement_counts_known_answer():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    first = _logits([0, 1, 2, 0, 0, 0, 1, 1])    # right on images 0-3 and 7
    second = _logits([0, 1, 0, 1, 1, 2, 1, 1])   # right on 0, 1, 4, 5, 7
    got = prediction_agreement(first, second, labels, temperature=4.0)
    assert got["images"] == 8
    assert got["acc_first"] == pytest.approx(62.5) and got["acc_second"] == pytest.approx(62.5)
    assert got["acc_difference"] == pytest.approx(0.0)
    assert got["both_correct"] == pytest.approx(3 / 8) and got["both_wrong"] == pytest.approx(1 / 8)
    assert got["only_first_correct"] == pytest.approx(2 / 8) and got["only_second_correct"] == pytest.approx(2 / 8)
    assert got["top1_disagreement"] == pytest.approx(4 / 8)          # images 2, 3, 4, 5
    # per-image differences: 0, 0, -1, -1, +1, +1, 0, 0: sample SD sqrt(4/7), over sqrt(8)
    assert got["difference_se"] == pytest.approx(100 * math.sqrt(4 / 7) / math.sqrt(8))
    assert got["kl_first_to_second"] > 0
    assert prediction_agreement(first, first, labels, 4.0)["kl_first_to_second"] == pytest.approx(0.0, abs=1e-12)


def test_soft_label_kl_matches_its_definition():
    torch.manual_seed(0)
    p, q = torch.randn(6, 5), torch.randn(6, 5)
    sp, sq = torch.softmax(p.double() / 2, 1), torch.softmax(q.double() / 2, 1)
    want = (sp * (sp.log() - sq.log())).sum(1)
    assert torch.allclose(soft_label_kl(p, q, 2.0), want)
    with pytest.raises(ValueError, match="temperature"):
        soft_label_kl(p, q, 0.0)


def test_prediction_agreement_refuses_different_images():
    with pytest.raises(ValueError, match="same split"):
        prediction_agreement(_logits([0, 1]), _logits([0, 1, 2]), torch.tensor([0, 1]), 4.0)


def test_accuracy_spread_known_answers():
    # two models, four images; model 0 right on 0, 1; model 1 right on 0, 2: accuracies 0.5 and 0.5
    correct = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]])
    got = accuracy_spread(correct)
    assert got["between_variance"] == pytest.approx(0.0)
    # p = 1, .5, .5, 0: sum p(1-p) = 0.5, x 2/1, / 16
    assert got["image_variance"] == pytest.approx(1e4 * 0.5 * 2 / 16)
    assert got["model_variance"] == pytest.approx(-got["image_variance"])
    assert got["binomial_se"] == pytest.approx(100 * math.sqrt(0.25 / 4))
    # models right on the same images: no spread at all
    same = accuracy_spread(torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0]]))
    assert same["between_variance"] == 0.0 and same["image_variance"] == 0.0
    # one model right on every image the other gets right, and on two more: p = 1, 1, .5, .5;
    # image part 2 x .25 x 2 / 16, between var(1, .5) = .125, the rest the models'
    nested = accuracy_spread(torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    assert nested["image_variance"] == pytest.approx(625.0) and nested["between_variance"] == pytest.approx(1250.0)
    assert nested["model_variance"] == pytest.approx(625.0)
    with pytest.raises(ValueError, match="at least 2"):
        accuracy_spread(correct[:1])


def test_image_variance_estimates_the_spread_of_independent_flips():
    # models that flip each image independently with its own probability: the between-model variance
    # is the image part alone, on average
    torch.manual_seed(1)
    p = torch.rand(400)
    runs = [accuracy_spread((torch.rand(4, 400) < p).double()) for _ in range(300)]
    between = sum(r["between_variance"] for r in runs) / len(runs)
    image = sum(r["image_variance"] for r in runs) / len(runs)
    assert between == pytest.approx(image, rel=0.1)


def test_teacher_student_split_known_answers():
    # two teachers, students 60, 62 and 64, 66: within = ((1+1) + (1+1)) / 2 = 2; teacher means 61, 65,
    # MS_between = 2 x ((61-63)^2 + (65-63)^2) / 1 = 16, n0 = 2: teacher part (16 - 2) / 2 = 7
    got = teacher_student_split([[60, 62], [64, 66]])
    assert got == {"teachers": 2, "students": 4, "student_variance": 2.0, "teacher_variance": 7.0,
                   "one_student_variance": 9.0}
    # unbalanced: means 62 and 70, grand mean 65.2, within (4 + 0 + 4 + 0) / 3, MS_between
    # 3 x 3.2^2 + 2 x 4.8^2 = 76.8, n0 = (5 - (9 + 4) / 5) / 1 = 2.4
    uneven = teacher_student_split([[60, 62, 64], [70, 70]])
    assert uneven["student_variance"] == pytest.approx(8 / 3)
    assert uneven["teacher_variance"] == pytest.approx((76.8 - 8 / 3) / 2.4)
    with pytest.raises(ValueError, match="at least 2 teacher runs"):
        teacher_student_split([[60], [61]])


def test_teacher_student_split_recovers_simulated_components():
    # 300 teachers of 4 students: teacher effects of SD 1, student noise of SD 2
    gen = torch.Generator().manual_seed(2)
    teacher = torch.randn(300, 1, generator=gen)
    acc = 60 + teacher + 2 * torch.randn(300, 4, generator=gen)
    got = teacher_student_split(acc.tolist())
    assert got["student_variance"] == pytest.approx(4.0, rel=0.1)
    assert got["teacher_variance"] == pytest.approx(1.0, abs=0.35)


def test_fixed_test_set_se_separates_the_images_from_the_pairs_flipping():
    first = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]])
    second = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    got = fixed_test_set_se(first, second)
    # per-image differences (0, 0, 1, 0) and (0, 1, 0, 0), means 0, .5, .5, 0: variance 1/12;
    # per image the variance over the pairs: 0, .5, .5, 0 (mean .25), over 2 pairs: .125
    assert got["pairs"] == 2
    assert got["raw_se"] == pytest.approx(100 * math.sqrt(1 / 12 / 4))
    assert got["flip_se"] == pytest.approx(100 * math.sqrt(0.125 / 4))
    assert got["se"] == 0.0                      # the flipping explains all of it
    # the second kind right on images 2 and 3 in every pair: a difference the images carry
    lifted = fixed_test_set_se(torch.tensor([[1, 1, 0, 0]] * 3), torch.tensor([[1, 1, 1, 1]] * 3))
    assert lifted["flip_se"] == 0.0 and lifted["se"] == pytest.approx(100 * math.sqrt(1 / 3 / 4))
    # many pairs of two kinds that differ on no image, each pair flipping at random: se near 0
    gen = torch.Generator().manual_seed(3)
    p = torch.rand(2000, generator=gen)
    noisy = fixed_test_set_se(*(torch.rand(40, 2000, generator=gen) < p).double().chunk(2))
    assert noisy["se"] < 0.3 * noisy["raw_se"]
    with pytest.raises(ValueError, match="one shape"):
        fixed_test_set_se(first, second[:1])
