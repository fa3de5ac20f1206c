"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

Both models' embeddings are projected by learned linear heads to ``feat_dim`` and L2-normalised.
A memory per model holds one such vector per training sample. Each anchor (student or teacher) is
scored against the OTHER model's memory at its own sample (the positive) and at ``K`` sampled
negatives: ``P = exp(v . m / tau) / Z``, with ``Z = N * mean(exp(v . m / tau))`` estimated once, on
the first batch, and kept. The loss is the NCE loss of the paper (eq. 18) with a uniform noise
distribution ``Pn = 1/N``; the student-anchor and teacher-anchor losses are summed. After the loss,
each memory row of the batch becomes ``normalise(momentum * old + (1 - momentum) * current)``.

Negatives are drawn on the device with fixed shapes. By default they are the reference CIFAR-100
recipe's (RepDistiller ``dataset/cifar100.py``, mode ``exact``): for each anchor, ``K`` distinct samples
of the other classes, drawn uniformly without replacement (16,384 of 49,500 on CIFAR-100), and with
replacement only where the other classes hold fewer than ``K`` samples, as that code does.
``crd.negatives=uniform`` draws uniformly among all samples with replacement, as the memory's own
sampler in the reference code (``crd/memory.py``, its alias-method multinomial) does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput, probe
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import ReferenceDifferences, register_distiller
from intrakd.objectives.repdistiller_figures import REPDISTILLER_CIFAR100_TOP1


def nce_loss(log_scores: Tensor, num_data: int) -> Tensor:
    """CRD's NCE loss for ``[B, 1 + K]`` log normalised scores ``log P``, the positive first:
    ``-mean_b [ log(P_0 / (P_0 + K/N)) + sum_k log((K/N) / (P_k + K/N)) ]``, in log space."""
    log_noise = math.log((log_scores.shape[1] - 1) / num_data)
    noise = torch.full_like(log_scores, log_noise)
    log_denominator = torch.logaddexp(log_scores, noise)
    positive = log_scores[:, 0] - log_denominator[:, 0]
    negatives = (log_noise - log_denominator[:, 1:]).sum(dim=1)
    return -(positive + negatives).mean()


def sample_other_class(labels: Tensor, num_samples: int, class_order: Tensor, class_start: Tensor,
                       class_count: Tensor, most_others: int) -> Tensor:
    """``[B, num_samples]`` indices of training samples whose class differs from ``labels[b]``: distinct
    ones, a uniformly drawn subset, where that class's others number at least ``num_samples``; else
    drawn uniformly with replacement (RepDistiller's ``np.random.choice(..., replace=k > len)``).
    ``class_order`` lists the sample indices sorted by class; class ``c`` occupies
    ``class_order[class_start[c] : class_start[c] + class_count[c]]``; ``most_others``: the largest
    number of other-class samples any class has (the training split's size less its smallest class).
    Fixed shapes, no host sync."""
    count = class_count[labels][:, None]
    start = class_start[labels][:, None]
    available = class_order.shape[0] - count  # [B, 1]: samples of the other classes
    u = torch.rand(labels.shape[0], num_samples, device=labels.device)
    with_replacement = torch.minimum((u * available).long(), available - 1)
    # Without replacement: the positions of the num_samples smallest of i.i.d. uniform keys, the keys
    # past a row's own count of other-class samples pushed above every valid one.
    if num_samples <= most_others:
        keys = torch.rand(labels.shape[0], most_others, device=labels.device)
        keys = keys.masked_fill(torch.arange(most_others, device=labels.device)[None, :] >= available, 2.0)
        distinct = keys.topk(num_samples, dim=1, largest=False, sorted=False).indices
        r = torch.where(available >= num_samples, distinct, with_replacement)
    else:
        r = with_replacement
    return class_order[r + (r >= start) * count]  # position among the other classes -> sample index


@dataclass
class CRDSettings:
    """Contrastive representation distillation (Tian et al., ICLR 2020) with a memory of embeddings."""

    weight: float = setting(0.8, "weight of the CRD term (student and teacher anchors summed)", ">= 0")
    feat_dim: int = setting(128, "dimension of the learned, L2-normalised embeddings", ">= 1")
    num_negatives: int = setting(16384, "negatives per anchor, drawn from the memory on the device", ">= 1")
    temperature: float = setting(0.07, "temperature of the exponential scores", "> 0")
    momentum: float = setting(0.5, "memory update: new = normalise(momentum * old + (1 - momentum) * current)",
                              "in [0, 1)")
    negatives: Literal["other_class", "uniform"] = setting(
        "other_class", "where negatives come from: samples of other classes (the reference recipe) or "
                       "all samples uniformly")


REFERENCE = ReferenceDifferences(
    "RepDistiller: crd/criterion.py, crd/memory.py, dataset/cifar100.py")
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("crd", REFERENCE)
class CRDObjective(Distiller):
    """Contrastive representation distillation (Tian et al., ICLR 2020) with a memory per model."""

    kind = "embedding"
    published = REPDISTILLER_CIFAR100_TOP1["crd"]
    settings_class = CRDSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        s = self.settings
        self.num_data = data.labels.shape[0]
        self.embed_student = nn.Linear(probe(student, data.input_shape).embedding.shape[1], s.feat_dim)
        self.embed_teacher = nn.Linear(probe(teacher, data.input_shape).embedding.shape[1], s.feat_dim)
        bound = math.sqrt(3.0 / s.feat_dim)  # uniform entries of variance 1/feat_dim: rows of norm ~1
        self.register_buffer("memory_student", torch.empty(self.num_data, s.feat_dim).uniform_(-bound, bound))
        self.register_buffer("memory_teacher", torch.empty(self.num_data, s.feat_dim).uniform_(-bound, bound))
        self.register_buffer("z_student", torch.zeros(()))  # normalisation constants; 0: not yet estimated
        self.register_buffer("z_teacher", torch.zeros(()))
        counts = torch.bincount(data.labels, minlength=data.num_classes)
        if s.negatives == "other_class" and int(counts.max()) == self.num_data:
            raise ConfigError("CRD with crd.negatives=other_class needs at least two classes in the "
                             "training split")
        self.register_buffer("class_order", torch.argsort(data.labels, stable=True), persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.most_others = self.num_data - int(counts[counts > 0].min())

    def sample_negatives(self, labels: Tensor) -> Tensor:
        """``[B, num_negatives]`` memory indices (see the module docstring)."""
        k = self.settings.num_negatives
        if self.settings.negatives == "uniform":
            return torch.randint(0, self.num_data, (labels.shape[0], k), device=labels.device)
        return sample_other_class(labels, k, self.class_order, self.class_start, self.class_count, self.most_others)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if batch.indices is None:
            raise ConfigError("CRD needs the training-split index of every sample (Batch.indices), "
                             "and this dataset's batches do not carry them")
        index, tau = batch.indices, self.settings.temperature
        with torch.autocast(device_type=batch.labels.device.type, enabled=False):
            v_student = F.normalize(self.embed_student(student.embedding.float()), dim=1)
            v_teacher = F.normalize(self.embed_teacher(teacher.embedding.float()), dim=1)
            contrast = torch.cat([index[:, None], self.sample_negatives(batch.labels)], dim=1)
            # Snapshots: the memories are updated in place below, before the backward pass.
            scores_student = (v_student @ self.memory_teacher.clone().T).gather(1, contrast) / tau
            scores_teacher = (v_teacher @ self.memory_student.clone().T).gather(1, contrast) / tau
            log_z_student = self._log_normaliser(self.z_student, scores_student)
            log_z_teacher = self._log_normaliser(self.z_teacher, scores_teacher)
            loss = (nce_loss(scores_student - log_z_student, self.num_data)
                    + nce_loss(scores_teacher - log_z_teacher, self.num_data))
            self._update(self.memory_student, index, v_student.detach())
            self._update(self.memory_teacher, index, v_teacher.detach())
        return {"crd": self.settings.weight * loss}, {}

    def _log_normaliser(self, z: Tensor, scores: Tensor) -> Tensor:
        """``log Z``; ``Z = N * mean(exp(scores))`` is estimated on the first batch and then kept."""
        estimate = scores.detach().exp().mean() * self.num_data
        z.copy_(torch.where(z > 0, z, estimate))
        return z.log()

    @torch.no_grad()
    def _update(self, memory: Tensor, index: Tensor, current: Tensor) -> None:
        mixed = self.settings.momentum * memory[index] + (1.0 - self.settings.momentum) * current
        memory.index_copy_(0, index, F.normalize(mixed, dim=1))
