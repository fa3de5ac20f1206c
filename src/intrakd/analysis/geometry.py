"""Geometry of embeddings: intra- vs inter-class distances, overall and per class."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _prepare(embeddings: Tensor, normalize: bool) -> Tensor:
    z = embeddings.double()
    return F.normalize(z, dim=1) if normalize else z


def embedding_geometry(embeddings: Tensor, labels: Tensor, normalize: bool = True) -> dict[str, float]:
    """Mean intra-class distance, mean inter-class centre distance and their ratio.

    * intra: for each class, the mean Euclidean distance over pairs of distinct samples of that class;
      averaged over classes with at least two samples.
    * inter: the mean distance over pairs of distinct class centres (means of the class's embeddings).
    Embeddings are L2-normalised first by default (the space the intra-class loss acts on).
    """
    per_class = per_class_geometry(embeddings, labels, normalize)
    intra = [v for v in per_class["intra_class_distance"] if not math.isnan(v)]  # NaN: fewer than two samples
    intra_mean = sum(intra) / len(intra) if intra else 0.0
    inter_mean = per_class["mean_centre_distance"]
    return {"intra_class_distance": intra_mean, "inter_class_distance": inter_mean,
            "intra_inter_ratio": intra_mean / inter_mean if inter_mean > 0 else float("inf")}


def per_class_geometry(embeddings: Tensor, labels: Tensor, normalize: bool = True) -> dict[str, list | float]:
    """The geometry class by class, for the classes present in ``labels`` (ascending).

    Returns ``classes``; ``intra_class_distance`` (mean pairwise distance within the class, NaN for a
    class with one sample); ``inter_class_distance`` (mean distance from the class's centre to the
    other classes' centres); ``intra_inter_ratio`` (the two divided); ``mean_centre_distance`` (the
    mean over all pairs of distinct centres, a float).
    """
    z = _prepare(embeddings, normalize)
    classes = labels.unique()
    intra, centres = [], []
    for c in classes:
        members = z[labels == c]
        centres.append(members.mean(0))
        n = members.shape[0]
        intra.append((torch.pdist(members).sum() / (n * (n - 1) / 2)).item() if n >= 2 else float("nan"))
    stacked = torch.stack(centres)
    centre_matrix = torch.cdist(stacked, stacked, compute_mode="donot_use_mm_for_euclid_dist")
    k = len(centres)
    if k >= 2:
        inter = (centre_matrix.sum(1) / (k - 1)).tolist()
        mean_centre = (centre_matrix.sum() / (k * (k - 1))).item()
    else:
        inter, mean_centre = [float("nan")] * k, 0.0
    ratio = [a / b if b > 0 else float("inf") for a, b in zip(intra, inter)]
    return {"classes": classes.tolist(), "intra_class_distance": intra, "inter_class_distance": inter,
            "intra_inter_ratio": ratio, "mean_centre_distance": mean_centre}


def pair_distances(
    embeddings: Tensor, labels: Tensor, max_pairs: int = 20000, normalize: bool = True, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Distances of randomly drawn same-class and different-class sample pairs (for histograms).

    Draws ``max_pairs`` pairs of distinct samples uniformly (with replacement), returns the
    distances of the same-class ones and of the different-class ones, in that order. Classes with a
    single sample can only appear in different-class pairs.
    """
    z = _prepare(embeddings, normalize)
    n = z.shape[0]
    if n < 2:
        empty = torch.zeros(0, dtype=z.dtype)
        return empty, empty
    generator = torch.Generator().manual_seed(seed)
    # Draw same-class pairs explicitly: uniform pairs of 100 classes would be 99% different-class.
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    _, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    usable = counts >= 2
    intra = torch.zeros(0, dtype=z.dtype)
    if usable.any():
        weights = (counts * (counts - 1)).double() * usable
        cls = torch.multinomial(weights, max_pairs, replacement=True, generator=generator)
        i = (torch.rand(max_pairs, generator=generator, dtype=torch.float64) * counts[cls]).long()
        j = (torch.rand(max_pairs, generator=generator, dtype=torch.float64) * (counts[cls] - 1)).long()
        j = j + (j >= i).long()  # distinct from i
        a, b = order[starts[cls] + i], order[starts[cls] + j]
        intra = (z[a] - z[b]).norm(dim=1)
    a = torch.randint(0, n, (max_pairs,), generator=generator)
    b = torch.randint(0, n, (max_pairs,), generator=generator)
    different = labels[a] != labels[b]
    inter = (z[a[different]] - z[b[different]]).norm(dim=1)
    return intra, inter
