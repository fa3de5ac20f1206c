"""The teacher of a run that reads its outputs from a store (:mod:`intrakd.data.teacher_store`): no
weights and no forward pass, only the logits stored for the views of the batches being trained on."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from torch import Tensor, nn

from intrakd.data.tensor_data import Batch, Batches
from intrakd.models import ModelOutput

SERVED_BATCHES = 2
"""Batches whose views the stored teacher answers for: the one being trained on and the one before."""


class StoredTeacher(nn.Module):
    """Stands in for the teacher: called on a view of a batch that :meth:`feed` passed on, it returns
    that view's stored logits (as the teacher's :class:`~intrakd.models.ModelOutput`, without embedding or
    features: methods that read those are refused a store). A view is recognised as the very tensor
    the batch holds, which is what the trainer hands the objective."""

    def __init__(self) -> None:
        super().__init__()
        self.served: deque[Batch] = deque(maxlen=SERVED_BATCHES)

    def feed(self, batches: Batches) -> Batches:
        """``batches`` (whose batches carry ``teacher_logits``), each recorded here as it is handed on."""
        return _Fed(batches, self)

    def forward(self, images: Tensor) -> ModelOutput:
        for batch in reversed(self.served):
            for view, logits in zip(batch.views, batch.teacher_logits or ()):
                if images is view:
                    return ModelOutput(logits, None, ())  # type: ignore[arg-type]  (no embedding stored)
        raise RuntimeError("the stored teacher was called on images that are not a view of the batch being "
                           "trained on: this method transforms its views before the teacher sees them, which a "
                           "store of the teacher's outputs cannot serve; distil it with the teacher itself")


class _Fed:
    """Batches handed on through a :class:`StoredTeacher` (implements :class:`~intrakd.data.Batches`)."""

    def __init__(self, batches: Batches, teacher: StoredTeacher) -> None:
        self.batches, self.teacher = batches, teacher

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.batches.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.batches:
            self.teacher.served.append(batch)
            yield batch
