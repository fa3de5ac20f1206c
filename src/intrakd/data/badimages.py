"""Unreadable images in folder datasets (``data.bad_images``).

* ``error`` (default): a split of at most :data:`SCAN_LIMIT` images is decoded once before the run
  folder is made, and every unreadable file is listed in one message (exit 2). Larger splits are not
  scanned; the first unreadable image met while training stops the run, naming it.
* ``skip``: unreadable images are left out of their batch (which is that much smaller), each named
  once on stderr; the batches, their order and augmentation stay those of the full list, so a resumed
  run is exact. The number skipped is logged per epoch (``skipped_images``) and in ``summary.json``.

A skipped image reaches the main process as the label ``-(index + 1)`` (see :func:`marker`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

from PIL import Image

SCAN_LIMIT = 50_000
"""Splits of at most this many images are decoded once before a run starts (about a minute of
2 CPU cores for small images)."""
SHOWN = 20
"""Unreadable files named in the error message (the rest are counted)."""

BadImages = Literal["error", "skip"]


def decode_problem(path: str) -> str | None:
    """Why ``path`` cannot be decoded in full (None when it can)."""
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def scan(paths: Sequence[str], workers: int = 2) -> dict[int, str]:
    """``{index: reason}`` of the unreadable images among ``paths`` (each decoded once)."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = list(pool.map(decode_problem, paths, chunksize=64))
    return {i: reason for i, reason in enumerate(problems) if reason is not None}


def unreadable_message(found: dict[str, str], where: str) -> str:
    """One message naming every unreadable file (the first :data:`SHOWN`, then a count)."""
    items = sorted(found.items())
    shown = "; ".join(f"{path} ({reason})" for path, reason in items[:SHOWN])
    more = f"; ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return (f"{len(items)} unreadable image{'s' if len(items) > 1 else ''} in {where}: {shown}{more}. Remove or "
            "replace them, or pass data.bad_images=skip to train without them")


def marker(index: int) -> int:
    """The label that stands for the unreadable image ``index`` in a batch."""
    return -(index + 1)


def marked_index(label: int) -> int:
    """The index of the image a :func:`marker` label stands for."""
    return -label - 1


class SkipLog:
    """Names each skipped image once (on stderr) and counts them."""

    def __init__(self) -> None:
        self.named: set[str] = set()

    def skipped(self, path: str, reason: str = "unreadable") -> None:
        if path not in self.named:
            self.named.add(path)
            print(f"warning: skipping unreadable image {path} ({reason})", file=sys.stderr)
