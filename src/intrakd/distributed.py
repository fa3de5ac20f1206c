"""Data-parallel training on PyTorch's DistributedDataParallel, launched by ``torchrun``.

    torchrun --nproc_per_node 4 -m intrakd train-teacher ...           # one node, 4 GPUs
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m intrakd train-teacher ...                                   # two nodes

Semantics (the same run on 1 or N processes):

* ``data.batch_size`` is the global batch. Every epoch's permutation is drawn from the run's seed on
  every rank; rank ``r`` trains on rows ``[r*b, (r+1)*b)`` of each global batch of ``N*b`` images.
  Rank 0 draws its augmentation from the same stream as a single process, the others from a seed
  derived from ``(seed, epoch, rank)`` (``data/tensor_data.py``).
* The trainable model is wrapped in DDP (gradients averaged over ranks); parameters of the
  objective itself (a projection head) are averaged by :func:`average_gradients`. A frozen teacher
  is never wrapped. Optional SyncBatchNorm (CUDA only) makes batch-norm statistics global.
* The teacher objective exchanges this step's embeddings (``objectives/teacher.py``'s ``PeerBatch``,
  built on :func:`gather_rows` and :func:`gather_tensors`): the other ranks' images of the global
  batch are negatives too, the intra-class loss is averaged over the anchors of
  the whole global batch, and every rank writes all ranks' gated samples, in rank order, into its
  feature cache, so the caches stay identical on every rank and equal to a single process's.
* Metrics are averaged over ranks (:func:`mean_across_ranks`); rank 0 alone writes the run folder.

In a single process every helper here is the identity or a constant, and nothing is initialised.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from intrakd.config import BAD_INPUT, ConfigError, DistConfig

T = TypeVar("T")

# the differentiable all-gather's name since torch 2.14; the older name before
_all_gather_autograd = getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def is_distributed() -> bool:
    """Whether a process group of more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes logs, checkpoints and the run folder (rank 0)."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its node, from torchrun's ``LOCAL_RANK`` (0 when not launched)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this node, from torchrun's ``LOCAL_WORLD_SIZE`` (1 when not launched)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by the launcher (torchrun), 1 when not launched by one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(cfg: DistConfig, device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun with ``WORLD_SIZE > 1``; return the device
    this process trains on (``cuda:LOCAL_RANK`` for an unindexed CUDA device).

    Without a launcher it returns ``device`` unchanged. A group initialised by the caller is
    used as it is; one initialised here is destroyed when the interpreter exits.
    """
    if launched_world_size() == 1 and not is_distributed():
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return device
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("dist.backend=nccl needs CUDA devices: use dist.backend=gloo (or auto) on the CPU")
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    atexit.register(_destroy)
    return device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, sync_batchnorm: bool = False) -> nn.Module:
    """The module the training step calls: ``model`` in DDP when distributed, else ``model`` itself.

    ``sync_batchnorm`` converts the batch norms of ``model`` in place (the state dict keeps its
    keys, so checkpoints are unchanged). The unwrapped ``model`` stays the one to save and evaluate.
    """
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    if sync_batchnorm:
        if device.type != "cuda":
            raise ConfigError("dist.sync_batchnorm needs CUDA: PyTorch's SyncBatchNorm does not run on the CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True
    )


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers of ``module`` to every rank (no-op in one process)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0)


def average_gradients(params: Iterable[Tensor]) -> None:
    """Average the gradients of ``params`` over ranks in one collective (no-op in one process).

    For trainable tensors outside the DDP-wrapped model (an objective's projection head); a missing
    gradient counts as zero.
    """
    params = list(params)
    if not is_distributed() or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def gather_rows(x: Tensor) -> Tensor:
    """Every rank's ``x`` (same shape on each) concatenated along dim 0 in rank order.

    Differentiable: the gradient reaching a rank's rows is summed over the ranks that used them.
    Traceable by ``torch.compile``; no host synchronisation. The identity in one process.
    """
    if not is_distributed():
        return x
    return _all_gather_autograd(x.contiguous(), 0, dist.group.WORLD)


def sum_across_ranks(x: Tensor) -> Tensor:
    """Element-wise sum of ``x`` over ranks, without gradient (the identity in one process)."""
    if not is_distributed():
        return x
    return funcol.all_reduce(x.detach(), "sum", dist.group.WORLD)


def gather_tensors(x: Tensor) -> Tensor:
    """Every rank's ``x`` (same shape on each) concatenated along dim 0 in rank order, without
    gradient (the identity in one process)."""
    if not is_distributed():
        return x
    return funcol.all_gather_tensor(x, 0, dist.group.WORLD)


def mean_across_ranks(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Average 0-dim tensors over ranks in one collective (unchanged in one process)."""
    if not is_distributed() or not values:
        return values
    stacked = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    dist.all_reduce(stacked)
    stacked /= world_size()
    return dict(zip(values, stacked.unbind()))


def run_on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; every rank returns when it is done, and raises if it failed.

    Use for what one process must do before the others go on (create the run folder). Returns
    ``fn``'s result on rank 0 and ``None`` elsewhere.
    """
    result: T | None = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001  (reported to every rank below)
            error = err
    if is_distributed():
        message = [None if error is None else (f"{type(error).__name__}: {error}", isinstance(error, BAD_INPUT))]
        dist.broadcast_object_list(message, src=0)
        if error is None and message[0] is not None:
            text, bad_input = message[0]
            raise (ConfigError if bad_input else RuntimeError)(f"rank 0 failed: {text}")
    if error is not None:
        raise error
    return result


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable) in rank order; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    gathered: list[T] = [None] * world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, obj)
    return gathered


def any_across_ranks(flags: list[bool]) -> list[bool]:
    """For each flag, whether it is true on any rank (one small collective; unchanged in one process).

    Lets every rank take the same decision (checkpoint now, stop now) from rank-local facts.
    """
    if not is_distributed():
        return flags
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]
