"""Noticing the end of a process through its owner's sentinel descriptor.

Serves ``multiprocessing`` workers that are not our children (the forkserver start method:
the fork server is their parent, reaps them, and writes their status into the sentinel pipe).
"""

from __future__ import annotations

import os
import select
import threading
from typing import TYPE_CHECKING

from .. import _fds

if TYPE_CHECKING:
    from .._watch import Watch
    from .loop import Loop


class Sentinel:
    """The notice of a process that is not our child: our copy of its owner's sentinel.

    It turns readable once the process has ended (and been reaped by its parent). The copy
    is ours: the owner may close its own (``process.close()``) and the number may then name
    any other file, which a check of the owner's descriptor would take for the sentinel.
    Open it with :meth:`copy`.
    """

    __slots__ = ("_born", "_fd", "_pid")

    def __init__(self, pid: int, fd: int) -> None:
        self._pid = pid
        self._fd = fd
        self._born = _fds.generation()

    @classmethod
    def copy(cls, pid: int, owners_fd: int) -> Sentinel:
        """Watch ``pid`` through a duplicate of its owner's sentinel ``owners_fd``.

        Raises:
            OSError: The descriptor could not be duplicated (EBADF: the owner closed it).
        """
        with _fds.step():
            fd = _fds.track(os.dup(owners_fd))
        return cls(pid, fd)

    @property
    def pid(self) -> int:
        """The process's pid."""
        return self._pid

    @property
    def fileno(self) -> int | None:
        """Our copy of the sentinel."""
        return self._fd

    def is_ready(self) -> bool:
        """Whether the process has ended (its sentinel is readable)."""
        # poll(), not select(): select() cannot take a descriptor past FD_SETSIZE (1024).
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        """Close our copy (once)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            _fds.close(fd, self._born)


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
