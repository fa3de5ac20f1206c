"""Every distillation method on a CUDA device: the benchmark pair (resnet32x4 -> resnet8x4) on
CIFAR-sized synthetic data, in float32 and under bfloat16 autocast, with no host synchronisation
inside the objective's step. Skipped where there is no CUDA device."""

from __future__ import annotations

import pytest
import torch

from intrakd.config import StudentConfig, load_config
from intrakd.data import Augmentation, TensorDataset
from intrakd.models import create_model, feed_with
from intrakd.objectives import (
    create_distiller,
    learned_temperature_methods,
    list_temperatures,
    methods_for_pair,
)
from intrakd.runs import data_input
from intrakd.train.stages import build_optimizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cifar_like() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8, generator=g)
    return TensorDataset(images, torch.arange(2000) % 100, 100,
                         Augmentation((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("method", methods_for_pair("resnet32x4", "resnet8x4")
                         + [f"{method}+{temperature}" for temperature in list_temperatures()
                                                        for method in learned_temperature_methods()])
def test_method_steps_on_cuda_without_host_sync(cifar_like, method, amp):
    """``method``: a method's name, or ``method+temperature`` with a learned temperature."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    method, _, temperature = method.partition("+")
    cfg = load_config(StudentConfig, overrides=[f"distill.method={method}",
                                                *([f"distill.temperature={temperature}"] if temperature else [])])
    fed = data_input(cifar_like)  # as a run feeds zoo models the data's uint8 views
    student = feed_with(create_model("resnet8x4", num_classes=100), fed).to(device)
    teacher = feed_with(create_model("resnet32x4", num_classes=100), fed).to(device).eval().requires_grad_(False)
    objective = create_distiller(cfg.distill, student, teacher, cifar_like).to(device)
    assert all(t.device.type == "cuda" for t in [*objective.parameters(), *objective.buffers()])
    optimizer = build_optimizer([*student.parameters(), *objective.parameters()], cfg.optim)
    batches = cifar_like.train_batches(64, objective.num_views, 0, device)
    batches.set_epoch(0)
    for step, batch in zip(range(4), batches):
        optimizer.zero_grad(set_to_none=True)
        if step == 3:  # after warm-up (lazy CUDA initialisation may synchronise)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                result = objective(student, batch, teacher)
            torch.stack([v.float() for v in result.losses.values()]).sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        optimizer.step()
        assert all(torch.isfinite(v).item() for v in result.losses.values()), result.losses
    assert all(p.grad is None for p in teacher.parameters())
