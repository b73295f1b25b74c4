"""Noticing the end of a process through its owner's sentinel descriptor.

Serves ``multiprocessing`` workers that are not our children (the forkserver start method:
the fork server is their parent, reaps them, and writes their status into the sentinel pipe).
"""

from __future__ import annotations

import select
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._watch import Watch
    from .loop import Loop


class Sentinel:
    """The notice of a process that is not our child: a descriptor its owner holds.

    It turns readable once the process has ended (and been reaped by its parent).
    """

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


class SentinelMonitor:
    """Watches sentinels in the engine's poller."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._watches: dict[int, Watch] = {}

    def add(self, watch: Watch, fd: int) -> None:
        """Settle ``watch`` when ``fd`` (its sentinel) turns readable."""
        with self._lock:
            self._watches[fd] = watch
            watch.monitor, watch.slot = self, fd
            self._loop.add_reader(fd, lambda: self._loop.settle_now(watch))

    def remove(self, watch: Watch) -> None:
        """Stop watching ``watch`` (settled)."""
        fd = watch.slot
        with self._lock:
            if isinstance(fd, int) and self._watches.get(fd) is watch:
                del self._watches[fd]
                self._loop.remove_reader(fd)
        watch.monitor = watch.slot = None

    def count(self) -> int:
        """How many sentinels are watched."""
        with self._lock:
            return len(self._watches)
