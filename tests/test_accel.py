"""Speed settings: resolution per device, float32 loss math under bf16 autocast, channels-last,
the fused optimizer, and a training step that compiles without a graph break."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fakes import TinyNet, cache_memory
from torch import Tensor

from intrakd.config import (
    ConfigError,
    DistillConfig,
    IntraConfig,
    OptimConfig,
    PerfConfig,
    TeacherConfig,
    load_config,
)
from intrakd.data.tensor_data import Batch
from intrakd.losses import Memory, intra_class_terms, kd_loss
from intrakd.models import create_model
from intrakd.objectives import IntraClassTeacherObjective, TrainSetInfo, create_distiller
from intrakd.objectives.base import StepResult
from intrakd.train import accel
from intrakd.train.accel import PerfSettings, resolve_perf
from intrakd.train.meter import EpochMeter
from intrakd.train.stages import build_optimizer

CPU = torch.device("cpu")


@pytest.mark.parametrize("native_bf16", [False, True])
def test_auto_settings_on_the_cpu_follow_its_bf16_instructions(monkeypatch, native_bf16):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: native_bf16)
    perf = resolve_perf(PerfConfig(), CPU)
    assert perf.autocast_dtype is (torch.bfloat16 if native_bf16 else None)
    assert perf.channels_last is native_bf16
    assert (perf.fused_optimizer, perf.compile, perf.threads) == (False, False, None)
    assert perf.optimizer_options() == {}
    assert perf.describe()["precision"] == ("bf16" if native_bf16 else "fp32")
    explicit = resolve_perf(PerfConfig(precision="fp32", channels_last=False), CPU)
    assert explicit.autocast_dtype is None and not explicit.channels_last


def test_explicit_settings_are_honoured_and_threads_are_shared_among_processes():
    perf = resolve_perf(PerfConfig(precision="bf16", channels_last=True, fused_optimizer=True, compile=True,
                                   compile_mode="max-autotune"), CPU)
    assert perf.autocast_dtype is torch.bfloat16 and perf.channels_last and perf.compile
    assert perf.optimizer_options() == {"fused": True}
    assert perf.describe()["compile"] == "max-autotune"
    cores = torch.get_num_threads()
    assert resolve_perf(PerfConfig(), CPU, processes_per_node=2).threads == max(1, cores // 2)
    assert resolve_perf(PerfConfig(threads=3), CPU, processes_per_node=2).threads == 3


def test_perf_and_dist_sections_load_from_overrides_and_reject_bad_values():
    cfg = load_config(TeacherConfig, overrides=["perf.precision=bf16", "perf.channels_last=true",
                                                "perf.compile=true", "dist.sync_batchnorm=true"])
    assert (cfg.perf.precision, cfg.perf.channels_last, cfg.perf.compile, cfg.dist.sync_batchnorm) == (
        "bf16", True, True, True)
    with pytest.raises(ConfigError, match="perf.precision: 'fp16' is not one of 'auto', 'fp32', 'bf16'"):
        load_config(TeacherConfig, overrides=["perf.precision=fp16"])
    with pytest.raises(ConfigError, match="perf.threads must be >= 1"):
        load_config(TeacherConfig, overrides=["perf.threads=0"])
    with pytest.raises(ConfigError, match="unknown config key dist.nodes"):
        load_config(TeacherConfig, overrides=["dist.nodes=2"])


def test_loss_math_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = TinyNet()
    objective = IntraClassTeacherObjective(IntraConfig(delta=-1, cache_size=4), 4, model.embedding_dim, 2)
    views = (torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8))
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    perf = resolve_perf(PerfConfig(precision="bf16"), CPU)
    with perf.autocast():
        assert model(views[0]).logits.dtype == torch.bfloat16  # the forward pass does run in bf16
        result = objective(model, Batch(views, labels, torch.arange(8)))
        a, p = torch.randn(8, 16).bfloat16(), torch.randn(8, 16).bfloat16()
        per_anchor, _ = intra_class_terms(a, p, labels, symmetric=True)
        kd = kd_loss(torch.randn(8, 4).bfloat16(), torch.randn(8, 4).bfloat16(), 4.0)
    assert {k: v.dtype for k, v in result.losses.items()} == {"ce": torch.float32, "intra": torch.float32}
    assert per_anchor.dtype == torch.float32 and kd.dtype == torch.float32
    # the same bf16 inputs give the float32 result computed outside autocast
    expected, _ = intra_class_terms(a.float(), p.float(), labels, symmetric=True)
    torch.testing.assert_close(per_anchor, expected, rtol=0, atol=0)


def test_channels_last_model_computes_the_same_outputs():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10).eval()
    x = torch.randn(4, 3, 32, 32)
    expected = model(x).logits
    perf = resolve_perf(PerfConfig(channels_last=True), CPU)
    assert perf.prepare_model(model) is model
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x).logits, expected, rtol=1e-4, atol=1e-4)


def test_fused_sgd_takes_the_same_steps_as_the_default_implementation():
    torch.manual_seed(0)
    models = [TinyNet(), TinyNet()]
    models[1].load_state_dict(models[0].state_dict())
    options = [PerfSettings.plain(CPU).optimizer_options(),
               resolve_perf(PerfConfig(fused_optimizer=True), CPU).optimizer_options()]
    optimizers = [build_optimizer(m.parameters(), OptimConfig(), **o) for m, o in zip(models, options)]
    assert optimizers[1].defaults["fused"] is True
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 4, (16,))
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            F.cross_entropy(model(x).logits, y).backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _teacher_batches(steps: int) -> list[Batch]:
    generator = torch.Generator().manual_seed(1)
    return [Batch((torch.randn(16, 1, 8, 8, generator=generator), torch.randn(16, 1, 8, 8, generator=generator)),
                  torch.randint(0, 4, (16,), generator=generator), torch.arange(16) + 16 * (step % 2))
            for step in range(steps)]


@pytest.mark.parametrize("intra", [
    IntraConfig(margin="logit", delta=0.0, cache_size=4),
    IntraConfig(delta=-1, cache_size=4, max_age=2, min_negatives=2, clear_after_use=True, head="linear"),
], ids=["gate-cache", "clear-head"])
def test_teacher_step_compiles_without_graph_break_and_matches_eager(intra):
    """``fullgraph=True`` fails on any graph break (a host synchronisation such as ``.item()`` would
    be one); the ``aot_eager`` backend traces forward and backward like inductor does, without the
    minutes of CPU code generation. Recompiling between steps is an error too."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager_model = TinyNet()
    eager_obj = IntraClassTeacherObjective(intra, 4, eager_model.embedding_dim, 2)
    torch.manual_seed(0)
    model = TinyNet()
    objective = IntraClassTeacherObjective(intra, 4, model.embedding_dim, 2)
    compiled = torch.compile(objective, backend="aot_eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for batch in _teacher_batches(3):
            results = [compiled(model, batch), eager_obj(eager_model, batch)]
            for result, m, o in zip(results, [model, eager_model], [objective, eager_obj]):
                m.zero_grad()
                o.zero_grad()
                sum(result.losses.values()).backward()
            for name in ("ce", "intra"):
                torch.testing.assert_close(results[0].losses[name], results[1].losses[name])
            torch.testing.assert_close(results[0].stats["anchors_used"], results[1].stats["anchors_used"])
            for a, b in zip(model.parameters(), eager_model.parameters()):
                torch.testing.assert_close(a.grad, b.grad)
    assert results[1].stats["anchors_used"] > 0  # the intra-class term was active
    for key, value in eager_obj.cache.state_dict().items():
        torch.testing.assert_close(objective.cache.state_dict()[key], value)
    assert int(objective.cache.step) == 3


def test_kd_step_compiles_without_graph_break():
    torch._dynamo.reset()
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet(width=4).eval().requires_grad_(False)
    info = TrainSetInfo(4, torch.zeros(0, dtype=torch.long), (1, 8, 8))
    objective = create_distiller(DistillConfig.recipe("kd"), student, teacher, info)
    compiled = torch.compile(objective, backend="aot_eager", fullgraph=True)
    batch = _teacher_batches(1)[0]
    batch = Batch(batch.views[:1], batch.labels)
    result, expected = compiled(student, batch, teacher), objective(student, batch, teacher)
    for name in ("ce", "kd"):
        torch.testing.assert_close(result.losses[name], expected.losses[name])


def test_kd_step_with_a_vit_teacher_compiles_and_runs_its_teacher_under_no_grad_there():
    """Eager KD runs the teacher under inference_mode; compiled, under no_grad: torch.compile fails on
    a view of a parameter made under inference_mode (the ViT's class token, expanded to the batch)."""
    pytest.importorskip("timm")
    torch._dynamo.reset()
    torch.manual_seed(0)
    teacher = create_model("timm/vit_tiny_patch16_224", num_classes=4, image_shape=(1, 16, 16))
    teacher = teacher.eval().requires_grad_(False)
    student = TinyNet()
    objective = create_distiller(DistillConfig.recipe("kd"), student, teacher,
                                 TrainSetInfo(4, torch.zeros(0, dtype=torch.long), (1, 16, 16)))
    batch = Batch((torch.randn(4, 1, 16, 16),), torch.arange(4))
    result = torch.compile(objective, backend="aot_eager", fullgraph=True)(student, batch, teacher)
    result.losses["kd"].backward()
    torch.testing.assert_close(result.losses["kd"], objective(student, batch, teacher).losses["kd"])
    assert objective.outputs(student, teacher, batch.views[0])[1].logits.is_inference()


def test_compile_step_is_opt_in_and_shares_the_objective_state():
    objective = IntraClassTeacherObjective(IntraConfig(cache_size=4), 4, 16, 2)
    assert PerfSettings.plain(CPU).compile_step(objective) is objective
    compiled = resolve_perf(PerfConfig(compile=True), CPU).compile_step(objective)
    assert compiled is not objective
    assert compiled.state_dict().keys() == {f"_orig_mod.{k}" for k in objective.state_dict()}
    assert compiled.cache is objective.cache


@pytest.mark.parametrize(("compile_mode", "cuda_graphs"), [
    ("default", False), ("reduce-overhead", True), ("max-autotune", True), ("max-autotune-no-cudagraphs", False)])
def test_the_compile_modes_that_replay_cuda_graphs_are_known(compile_mode, cuda_graphs):
    assert resolve_perf(PerfConfig(compile=True, compile_mode=compile_mode), CPU).cuda_graphs is cuda_graphs
    assert resolve_perf(PerfConfig(compile=False, compile_mode=compile_mode), CPU).cuda_graphs is False


def test_epoch_meter_keeps_its_own_copies_of_the_step_outputs():
    """With CUDA graphs (compile_mode=reduce-overhead) the next step writes over this step's outputs:
    the epoch's sums must not share their memory."""
    meter = EpochMeter()
    labels = torch.tensor([0, 1])
    for value in (1.0, 3.0):
        result = StepResult({"ce": torch.tensor(value)}, torch.eye(2), {"pass_rate": torch.tensor(value / 4)})
        loss = torch.tensor(value)
        meter.add(loss, result, labels)
        for out in (loss, result.logits, *result.losses.values(), *result.stats.values()):
            out.fill_(float("nan"))  # what a replay of the captured step does to its outputs
    summary = meter.summary()
    assert (summary["loss"], summary["ce"], summary["pass_rate"], summary["train_acc"]) == (2.0, 2.0, 0.5, 100.0)


def _slow_terms(a: Tensor, p: Tensor, labels: Tensor, bank: list[tuple[Tensor, int]], tau: float,
                symmetric: bool) -> tuple[list[float], list[int]]:
    """l(anchor) and its number of negatives, one anchor at a time (float64)."""
    anchors = [(a[i], p[i], i) for i in range(len(a))] + ([(p[i], a[i], i) for i in range(len(a))] if symmetric else [])
    losses, counts = [], []
    for x, pos, i in anchors:
        negatives = [v for j in range(len(a)) if j != i and labels[j] == labels[i] for v in (a[j], p[j])]
        negatives += [v for v, c in bank if c == labels[i]]
        exps = [torch.exp((x @ n - x @ pos) / tau) for n in negatives]
        losses.append(float(torch.log1p(sum(exps)) if exps else torch.zeros((), dtype=torch.float64)))
        counts.append(len(negatives))
    return losses, counts


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_per_class_memory_gives_the_flattened_memorys_terms_and_gradients(symmetric, normalize):
    """The teacher reads its cache per class (K comparisons per anchor, not C*K): the same loss,
    negatives and gradients as the flattened cache rows with their labels, and as a slow loop."""
    from intrakd.losses import FeatureCache

    torch.manual_seed(0)
    classes, batch, dim, tau = 5, 12, 6, 0.2
    cache = FeatureCache(classes, capacity=3, dim=dim, max_age=3)
    scale = 1.0 if normalize else 0.5  # unnormalised rows where the loss normalises them
    for _ in range(5):  # partly filled, partly aged out, class 4 never written
        rows = torch.randn(7, dim) * (2.0 if normalize else 0.5)
        cache.write(rows, torch.randint(0, 4, (7,)), torch.rand(7) < 0.7)
    cache.clear(torch.tensor([False, True, False, False, False]))
    cache.write(torch.randn(2, dim) * scale, torch.tensor([1, 1]))
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 4, 4, 0, 2, 3])
    a0, p0 = torch.randn(batch, dim) * scale, torch.randn(batch, dim) * scale
    gate = torch.rand(2 * batch if symmetric else batch) < 0.8
    flat, flat_labels = cache_memory(cache)
    results = []
    for kwargs in ({"memory": [Memory.of(flat, flat_labels)]}, {"memory": [cache.memory(with_ids=False)]}):
        a, p = a0.clone().requires_grad_(), p0.clone().requires_grad_()
        per_anchor, contributing = intra_class_terms(a, p, labels, anchor_mask=gate, temperature=tau,
                                                     normalize=normalize, symmetric=symmetric, min_negatives=2,
                                                     **kwargs)
        ((per_anchor * contributing).sum()).backward()
        results.append((per_anchor.detach(), contributing, a.grad, p.grad))
    for flat_result, class_result in zip(*results):
        torch.testing.assert_close(class_result, flat_result, rtol=1e-5, atol=1e-6)
    unit = (lambda x: F.normalize(x, dim=-1)) if normalize else (lambda x: x)
    bank = [(unit(cache.features[c, k].double()), c) for c in range(classes) for k in range(3) if cache.valid()[c, k]]
    slow, counts = _slow_terms(unit(a0.double()), unit(p0.double()), labels, bank, tau, symmetric)
    counted = torch.tensor(counts) >= 2
    assert torch.equal(results[1][1], counted & gate)
    torch.testing.assert_close(results[1][0][counted], torch.tensor(slow)[counted].float(), rtol=1e-5, atol=1e-5)
    assert 0 < int(results[1][1].sum()) < len(counts)  # some anchors in, some out


def test_per_class_memory_shapes_are_checked():
    wrong = Memory.of(torch.randn(3, 4, 2), torch.zeros(3, dtype=torch.long), valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"a memory's features must be \[M, D\] or \[C, K, D\] and its labels, ids "
                                         r"and valid \[M\] or \[C, K\], got \(3, 4, 2\) and \(3,\), \(3, 4\), \(3,\)"):
        intra_class_terms(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]), memory=[wrong])


def test_cache_write_matches_a_sequential_ring_buffer():
    """The cache's B x D write (kept rows scattered, the others repeating a kept row's write) leaves
    exactly the state of appending the gated rows one at a time, oldest out."""
    from intrakd.losses import FeatureCache

    torch.manual_seed(0)
    classes, capacity, dim = 4, 3, 5
    cache = FeatureCache(classes, capacity, dim)
    features = torch.zeros(classes, capacity, dim)
    written_at = torch.full((classes, capacity), -1)
    pointer = [0] * classes
    batches = [(9, 0.5), (9, 0.0), (9, 1.0), (2, 1.0), (0, 1.0), (11, 0.8), (1, 0.0), (8, 0.6)]  # rows, kept
    for step, (n, fraction) in enumerate(batches):
        rows = torch.randn(n, dim)
        labels = torch.randint(0, 2 if step == 2 else classes, (n,))  # step 2: more than K rows of a class
        mask = torch.rand(n) < fraction
        cache.write(rows, labels, mask)
        for row, label, kept in zip(rows, labels.tolist(), mask.tolist()):
            if kept:
                features[label, pointer[label]] = row
                written_at[label, pointer[label]] = step
                pointer[label] = (pointer[label] + 1) % capacity
        assert torch.equal(cache.features, features), step
        assert torch.equal(cache.written_at, written_at), step
        assert cache.pointer.tolist() == pointer and int(cache.step) == step + 1
