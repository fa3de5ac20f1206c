"""Evaluation: accuracy, and the logits and embeddings of a whole split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.data.tensor_data import TensorDataset, eval_batches


@torch.no_grad()
def predict(model: nn.Module, data: TensorDataset, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """(logits ``[N, C]``, embeddings ``[N, D]``) of every image in ``data``, in order, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits, embeddings = [], []
    for images, _ in eval_batches(data, batch_size):
        out = model(images.to(device))
        logits.append(out.logits.float().cpu())
        embeddings.append(out.embedding.float().cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(embeddings)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 512) -> dict[str, float]:
    """Top-1 accuracy (percent) and mean cross-entropy of ``model`` on ``data``."""
    logits, _ = predict(model, data, batch_size)
    labels = data.labels.cpu()
    return {"acc": accuracy(logits, labels), "loss": F.cross_entropy(logits, labels).item()}
