"""The intra-class contrastive loss and the classification margin that gates it (METHOD.md)."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

MarginKind = Literal["probability", "logit"]


def classification_margin(logits: Tensor, labels: Tensor, kind: MarginKind = "probability") -> Tensor:
    """Per-sample margin ``s_y - max_{j != y} s_j``, with ``s = softmax(logits)`` by default.

    ``kind="logit"`` uses the raw logits instead of probabilities. The result carries no gradient.
    """
    scores = logits.detach().float()
    if kind == "probability":
        scores = scores.softmax(dim=1)
    elif kind != "logit":
        raise ValueError(f"unknown margin kind {kind!r}: use 'probability' or 'logit'")
    target = scores.gather(1, labels[:, None]).squeeze(1)
    others = scores.scatter(1, labels[:, None], float("-inf"))
    return target - others.max(dim=1).values


def _same_sample(ids: Tensor, other: Tensor) -> Tensor:
    """Where two (broadcast) sample-id tensors name the same known sample (-1: unknown)."""
    return (ids == other) & (ids >= 0)


def intra_class_terms(
    anchors: Tensor,
    positives: Tensor,
    labels: Tensor,
    *,
    memory: Tensor | None = None,
    memory_labels: Tensor | None = None,
    class_memory: Tensor | None = None,
    class_memory_valid: Tensor | None = None,
    anchor_ids: Tensor | None = None,
    memory_ids: Tensor | None = None,
    class_memory_ids: Tensor | None = None,
    anchor_mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    symmetric: bool = False,
    min_negatives: int = 1,
) -> tuple[Tensor, Tensor]:
    """Per-anchor losses ``l(a)`` and the mask of anchors that contribute (the loss itself, their
    mean over contributing anchors, is :func:`intra_class_contrastive_loss`).

    With ``symmetric=True`` the rows of ``positives`` are anchors too (each with its own anchor row as
    positive); the returned tensors then have ``2 * B`` rows, anchors first. Computed in float32
    whatever the autocast dtype.

    Args:
        anchors: ``[B, D]`` embeddings of the first view.
        positives: ``[B, D]`` embeddings of the second view of the same images.
        labels: ``[B]`` class indices.
        memory: optional ``[M, D]`` cached embeddings (detached) of earlier batches.
        memory_labels: ``[M]`` class of each memory row, -1 for an unused row.
        class_memory: optional ``[C, K, D]`` memory held per class (a :class:`FeatureCache`'s
            ``features``): an anchor of class ``y`` has the usable entries of ``class_memory[y]`` as
            negatives. The same negatives as the flattened rows given as ``memory`` with their class
            as label, at ``K`` instead of ``C * K`` comparisons per anchor.
        class_memory_valid: ``[C, K]`` bool, the usable entries of ``class_memory`` (default: all).
        anchor_ids: optional ``[B]`` sample indices of the batch's images (-1: unknown). A memory
            row or ``class_memory`` entry with the same id is a cached embedding of the anchor's own
            image and never its negative (it is nearly the positive).
        memory_ids: ``[M]`` sample index of each ``memory`` row (default: all unknown, -1).
        class_memory_ids: ``[C, K]`` sample index of each ``class_memory`` entry (a
            :class:`FeatureCache`'s ``ids``; default: all unknown).
        anchor_mask: optional ``[B]`` bool, anchors allowed to contribute (the margin gate); with
            ``symmetric=True`` it may have ``2 * B`` rows (one gate per view).
        temperature: ``tau`` > 0.
        normalize: L2-normalise anchors, positives and memory first.
        symmetric: both views serve as anchors.
        min_negatives: an anchor with fewer negatives contributes nothing.
    """
    if anchors.shape != positives.shape or anchors.ndim != 2:
        raise ValueError(f"anchors and positives must both be [B, D], got {tuple(anchors.shape)} "
                         f"and {tuple(positives.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if class_memory is not None and (class_memory.ndim != 3 or (
            class_memory_valid is not None and class_memory_valid.shape != class_memory.shape[:2])):
        raise ValueError(f"class_memory must be [C, K, D] and class_memory_valid [C, K], got "
                         f"{tuple(class_memory.shape)} and {tuple(getattr(class_memory_valid, 'shape', ()))}")
    batch = anchors.shape[0]
    device = anchors.device
    with torch.autocast(device_type=device.type, enabled=False):
        a = anchors.float()
        p = positives.float()
        if normalize:
            a = F.normalize(a, dim=1)
            p = F.normalize(p, dim=1)
        positions = torch.arange(batch, device=device)
        samples = torch.full_like(labels, -1) if anchor_ids is None else anchor_ids.long()
        # the batch's candidates are both views; with symmetric=True they are the anchors too
        candidates = torch.cat([a, p])
        candidate_labels = torch.cat([labels, labels])
        candidate_positions = torch.cat([positions, positions])
        candidate_samples = torch.cat([samples, samples])
        if symmetric:
            a, p = candidates, torch.cat([p, a])
            labels, positions, samples = candidate_labels, candidate_positions, candidate_samples
            if anchor_mask is not None and anchor_mask.shape[0] == batch:
                anchor_mask = torch.cat([anchor_mask, anchor_mask])
        if memory is not None and memory.shape[0] > 0:
            if memory_labels is None:
                raise ValueError("memory given without memory_labels")
            m = memory.float()
            candidates = torch.cat([candidates, F.normalize(m, dim=1) if normalize else m])
            candidate_labels = torch.cat([candidate_labels, memory_labels])
            candidate_positions = torch.cat([candidate_positions, torch.full_like(memory_labels, -1)])
            candidate_samples = torch.cat([candidate_samples, torch.full_like(memory_labels, -1)
                                           if memory_ids is None else memory_ids.long()])

        scaled = a * (1.0 / temperature)  # a / tau, so every similarity below is already divided by tau
        positive_logit = (scaled * p).sum(dim=1, keepdim=True)
        # (a.n - a.p) / tau for every candidate n; non-negatives get the lowest finite value, so
        # they add exactly nothing and an anchor without negatives stays finite (and gets l = 0)
        gaps = scaled @ candidates.T - positive_logit
        # a negative is of the anchor's class and another image: not the same batch row, and not a
        # memory row of the same sample (an id of -1 is unknown and matches nothing)
        is_negative = (
            (labels[:, None] == candidate_labels[None, :])
            & (positions[:, None] != candidate_positions[None, :])
            & ~_same_sample(samples[:, None], candidate_samples[None, :])
        )
        lowest = torch.finfo(gaps.dtype).min
        blocks = [gaps.masked_fill(~is_negative, lowest)]
        negatives = is_negative.sum(dim=1)
        if class_memory is not None:
            # each anchor meets only the K entries of its own class: A x K x D work, not A x C*K x D
            own = class_memory[labels].float()  # [A, K, D]
            if normalize:
                own = F.normalize(own, dim=2)
            usable = (class_memory_valid[labels] if class_memory_valid is not None
                      else torch.ones(own.shape[:2], dtype=torch.bool, device=device))
            if class_memory_ids is not None:
                usable = usable & ~_same_sample(samples[:, None], class_memory_ids[labels])
            memory_gaps = torch.bmm(own, scaled[:, :, None]).squeeze(2) - positive_logit
            blocks.append(memory_gaps.masked_fill(~usable, lowest))
            negatives = negatives + usable.sum(dim=1)
        per_anchor = F.softplus(torch.logsumexp(torch.cat(blocks, dim=1), dim=1))  # log(1 + sum exp(gap))

        contributing = negatives >= max(1, min_negatives)
        if anchor_mask is not None:
            contributing = contributing & anchor_mask.bool()
    return per_anchor, contributing


def intra_class_contrastive_loss(anchors: Tensor, positives: Tensor, labels: Tensor, **options: Any) -> Tensor:
    """Intra-class contrastive loss: pull two views of one image together, push its class apart.

    For anchor ``a_i`` with positive ``p_i``: ``l_i = log(1 + sum_n exp((a_i.n - a_i.p_i) / tau))``
    where the negatives ``n`` are the rows ``j != i`` of ``anchors`` and ``positives`` with
    ``labels[j] == labels[i]`` and the rows of ``memory`` whose ``memory_labels`` equal
    ``labels[i]`` (use a label of -1 for an empty memory slot). The result is the mean of ``l_i``
    over contributing anchors (``anchor_mask`` true and at least ``min_negatives`` negatives), and a
    differentiable zero when none contributes. ``symmetric=True`` makes positives anchors too.

    Args:
        anchors: ``[B, D]`` embeddings of the first view.
        positives: ``[B, D]`` embeddings of the second view of the same images.
        labels: ``[B]`` class indices.
        options: the keyword arguments of :func:`intra_class_terms` (memories, sample ids, gate,
            temperature, normalisation, symmetry, minimum number of negatives), documented there.
    """
    per_anchor, contributing = intra_class_terms(anchors, positives, labels, **options)
    weights = contributing.float()
    return (per_anchor * weights).sum() / weights.sum().clamp_min(1.0)
