"""Ways of noticing that a child exited, behind one small interface.

Each backend module exposes ``open_notifier(pid)``, which returns a ChildNotifier watching one
child of ours:

- ``fileno``: a file descriptor that becomes readable when the child exits, or None when the
  child has to be checked on every SIGCHLD wakeup and on the engine's safety timer;
- ``peek()``: the raw wait status if the child has exited, without reaping it (None while it
  runs; ChildProcessError once somebody has reaped it); ``can_peek`` says whether it works;
- ``reap()``: reap it now if it has exited, returning the raw status (None while it runs);
- ``send_signal(sig)``: signal it (the caller makes sure it has not been reaped);
- ``close()``: release what the notifier holds.

``sentinel.SentinelNotifier`` is the plain Notifier (``pid``, ``fileno``, ``close``) for a
process that is not our child but whose owner holds a sentinel descriptor for it.

:func:`open_notifier` picks the backend, falling back from pidfd to sigchld when the process
runs out of file descriptors, so that no child is ever left unwatched.
"""

from __future__ import annotations

import errno
import logging
from typing import Final, Literal, Protocol

from .._errors import BackendUnavailableError
from . import pidfd, sigchld

BackendName = Literal["pidfd", "sigchld"]
BACKEND_NAMES: Final[tuple[BackendName, ...]] = ("pidfd", "sigchld")

# Out of descriptors or kernel memory: take the fallback for this child (psutil #2712).
_FALLBACK_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})

logger = logging.getLogger("zombiereaper")


class Notifier(Protocol):
    """Tells the engine when a process may have ended; see the module docstring."""

    @property
    def pid(self) -> int:
        """The process's pid."""
        ...

    @property
    def fileno(self) -> int | None:
        """A descriptor readable once the process ends, or None when it must be swept."""
        ...

    def close(self) -> None:
        """Release what the notifier holds; it must not be used afterwards."""
        ...


class ChildNotifier(Notifier, Protocol):
    """A notifier for a child of ours, which it can also read, reap and signal."""

    @property
    def can_peek(self) -> bool:
        """Whether :meth:`peek` works here (it needs waitid with WNOWAIT)."""
        ...

    def peek(self) -> int | None:
        """The raw wait status if the child has exited, without reaping; None while it runs."""
        ...

    def reap(self) -> int | None:
        """Reap the child if it has exited and return its raw wait status; None while it runs."""
        ...

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the child."""
        ...


def can_use_pidfd() -> bool:
    """Whether the pidfd backend works here (Linux 5.4+, with os.pidfd_open and epoll)."""
    return pidfd.is_available()


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


def open_notifier(pid: int, backend: BackendName) -> ChildNotifier:
    """Start watching ``pid`` with ``backend``, or with sigchld when pidfds have run out.

    Raises:
        ChildProcessError: ``pid`` is not an unreaped child of this process.
    """
    if backend == "pidfd":
        try:
            return pidfd.open_notifier(pid)
        except OSError as err:
            if err.errno not in _FALLBACK_ERRNOS:
                raise
            logger.warning(
                "no pidfd for pid %d (%s); watching it through SIGCHLD sweeps instead",
                pid,
                errno.errorcode.get(err.errno or 0, err.errno),
            )
    return sigchld.open_notifier(pid)
