"""Noticing the end of a process through its owner's sentinel descriptor.

Serves ``multiprocessing`` workers that are not our children (the forkserver start method:
the fork server is their parent, reaps them, and writes their status into the sentinel pipe).
"""

from __future__ import annotations

import select


class SentinelNotifier:
    """Watches a descriptor that turns readable once the process has ended and been reaped."""

    __slots__ = ("_fd", "_pid")

    def __init__(self, pid: int, fd: int) -> None:
        self._pid = pid
        self._fd = fd

    @property
    def pid(self) -> int:
        """The process's pid."""
        return self._pid

    @property
    def fileno(self) -> int | None:
        """The sentinel (owned by the process's owner: never closed here)."""
        return self._fd

    def is_ready(self) -> bool:
        """Whether the process has ended (its sentinel is readable)."""
        readable, _, _ = select.select([self._fd], [], [], 0)
        return bool(readable)

    def close(self) -> None:
        """Nothing to release: the sentinel belongs to the owner."""
