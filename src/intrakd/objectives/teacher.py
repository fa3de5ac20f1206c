"""Teacher objective: cross-entropy over both views plus lambda * the gated intra-class loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd import distributed
from intrakd.config import IntraConfig
from intrakd.data.tensor_data import Batch
from intrakd.losses import FeatureCache, classification_margin, intra_class_terms
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
        labels = batch.labels
        if self.enabled and self.cfg.exclude_self and batch.indices is None:
            raise ValueError("intra.exclude_self needs the sample index of every training image, which "
                             "these batches do not carry: set intra.exclude_self=false")
        n_views = len(batch.views)
        out = model(torch.cat(batch.views) if n_views > 1 else batch.views[0])
        all_labels = labels.repeat(n_views)
        ce = F.cross_entropy(out.logits.float(), all_labels)
        first_logits = out.logits[: labels.shape[0]]
        if not self.enabled:
            return StepResult({"ce": ce}, first_logits)

        cfg = self.cfg
        z = self.head(out.embedding).float()
        z1, z2 = (F.normalize(z, dim=1) if cfg.normalize else z).chunk(2)
        margin = classification_margin(out.logits, all_labels, cfg.margin)
        gate = margin > cfg.delta if cfg.delta is not None else torch.ones_like(margin, dtype=torch.bool)
        gate1 = gate[: labels.shape[0]]
        if not cfg.symmetric:
            gate = gate1

        memory = memory_labels = memory_ids = class_memory = class_memory_valid = class_memory_ids = None
        if self.cache is not None:
            class_memory, class_memory_valid = self.cache.features, self.cache.valid()
            class_memory_ids = self.cache.ids if cfg.exclude_self else None
        # data-parallel: the other ranks' images of the global batch are negatives too, the loss is a
        # mean over the global batch's anchors, and every rank caches all ranks' samples (identity in
        # one process)
        peers = distributed.PeerBatch(z1, z2, labels, gate1, batch.indices)
        memory, memory_labels, memory_ids = peers.negatives(memory, memory_labels, memory_ids)
        per_anchor, contributing = intra_class_terms(
            z1, z2, labels, memory=memory, memory_labels=memory_labels, class_memory=class_memory,
            class_memory_valid=class_memory_valid, anchor_ids=peers.ids if cfg.exclude_self else None,
            memory_ids=memory_ids, class_memory_ids=class_memory_ids, anchor_mask=gate,
            temperature=cfg.temperature, normalize=False, symmetric=cfg.symmetric,
            min_negatives=cfg.min_negatives,
        )
        used = contributing.float()
        anchors_used = distributed.sum_across_ranks(used.sum())
        intra = (per_anchor * used).sum() / anchors_used.clamp_min(1.0)
        if distributed.world_size() > 1:  # DDP averages gradients over ranks: undo it for a global mean
            intra = intra * distributed.world_size()

        stats: dict[str, Tensor] = {
            "intra_raw": intra.detach(),
            "pass_rate": gate.float().mean(),
            "anchors_used": anchors_used,
        }
        if self.cache is not None:
            # entries of the cache holding an older embedding of the anchor's own image, per anchor:
            # all of them, and those that served as negatives (none with intra.exclude_self)
            own = self.cache.ids[labels] == peers.ids[:, None]
            own = own & class_memory_valid[labels] & (peers.ids[:, None] >= 0)
            stats["cache_own_entries"] = own.float().sum(dim=1).mean()
            stats["self_negatives"] = (stats["cache_own_entries"] if not cfg.exclude_self
                                       else torch.zeros((), device=labels.device))
            if cfg.clear_after_use:
                anchor_labels = labels.repeat(2) if cfg.symmetric else labels
                used_classes = torch.zeros(self.num_classes, device=labels.device)
                used_classes.index_add_(0, anchor_labels, used)
                self.cache.clear(distributed.sum_across_ranks(used_classes) > 0)
            self.cache.write(*peers.cache_rows())
            stats["cache_fill"] = self.cache.fill()
        if self.balance is not None:
            # gradients of both terms at the embedding they share, summed over the global batch
            norms = torch.stack([squared_gradient_norm(ce, out.embedding), squared_gradient_norm(intra, out.embedding)])
            weight = self.balance(*distributed.sum_across_ranks(norms))
            stats["lambda"] = weight
        else:
            weight = cfg.weight
        return StepResult({"ce": ce, "intra": weight * intra}, first_logits, stats)
