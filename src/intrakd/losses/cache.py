"""The per-class feature cache: ring buffers of detached embeddings that supply extra negatives."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from intrakd.losses.intra import Memory


class FeatureCache(nn.Module):
    """One ring buffer of ``capacity`` embeddings per class, held as module buffers.

    All state (``features [C, K, D]``, the sample index of every entry ``ids [C, K]`` (-1 where
    unknown), write ``pointer [C]``, ``written_at [C, K]`` (-1: empty slot) and the ``step`` counter)
    is saved and restored with the module's state dict. A state dict saved before ``ids`` existed
    loads with every id unknown; one holding the fill counts ``count [C]`` that older versions kept
    (never read) loads without them. Reads and writes use fixed shapes and no host synchronisation,
    so a training step that uses the cache can be captured or compiled.

    Args:
        num_classes: number of classes ``C``.
        capacity: entries per class ``K`` (>= 1).
        dim: embedding size ``D``.
        max_age: entries older than this many steps are ignored (``None``: never); an entry written
            in the previous step has age 1.
    """

    def __init__(self, num_classes: int, capacity: int, dim: int, max_age: int | None = None) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        if max_age is not None and max_age < 0:
            raise ValueError(f"max_age must be >= 0 or None, got {max_age}")
        self.num_classes, self.capacity, self.dim, self.max_age = num_classes, capacity, dim, max_age
        self.register_buffer("features", torch.zeros(num_classes, capacity, dim))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("written_at", torch.full((num_classes, capacity), -1, dtype=torch.long))
        self.register_buffer("ids", torch.full((num_classes, capacity), -1, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # checkpoints written before the cache kept sample ids: every entry's id is unknown
        state_dict.setdefault(prefix + "ids", torch.full_like(self.ids, -1))
        # checkpoints written while the cache kept per-class fill counts (never read): dropped
        state_dict.pop(prefix + "count", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def valid(self) -> Tensor:
        """``[C, K]`` bool: slots that hold an entry young enough to use."""
        valid = self.written_at >= 0
        if self.max_age is not None:
            valid = valid & (self.step - self.written_at <= self.max_age)
        return valid

    def memory(self, with_ids: bool = True) -> Memory:
        """The usable entries as a per-class :class:`Memory` of negatives (``with_ids=False``: every
        entry's sample unknown, so that an older embedding of the anchor's own image may serve)."""
        labels = torch.arange(self.num_classes, device=self.ids.device)[:, None].expand_as(self.ids)
        return Memory(self.features, labels, self.ids if with_ids else torch.full_like(self.ids, -1), self.valid())

    @torch.no_grad()
    def write(self, features: Tensor, labels: Tensor, mask: Tensor | None = None, ids: Tensor | None = None) -> None:
        """Append the rows of ``features`` with ``mask`` true to their class buffers, oldest out.

        ``ids`` (``[B]``, default unknown: -1) are the rows' sample indices, kept with the entries so
        that an anchor never meets a cached embedding of its own image as a negative. When more than
        ``K`` rows of one class arrive at once, the last ``K`` are kept. Advances ``step`` by one.
        """
        n = features.shape[0]
        if n == 0:
            self.step += 1
            return
        keep = torch.ones(n, dtype=torch.bool, device=features.device) if mask is None else mask.bool()
        one_hot = torch.zeros(n, self.num_classes, dtype=torch.long, device=features.device)
        one_hot.scatter_(1, labels[:, None], keep[:, None].long())  # [B, C]: 1 where a kept row's class
        arrivals = one_hot.sum(dim=0)  # [C]
        rank = (one_hot.cumsum(dim=0) - 1).gather(1, labels[:, None]).squeeze(1)  # order within class
        keep = keep & (rank >= arrivals[labels] - self.capacity)
        slot = labels * self.capacity + (self.pointer[labels] + rank) % self.capacity

        # Kept rows have distinct slots. Every other row writes what the first kept row writes (or, when
        # no row is kept, slot 0's own content back), so each slot receives a single value whatever the
        # order of the writes, and the work is B x D, not C x K x D.
        flat_features = self.features.view(-1, self.dim)
        flat_written = self.written_at.view(-1)
        flat_ids = self.ids.view(-1)
        first = keep.int().argmax().view(1)
        any_kept = keep.any()
        target = torch.where(keep, slot, torch.where(any_kept, slot.index_select(0, first), 0))
        values = features.detach().to(flat_features.dtype)
        spare_value = torch.where(any_kept, values.index_select(0, first), flat_features[:1])
        spare_step = torch.where(any_kept, self.step, flat_written[:1])
        flat_features.index_put_((target,), torch.where(keep[:, None], values, spare_value))
        flat_written.index_put_((target,), torch.where(keep, self.step, spare_step))
        row_ids = torch.full_like(labels, -1) if ids is None else ids.to(flat_ids.dtype)
        spare_id = torch.where(any_kept, row_ids.index_select(0, first), flat_ids[:1])
        flat_ids.index_put_((target,), torch.where(keep, row_ids, spare_id))

        self.pointer.copy_((self.pointer + arrivals) % self.capacity)
        self.step += 1

    @torch.no_grad()
    def clear(self, classes: Tensor) -> None:
        """Empty the buffers of the classes where the ``[C]`` bool mask ``classes`` is true."""
        classes = classes.bool()
        self.written_at.copy_(torch.where(classes[:, None], -1, self.written_at))
        self.pointer.copy_(torch.where(classes, 0, self.pointer))

    def fill(self) -> Tensor:
        """Mean fraction of usable slots, a 0-dim float tensor (no host synchronisation)."""
        return self.valid().float().mean()
