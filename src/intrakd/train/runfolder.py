"""A run folder that loses no work: what a run generates there, what it must never replace, and how a
run that stopped before making anything worth keeping is undone.

* ``--out``/``--overwrite`` never replace, hold or lie in what the run reads (the teacher checkpoint
  and its folder, the dataset, the configuration file): :func:`check_replaces_no_input` refuses such
  a folder, naming the input.
* ``--overwrite`` moves the previous run's generated files (:data:`GENERATED`) aside, into
  :data:`PREVIOUS`; they are deleted once the new run has kept something (:meth:`RunFolder.settle`)
  and put back if it stops before (:meth:`RunFolder.abandon`). Other files in the folder are kept.
* A run that stops with an error before its first epoch or checkpoint leaves the folder as it found
  it, so a plain rerun works.
* One run at a time writes a folder: :class:`RunLock` is an advisory lock (``flock``) on
  :data:`LOCK` in the folder, held while the run writes it. The kernel drops it when its holder
  ends, however it ends (``kill -9`` included), so no stale lock can block a later run; a second
  writer is refused, naming the holder's process id.
* A configuration stored in a run folder (``config.yaml``, a checkpoint's) is read the way it was
  written: :func:`upgrade_stored` fills in what settings added since then mean for an older run.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import Any

from intrakd.config import ConfigError, IntraConfig

GENERATED = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard", "curves.png")
"""Files and folders a run (and ``intrakd plot``'s default output) writes into its run folder."""

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints")
"""What makes a folder a run folder."""

PREVIOUS = ".intrakd-previous"
"""Where ``--overwrite`` keeps the replaced run's files until the new run has kept something."""

LOCK = ".intrakd-lock"
"""The lock file of a run folder (it holds the writer's process id while a run writes the folder)."""


class RunFolderBusy(ConfigError):
    """Another process is writing the run folder."""


class RunLock:
    """The advisory lock of a run folder, held from :meth:`acquire` to :meth:`release`.

    The lock file is removed on release; one left by a killed holder is locked by no one and taken
    over by the next run.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, folder: str | Path) -> RunLock:
        """Lock the existing ``folder``; :class:`RunFolderBusy` naming the holder's pid if another
        process holds its lock."""
        path = Path(folder) / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderBusy(f"{folder} is being written by another run (process id {holder}): wait until "
                                    f"it ends or stop it, or choose another --out") from None
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # its holder released and removed the file after we opened it: open the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (a second call does nothing)."""
        if self.fd < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1


def _forms(path: str | Path) -> set[Path]:
    """``path`` made absolute as written and with its links resolved (a ``last.pt`` link and the
    checkpoint it points at are both inputs)."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def check_replaces_no_input(run_dir: str | Path, reads: dict[str, str | Path | None],
                            folders: dict[str, str | Path | None] | None = None) -> None:
    """Refuse (``ConfigError``) a run folder that would replace, hold or lie in what the run reads.

    ``reads`` maps a description ('the teacher checkpoint') to a file or folder the run reads (None:
    not used), which the run folder may not hold; ``folders`` maps a description ('the dataset') to
    a folder the run reads, which the run folder may moreover not be nor lie in.
    """
    generated = {form / name for form in _forms(run_dir) for name in (*GENERATED, PREVIOUS)}
    outs = _forms(run_dir)
    for what, path in reads.items():
        if not path:
            continue
        for form in _forms(path):
            hit = next((g for g in generated if form == g or form.is_relative_to(g)), None)
            if hit is not None:
                raise ConfigError(f"--out {run_dir} would replace {path}, {what} this run reads (it lies in the run "
                                 f"folder's {hit.name}): choose another --out")
    for what, path in {**reads, **(folders or {})}.items():
        if path and any(form.is_relative_to(out) for form in _forms(path) for out in outs):
            relation = "is" if _forms(path) & outs else "holds"
            raise ConfigError(f"--out {run_dir} {relation} {path}, {what} this run reads: choose an --out that "
                             "holds none of the run's inputs")
    for what, path in (folders or {}).items():
        if path and any(out.is_relative_to(form) for form in _forms(path) for out in outs):
            raise ConfigError(f"--out {run_dir} lies in {path}, {what} this run reads (a run folder there would "
                             "change what is read): choose an --out outside it")


def _outermost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None: ``path`` exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def _remove_made(path: Path, made: Path | None) -> None:
    """Remove ``path`` and its parents up to ``made`` (the folders a run created), where empty."""
    if made is None:
        return
    for folder in (path, *path.parents):
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone): leave it and what holds it
            return
        if folder == made:
            return


class RunFolder:
    """A run's folder while the run writes it: locked (:class:`RunLock`) until :meth:`close`, and
    for a new run able to undo itself until the run keeps something."""

    def __init__(self, path: Path, made: Path | None, previous: Path | None, lock: RunLock,
                 new: bool = True) -> None:
        self.path, self.made, self.previous, self.lock, self.new = path, made, previous, lock, new

    @classmethod
    def open_new(cls, out: str | Path, overwrite: bool = False, reads: dict[str, str | Path | None] | None = None,
                 folders: dict[str, str | Path | None] | None = None) -> RunFolder:
        """Create and lock the folder of a new run, apart from what the run reads
        (:func:`check_replaces_no_input`). One that already holds a run is refused unless
        ``overwrite``; then the previous run's generated files are moved aside (other files stay)."""
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder: choose another --out")
        check_replaces_no_input(path, reads or {}, folders)
        made = _outermost_missing(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _remove_made(path, made)
            raise ConfigError(f"cannot create the run folder {path}: {err.strerror or err} "
                             f"({err.filename or path}): choose another --out") from None
        try:
            lock = RunLock.acquire(path)
        except BaseException:
            _remove_made(path, made)
            raise
        present = [name for name in RUN_MARKERS if (path / name).exists()]
        if present and not overwrite:
            lock.release()
            raise FileExistsError(f"{path} already holds a run ({', '.join(present)}): continue it with --resume "
                                  f"{path}, choose another --out, or pass --overwrite to replace it")
        previous = None
        if overwrite:
            stale = [name for name in GENERATED if (path / name).exists() or (path / name).is_symlink()]
            if stale:
                previous = path / PREVIOUS
                shutil.rmtree(previous, ignore_errors=True)  # left by a replacement that never settled
                previous.mkdir()
                for name in stale:
                    os.replace(path / name, previous / name)
        return cls(path, made, previous, lock)

    @classmethod
    def open_existing(cls, out: str | Path) -> RunFolder:
        """Lock the folder of a run to continue (its replaced run's files, if any are still aside,
        are deleted when it keeps an epoch: :meth:`settle`)."""
        path = Path(out)
        lock = RunLock.acquire(path)
        previous = path / PREVIOUS if (path / PREVIOUS).is_dir() else None
        return cls(path, None, previous, lock, new=False)

    def settle(self) -> None:
        """The run kept an epoch: delete the replaced run's files for good."""
        if self.previous is not None:
            shutil.rmtree(self.previous, ignore_errors=True)
            self.previous = None

    def abandon(self) -> None:
        """A new run stopped before keeping anything: remove what it wrote, put back what it
        replaced, remove the folders this run created if nothing else is in them, and unlock. (A
        continued run's folder is only unlocked.)"""
        if self.new:
            for name in GENERATED:
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
            if self.previous is not None:
                for item in self.previous.iterdir():
                    os.replace(item, self.path / item.name)
                self.previous.rmdir()
                self.previous = None
        self.close()
        if self.new:
            _remove_made(self.path, self.made)

    def close(self) -> None:
        """Unlock the folder (a second call does nothing)."""
        self.lock.release()


def upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A stored run configuration (config.yaml, a checkpoint's) read the way it was written.

    Teacher runs from before ``intra.exclude_self`` existed had no self-exclusion, and their delta of
    -1 meant "no gate" (today ``null``; -1 is a real threshold for the logit margin). Runs from before
    ``intra.auto_ratio`` existed had a fixed lambda, on which it has no effect (today's default is
    filled in). Runs from before ``data.bad_images`` existed stopped at a bad image (today's ``error``).
    Runs from before milestones were checked may list steps past their last epoch, which never happened
    (dropped)."""
    intra, data = values.get("intra"), values.get("data")
    if isinstance(intra, dict) and "exclude_self" not in intra:
        intra = {**intra, "exclude_self": False}
        if intra.get("delta") == -1:
            intra["delta"] = None
        values = {**values, "intra": intra}
    if isinstance(intra, dict) and "auto_ratio" not in intra:
        values = {**values, "intra": {**intra, "auto_ratio": IntraConfig.auto_ratio}}
    if isinstance(data, dict) and "bad_images" not in data:
        values = {**values, "data": {**data, "bad_images": "error"}}
    optim = values.get("optim")
    if isinstance(optim, dict) and isinstance(optim.get("milestones"), list) and isinstance(optim.get("epochs"), int):
        kept = [m for m in optim["milestones"] if not isinstance(m, int) or m <= optim["epochs"]]
        if kept != optim["milestones"]:
            values = {**values, "optim": {**optim, "milestones": kept}}
    return values
