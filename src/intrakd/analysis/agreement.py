"""Image by image: how two models' predictions on the same images differ, and how much of the spread of
several models' accuracies is per-image flipping (which a larger test set averages out) rather than
models that are better or worse overall."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from intrakd.config import ConfigError


def soft_label_kl(logits_p: Tensor, logits_q: Tensor, temperature: float) -> Tensor:
    """Per-image ``KL(softmax(p/T) || softmax(q/T))`` in nats (float64, shape ``[N]``)."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(logits_p.double() / temperature, dim=1)
    log_q = F.log_softmax(logits_q.double() / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def prediction_agreement(first: Tensor, second: Tensor, labels: Tensor, temperature: float) -> dict[str, float]:
    """Two models' logits on the same images (``[N, C]`` each, ``labels`` ``[N]``), compared per image.

    Accuracies and their difference (``second - first``) in percent; ``top1_disagreement``: the share
    of images whose predicted classes differ; ``both_correct``, ``only_first_correct``,
    ``only_second_correct``, ``both_wrong``: shares of images; ``difference_se``: the standard error of
    the accuracy difference from these images alone (the SD of the per-image difference of
    correctness over sqrt(N)): the test set's sampling error of a paired comparison on it;
    ``kl_first_to_second``: mean per-image ``KL(first || second)`` of the soft labels at
    ``temperature``.
    """
    if first.shape != second.shape or first.shape[0] != labels.shape[0]:
        raise ConfigError(f"predictions of different images: logits {tuple(first.shape)} and {tuple(second.shape)}, "
                         f"labels {tuple(labels.shape)}; compare two models on the same split")
    n = labels.shape[0]
    right_1, right_2 = correctness(first, labels), correctness(second, labels)
    diff = right_2 - right_1
    return {
        "images": int(n),
        "acc_first": 100.0 * right_1.mean().item(),
        "acc_second": 100.0 * right_2.mean().item(),
        "acc_difference": 100.0 * diff.mean().item(),
        "difference_se": 100.0 * (diff.std().item() / math.sqrt(n) if n > 1 else float("nan")),
        "top1_disagreement": (first.argmax(1) != second.argmax(1)).double().mean().item(),
        "both_correct": (right_1 * right_2).mean().item(),
        "only_first_correct": (right_1 * (1 - right_2)).mean().item(),
        "only_second_correct": ((1 - right_1) * right_2).mean().item(),
        "both_wrong": ((1 - right_1) * (1 - right_2)).mean().item(),
        "kl_first_to_second": soft_label_kl(first, second, temperature).mean().item(),
    }


def accuracy_spread(correct: Tensor) -> dict[str, float]:
    """Split the spread of several models' accuracies on one test set (``correct``: ``[models, images]``
    of 0/1, models of one arm that differ only in their seed) into two parts, in points^2.

    * ``between_variance``: the sample variance of the models' accuracies;
    * ``image_variance``: the part that per-image flipping alone would give: with ``p_i`` the share of
      the models right on image ``i``, ``sum_i p_i (1 - p_i) / N^2`` (each term corrected by
      ``M / (M - 1)`` to be unbiased); it shrinks as 1/N with a larger test set;
    * ``model_variance``: the rest (``between - image``, may come out negative by chance): models truly
      better or worse overall, which no test set averages out, only more models.

    ``binomial_se``: ``sqrt(a (1 - a) / N)`` at the mean accuracy ``a``, the test set's sampling error
    of one accuracy as an estimate of the accuracy on the population (points).
    """
    correct = correct.double()
    models, n = correct.shape
    if models < 2:
        raise ConfigError(f"accuracy_spread needs at least 2 models, got {models}")
    acc = correct.mean(1)
    p = correct.mean(0)
    image = (p * (1 - p)).sum().item() * models / (models - 1) / n**2
    between = acc.var().item()
    mean = acc.mean().item()
    return {
        "models": int(models),
        "images": int(n),
        "mean_acc": 100.0 * mean,
        "between_variance": 1e4 * between,
        "image_variance": 1e4 * image,
        "model_variance": 1e4 * (between - image),
        "binomial_se": 100.0 * math.sqrt(mean * (1 - mean) / n),
    }


def correctness(logits: Tensor, labels: Tensor) -> Tensor:
    """0/1 per image: is the top class the label (float64, ``[N]``)."""
    return (logits.argmax(1) == labels).double()




def teacher_student_split(accuracies: list[list[float]]) -> dict[str, float]:
    """Split the spread of students' accuracies (``accuracies[t]``: the students of teacher run ``t``,
    points; at least two teacher runs, one of them with two students or more) into the part their
    teachers bring and the part of the students' own seeds (one-way random-effects ANOVA), in points^2.

    * ``student_variance``: the pooled variance of students of one teacher (their own seeds);
    * ``teacher_variance``: the variance of the teachers' true mean student, ``(MS_between -
      student_variance) / n0`` with ``n0`` the effective students per teacher (may come out negative
      by chance);
    * ``one_student_variance``: their sum, the variance of one student of a fresh teacher.
    """
    groups = [list(map(float, g)) for g in accuracies if len(g)]
    sizes = [len(g) for g in groups]
    total = sum(sizes)
    within_df = total - len(groups)
    if len(groups) < 2 or within_df < 1:
        raise ConfigError(f"teacher_student_split needs at least 2 teacher runs and one with 2 students or more, "
                          f"got students per teacher {sizes}")
    means = [sum(g) / len(g) for g in groups]
    grand = sum(sum(g) for g in groups) / total
    within = sum((a - m) ** 2 for g, m in zip(groups, means) for a in g) / within_df
    between = sum(n * (m - grand) ** 2 for n, m in zip(sizes, means)) / (len(groups) - 1)
    n0 = (total - sum(n * n for n in sizes) / total) / (len(groups) - 1)
    teacher = (between - within) / n0
    return {"teachers": len(groups), "students": total, "student_variance": within, "teacher_variance": teacher,
            "one_student_variance": within + teacher}


def fixed_test_set_se(first: Tensor, second: Tensor) -> dict[str, float]:
    """How much of a mean accuracy difference over pairs of models belongs to the test set itself
    (``first``, ``second``: ``[pairs, images]`` of 0/1, at least 2 pairs, pair ``k`` compared on the
    same images), in points: what more seeds would not shrink, only a larger test set.

    With ``d[k, i]`` the per-image difference of pair ``k`` and ``m[i]`` its mean over the pairs:
    ``raw_se`` is ``SD_i(m) / sqrt(N)``; ``flip_se`` the part of it that the pairs' own per-image
    flipping gives (``sqrt(mean_i var_k(d) / pairs / N)``), which shrinks with more pairs; ``se`` the
    rest, ``sqrt(max(raw^2 - flip^2, 0))``: the SE from the images' true differences between the two
    kinds of model, the test set's sampling error of the difference on the population of images.
    """
    if first.shape != second.shape or first.dim() != 2 or first.shape[0] < 2:
        raise ConfigError(f"fixed_test_set_se needs two [pairs, images] tensors of one shape with at least 2 "
                          f"pairs, got {tuple(first.shape)} and {tuple(second.shape)}")
    diff = second.double() - first.double()
    pairs, n = diff.shape
    raw = diff.mean(0).var().item() / n
    flip = diff.var(0).mean().item() / pairs / n
    return {"pairs": int(pairs), "raw_se": 100.0 * math.sqrt(raw), "flip_se": 100.0 * math.sqrt(flip),
            "se": 100.0 * math.sqrt(max(raw - flip, 0.0))}
