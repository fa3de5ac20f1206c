"""Teacher objective: cross-entropy over both views plus lambda * the gated intra-class loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd import distributed
from intrakd.config import ConfigError, IntraConfig
from intrakd.data.tensor_data import Batch
from intrakd.losses import FeatureCache, Memory, classification_margin, intra_class_terms
from intrakd.losses.balance import GradientBalancedWeight, squared_gradient_norm
from intrakd.objectives.base import StepResult


def _projection_head(kind: str, dim: int, out_dim: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out_dim))
    raise ValueError(f"unknown head {kind!r}: use none, linear or mlp")


class IntraClassTeacherObjective(nn.Module):
    """``L = CE (mean over views) + lambda * L_intra`` with the margin gate and the feature cache.

    With ``cfg.weight == 0`` it is the vanilla teacher (cross-entropy over the given views); the
    head and cache are then not built. With ``cfg.weight == "auto"`` lambda is set every step by
    gradient balancing (:mod:`intrakd.losses.balance`) and logged as ``lambda``. The cache, head and
    the balancing state are module state, saved with the objective.
    """

    strong_views = 0
    """Every view takes the standard augmentation."""
    label_smoothing = 0.0
    """Of the cross-entropy term (the run sets ``train.label_smoothing``)."""

    def __init__(self, cfg: IntraConfig, num_classes: int, embedding_dim: int, views: int = 2) -> None:
        super().__init__()
        self.cfg, self.num_classes, self.num_views = cfg, num_classes, views
        self.enabled = cfg.enabled
        self.head: nn.Module | None = None
        self.cache: FeatureCache | None = None
        self.balance: GradientBalancedWeight | None = None
        if self.enabled:
            if cfg.weight == "auto":
                self.balance = GradientBalancedWeight(cfg.auto_ratio)
            self.head = _projection_head(cfg.head, embedding_dim, cfg.head_dim)
            dim = embedding_dim if cfg.head == "none" else cfg.head_dim
            if cfg.cache:
                self.cache = FeatureCache(num_classes, cfg.cache_size, dim, cfg.max_age)

    def forward(self, model: nn.Module, batch: Batch, teacher: nn.Module | None = None) -> StepResult:
        labels, cfg = batch.labels, self.cfg
        if self.enabled and cfg.exclude_self and batch.indices is None:
            raise ConfigError("intra.exclude_self needs the sample index of every training image, which "
                             "these batches do not carry: set intra.exclude_self=false")
        n_views = len(batch.views)
        out = model(torch.cat(batch.views) if n_views > 1 else batch.views[0])
        all_labels = labels.repeat(n_views)
        ce = F.cross_entropy(out.logits.float(), torch.cat([batch.targets] * n_views),
                             label_smoothing=self.label_smoothing)
        first_logits = out.logits[: labels.shape[0]]
        if not self.enabled:
            return StepResult({"ce": ce}, first_logits)

        # views: the embeddings of both views (through the head)
        z = self.head(out.embedding).float()
        z1, z2 = (F.normalize(z, dim=1) if cfg.normalize else z).chunk(2)
        # gate: an anchor contributes when its classification margin exceeds delta
        margin = classification_margin(out.logits, all_labels, cfg.margin)
        gate = margin > cfg.delta if cfg.delta is not None else torch.ones_like(margin, dtype=torch.bool)
        gate1 = gate[: labels.shape[0]]
        if not cfg.symmetric:
            gate = gate1
        # loss: negatives of the anchor's class from the batch, the other ranks' views and the cache
        peers = PeerBatch(z1, z2, labels, gate1, batch.indices)
        cached = self.cache.memory(cfg.exclude_self) if self.cache is not None else None
        memory = [m for m in (peers.others, cached) if m is not None]
        per_anchor, contributing = intra_class_terms(
            z1, z2, labels, memory=memory, anchor_ids=peers.ids if cfg.exclude_self else None, anchor_mask=gate,
            temperature=cfg.temperature, normalize=False, symmetric=cfg.symmetric, min_negatives=cfg.min_negatives,
        )
        intra, anchors_used = global_anchor_mean(per_anchor, contributing)
        stats = {"intra_raw": intra.detach(), "pass_rate": gate.float().mean(), "anchors_used": anchors_used}
        # cache write: every rank's gated first views of this step
        if self.cache is not None:
            stats.update(self._update_cache(labels, peers, contributing))
        weight = self._weight(ce, intra, out.embedding, stats)
        return StepResult({"ce": ce, "intra": weight * intra}, first_logits, stats)

    def _update_cache(self, labels: Tensor, peers: PeerBatch, contributing: Tensor) -> dict[str, Tensor]:
        """Write this step's rows into the cache (emptying first, with ``clear_after_use``, the classes
        whose anchors used it); return its diagnostics: entries holding an older embedding of the
        anchor's own image, per anchor (all of them, and those that served as negatives: none with
        ``exclude_self``), and the fill after the write."""
        cfg, cache = self.cfg, self.cache
        own = (cache.ids[labels] == peers.ids[:, None]) & cache.valid()[labels] & (peers.ids[:, None] >= 0)
        own_entries = own.float().sum(dim=1).mean()
        stats = {"cache_own_entries": own_entries,
                 "self_negatives": own_entries if not cfg.exclude_self else torch.zeros((), device=labels.device)}
        if cfg.clear_after_use:
            anchor_labels = labels.repeat(2) if cfg.symmetric else labels
            used_classes = torch.zeros(self.num_classes, device=labels.device)
            used_classes.index_add_(0, anchor_labels, contributing.float())
            cache.clear(distributed.sum_across_ranks(used_classes) > 0)
        rows = peers.rows
        cache.write(rows.features, rows.labels, rows.valid, rows.ids)
        stats["cache_fill"] = cache.fill()
        return stats

    def _weight(self, ce: Tensor, intra: Tensor, embedding: Tensor, stats: dict[str, Tensor]) -> Tensor | float:
        """lambda: ``intra.weight``, or with ``auto`` the gradient-balanced weight (logged as ``lambda``)."""
        if self.balance is None:
            return self.cfg.weight
        # gradients of both terms at the embedding they share, summed over the global batch
        norms = torch.stack([squared_gradient_norm(ce, embedding), squared_gradient_norm(intra, embedding)])
        stats["lambda"] = self.balance(*distributed.sum_across_ranks(norms))
        return stats["lambda"]


def global_anchor_mean(per_anchor: Tensor, contributing: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean of the contributing anchors' terms over the global batch, how many contributed)``.

    Data-parallel: DDP averages gradients over the N ranks, so the mean is scaled by N to make the
    averaged gradient that of the global batch's mean (identity in one process).
    """
    used = contributing.float()
    anchors_used = distributed.sum_across_ranks(used.sum())
    intra = (per_anchor * used).sum() / anchors_used.clamp_min(1.0)
    if distributed.world_size() > 1:
        intra = intra * distributed.world_size()
    return intra, anchors_used


class PeerBatch:
    """This step's embeddings, labels, sample ids and gate on every data-parallel rank, for the
    intra-class loss and the cache.

    Built from this rank's views ``z1, z2`` (``[b, D]`` float32), ``labels [b]``, ``gate [b]`` (the
    first view's margin gate) and ``ids [b]`` (the images' sample indices, -1 where unknown) with one
    differentiable all-gather of the embeddings and one plain all-gather of the labels, ids and gate.
    :attr:`others` are both views of the other ranks' images, negatives too (their gradient flows back
    to their ranks); :attr:`rows` are the first views of the whole global batch in rank order,
    detached, gated by ``valid``: what every rank writes into its cache, so that the caches stay
    identical on every rank and equal to a single process's. In one process :attr:`others` is None
    and :attr:`rows` are this batch's.
    """

    def __init__(self, z1: Tensor, z2: Tensor, labels: Tensor, gate: Tensor, ids: Tensor | None = None) -> None:
        self.ids = torch.full_like(labels, -1) if ids is None else ids.to(labels.device, torch.long)
        """This rank's sample ids."""
        self.others: Memory | None = None
        self.rows = Memory(z1.detach(), labels, self.ids, gate)
        if not distributed.is_distributed():
            return
        b, dim = z1.shape
        views = distributed.gather_rows(torch.cat([z1, z2], dim=1))  # [N * b, 2D], rank order
        tags = distributed.gather_tensors(torch.stack([labels.long(), self.ids, gate.long()], dim=1))  # [N * b, 3]
        mine = distributed.rank() * b
        peers, peer_tags = (torch.cat([x[:mine], x[mine + b :]]) for x in (views, tags))
        self.others = Memory.of(torch.cat([peers[:, :dim], peers[:, dim:]]), peer_tags[:, 0].repeat(2),
                                peer_tags[:, 1].repeat(2))
        self.rows = Memory(views.detach()[:, :dim], tags[:, 0], tags[:, 1], tags[:, 2] > 0)
