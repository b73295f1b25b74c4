"""The bounded history of exits: pid -> latest ExitStatus, oldest evicted first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping

from ._status import ExitStatus


class Registry(Mapping[int, ExitStatus]):
    """A read-only, thread-safe mapping from pid to the latest :class:`ExitStatus` recorded.

    It holds at most ``history`` records; recording one more evicts the record that was
    recorded longest ago. A pid that the kernel gives out again replaces its older record.
    Iteration walks a snapshot, oldest record first, so it is safe while the reaping thread
    records more.
    """

    def __init__(self, history: int) -> None:
        self._history = history
        self._records: OrderedDict[int, ExitStatus] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def history(self) -> int:
        """The largest number of records kept."""
        return self._history

    def _record(self, status: ExitStatus) -> None:
        """Store ``status`` as the latest record for its pid (for the library's own use)."""
        with self._lock:
            self._records.pop(status.pid, None)
            if self._history == 0:
                return
            self._records[status.pid] = status
            while len(self._records) > self._history:
                self._records.popitem(last=False)

    def __getitem__(self, pid: int) -> ExitStatus:
        with self._lock:
            return self._records[pid]

    def get(self, pid: int, default: ExitStatus | None = None) -> ExitStatus | None:  # type: ignore[override]
        """Return the latest record for ``pid``, or ``default`` when there is none."""
        with self._lock:
            return self._records.get(pid, default)

    def __contains__(self, pid: object) -> bool:
        with self._lock:
            return pid in self._records

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __iter__(self) -> Iterator[int]:
        with self._lock:
            snapshot = list(self._records)
        return iter(snapshot)

    def __repr__(self) -> str:
        with self._lock:
            count = len(self._records)
        return f"<Registry {count}/{self._history} exits>"


def record_exit(registry: Registry, status: ExitStatus) -> None:
    """Store ``status`` in ``registry`` (the library's own write access; users only read)."""
    registry._record(status)
