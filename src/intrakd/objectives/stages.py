"""Stage features of a student and its teacher, paired for the methods that compare them stage by stage.

The stages from ``first_stage`` on are paired in order; where one model has more stages than the
other, its last extra ones are left out, with a note on stderr (RepDistiller zips ``feat[1:-1]`` of
both models the same way, so resnet32x4 -> ShuffleV2 pairs layer1-3 with stage1-3). Where a pair's
spatial sizes differ, the larger map is average-pooled to the smaller size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import ConfigError
from intrakd.models import probe
from intrakd.progress import say


def stage_pairs(student: Sequence[Tensor], teacher: Sequence[Tensor], first: int) -> list[tuple[Tensor, Tensor]]:
    """``(student, teacher)`` stage features from index ``first`` on, as many pairs as the shorter list has."""
    return list(zip(student[first:], teacher[first:]))


def probe_stage_pairs(student: nn.Module, teacher: nn.Module, input_shape: Sequence[int], first: int,
                      method: str, needed: int = 1) -> list[tuple[Tensor, Tensor]]:
    """The paired stage features of one zero image of ``input_shape`` (to size auxiliary modules from);
    ``ConfigError`` naming ``distill.<method>.first_stage`` when fewer than ``needed`` pairs remain."""
    s_features = probe(student, input_shape).features
    t_features = probe(teacher, input_shape).features
    pairs = stage_pairs(s_features, t_features, first)
    if len(pairs) < needed:
        raise ConfigError(f"distill.{method}.first_stage={first}, but the student has {len(s_features)} and the "
                         f"teacher {len(t_features)} stage features: {method.upper()} needs {needed} pair(s) of "
                         f"stages from there")
    if len(s_features) != len(t_features):
        more, fewer = ("student", "teacher") if len(s_features) > len(t_features) else ("teacher", "student")
        extra = abs(len(s_features) - len(t_features))
        say(f"note: distill.{method}: the student has {len(s_features)} and the teacher {len(t_features)} stage "
            f"features; stages {first}..{first + len(pairs) - 1} of both are paired and the {more}'s last {extra} "
            f"left out (use models with as many stages as the {fewer} to compare every stage)")
    return pairs


def pool_to_smaller(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both ``[B, C, H, W]`` maps at the smaller height and width of the two (adaptive average pooling
    of whichever is larger; an unchanged map is returned as is)."""
    size = (min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1]))
    if tuple(student.shape[-2:]) != size:
        student = F.adaptive_avg_pool2d(student, size)
    if tuple(teacher.shape[-2:]) != size:
        teacher = F.adaptive_avg_pool2d(teacher, size)
    return student, teacher


def conv_regressor(student_shape: Sequence[int], teacher_shape: Sequence[int], method: str,
                   relu: bool = True) -> nn.Sequential:
    """Convolution (with bias) + BatchNorm (+ ReLU) mapping a ``[C_s, H_s, W_s]`` feature to ``[C_t, H_t, W_t]``,
    sized as RepDistiller's and mdistiller's ``ConvReg``: a 3x3 convolution of stride 2 when the student's
    map is twice the teacher's, a 4x4 transposed convolution of stride 2 (padding 1) when it is half, else,
    when it is at least as large, an unpadded convolution of kernel ``1 + H_s - H_t`` by ``1 + W_s - W_t``
    (1x1 at equal sizes). Beyond ``ConvReg``, which has no connector for them, a teacher map ``f > 2`` times
    the student's (e.g. a ViT student's tokens under a CNN teacher's stage) takes a ``f x f`` transposed
    convolution of stride ``f``. ``ValueError`` naming ``method`` for any other pair of sizes."""
    (c_s, h_s, w_s), (c_t, h_t, w_t) = tuple(student_shape), tuple(teacher_shape)
    if (h_s, w_s) == (2 * h_t, 2 * w_t):
        conv: nn.Module = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
    elif (2 * h_s, 2 * w_s) == (h_t, w_t):
        conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
    elif h_s >= h_t and w_s >= w_t:
        conv = nn.Conv2d(c_s, c_t, (1 + h_s - h_t, 1 + w_s - w_t))
    elif h_t % h_s == 0 and w_t == w_s * (h_t // h_s):
        conv = nn.ConvTranspose2d(c_s, c_t, h_t // h_s, stride=h_t // h_s)
    else:
        raise ConfigError(f"{method} cannot connect a student feature of spatial size {h_s}x{w_s} to a teacher "
                         f"feature of {h_t}x{w_t}: the student's must be at least as large, or the teacher's an "
                         f"integer multiple of it")
    layers = [conv, nn.BatchNorm2d(c_t)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)
