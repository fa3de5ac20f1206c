"""PNG figures: embedding maps, distance and soft-label histograms, reliability, training curves.

Figures are drawn on matplotlib's Agg canvas (no display, no global pyplot state). Every function
takes one or more named models, so the same call draws one model or two side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from intrakd.analysis.analyze import Predictions, subsample
from intrakd.analysis.geometry import embedding_geometry, pair_distances
from intrakd.analysis.softlabels import soft_label_samples
from intrakd.config import ConfigError

Named = Sequence[tuple[str, Predictions]]


def _figure(rows: int, cols: int, width: float = 4.5, height: float = 3.6) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # an optional extra
        raise ImportError("plots need matplotlib: pip install 'intrakd[plots]'") from err
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_embedding_map(models: Named, path: str | Path, max_classes: int = 20, max_points: int = 2000,
                       seed: int = 0) -> Path:
    """t-SNE map of each model's L2-normalised embeddings, coloured by class, one panel per model.

    All panels show the same images: ``max_points`` drawn from ``max_classes`` classes.
    """
    from sklearn.manifold import TSNE

    fig, axes = _figure(1, len(models), 5.0, 4.6)
    for ax, (name, pred) in zip(axes[0], models):
        index = subsample(pred.labels, max_classes, max_points, seed)
        z = torch.nn.functional.normalize(pred.embeddings[index].double(), dim=1).numpy()
        labels = pred.labels[index].numpy()
        perplexity = float(min(30.0, max(2.0, (len(index) - 1) / 3)))
        points = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(z)
        classes = np.unique(labels)
        colour = np.searchsorted(classes, labels)
        ax.scatter(points[:, 0], points[:, 1], c=colour, cmap="tab20", s=5, vmin=0, vmax=max(len(classes) - 1, 1))
        ax.set_title(f"{name}: t-SNE, {len(index)} images, {len(classes)} classes", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def plot_distance_histograms(models: Named, path: str | Path, max_pairs: int = 20000, seed: int = 0) -> Path:
    """Histograms of same-class and different-class pair distances (normalised embeddings), per model,
    with the mean distance between class centres (the ``inter_class_distance`` of the analysis)."""
    fig, axes = _figure(1, len(models))
    pairs = [pair_distances(pred.embeddings, pred.labels, max_pairs, seed=seed) for _, pred in models]
    top = max((float(d.max()) for pair in pairs for d in pair if d.numel()), default=2.0)
    bins = np.linspace(0.0, top * 1.02, 61)  # the same bins for every model
    for ax, (name, pred), (intra, inter) in zip(axes[0], models, pairs):
        ax.hist(inter.numpy(), bins=bins, density=True, alpha=0.55, label=f"different class (mean {inter.mean():.3f})")
        ax.hist(intra.numpy(), bins=bins, density=True, alpha=0.55, label=f"same class (mean {intra.mean():.3f})")
        centres = embedding_geometry(pred.embeddings, pred.labels)["inter_class_distance"]
        ax.axvline(centres, color="black", linestyle="--", linewidth=1,
                   label=f"mean class-centre distance ({centres:.3f})")
        ax.set_title(f"{name}: pair distances", fontsize=9)
        ax.set_xlabel("Euclidean distance of L2-normalised embeddings")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_soft_labels(models: Named, path: str | Path, temperature: float) -> Path:
    """Histograms (overlaid across models) of soft-label entropy and off-target mass at ``temperature``.

    The bins span the values of all models (weak teachers at T = 4 are close to uniform, so a fixed
    range from 0 would squeeze them into one bar)."""
    fig, axes = _figure(1, 2)
    stats = [(name, soft_label_samples(pred.logits, pred.labels, temperature)) for name, pred in models]
    for ax, key in zip(axes[0], ("entropy", "off_target_mass")):
        values = torch.cat([s[key] for _, s in stats])
        low, high = float(values.min()), float(values.max())
        bins = np.linspace(low, high + max(high - low, 1e-6) * 0.01, 51)
        for name, s in stats:
            ax.hist(s[key].numpy(), bins=bins, alpha=0.55, label=f"{name} (mean {s[key].mean():.3f})")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
    axes[0][0].set_xlabel(f"entropy of softmax(z / {temperature:g}) [nats]")
    axes[0][1].set_xlabel(f"mass off the target class at T = {temperature:g}")
    return _save(fig, path)


def plot_reliability(reliability: Sequence[tuple[str, dict[str, Any], float]], path: str | Path) -> Path:
    """Reliability diagram: accuracy against mean confidence per bin; ``(name, bins, ece)`` per model."""
    fig, axes = _figure(1, 1, 4.8, 4.2)
    ax = axes[0][0]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, table, ece in reliability:
        pts = [(c, a) for c, a, n in zip(table["confidence"], table["accuracy"], table["count"]) if n]
        ax.plot(*zip(*pts), marker="o", markersize=3, label=f"{name} (ECE {100 * ece:.2f}%)")
    ax.set_xlabel("confidence (top softmax probability)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_per_class(per_class: Sequence[tuple[str, dict[str, Any]]], path: str | Path) -> Path:
    """Per-class intra-class distance against distance to the other class centres, one point per class."""
    fig, axes = _figure(1, 1, 4.8, 4.2)
    ax = axes[0][0]
    for name, table in per_class:
        pts = [(x, y) for x, y in zip(table["inter_class_distance"], table["intra_class_distance"])
               if x is not None and y is not None]
        ax.scatter(*zip(*pts), s=10, alpha=0.7, label=name)
    ax.set_xlabel("mean distance of the class centre to the others")
    ax.set_ylabel("mean intra-class distance")
    ax.legend(fontsize=8)
    return _save(fig, path)


SKIPPED_CURVES = {"epoch"}


def plot_training_curves(runs: Sequence[tuple[str, list[dict[str, Any]]]], path: str | Path) -> Path:
    """One panel per logged value of ``metrics.jsonl`` against the epoch, every run overlaid.

    Accuracies share a panel; every other numeric key (each loss term, the gate's pass rate, the
    cache fill, lr, images/s, ...) gets its own, so a new objective's terms appear without changes.
    """
    keys: list[str] = []
    for _, records in runs:
        for record in records:
            keys += [k for k, v in record.items() if k not in keys and k not in SKIPPED_CURVES
                     and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not keys:
        raise ConfigError("no numeric metrics to plot (are the metrics.jsonl files empty?)")
    acc_keys = [k for k in keys if k.endswith("_acc")]
    panels: list[tuple[str, list[str]]] = ([("accuracy [%]", acc_keys)] if acc_keys else [])
    panels += [(k, [k]) for k in keys if k not in acc_keys]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = _figure(rows, cols, 4.2, 3.0)
    flat = [ax for row in axes for ax in row]
    for ax, (title, panel_keys) in zip(flat, panels):
        for run_name, records in runs:
            for key in panel_keys:
                pts = [(r["epoch"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
                if pts:
                    label = run_name if len(panel_keys) == 1 else f"{run_name}: {key}"
                    ax.plot(*zip(*pts), marker="." if len(pts) < 40 else None, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if len(runs) > 1 or len(panel_keys) > 1:
            ax.legend(fontsize=7)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    return _save(fig, path)
