"""Ways of noticing that a child exited, behind one small facade: :class:`Monitors`.

- pidfd (zombiereaper._backends.pidfd): the child's pidfd in the engine's poller; past a few
  hundred, the oldest are lent to the relay.
- sigchld (zombiereaper._backends.sigchld): children are checked on every SIGCHLD wakeup and
  on a safety timer, through a pidfd for a bounded few, else by pid and identity.
- sentinel (zombiereaper._backends.sentinel): a process that is not our child (a forkserver
  worker) through the sentinel descriptor its owner holds.

:func:`open_ref` names a child exactly for the chosen backend, falling back from a pidfd to
pid and start time when the process runs out of descriptors, so that no child is ever left
unwatched. The rest of the library asks :class:`Monitors` to watch a Watch and never which
backend or platform it is on.
"""

from __future__ import annotations

import errno
import logging
import select
import time
from typing import TYPE_CHECKING, Final, Literal

from .. import _process
from .._errors import BackendUnavailableError
from .._process import OUT_OF_DESCRIPTORS, ProcessRef
from .pidfd import PidfdMonitor
from .sentinel import Sentinel, SentinelMonitor
from .sigchld import SweepMonitor, SweptRef
from .sigchld import open_ref as open_swept_ref

if TYPE_CHECKING:
    from .._watch import Watch
    from .loop import Loop

__all__ = [
    "BACKEND_NAMES",
    "BackendName",
    "Monitors",
    "Sentinel",
    "can_recover_stolen_status",
    "can_use_pidfd",
    "open_ref",
    "resolve_backend",
]

BackendName = Literal["pidfd", "sigchld"]
BACKEND_NAMES: Final[tuple[BackendName, ...]] = ("pidfd", "sigchld")

logger = logging.getLogger("zombiereaper")


def can_use_pidfd() -> bool:
    """Whether the pidfd backend works here (Linux 5.4+, with os.pidfd_open and epoll)."""
    # Asked through the module, so that one patch of the probe turns pidfds off everywhere.
    return _process.can_use_pidfd() and hasattr(select, "epoll")


def can_recover_stolen_status() -> bool:
    """Whether a status that another waiter took is recovered here (Linux 6.15+, pidfds).

    With the pidfd backend, where this is True, a child that a stranger's ``waitpid(-1)`` or
    ``os.wait()`` reaped is still reported with its exact status: the kernel keeps it on the
    child's pidfd (PIDFD_INFO_EXIT). Elsewhere, and with the sigchld backend, such a child
    is reported lost (:class:`~zombiereaper.StatusLostError`). Probed once, without starting
    a process.
    """
    return can_use_pidfd() and _process.can_recover_stolen_status()


def resolve_backend(name: str | None) -> BackendName:
    """Turn the ``backend`` argument of Reaper into a backend that runs here.

    Raises:
        ValueError: ``name`` is not a backend name.
        BackendUnavailableError: ``name`` asks for pidfd and this system cannot give pidfds.
    """
    if name is None:
        return "pidfd" if can_use_pidfd() else "sigchld"
    if name not in BACKEND_NAMES:
        choices = ", ".join(map(repr, BACKEND_NAMES))
        raise ValueError(f"backend must be one of {choices} or None, got {name!r}")
    if name == "pidfd" and not can_use_pidfd():
        raise BackendUnavailableError(
            "the pidfd backend needs Linux 5.4+ and Python's os.pidfd_open; "
            "use backend='sigchld', or backend=None to pick what works"
        )
    return "pidfd" if name == "pidfd" else "sigchld"


def open_ref(pid: int, backend: BackendName) -> ProcessRef:
    """Name the unreaped child ``pid`` for ``backend`` (by pid and identity when out of fds).

    Raises:
        ChildProcessError: ``pid`` is not an unreaped child of this process.
    """
    if backend == "pidfd":
        try:
            return ProcessRef.open(pid, pidfd=True)
        except OSError as err:
            if isinstance(err, ChildProcessError) or err.errno not in OUT_OF_DESCRIPTORS:
                raise
            # Out of descriptors (psutil #2712): this child is swept instead, nothing lost.
            logger.warning(
                "no pidfd for pid %d (%s); watching it through sweeps instead (on SIGCHLD if a "
                "sigchld or all-scope Reaper installed the handler, else every 0.1 s)",
                pid,
                errno.errorcode.get(err.errno or 0, err.errno),
            )
        return ProcessRef.open(pid, pidfd=False)
    return open_swept_ref(pid)


class Monitors:
    """Every way the engine notices exits; picks the right one for each Watch."""

    def __init__(self, loop: Loop) -> None:
        self.sweep = SweepMonitor(loop, time.monotonic())
        self._has_poller = loop.has_poller
        self.pidfd = PidfdMonitor(loop, self.sweep)
        self.sentinel = SentinelMonitor(loop)

    def add(self, watch: Watch) -> None:
        """Start noticing ``watch``'s exit, by the kind of notice it holds."""
        notice = watch.notice
        fd = None if notice is None else notice.fileno
        if fd is None or not self._has_poller or isinstance(notice, SweptRef):
            self.sweep.add(watch)
        elif isinstance(notice, ProcessRef):
            self.pidfd.add(watch, fd)
        else:
            self.sentinel.add(watch, fd)

    def demote(self, watch: Watch) -> None:
        """Check ``watch`` on the sweeps from now on (its lock held).

        Its descriptor would keep saying "ready" while its outcome cannot be read yet (its
        owner is still storing it), or reading it failed.
        """
        monitor = watch.monitor
        if monitor is self.sweep:
            return
        if monitor is not None:
            monitor.remove(watch)
        self.sweep.add(watch)

    def helper_pids(self) -> frozenset[int]:
        """Pids of the backends' own helper processes (the relay)."""
        return self.pidfd.helper_pids()

    def close(self) -> None:
        """The engine is stopping: stop the helpers."""
        self.pidfd.close()
