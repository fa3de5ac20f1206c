"""Checkpoint files: atomic, checksummed writes, a run's checkpoint folder, checksum verification,
safe loading onto the CPU, and rebuilding a model from its weights (kept beside the models, as timm
keeps its weight loading; the training engine writes through :class:`CheckpointStore`).

A checkpoint ``X.pt`` is a plain ``torch.save`` file with a ``X.pt.sha256`` beside it in the format of
``sha256sum`` (so ``sha256sum -c X.pt.sha256`` checks it too). Both are written to temporary files,
flushed to disk and renamed into place, the checksum first: a checkpoint file that exists always has
its checksum, and a crash or a full disk at any moment leaves the files already there as they were.
A run's checkpoint folder names them ``ckpt-e{E}-s{S}.pt`` (after E whole epochs and S steps of the
next).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import secrets
import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from intrakd.config import ConfigError
from intrakd.models.contract import Classifier, check_reads_images
from intrakd.models.input import ModelInput, feed_with, resolve_input
from intrakd.models.registry import create_model

CHECKSUM_SUFFIX = ".sha256"

HISTORY_NAME = re.compile(r"ckpt-e(\d+)-s(\d+)\.pt")
"""Name of a checkpoint in a run's history: ``ckpt-e{epochs}-s{steps}.pt``."""


CHECKPOINT_FORMAT = "intrakd-2"
"""Version of the training-state layout written by :class:`intrakd.train.state.TrainState`."""


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: truncated, corrupted, unreadable or of the wrong kind."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, say); the files already on disk are untouched."""


def check_format(state: dict[str, Any], path: Path | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``state`` is a training state of :data:`CHECKPOINT_FORMAT`."""
    if state.get("format") != CHECKPOINT_FORMAT:
        where = f"{path} was" if path is not None else "the checkpoint was"
        raise CheckpointError(f"{where} written by another version of intrakd (format {state.get('format')!r}, "
                              f"this one reads {CHECKPOINT_FORMAT!r}): it cannot be resumed")


def checksum_path(path: Path) -> Path:
    """The checksum file that belongs to checkpoint ``path``."""
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def history_file_name(epoch: int, step: int) -> str:
    """The name of the checkpoint taken after ``epoch`` whole epochs and ``step`` steps of the next."""
    return f"ckpt-e{epoch:04d}-s{step:06d}.pt"


def history_position(path: Path) -> tuple[int, int] | None:
    """(epochs, steps) encoded in a history file's name; None for other files."""
    match = HISTORY_NAME.fullmatch(path.name)
    return (int(match[1]), int(match[2])) if match else None


def checkpoint_history(folder: Path) -> list[tuple[tuple[int, int], Path]]:
    """The history files present in a run's checkpoint folder, oldest first."""
    if not folder.is_dir():
        return []
    found = [(history_position(p), p) for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    return sorted((pos, p) for pos, p in found if pos is not None)


def verify_checkpoint(path: str | Path) -> bool:
    """Check ``path`` (symbolic links followed) against its checksum file.

    Returns False when there is no checksum file (a file from elsewhere); raises
    :class:`CheckpointError` when the file does not match it (truncated or damaged).
    """
    real = Path(path).resolve()
    sidecar = checksum_path(real)
    if not sidecar.is_file():
        return False
    recorded = sidecar.read_text(errors="replace").split()
    if not recorded or not re.fullmatch(r"[0-9a-f]{64}", recorded[0]):
        raise CheckpointError(f"checkpoint {path}: its checksum file {sidecar} is damaged")
    actual = file_sha256(real)
    if actual != recorded[0]:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its sha256 ({actual[:16]}...) differs from the one recorded in "
            f"{sidecar.name} when it was written ({recorded[0][:16]}...); the file was truncated or damaged"
        )
    return True


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file onto the CPU (tensors and plain data only), checking its checksum.

    A damaged file raises :class:`CheckpointError` naming it and, when it lies in a run's checkpoint
    folder, the newest earlier checkpoint there that is intact.
    """
    path = Path(path)
    if path.is_dir():
        inside = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        raise IsADirectoryError(f"checkpoint {path} is a folder: pass a checkpoint file in it, e.g. "
                                f"{inside / 'last.pt'}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        verify_checkpoint(path)
        state = load_verified(path)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{_earlier_hint(path)}") from err
    if isinstance(state, dict) and "model" not in state and all(isinstance(v, torch.Tensor) for v in state.values()):
        state = {"model": state}  # a bare state_dict
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} holds no model weights: expected a dict with a 'model' state_dict")
    return state


def load_verified(path: Path) -> Any:
    """``torch.load`` onto the CPU, tensors and plain data only; any failure is a CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling, zip and storage errors alike: the file cannot be used
        raise CheckpointError(f"checkpoint {path} cannot be read ({_load_failure(path, err)}); "
                              "it may be truncated or not a PyTorch checkpoint") from err


def _load_failure(path: Path, err: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in one short line. A file of other objects
    than tensors and plain data is named by those objects' types, found by torch's safe unpickler
    (its own error is a page that ends by advising an unsafe load)."""
    if isinstance(err, pickle.UnpicklingError):
        unsafe = _unsafe_globals(path)
        if unsafe:
            return (f"{type(err).__name__}: Unsupported global: GLOBAL {', '.join(unsafe)}; "
                    "only tensors and plain data are loaded")
        return f"{type(err).__name__}: not a pickle of tensors and plain data"
    first_line = next((line.strip() for line in str(err).splitlines() if line.strip()), "no message")
    return f"{type(err).__name__}: {textwrap.shorten(first_line, 240)}"


def _unsafe_globals(path: Path) -> list[str]:
    """The classes and functions in a checkpoint that the weights-only unpickler refuses (none when
    torch cannot list them)."""
    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    try:
        return list(find(path)) if find is not None else []
    except (pickle.UnpicklingError, RuntimeError, OSError, ValueError, EOFError):  # too damaged to list
        return []


def _earlier_hint(path: Path) -> str:
    """'; the previous intact checkpoint is X' for a file in a run's checkpoint folder, else ''."""
    real = path.resolve()
    position = history_position(real)
    for older_position, older in reversed(checkpoint_history(real.parent)):
        if older == real or (position is not None and older_position >= position):
            continue
        try:
            if verify_checkpoint(older):
                return f"; the previous intact checkpoint is {older}"
        except CheckpointError:
            continue
    return ""


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, model_name: str) -> None:
    """Load ``state_dict`` into ``model`` exactly, or raise naming the missing, unexpected and
    mis-shaped keys."""
    if isinstance(model, Classifier):
        model.prepare_for_weights(state_dict)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        def show(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" ... ({len(items)} in all)" if len(items) > 6 else "")

        parts = [f"{source} does not fit model {model_name!r}:"]
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches (checkpoint vs model): {show(mismatched)}")
        parts.append("Check that the architecture and number of classes are those the checkpoint was trained with.")
        raise ConfigError(" ".join(parts))
    model.load_state_dict(state_dict)


def check_class_names(recorded: list[str] | None, names: list[str] | None, source: str) -> None:
    """Refuse data whose classes are not those ``source`` (a checkpoint, a run) was trained on: the same
    names in the same label order, else its accuracy would be scored on other labels. A checkpoint
    written before runs recorded their class names (``recorded`` empty or None) is checked by the class
    count alone, elsewhere."""
    if not recorded or names is None or list(recorded) == list(names):
        return
    if len(recorded) != len(names):
        differs = f"it has {len(recorded)} classes, the data {len(names)}"
    else:
        i = next(i for i, (a, b) in enumerate(zip(recorded, names, strict=True)) if a != b)
        order = " (the same names in another order)" if sorted(recorded) == sorted(names) else ""
        differs = f"label {i} is {recorded[i]!r} there and {names[i]!r} in the data{order}"
    raise ConfigError(f"{source} was trained on other classes than the data's: {differs}. Point data.root, "
                      "data.dataset, data.classes and data.labels at the data it was trained on")


def classifier_from_checkpoint(
    path: str | Path, model_name: str | None = None, num_classes: int | None = None,
    image_shape: tuple[int, int, int] | None = None, data_input: ModelInput | None = None,
    given: dict[str, Any] | None = None, class_names: list[str] | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint (intrakd's own or a ``{"model": state_dict}`` file).

    ``model_name`` is needed when the file does not name its architecture; ``num_classes`` and
    ``class_names`` when given must agree with the checkpoint (:func:`check_class_names`); when
    ``image_shape`` is given the model is built for such images (a family's models: see
    :func:`create_model`; at the side it is fed) and must read them. With
    ``data_input`` (the data's own input) the model is fed (:func:`~intrakd.models.input.feed_with`)
    ``given``'s fields, else what the checkpoint recorded it was trained with (:func:`recorded_input`), else
    its own (a timm file: timm's statistics for the architecture).
    """
    state = read_checkpoint(path)
    name = state.get("model_name") or model_name
    if name is None:
        raise ConfigError(f"checkpoint {path} does not name its architecture: pass the model name "
                         "(teacher_model=NAME for distill, --model NAME for evaluate)")
    if model_name is not None and model_name != name:
        raise ConfigError(f"checkpoint {path} holds a {name!r}, not the requested {model_name!r}")
    stored_classes = state.get("num_classes") or _classes_from_weights(state["model"])
    if num_classes is not None and stored_classes is not None and stored_classes != num_classes:
        raise ConfigError(f"checkpoint {path} is a {stored_classes}-class model but the data has {num_classes} "
                         "classes: use a teacher trained on this dataset")
    check_class_names(state.get("class_names"), class_names, f"checkpoint {path}")
    classes = stored_classes or num_classes
    if classes is None:
        raise ConfigError(f"cannot tell how many classes the model in {path} has")
    recorded = recorded_input(state, data_input)
    if image_shape is not None:
        side = (given or {}).get("size") or (recorded or {}).get("size") or image_shape[-1]
        image_shape = (image_shape[0], side, side)
    model = create_model(name, num_classes=classes, image_shape=image_shape)
    load_weights(model, state["model"], f"checkpoint {path}", name)
    if data_input is not None:
        if "config" not in state:  # weights from elsewhere: the statistics they were trained with, where known
            model.pretrained_stats = getattr(model, "timm_stats", None)
        feed_with(model, resolve_input(model, data_input, given, recorded))
    if image_shape is not None:
        check_reads_images(model, image_shape, f"the {name} in checkpoint {path}",
                           "use a checkpoint trained on images like these")
    return model, state


def recorded_input(state: dict[str, Any], data_input: ModelInput | None) -> dict[str, Any] | None:
    """What the model of checkpoint ``state`` was fed while it trained: the input its run recorded, the
    data's own (``data_input``) for a checkpoint intrakd wrote before runs recorded it, None for weights
    from elsewhere."""
    found = state.get("provenance", {}).get("model_input")
    if found is not None:
        return found
    return data_input.to_dict() if "config" in state and data_input is not None else None


def _classes_from_weights(state_dict: dict[str, torch.Tensor]) -> int | None:
    """The output size of the last 2-D weight (the classifier), for files that do not record it."""
    weights = [v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 2]
    return int(weights[-1].shape[0]) if weights else None


# ------------------------------------------------------------------------------------------ writing

class _HashingWriter:
    """File wrapper that hashes what goes through it and keeps the first write error.

    ``torch.save`` turns an ``OSError`` raised while writing into a ``RuntimeError``; the original
    (e.g. ``ENOSPC``) is kept here so that the caller can report it as it was.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.digest, self.error = file, hashlib.sha256(), None

    def write(self, data: bytes) -> int:
        try:
            written = self.file.write(data)
        except OSError as err:
            self.error = err
            raise
        self.digest.update(data)
        return written

    def flush(self) -> None:
        self.file.flush()


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (no-op where folders cannot be opened, e.g. Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(folder: Path, name: str, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a temporary file in ``folder`` with ``write`` and flush it to disk; remove it on failure."""
    tmp = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically: readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temp(path.parent, path.name, lambda f: f.write(data))
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(state: dict[str, Any], path: Path) -> str:
    """Write ``state`` to ``path`` and its checksum file, atomically; return the sha256 hex digest.

    Raises :class:`CheckpointWriteError` (with the original ``errno``) when the disk refuses the
    write; ``path`` and its checksum are then as they were, and no temporary file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writers: list[_HashingWriter] = []

    def write(f: IO[bytes]) -> None:
        writers.append(_HashingWriter(f))
        torch.save(state, writers[0])

    try:
        tmp = _write_temp(path.parent, path.name, write)
    except (OSError, RuntimeError) as err:
        cause = writers[0].error if writers and writers[0].error else err
        if not isinstance(cause, OSError):
            raise
        raise _write_error(path, cause) from cause
    digest = writers[0].digest.hexdigest()
    try:
        write_atomic(checksum_path(path), f"{digest}  {path.name}\n".encode())
        os.replace(tmp, path)
    except OSError as err:
        raise _write_error(path, err) from err
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return digest


def _write_error(path: Path, err: OSError) -> CheckpointWriteError:
    return CheckpointWriteError(err.errno, f"cannot write checkpoint {path}: {err.strerror or err}; "
                                "nothing on disk was replaced")


class CheckpointStore:
    """A run's checkpoint folder.

    Each save writes ``ckpt-e{E}-s{S}.pt`` (after E whole epochs and S steps of the next) with its
    checksum, then points ``last.pt`` (and, for the best eval accuracy, ``best.pt``) at it with a
    symbolic link swapped atomically (a copy where links are not supported), then removes all but
    the newest ``keep_last`` of these files, sparing the one ``best.pt`` points at.
    """

    def __init__(self, folder: Path, keep_last: int = 1) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder, self.keep_last = Path(folder), keep_last

    @staticmethod
    def file_name(epoch: int, step: int) -> str:
        """The name of the checkpoint of position (epoch, step)."""
        return history_file_name(epoch, step)

    def position(self, path: Path) -> tuple[int, int] | None:
        """(epochs, steps) encoded in a history file's name; None for other files."""
        return history_position(path)

    def history(self) -> list[tuple[tuple[int, int], Path]]:
        """The history files present, oldest first."""
        return checkpoint_history(self.folder)

    def save(self, state: dict[str, Any], epoch: int, step: int, best: bool = False) -> Path:
        """Write the checkpoint of position (epoch, step); update ``last.pt`` (and ``best.pt``); prune."""
        path = self.folder / self.file_name(epoch, step)
        save_checkpoint(state, path)
        try:
            self._point("last.pt", path)
            if best:
                self._point("best.pt", path)
            self._prune()
        except OSError as err:
            raise CheckpointWriteError(err.errno, f"checkpoint {path} was written, but updating the links "
                                       f"beside it failed: {err.strerror or err}") from err
        return path

    def _point(self, name: str, target: Path) -> None:
        link = self.folder / name
        tmp = self.folder / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(target.name, tmp)
        except OSError:  # no symbolic links here: a copy, its stale checksum removed first
            checksum_path(link).unlink(missing_ok=True)
            try:
                shutil.copyfile(target, tmp)
                os.replace(tmp, link)
            finally:
                tmp.unlink(missing_ok=True)
            shutil.copyfile(checksum_path(target), tmp)
            os.replace(tmp, checksum_path(link))
        else:
            os.replace(tmp, link)
            checksum_path(link).unlink(missing_ok=True)
        _fsync_dir(self.folder)

    def _prune(self) -> None:
        best = self.folder / "best.pt"
        spared = {best.resolve()} if best.is_symlink() else set()
        history = [p for _, p in self.history()]
        for path in history[: -self.keep_last]:
            if path.resolve() not in spared:
                path.unlink(missing_ok=True)
                checksum_path(path).unlink(missing_ok=True)

    def remove_leftovers(self) -> list[Path]:
        """Delete what an interrupted write left: temporary files and checksums without a checkpoint."""
        removed = []
        if not self.folder.is_dir():
            return removed
        for path in self.folder.iterdir():
            orphan = path.name.endswith(CHECKSUM_SUFFIX) and not path.with_name(
                path.name[: -len(CHECKSUM_SUFFIX)]).exists()
            if (path.name.startswith(".") and path.name.endswith(".tmp")) or orphan:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def newest_intact(self) -> Iterator[tuple[Path, dict[str, Any] | None, str | None]]:
        """History files newest first, each as ``(path, state, None)`` if it loads, checksum verified,
        or ``(path, None, reason)`` if it does not."""
        for _, path in reversed(self.history()):
            try:
                if not verify_checkpoint(path):
                    raise CheckpointError(f"checkpoint {path} has no checksum file {checksum_path(path).name}")
                state = load_verified(path)
            except (CheckpointError, OSError) as err:
                yield path, None, str(err)
            else:
                yield path, state, None
