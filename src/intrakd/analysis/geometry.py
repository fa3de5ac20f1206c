"""Geometry of embeddings (intra- vs inter-class distances) and statistics of soft labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def embedding_geometry(embeddings: Tensor, labels: Tensor, normalize: bool = True) -> dict[str, float]:
    """Mean intra-class distance, mean inter-class centre distance and their ratio.

    * intra: for each class, the mean Euclidean distance over pairs of distinct samples of that class;
      averaged over classes with at least two samples.
    * inter: the mean distance over pairs of distinct class centres (means of the class's embeddings).
    Embeddings are L2-normalised first by default (the space the intra-class loss acts on).
    """
    z = F.normalize(embeddings.double(), dim=1) if normalize else embeddings.double()
    classes = labels.unique()
    intra, centres = [], []
    for c in classes:
        members = z[labels == c]
        centres.append(members.mean(0))
        n = members.shape[0]
        if n >= 2:
            intra.append(torch.pdist(members).sum() / (n * (n - 1) / 2))
    centre_dist = torch.pdist(torch.stack(centres)) if len(centres) >= 2 else torch.zeros(1, dtype=z.dtype)
    intra_mean = torch.stack(intra).mean().item() if intra else 0.0
    inter_mean = centre_dist.mean().item()
    return {"intra_class_distance": intra_mean, "inter_class_distance": inter_mean,
            "intra_inter_ratio": intra_mean / inter_mean if inter_mean > 0 else float("inf")}


def soft_label_entropy(logits: Tensor, temperature: float = 1.0) -> float:
    """Mean entropy (nats) of ``softmax(logits / T)`` over the samples."""
    log_p = F.log_softmax(logits.double() / temperature, dim=1)
    return -(log_p.exp() * log_p).sum(1).mean().item()
