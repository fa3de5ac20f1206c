"""``intrakd export``: a trained checkpoint as a self-contained inference file (ONNX, TorchScript or a
torch.export program) that takes uint8 ``[B, C, H, W]`` images as the run read them and returns the
logits, the normalisation it was trained with included; checked against PyTorch before it is written."""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from intrakd.analysis.analyze import load_split
from intrakd.config import ConfigError
from intrakd.data import Split, TensorDataset
from intrakd.models import model_input_of
from intrakd.models.checkpoint import write_atomic
from intrakd.runs import data_input
from intrakd.train import classifier_from_checkpoint, read_checkpoint

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "pt2": ".pt2"}
"""Export formats and the suffix of their default file name."""
TOLERANCE = 1e-3
"""Largest absolute difference of a logit between the exported model and PyTorch that is accepted."""
SAMPLE_IMAGES = 8


class RawImageClassifier(nn.Module):
    """``model`` (fed its own input from uint8 images: :func:`~intrakd.models.feed_with`) returning
    only the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


def sample_images(split: Split, count: int = SAMPLE_IMAGES, seed: int = 0) -> Tensor:
    """uint8 images to compare outputs on: the split's first images where it holds them as tensors, and
    seeded random ones of its image shape."""
    generator = torch.Generator().manual_seed(seed)
    random = torch.randint(0, 256, (count, *split.image_shape), dtype=torch.uint8, generator=generator)
    if isinstance(split, TensorDataset):
        return torch.cat([split.images[:count], random])
    return random


def _export_bytes(module: nn.Module, images: Tensor, fmt: str) -> bytes:
    buffer = io.BytesIO()
    batch = torch.export.Dim("batch", min=1)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as err:
            raise ConfigError(f"--format onnx needs the onnx and onnxscript packages ({err}): "
                              "pip install 'intrakd[export]'") from err
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module, (images,), dynamo=True, input_names=["images"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
        program.save(buffer)  # type: ignore[union-attr]
    elif fmt == "torchscript":
        with warnings.catch_warnings():  # TorchScript is deprecated in torch; the file still loads everywhere
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the image side is fixed in the file, as said
            torch.jit.save(torch.jit.trace(module, images), buffer)
    else:
        torch.export.save(torch.export.export(module, (images,), dynamic_shapes=({0: batch},)), buffer)
    return buffer.getvalue()


def run_exported(data: bytes, fmt: str, images: Tensor) -> Tensor:
    """The logits the exported file ``data`` (of ``fmt``) gives for ``images``."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(io.BytesIO(data))(images)
    with tempfile.SpooledTemporaryFile() as f:
        f.write(data)
        f.seek(0)
        return torch.export.load(f).module()(images)


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path | None = None,
                      data_root: str | None = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Write the model of ``checkpoint`` as ``fmt`` to ``out`` (default: beside the checkpoint) after
    checking that it gives PyTorch's logits on sample images; returns what was written and checked."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    source = Path(checkpoint)
    target = Path(out) if out else source.with_suffix(FORMATS[fmt])
    if target.exists() and target.resolve() == source.resolve():
        raise ConfigError(f"--out {target} is the checkpoint itself: name another file")
    state = read_checkpoint(source)
    data = (state.get("config") or {}).get("data")
    if not data:
        raise ConfigError(f"checkpoint {source} records no data settings (not an intrakd run checkpoint): the "
                          "input it expects is unknown")
    split = load_split({**data, "in_memory": False}, "test", data_root)
    model, _ = classifier_from_checkpoint(source, None, split.num_classes, split.image_shape, data_input(split))
    module = RawImageClassifier(model).eval()
    images = sample_images(split)
    with torch.no_grad():
        expected = module(images)
        blob = _export_bytes(module, images, fmt)
        try:
            got = run_exported(blob, fmt, images)
        except ImportError as err:
            raise ConfigError(f"checking the ONNX file needs onnxruntime ({err}): "
                              "pip install 'intrakd[export]'") from err
    difference = float((got - expected).abs().max())
    if not difference <= tolerance:
        raise ConfigError(f"the {fmt} export of {source} differs from PyTorch by up to {difference:.3g} on "
                         f"{len(images)} sample images (tolerance {tolerance:g}); nothing was written")
    write_atomic(target, blob)
    fed = model_input_of(model)
    return {"checkpoint": str(source), "format": fmt, "written": str(target),
            "input": {"dtype": "uint8", "shape": ["batch", *split.image_shape],
                      "mean": list(fed.mean), "std": list(fed.std), "model_side": fed.size},
            "output": {"logits": ["batch", split.num_classes]},
            "checked_images": len(images), "max_abs_difference": difference, "tolerance": tolerance}
