"""Self-supervised knowledge distillation using singular value decomposition (Lee, Kim & Song, ECCV 2018).

Each paired stage (see :mod:`intrakd.objectives.stages`) is read per sample as a matrix whose right
singular vectors are kept: the teacher's first ``k``, the student's first ``k + 3``. Each teacher
vector is given the sign that makes its largest-magnitude entry positive; the student vector with the
largest absolute cosine to it, signed to agree with it, is its match. Both are scaled by the teacher's
first ``k`` singular values, L2-normalised. Between consecutive stages ``l - 1`` and ``l`` the "correlation"
is the RBF of every pair of entries, ``exp(-(v^l_i - v^(l-1)_j)^2 / 8)`` for each of the ``k`` vectors;
the loss is the summed squared difference of the student's and teacher's correlations, divided by the
batch size, summed over the consecutive pairs of stages.

The matrix is mdistiller's by default (``vectors_over=width``: ``[C*H, W]``, vectors over the image
width, so any channel counts pair, the larger map pooled to the smaller) or the paper's and
RepDistiller's (``vectors_over=channels``: ``[H*W, C]``, vectors over the channels, which must then be
equal in both models, as CRD's benchmark has them for this method). The sign rule makes the loss the
same whatever sign an SVD routine (CPU, GPU) returns; the references keep the routine's sign.

The SVD's gradient is undefined where singular values coincide (an all-zero or constant feature map of
a sample); such a sample's gradient through the SVD is set to zero, so the step stays finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import Difference, ReferenceDifferences, register_distiller
from intrakd.objectives.stages import pool_to_smaller, probe_stage_pairs, stage_pairs

STUDENT_EXTRA_VECTORS = 3
"""The student keeps ``k + 3`` singular vectors to pick the ``k`` matches from (the reference's choice)."""


def stage_matrix(feature: Tensor, vectors_over: str) -> Tensor:
    """The ``[B, C*H, W]`` (``width``) or ``[B, H*W, C]`` (``channels``) matrices of a ``[B, C, H, W]`` map."""
    b, c, h, w = feature.shape
    if vectors_over == "width":
        return feature.reshape(b, c * h, w)
    return feature.reshape(b, c, h * w).transpose(1, 2)


def _zero_nonfinite_samples(grad: Tensor) -> Tensor:
    finite = torch.isfinite(grad).flatten(1).all(dim=1)
    return torch.where(finite[:, None, None], grad, torch.zeros_like(grad))


def right_singular_vectors(matrix: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """``(V, sigma)``: the first ``count`` right singular vectors ``[B, N, count]`` of ``[B, M, N]``
    matrices and their singular values ``[B, count]``, L2-normalised. A sample whose SVD gradient is not
    finite (coinciding singular values) gets a zero gradient."""
    if matrix.requires_grad:
        matrix.register_hook(_zero_nonfinite_samples)
    _, sigma, vh = torch.linalg.svd(matrix, full_matrices=False)
    return vh.transpose(1, 2)[:, :, :count], F.normalize(sigma[:, :count], dim=1)


def canonical_sign(vectors: Tensor) -> Tensor:
    """``[B, N, k]`` columns flipped so that each one's largest-magnitude entry is positive."""
    largest = vectors.gather(1, vectors.abs().argmax(dim=1, keepdim=True))
    return vectors * torch.where(largest < 0, -1.0, 1.0)


def align(student: Tensor, teacher: Tensor) -> Tensor:
    """``[B, N, k]``: for each teacher column, the ``student`` column of largest absolute cosine with it,
    multiplied by that cosine's sign."""
    cosine = (student.transpose(1, 2) @ teacher).detach()  # [B, k_s, k]
    best = cosine.abs().argmax(dim=1, keepdim=True)  # [B, 1, k]
    sign = torch.sign(cosine.gather(1, best))
    return student.gather(2, best.expand(-1, student.shape[1], -1)) * sign


def _rbf(current: Tensor, previous: Tensor) -> Tensor:
    """``[B, N_l, N_(l-1), k]`` RBF of every pair of entries of two stages' vectors."""
    return torch.exp(-(current[:, :, None, :] - previous[:, None, :, :]).pow(2) / 8)


def kdsvd_loss(pairs: list[tuple[Tensor, Tensor]], k: int, vectors_over: str) -> Tensor:
    """KDSVD loss of the ``(student, teacher)`` stage features in order (at least two pairs), in float32."""
    device_type = pairs[0][0].device.type
    with torch.autocast(device_type=device_type, enabled=False):
        losses, previous = [], None
        for f_s, f_t in pairs:
            f_s, f_t = f_s.float(), f_t.float()
            if vectors_over == "width":
                f_s, f_t = pool_to_smaller(f_s, f_t)
            with torch.no_grad():
                v_t, sigma_t = right_singular_vectors(stage_matrix(f_t, vectors_over), k)
                v_t = canonical_sign(v_t)
            v_s, _ = right_singular_vectors(stage_matrix(f_s, vectors_over), k + STUDENT_EXTRA_VECTORS)
            scale = sigma_t[:, None, :]
            v_s, v_t = align(v_s, v_t) * scale, v_t * scale
            if previous is not None:
                s_rbf, t_rbf = _rbf(v_s, previous[0]), _rbf(v_t, previous[1])
                losses.append((s_rbf - t_rbf).pow(2).sum() / f_s.shape[0])
            previous = v_s, v_t
        return torch.stack(losses).sum()


@dataclass
class KDSVDSettings:
    """Self-supervised KD using SVD (Lee et al., ECCV 2018); CIFAR-100 defaults of mdistiller
    (mdistiller/distillers/KDSVD.py; mdistiller/engine/cfg.py: KDSVD.K 1, LOSS.FEAT_WEIGHT 1, layers
    feats[1:]) and RepDistiller (distiller_zoo/KDSVD.py: k 1, layers feat[1:-1])."""

    weight: float = setting(1.0, "weight of the SVD-correlation term", ">= 0")
    k: int = setting(1, "singular vectors kept from the teacher (the student keeps k + 3)", ">= 1")
    vectors_over: Literal["width", "channels"] = setting(
        "width", "matrix read per sample: [C*H, W] (mdistiller; any channel counts) or [H*W, C] (the paper, "
                 "RepDistiller; equal channel counts)")
    first_stage: int = setting(1, "first stage feature used (the reference skips the stem at index 0)", ">= 0")


REFERENCE = ReferenceDifferences(
    "mdistiller: mdistiller/distillers/KDSVD.py; RepDistiller: distiller_zoo/KDSVD.py",
    (
        Difference(
            "singular vectors get a fixed sign",
            "the references keep whatever sign the SVD routine returns, which differs between CPU and GPU",
            "the same loss on every device; equal to the reference up to that sign"),
    ))
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("kdsvd", REFERENCE)
class KDSVDObjective(Distiller):
    """Self-supervised KD using SVD (Lee et al., ECCV 2018): relations of consecutive stages' singular vectors."""

    kind = "features"
    teacher_in_graph = False
    settings_class = KDSVDSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        s = self.settings
        pairs = probe_stage_pairs(student, teacher, data.input_shape, s.first_stage, "kdsvd", needed=2)
        for index, (f_s, f_t) in enumerate(pairs, start=s.first_stage):
            if s.vectors_over == "channels" and f_s.shape[1] != f_t.shape[1]:
                raise ConfigError(f"distill.kdsvd.vectors_over=channels compares singular vectors over the "
                                 f"channels, but stage {index} has {f_s.shape[1]} student and {f_t.shape[1]} "
                                 f"teacher channels (vectors_over=width pairs any channel counts)")
            if s.vectors_over == "width":
                f_t = pool_to_smaller(f_s, f_t)[1]
            rank = min(stage_matrix(f_t, s.vectors_over).shape[1:])
            if s.k > rank:
                raise ConfigError(f"distill.kdsvd.k={s.k}, but the teacher's stage {index} has only {rank} "
                                 f"singular vectors")

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        s = self.settings
        pairs = stage_pairs(student.features, teacher.features, s.first_stage)
        return {"kdsvd": s.weight * kdsvd_loss(pairs, s.k, s.vectors_over)}, {}
