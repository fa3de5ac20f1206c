"""The intra-class contrastive loss and the classification margin that gates it (METHOD.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

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


class Memory(NamedTuple):
    """Embeddings besides the batch's that serve as negatives: the feature cache's entries, or the
    views of the other data-parallel ranks' images.

    Two layouts, one record: ``features [M, D]`` with ``labels, ids, valid [M]``, or, held per class
    (a :class:`FeatureCache`), ``features [C, K, D]`` with ``labels, ids, valid [C, K]`` where row
    ``c`` holds class ``c``'s entries: an anchor of class ``y`` then meets only ``features[y]``
    (``K`` comparisons, not ``C * K``).
    """

    features: Tensor
    labels: Tensor
    """Class of each row."""
    ids: Tensor
    """Sample index of each row (-1: unknown): an entry of the anchor's own image is never its negative."""
    valid: Tensor
    """bool: the rows that may serve (an empty or aged-out cache slot may not)."""

    @classmethod
    def of(cls, features: Tensor, labels: Tensor, ids: Tensor | None = None, valid: Tensor | None = None) -> Memory:
        """A record with every id unknown and every row valid unless given."""
        shape = features.shape[:-1]
        return cls(features, labels, torch.full(shape, -1, dtype=torch.long, device=features.device)
                   if ids is None else ids.long(),
                   torch.ones(shape, dtype=torch.bool, device=features.device) if valid is None else valid.bool())

    @property
    def per_class(self) -> bool:
        return self.features.ndim == 3


def intra_class_terms(
    anchors: Tensor,
    positives: Tensor,
    labels: Tensor,
    *,
    memory: Sequence[Memory] = (),
    anchor_ids: Tensor | None = None,
    anchor_mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    symmetric: bool = False,
    min_negatives: int = 1,
) -> tuple[Tensor, Tensor]:
    """Per-anchor losses ``l(a)`` and the mask of anchors that contribute; the loss is their mean over
    contributing anchors (:func:`intra_class_contrastive_loss`).

    For anchor ``a_i`` with positive ``p_i`` (the other view of its image)::

        l_i = log(1 + sum_{n in N(i)} exp((a_i . n - a_i . p_i) / tau))

    where the negatives ``N(i)`` are the embeddings of the anchor's class that are not its own image:
    both views of the batch's other rows ``j`` with ``labels[j] == labels[i]``, and the valid rows of
    every ``memory`` of that class whose sample id is not the anchor's. Anchor ``i`` contributes when
    ``anchor_mask[i]`` (the margin gate) holds and ``|N(i)| >= min_negatives``. With
    ``symmetric=True`` the rows of ``positives`` are anchors too (each with its own anchor row as
    positive); the returned tensors then have ``2 * B`` rows, anchors first. Computed in float32
    whatever the autocast dtype.

    Args:
        anchors: ``[B, D]`` embeddings of the first view.
        positives: ``[B, D]`` embeddings of the second view of the same images.
        labels: ``[B]`` class indices.
        memory: further negatives, each a :class:`Memory` (the cache, the other ranks' views).
        anchor_ids: optional ``[B]`` sample indices of the batch's images (-1: unknown).
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
    for m in memory:
        if m.features.ndim not in (2, 3) or any(t.shape != m.features.shape[:-1] for t in m[1:]):
            raise ValueError(f"a memory's features must be [M, D] or [C, K, D] and its labels, ids and valid "
                             f"[M] or [C, K], got {tuple(m.features.shape)} and "
                             f"{', '.join(str(tuple(t.shape)) for t in m[1:])}")
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
        candidate_valid = torch.ones_like(candidate_labels, dtype=torch.bool)
        if symmetric:
            a, p = candidates, torch.cat([p, a])
            labels, positions, samples = candidate_labels, candidate_positions, candidate_samples
            if anchor_mask is not None and anchor_mask.shape[0] == batch:
                anchor_mask = torch.cat([anchor_mask, anchor_mask])
        for m in memory:  # rows of any class: more candidates, compared with every anchor
            if m.per_class or m.features.shape[0] == 0:
                continue
            rows = m.features.float()
            candidates = torch.cat([candidates, F.normalize(rows, dim=1) if normalize else rows])
            candidate_labels = torch.cat([candidate_labels, m.labels])
            candidate_positions = torch.cat([candidate_positions, torch.full_like(m.labels, -1)])
            candidate_samples = torch.cat([candidate_samples, m.ids.long()])
            candidate_valid = torch.cat([candidate_valid, m.valid])

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
            & candidate_valid[None, :]
        )
        lowest = torch.finfo(gaps.dtype).min
        blocks = [gaps.masked_fill(~is_negative, lowest)]
        negatives = is_negative.sum(dim=1)
        for m in memory:  # held per class: each anchor meets only its own class's K entries
            if not m.per_class:
                continue
            own = m.features[labels].float()  # [A, K, D]
            if normalize:
                own = F.normalize(own, dim=2)
            usable = m.valid[labels] & ~_same_sample(samples[:, None], m.ids[labels])
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

    The mean of :func:`intra_class_terms`'s ``l_i`` (formula there) over the contributing anchors, and
    a differentiable zero when none contributes; ``options`` are that function's keyword arguments.
    """
    per_anchor, contributing = intra_class_terms(anchors, positives, labels, **options)
    weights = contributing.float()
    return (per_anchor * weights).sum() / weights.sum().clamp_min(1.0)
