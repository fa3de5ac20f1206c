"""Evaluation: accuracy, and the logits and embeddings of a whole split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.data.tensor_data import Split
from intrakd.progress import Progress


@torch.no_grad()
def predict(model: nn.Module, data: Split, batch_size: int = 512,
            desc: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(logits ``[N, C]``, embeddings ``[N, D]``, labels ``[N]``) of a whole split, on the CPU.
    With ``desc``, progress is shown under that name (see :mod:`intrakd.progress`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, embeddings, labels = [], [], []
    progress = Progress(-(-len(data) // batch_size), desc or "", enabled=desc is not None)
    for images, batch_labels in data.eval_batches(batch_size, device):
        out = model(images)
        logits.append(out.logits.float().cpu())
        embeddings.append(out.embedding.float().cpu())
        labels.append(batch_labels.cpu())
        progress.update(1, batch_labels.shape[0])
    progress.close()
    model.train(was_training)
    return torch.cat(logits), torch.cat(embeddings), torch.cat(labels)


def accuracy(logits: Tensor, labels: Tensor, k: int = 1) -> float:
    """Top-``k`` accuracy in percent: the label is among the ``k`` highest logits (``k`` capped at the
    number of classes)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return 100.0 * (top == labels.to(logits.device)[:, None]).any(1).float().mean().item()


def evaluate(model: nn.Module, data: Split, batch_size: int = 512) -> dict[str, float]:
    """Top-1 (``acc``) and top-5 (``top5``) accuracy in percent and mean cross-entropy of ``model`` on
    ``data``."""
    logits, _, labels = predict(model, data, batch_size)
    return {"acc": accuracy(logits, labels), "top5": accuracy(logits, labels, 5),
            "loss": F.cross_entropy(logits, labels).item()}
