"""Writing checkpoints: atomic, checksummed writes and a run's checkpoint folder (reading them, and
loading weights, is :mod:`intrakd.models.checkpoint`).

Every checkpoint ``X.pt`` is a plain ``torch.save`` file with a ``X.pt.sha256`` beside it in the format
of ``sha256sum`` (so ``sha256sum -c X.pt.sha256`` checks it too). Both are written to temporary files,
flushed to disk and renamed into place, the checksum first: a checkpoint file that exists always has
its checksum, and a crash or a full disk at any moment leaves the files already there as they were.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from intrakd.models.checkpoint import (
    CHECKSUM_SUFFIX,
    CheckpointError,
    checkpoint_history,
    checksum_path,
    classifier_from_checkpoint,
    file_sha256,
    history_file_name,
    history_position,
    load_verified,
    load_weights,
    read_checkpoint,
    verify_checkpoint,
)

CHECKPOINT_FORMAT = "intrakd-2"
"""Version of the training-state layout written by :class:`intrakd.train.loop.Trainer`."""

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKSUM_SUFFIX", "CheckpointError", "CheckpointStore", "CheckpointWriteError",
    "check_format", "checksum_path", "classifier_from_checkpoint", "file_sha256", "load_weights",
    "read_checkpoint", "save_checkpoint", "verify_checkpoint", "write_atomic",
]


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (a full disk, say); the files already on disk are untouched."""


def check_format(state: dict[str, Any], path: Path | None = None) -> None:
    """Raise :class:`CheckpointError` unless ``state`` is a training state of :data:`CHECKPOINT_FORMAT`."""
    if state.get("format") != CHECKPOINT_FORMAT:
        where = f"{path} was" if path is not None else "the checkpoint was"
        raise CheckpointError(f"{where} written by another version of intrakd (format {state.get('format')!r}, "
                              f"this one reads {CHECKPOINT_FORMAT!r}): it cannot be resumed")

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
