"""A run folder that loses no work: what a run generates there, what it must never replace, and how a
run that stopped before making anything worth keeping is undone.

* ``--out``/``--overwrite`` never replace a file the run reads (the teacher checkpoint, the data,
  the configuration file): :func:`check_replaces_no_input` refuses such a folder, naming the file.
* ``--overwrite`` moves the previous run's generated files (:data:`GENERATED`) aside, into
  :data:`PREVIOUS`; they are deleted once the new run has kept something (:meth:`RunFolder.settle`)
  and put back if it stops before (:meth:`RunFolder.abandon`). Other files in the folder are kept.
* A run that stops with an error before its first epoch or checkpoint leaves the folder as it found
  it, so a plain rerun works.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

GENERATED = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard", "curves.png")
"""Files and folders a run (and ``intrakd plot``'s default output) writes into its run folder."""

RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints")
"""What makes a folder a run folder."""

PREVIOUS = ".intrakd-previous"
"""Where ``--overwrite`` keeps the replaced run's files until the new run has kept something."""


def _forms(path: str | Path) -> set[Path]:
    """``path`` made absolute as written and with its links resolved (a ``last.pt`` link and the
    checkpoint it points at are both inputs)."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def check_replaces_no_input(run_dir: str | Path, reads: dict[str, str | Path | None]) -> None:
    """Refuse (``ValueError``) a run folder whose generated files hold a file the run reads.

    ``reads`` maps a description ('the teacher checkpoint') to a path (None: not used).
    """
    generated = {form / name for form in _forms(run_dir) for name in (*GENERATED, PREVIOUS)}
    for what, path in reads.items():
        if not path:
            continue
        for form in _forms(path):
            hit = next((g for g in generated if form == g or form.is_relative_to(g)), None)
            if hit is not None:
                raise ValueError(f"--out {run_dir} would replace {path}, {what} this run reads (it lies in the run "
                                 f"folder's {hit.name}): choose another --out")


class RunFolder:
    """A new run's folder, able to undo itself until the run keeps something."""

    def __init__(self, path: Path, created: bool, previous: Path | None) -> None:
        self.path, self.created, self.previous = path, created, previous

    @classmethod
    def open_new(cls, out: str | Path, overwrite: bool = False,
                 reads: dict[str, str | Path | None] | None = None) -> RunFolder:
        """Create the folder of a new run. One that already holds a run is refused unless
        ``overwrite``; then the previous run's generated files are moved aside (other files stay)."""
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a folder: choose another --out")
        check_replaces_no_input(path, reads or {})
        present = [name for name in RUN_MARKERS if (path / name).exists()]
        if present and not overwrite:
            raise FileExistsError(f"{path} already holds a run ({', '.join(present)}): continue it with --resume "
                                  f"{path}, choose another --out, or pass --overwrite to replace it")
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        previous = None
        if overwrite:
            stale = [name for name in GENERATED if (path / name).exists() or (path / name).is_symlink()]
            if stale:
                previous = path / PREVIOUS
                shutil.rmtree(previous, ignore_errors=True)  # left by a replacement that never settled
                previous.mkdir()
                for name in stale:
                    os.replace(path / name, previous / name)
        return cls(path, created, previous)

    def settle(self) -> None:
        """The new run kept something: delete the replaced run's files for good."""
        if self.previous is not None:
            shutil.rmtree(self.previous, ignore_errors=True)
            self.previous = None

    def abandon(self) -> None:
        """The run stopped before keeping anything: remove what it wrote, put back what it replaced,
        and remove the folder if this run created it and nothing else is in it."""
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
        if self.created and not any(self.path.iterdir()):
            self.path.rmdir()
