"""A comprehensive overhaul of feature distillation, OFD (Heo et al., ICCV 2019).

At each distilled position a connector (1x1 convolution + BN) maps the student's feature ``S`` to the
teacher's channels. The teacher's pre-ReLU response ``P`` is transformed to ``T = max(P, m)``, where the
per-channel margin ``m = E[x | x < 0]`` for ``x ~ N(beta, gamma^2)``, the Gaussian that the BatchNorm
before the ReLU describes (``gamma``, ``beta``: its affine weight and bias). The partial L2 distance
``sum (S - T)^2`` leaves out the elements with ``S <= T <= 0`` (the student is already below a
negative target); it is summed over channels and positions, averaged over the batch, divided by
``2^(n - 1 - i)`` at the ``i``-th of ``n`` positions, and weighted by ``weight`` (mdistiller's
``OFD.LOSS.FEAT_WEIGHT = 1e-3``, the paper's division by 1000).

Positions: the stage features after the first one of both models, aligned from the end to the shorter
list (as mdistiller does); a larger teacher map is average-pooled to the student's size.

What differs from the paper, and why. intrakd's models return their stage outputs
(``ModelOutput.features``), and most of them are taken after the ReLU, so the pre-ReLU responses the
paper distils are not there. The BatchNorm that carries each teacher stage's statistics is found by
inspecting the teacher once (no architecture is named, see :func:`teacher_batchnorms`):

* a BatchNorm that *feeds* the stage output (only element-wise operations, shortcuts, pooling and
  concatenation in between, e.g. ``relu(bn2(conv2(h)) + shortcut)`` of a ResNet block): ``P`` is the
  stage output itself. Where it is exactly 0 the ReLU clipped a response known only to be ``<= 0``, and
  it is replaced by ``m``, its expected value under the same Gaussian; where the true response lay in
  ``(m, 0]`` the paper would keep it, so the target differs there. Positive responses are exact.
* otherwise a BatchNorm that *reads* the stage output (pre-activation designs such as the Wide ResNets,
  whose next block, and after the last stage the final BN-ReLU, starts with a BatchNorm): ``P`` is that
  BatchNorm, on the batch's statistics as the rest of the teacher, applied to the stage output: exactly
  the paper's pre-ReLU response.

The teacher runs as mdistiller's OFD distiller runs it, in training mode: every BatchNorm normalises by
the batch's own statistics (mdistiller's ``OFD.train`` puts the teacher in training mode along with the
student). Unlike there, the teacher's running statistics are left as they are (:func:`batch_statistics`):
mdistiller updates them, but nothing of its OFD reads them, so the loss is the same, and the teacher
stays what was loaded (its checkpoint, an exact resume).

The student's feature is its stage output (after its ReLU where the model has one), not its pre-ReLU
response as in the paper: the connector's BN output can still take any sign, so every target is
reachable. mdistiller pools the teacher's response before the margin; here the clipped zeros are
filled with ``m`` before pooling (they carry no value to average) and the margin applies after it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from intrakd.config import ConfigError, DistillConfig, setting
from intrakd.data.tensor_data import Batch
from intrakd.models import ModelOutput, probe
from intrakd.objectives.distiller import Distiller, TrainSetInfo
from intrakd.objectives.registry import Difference, ReferenceDifferences, register_distiller


def gaussian_margin(bn: nn.BatchNorm2d) -> Tensor:
    """``[C]`` margins ``E[x | x < 0]`` for ``x ~ N(beta, |gamma|^2)`` per channel, in float64:
    ``beta - |gamma| phi(beta / |gamma|) / Phi(-beta / |gamma|)``; ``-3 |gamma|`` where the negative part
    has probability 0.001 or less (the reference code's rule; also where ``gamma = 0``)."""
    margins = []
    for gamma, beta in zip(bn.weight.detach().double().tolist(), bn.bias.detach().double().tolist()):
        std = abs(gamma)
        below = 0.5 * math.erfc(beta / std / math.sqrt(2.0)) if std > 0 else 0.0  # Phi(-beta / std)
        if below > 1e-3:
            density = math.exp(-0.5 * (beta / std) ** 2) / math.sqrt(2.0 * math.pi)
            margins.append(beta - std * density / below)
        else:
            margins.append(-3.0 * std)
    return torch.tensor(margins, dtype=torch.float64)


@torch.enable_grad()
def teacher_batchnorms(model: nn.Module,
                       image_shape: Sequence[int]) -> list[tuple[nn.BatchNorm2d, bool] | None]:
    """For each stage feature of ``model``, the BatchNorm that carries its pre-ReLU statistics and
    whether it must be applied to the feature (True: it reads the feature) or not (False: it feeds it).

    One zero image goes through the model in eval mode with the autograd graph recorded (the input
    requires a gradient, so frozen weights do not matter). A BatchNorm *feeds* a stage output when the
    graph leads from the output back to the BatchNorm's output without passing through another layer
    with weights (a convolution, a linear layer); of those with as many channels as the feature, the
    one run last is taken. Failing that, the first BatchNorm whose input is the stage output itself
    *reads* it. None for a stage with neither."""
    bn_nodes: dict[object, tuple[int, nn.BatchNorm2d]] = {}
    barriers: set[object] = set()
    readers: list[tuple[Tensor, nn.BatchNorm2d]] = []

    def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if isinstance(module, nn.BatchNorm2d):
            bn_nodes[output.grad_fn] = (len(bn_nodes), module)
            readers.append((inputs[0], module))
        else:
            barriers.add(output.grad_fn)

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d) or next(m.parameters(recurse=False), None) is not None]
    was_training = model.training
    param = next(model.parameters())
    model.eval()
    try:
        image = torch.zeros(1, *image_shape, device=param.device, dtype=param.dtype, requires_grad=True)
        features = model(image).features
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()

    found = []
    for feature in features:
        feeding, stack, seen = [], [feature.grad_fn], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if node in bn_nodes:
                feeding.append(bn_nodes[node])
            elif node not in barriers:
                stack.extend(next_node for next_node, _ in node.next_functions)
        feeding = [(order, bn) for order, bn in feeding if bn.num_features == feature.shape[1]]
        if feeding:
            found.append((max(feeding, key=lambda item: item[0])[1], False))
            continue
        reading = [bn for tensor, bn in readers if tensor is feature]
        found.append((reading[0], True) if reading else None)
    return found


@contextlib.contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, ``model`` runs in training mode, its BatchNorms on the batch's statistics without
    updating their running ones (no buffer of the model changes); its modes are restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    tracking = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.train()
    for m, _ in tracking:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, track in tracking:
            m.track_running_stats = track
        for m, mode in modes:
            m.training = mode


def ofd_targets(teacher_feature: Tensor, margin: Tensor, student_size: Sequence[int]) -> Tensor:
    """The teacher's pre-ReLU response ``P`` (``[B, C, H, W]``) with its exact zeros (responses the
    ReLU clipped) replaced by the margin ``m`` (``[C]``), average-pooled to ``student_size``."""
    m = margin.to(teacher_feature.dtype)[None, :, None, None]
    filled = torch.where(teacher_feature == 0, m, teacher_feature)
    if tuple(filled.shape[-2:]) != tuple(student_size):
        filled = F.adaptive_avg_pool2d(filled, tuple(student_size))
    return filled


def partial_l2(student: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """``sum (S - T)^2`` with ``T = max(target, m)`` over the elements that do not have
    ``S <= T <= 0``, summed over channels and positions and averaged over the batch."""
    t = torch.maximum(target, margin.to(target.dtype)[None, :, None, None])
    skip = (student <= t) & (t <= 0)
    return ((student - t) ** 2).masked_fill(skip, 0.0).sum() / student.shape[0]


@dataclass
class OFDSettings:
    """OFD (Heo et al., ICCV 2019): partial L2 to the teacher's margin-clipped pre-ReLU responses."""

    weight: float = setting(1e-3, "weight of the OFD term (its positions summed, each halved per position "
                                  "from the last)", ">= 0")


REFERENCE = ReferenceDifferences(
    "mdistiller: mdistiller/distillers/OFD.py",
    (
        Difference(
            "the teacher's pre-ReLU response is recovered from its stage output (clipped zeros replaced by "
            "the margin, or the reading BatchNorm applied), and the student's feature is its stage output "
            "after the ReLU",
            "the model contract returns stage outputs, not pre-ReLU responses",
            "targets in (m, 0] become m on post-activation designs; positive responses exact"),
        Difference(
            "clipped zeros are filled with the margin before pooling a larger teacher map, the margin "
            "applied after it",
            "the clipped zeros carry no value to average",
            "small; only where the teacher's map is larger"),
    ))
"""The reference code this method follows, and its deliberate differences from it."""


@register_distiller("ofd", REFERENCE)
class OFDObjective(Distiller):
    """OFD (Heo et al., ICCV 2019): partial L2 to the teacher's margin-clipped pre-ReLU responses."""

    kind = "features"
    teacher_in_graph = False
    settings_class = OFDSettings
    recipe = (1.0, 0.0)

    def __init__(self, cfg: DistillConfig, student: nn.Module, teacher: nn.Module, data: TrainSetInfo) -> None:
        super().__init__(cfg, student, teacher, data)
        s_features = probe(student, data.input_shape).features[1:]
        t_features = probe(teacher, data.input_shape).features[1:]
        count = min(len(s_features), len(t_features))
        if count == 0:
            raise ConfigError("OFD needs at least two stage features in the student and the teacher")
        self.student_stages = range(len(s_features) + 1 - count, len(s_features) + 1)
        self.teacher_stages = range(len(t_features) + 1 - count, len(t_features) + 1)
        batchnorms = teacher_batchnorms(teacher, data.input_shape)
        self.connectors = nn.ModuleList()
        readers: list[nn.BatchNorm2d | None] = []
        for i, (s, t, k) in enumerate(zip(s_features[-count:], t_features[-count:], self.teacher_stages)):
            found = batchnorms[k]
            if found is None:
                raise ConfigError(f"OFD needs a BatchNorm2d feeding or reading each distilled teacher stage "
                                 f"feature (the margin comes from its statistics); the teacher's stage feature {k} "
                                 f"({'x'.join(map(str, t.shape[1:]))}) has none")
            conv = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            self.connectors.append(nn.Sequential(conv, nn.BatchNorm2d(t.shape[1])))
            self.register_buffer(f"margin{i}", gaussian_margin(found[0]).float(), persistent=False)
            readers.append(found[0] if found[1] else None)
        # The teacher's reading BatchNorms stay the teacher's: a tuple is not a submodule, so they are
        # neither trained nor saved with the student.
        self.readers = tuple(readers)

    def outputs(self, model: nn.Module, teacher: nn.Module | None, images: Tensor) -> tuple[ModelOutput, ModelOutput]:
        """Both models' outputs, the teacher's on the batch's statistics (:func:`batch_statistics`)."""
        if teacher is None:
            return super().outputs(model, teacher, images)
        with batch_statistics(teacher):
            return super().outputs(model, teacher, images)

    def pre_activation(self, i: int, teacher_feature: Tensor) -> Tensor:
        """The teacher's response at position ``i``: the stage output, or its reading BatchNorm's output
        on the batch's statistics."""
        bn = self.readers[i]
        if bn is None:
            return teacher_feature
        with torch.no_grad():
            return F.batch_norm(teacher_feature, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)

    def method_losses(self, student: ModelOutput, teacher: ModelOutput,
                      batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        n = len(self.connectors)
        total = student.logits.new_zeros((), dtype=torch.float32)
        with torch.autocast(device_type=student.logits.device.type, enabled=False):
            for i, (s_k, t_k) in enumerate(zip(self.student_stages, self.teacher_stages)):
                mapped = self.connectors[i](student.features[s_k].float())
                margin = getattr(self, f"margin{i}")
                target = ofd_targets(self.pre_activation(i, teacher.features[t_k].float()), margin,
                                     mapped.shape[-2:])
                total = total + partial_l2(mapped, target, margin) / 2 ** (n - 1 - i)
        return {"ofd": self.settings.weight * total}, {}
