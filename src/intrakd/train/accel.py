"""Device-dependent speed settings: autocast, channels-last, cuDNN autotuning, the fused optimizer,
``torch.compile`` and CPU threads, resolved from a :class:`~intrakd.config.PerfConfig`.

The ``"auto"`` defaults are what measured fastest (``benchmarks/RESULTS.md``): where the hardware
computes in bfloat16 natively (Ampere or newer GPUs; CPUs with AVX512-BF16 or AMX), bf16 autocast
and channels-last models (a resnet8x4 step 2.3x faster than float32 on such a CPU), elsewhere
float32 in the default memory format; fused SGD on CUDA, PyTorch's default SGD on the CPU. Loss math stays
float32 under autocast: the losses disable it internally and upcast
their inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from intrakd.config import ConfigError, PerfConfig


@dataclass(frozen=True)
class PerfSettings:
    """Resolved speed settings for one device (no ``"auto"`` left)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    """Autocast dtype of the forward pass; None: float32, autocast off."""
    channels_last: bool
    fused_optimizer: bool
    cudnn_benchmark: bool
    compile: bool
    compile_mode: str
    threads: int | None

    @classmethod
    def plain(cls, device: torch.device) -> PerfSettings:
        """Float32, default memory format, nothing compiled: PyTorch's behaviour out of the box."""
        return cls(device, None, False, False, False, False, "default", None)

    def apply(self) -> None:
        """Set the process-wide switches: cuDNN autotuning and the CPU thread count."""
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context of the forward pass: autocast to :attr:`autocast_dtype`, or nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` in channels-last memory format when that is on (in place; returns it)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def optimizer_options(self) -> dict[str, Any]:
        """Keyword arguments of the optimiser (SGD or AdamW) selecting its implementation (fused, or
        PyTorch's default choice)."""
        return {"fused": True} if self.fused_optimizer else {}

    def compile_step(self, objective: nn.Module) -> Callable[..., Any]:
        """What the trainer calls each step: ``objective`` compiled (model forward, loss, gate and
        cache in one graph) when ``compile`` is on, else ``objective`` itself. Both share state."""
        if not self.compile:
            return objective
        return torch.compile(objective, mode=None if self.compile_mode == "default" else self.compile_mode)

    @property
    def cuda_graphs(self) -> bool:
        """Whether the compiled step replays CUDA graphs (the compile modes that turn them on), so
        that each step's outputs live only until the next step begins."""
        return self.compile and self.compile_mode in ("reduce-overhead", "max-autotune")

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (for logs and benchmark tables)."""
        return {
            "device": str(self.device),
            "precision": {None: "fp32", torch.bfloat16: "bf16"}[self.autocast_dtype],
            "channels_last": self.channels_last,
            "fused_optimizer": self.fused_optimizer,
            "cudnn_benchmark": self.cudnn_benchmark if self.device.type == "cuda" else None,
            "compile": self.compile_mode if self.compile else False,
            "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
        }


def resolve_perf(cfg: PerfConfig, device: torch.device, processes_per_node: int = 1) -> PerfSettings:
    """Turn ``cfg`` into settings for ``device``, resolving every ``"auto"``.

    ``processes_per_node`` shares the CPU cores among data-parallel processes when ``threads`` is
    not given. Raises ``ConfigError`` for a precision the device cannot run.
    """
    cuda = device.type == "cuda"
    # bf16 where the hardware computes in it natively: Ampere or newer GPUs, CPUs with AVX512-BF16 or AMX
    fast_bf16 = torch.cuda.get_device_capability(device) >= (8, 0) if cuda else (
        device.type == "cpu" and cpu_has_native_bf16())
    if cfg.precision == "auto":
        dtype = torch.bfloat16 if fast_bf16 else None
    elif cfg.precision == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"perf.precision=bf16: {torch.cuda.get_device_name(device)} does not support "
                             "bfloat16; use perf.precision=fp32")
        dtype = torch.bfloat16
    else:
        dtype = None
    threads = cfg.threads
    if threads is None and device.type == "cpu" and processes_per_node > 1:
        threads = max(1, torch.get_num_threads() // processes_per_node)
    return PerfSettings(
        device=device,
        autocast_dtype=dtype,
        channels_last=fast_bf16 if cfg.channels_last == "auto" else cfg.channels_last,
        fused_optimizer=cuda if cfg.fused_optimizer == "auto" else cfg.fused_optimizer,
        cudnn_benchmark=cfg.cudnn_benchmark,
        compile=cfg.compile,
        compile_mode=cfg.compile_mode,
        threads=threads,
    )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), so that bf16 autocast pays."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)
