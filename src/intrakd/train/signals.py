"""Clean interruption: SIGTERM and SIGINT finish the current step, a checkpoint is written, the run
stops with the status schedulers expect (128 + the signal number)."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Self

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """A run stopped on a signal after saving its state; ``exit_status`` is ``128 + signum``."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While entered, SIGTERM and SIGINT only record that a stop was asked for (:attr:`signum`).

    The loop polls :attr:`signum` between steps. A second SIGINT (Ctrl-C twice) raises
    ``KeyboardInterrupt`` at once; checkpoint writes are atomic, so even that loses nothing on disk.
    Handlers are installed from the main thread only, and the previous ones restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Self:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
