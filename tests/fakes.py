"""Test doubles shared by several test files."""

from __future__ import annotations

import errno
import io
import os


class FullDisk:
    """``os.fdopen`` whose files refuse any write beyond ``room`` bytes with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room, self.written = room, 0

    def __call__(self, fd: int, mode: str = "r", *args, **kwargs) -> io.FileIO:
        disk = self

        class Limited(io.FileIO):
            def write(self, data: bytes) -> int:
                if len(data) > disk.room:
                    disk.room = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.room -= len(data)
                disk.written += len(data)
                return super().write(data)

        return Limited(fd, "wb")
