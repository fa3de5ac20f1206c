"""Any timm architecture under the model contract: ``create_model("timm/<name>", num_classes=N)``.

timm is optional (``pip install 'intrakd[timm]'``) and imported only when a ``timm/`` model is built
or listed. ``<name>`` is any name ``timm.create_model`` takes, a pretrained tag included
(``timm/resnet50.a1_in1k``).

* One forward pass runs the backbone once: timm's ``forward_intermediates`` gives the stage features
  (one per entry of the model's ``feature_info``: stem and stages of a CNN; every block of a ViT, its
  patch tokens reshaped to ``[B, C, H/patch, W/patch]`` maps, class and register tokens left out) and
  the final feature map, which ``forward_head`` turns into the logits. The embedding is what the
  classifier reads (its input, flattened; while training it includes the model's own head dropout).
* The wrapper's state dict is the timm model's, with timm's parameter names, so a state dict saved
  from timm (or torchvision, whose ResNet names timm's ResNet shares) loads as it is, as a teacher
  checkpoint (``teacher_model=timm/resnet50 --teacher resnet50.pth``) or as ``weights``.
* Built for the images it will read: their channels, and their size for models whose input size is
  fixed when built (ViT, Swin, MLP-Mixer; timm resamples position embeddings of loaded weights).
* Starting weights: ``weights=PATH`` reads a local file (timm's, torchvision's or an intrakd
  checkpoint; ``.safetensors`` too) through timm's own loading; ``pretrained=True`` downloads timm's
  published weights, only when asked. A classifier of another number of classes is replaced by a new
  one, as timm does, and said so on stderr.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import Tensor, nn

from intrakd.config import ConfigError
from intrakd.models.contract import Classifier, ModelOutput
from intrakd.models.registry import register_family

PREFIX = "timm/"
INSTALL = "pip install 'intrakd[timm]'"


def import_timm() -> ModuleType:
    """The timm package, or a ``ConfigError`` that says how to install it."""
    try:
        import timm
    except ImportError as err:
        raise ConfigError(f"timm models need the timm package, which is not installed ({err}): {INSTALL}") from None
    return timm


class TimmClassifier(Classifier):
    """A timm model under the model contract (see the module's description); the timm model is
    :attr:`net`, its classifier ``net.get_classifier()``. A model with a distillation token and head
    (timm's ``*_distilled_*`` architectures, or a ViT given one by :func:`add_distillation_token`)
    predicts the mean of its two heads, as DeiT does, and returns each head's scores as well
    (:attr:`ModelOutput.heads`); its embedding is what the class token's head reads."""

    def __init__(self, net: nn.Module, name: str) -> None:
        super().__init__()
        classifier = net.get_classifier()
        heads = (classifier,) if isinstance(classifier, nn.Module) else tuple(classifier)
        if len(heads) > 1 and not (len(heads) == 2 and hasattr(net, "distilled_training")):
            raise ConfigError(  # a model the user chose: bad input
                f"timm model {name!r} has {len(heads)} classifiers: intrakd's models have one, or a class and a "
                "distillation head (DeiT); choose another model")
        self.net = net
        self.num_classes = net.num_classes
        self.embedding_dim = getattr(net, "head_hidden_size", None) or net.num_features
        self._classifier_inputs: list[Tensor] | None = None  # lists only while forward runs the heads
        self._head_outputs: list[Tensor] | None = None
        heads[0].register_forward_pre_hook(self._read_classifier_input)
        self.distilled = False
        """Whether the model has a distillation token and head besides its class token and head."""
        if len(heads) == 2:
            self._watch_heads(heads)
        self.register_state_dict_post_hook(_drop_net_prefix)
        self.register_load_state_dict_pre_hook(_add_net_prefix)

    @property
    def timm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The ``(mean, std)`` of timm's ``pretrained_cfg`` for this architecture: its weights' input."""
        cfg = self.net.pretrained_cfg
        return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))

    def _watch_heads(self, heads: tuple[nn.Module, ...]) -> None:
        """Record the scores of both heads of a distilled model in each forward pass."""
        net = self.net
        net.distilled_training = False  # timm then returns the mean of the heads, in training too
        for head in heads:
            head.register_forward_hook(self._read_head_output)
        self.distilled = True

    def _read_classifier_input(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if self._classifier_inputs is not None:
            self._classifier_inputs.append(args[0])

    def _read_head_output(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        if self._head_outputs is not None:
            self._head_outputs.append(output)

    def prepare_for_weights(self, state_dict: dict[str, Tensor]) -> None:
        """A checkpoint of a ViT that ``distill.method=deit`` gave a distillation token gives it one."""
        if "dist_token" in state_dict and not self.distilled:
            add_distillation_token(self)

    def stages(self, x: Tensor) -> list[Tensor]:
        return list(self.net.forward_intermediates(x, intermediates_only=True))

    def forward(self, x: Tensor) -> ModelOutput:
        final, features = self.net.forward_intermediates(x)
        self._classifier_inputs, self._head_outputs = [], []
        try:
            logits = self.net.forward_head(final)
        finally:
            read, heads = self._classifier_inputs, self._head_outputs
            self._classifier_inputs = self._head_outputs = None
        return ModelOutput(logits, read[-1].flatten(1), tuple(features), tuple(heads) if self.distilled else ())


def add_distillation_token(model: nn.Module) -> None:
    """Give the timm ViT ``model`` (a :class:`TimmClassifier`) a distillation token and head, in place, as
    DeiT's distilled models have them (timm's ``VisionTransformerDistilled``): a token after the class
    token with its own position embedding, both drawn from a truncated normal of std 0.02, and a linear
    head on its output (weights likewise, bias 0); the class token, patches and their positions keep their
    weights. Nothing to do for a model that has one; any other model is a ``ConfigError``."""
    import torch
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, TimmClassifier) and model.distilled:
        return
    net = getattr(model, "net", None)
    if not (isinstance(model, TimmClassifier) and type(net) is VisionTransformer and net.cls_token is not None
            and net.global_pool == "token" and net.num_reg_tokens == 0):
        raise ConfigError("a distillation token needs a timm Vision Transformer student with a class token read "
                         "by its head and no register tokens (e.g. model=timm/vit_small_patch16_224, or timm's "
                         "model=timm/deit_small_distilled_patch16_224, which has one)")
    std = 0.02
    dist_token = torch.empty_like(net.cls_token)
    nn.init.trunc_normal_(dist_token, std=std)
    if not net.no_embed_class:  # the position embedding covers the class token: one more, for this one
        position = torch.empty_like(net.pos_embed[:, :1])
        nn.init.trunc_normal_(position, std=std)
        net.pos_embed = nn.Parameter(torch.cat([net.pos_embed[:, :1], position, net.pos_embed[:, 1:]], dim=1))
    head = nn.Linear(net.embed_dim, net.num_classes, device=dist_token.device, dtype=dist_token.dtype)
    nn.init.trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)
    net.__class__ = VisionTransformerDistilled  # what its __init__ adds to a VisionTransformer, set below
    net.num_prefix_tokens = 2
    net.dist_token = nn.Parameter(dist_token)
    net.head_dist = head
    net.weight_init_mode = "reset"
    model._watch_heads(net.get_classifier())


def _drop_net_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """State-dict post hook: ``<prefix>net.<key>`` -> ``<prefix><key>`` (timm's own names), in order."""
    inner = prefix + "net."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)


def _add_net_prefix(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """Load-state-dict pre hook: the inverse of :func:`_drop_net_prefix`."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        state_dict[prefix + "net." + key[len(prefix):]] = state_dict.pop(key)


def _input_options(timm: ModuleType, name: str, image_shape: Sequence[int] | None) -> dict[str, Any]:
    """timm's ``in_chans`` and, for models whose input size is fixed when built, ``img_size``."""
    if image_shape is None:
        return {}
    channels, height, width = image_shape
    options: dict[str, Any] = {"in_chans": channels}
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and cfg.fixed_input_size:
        options["img_size"] = height if height == width else (height, width)
    return options


def _classes_in(timm: ModuleType, name: str, state_dict: dict[str, Any]) -> int:
    """The number of classes of the classifier in ``state_dict`` (0: it holds none)."""
    cfg = timm.models.get_pretrained_cfg(name)
    classifier = cfg.classifier if cfg is not None else None
    weight = state_dict.get(f"{classifier}.weight") if isinstance(classifier, str) else None
    return 0 if weight is None else int(weight.shape[0])


def build_timm(name: str, num_classes: int, image_shape: Sequence[int] | None = None,
               weights: str | Path | None = None, pretrained: bool = False) -> TimmClassifier:
    """The timm model ``name`` with ``num_classes`` outputs for images of ``image_shape`` ``(C, H, W)``,
    from random weights, the local file ``weights`` or (``pretrained``) timm's published weights."""
    timm = import_timm()
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}: `intrakd models --timm PATTERN` lists its models "
                         f"(timm {timm.__version__})")
    if weights is not None and pretrained:
        raise ConfigError("weights=PATH and pretrained=true both give starting weights: choose one")
    options = _input_options(timm, name, image_shape)
    if weights is not None:
        source = f"weights file {weights}"
        if not Path(weights).is_file():
            raise FileNotFoundError(f"{source} does not exist")
        state_dict = timm.models.load_state_dict(str(weights))
        classes = _classes_in(timm, name, state_dict)
        try:
            net = timm.create_model(name, pretrained=True, num_classes=classes, **options,
                                    pretrained_cfg_overlay={"state_dict": state_dict, "num_classes": classes})
        except RuntimeError as err:
            reason = textwrap.shorten(" ".join(str(err).split()), 400)
            raise ConfigError(f"{source} does not fit timm model {name!r} ({reason}): check that it holds this "
                             "architecture's weights") from None
    elif pretrained:
        source = f"timm's pretrained {name}"
        try:
            net = timm.create_model(name, pretrained=True, **options)
        except (OSError, RuntimeError) as err:  # no network, no such weights, an incomplete download
            raise ConfigError(f"cannot get {source}'s weights ({type(err).__name__}: "
                             f"{str(err).strip().splitlines()[0]}): pretrained=true needs a network (or "
                             "timm's download cache); or pass a local file with weights=PATH") from None
    else:
        return TimmClassifier(timm.create_model(name, num_classes=num_classes, **options), name)
    if net.num_classes != num_classes:
        held = f"a {net.num_classes}-class classifier" if net.num_classes else "no classifier"
        print(f"{source} holds {held}: timm/{name} starts with a new {num_classes}-class classifier "
              "(randomly initialised), the rest from these weights", file=sys.stderr)
        net.reset_classifier(num_classes)
    model = TimmClassifier(net, name)
    model.pretrained_stats = model.timm_stats
    return model


def describe_family() -> str:
    """The family's line in `intrakd models`."""
    try:
        timm = import_timm()
    except ConfigError:
        return f"any timm architecture, once timm is installed: {INSTALL}"
    return (f"any of timm {timm.__version__}'s {len(timm.list_models())} architectures, e.g. timm/resnet50, "
            "timm/vit_small_patch16_224 (`intrakd models --timm PATTERN` lists them)")


def list_timm(pattern: str) -> list[str]:
    """``timm/<name>`` of every timm architecture matching the wildcard ``pattern`` (``*vit*``), with
    the number of its pretrained tags that timm can download."""
    timm = import_timm()
    tags: dict[str, int] = {}
    for tagged in timm.list_models(pattern, pretrained=True):
        arch = tagged.split(".", 1)[0]
        tags[arch] = tags.get(arch, 0) + 1
    return [f"{PREFIX}{name}" + (f"  ({tags[name]} pretrained)" if name in tags else "")
            for name in timm.list_models(pattern)]


register_family(PREFIX, build_timm, describe_family)
