"""The descriptors that zombiereaper holds, which a process forked from ours must not keep.

Linux has no close-on-fork flag: ``os.fork()`` copies every descriptor, and a forked child
(a multiprocessing "fork" worker, a daemon) would keep the parent's pidfds, epoll and relay
socket for its whole life. A relay whose socket a forked child still holds never sees the
engine's end close; a pidfd kept there pins nothing but is a leak (issue 11, race 9: 7 forks
in 100 kept a pidfd taken between two steps of lending).

So every descriptor the library opens is tracked here, and every step that opens, hands over
or closes one runs under :data:`_lock`, which the before-fork hook takes too. A fork thus
happens between steps, never in the middle of one, and the forked child closes exactly what
is tracked. Steps under the lock never block: pidfd_open, close, non-blocking sendmsg/recvmsg.
"""

from __future__ import annotations

import contextlib

# For _linux.copy_above_stdio, imported before any Reaper runs: a first import on the reaping
# thread would open files itself, on 0-2 if those are free (see LOWEST).
import fcntl  # noqa: F401
import os
import threading
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from . import _linux

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class _OwnsDescriptor(Protocol):
    def fileno(self) -> int: ...

    def close(self) -> None: ...


_Owner = TypeVar("_Owner", bound=_OwnsDescriptor)

_lock = threading.Lock()
#: fd -> how to close it (None: os.close). Socket objects close through their own close(),
#: which also marks them closed, so that their finalizer never closes a reused number.
_tracked: dict[int, Callable[[], None] | None] = {}
#: Bumped in each forked child: a descriptor number noted before the fork means nothing after.
_generation = 0

#: The lowest number a descriptor we hold should have. Code that closes its standard streams
#: for a moment and dup2()s them back (CPython's test_subprocess does, so do daemons) would
#: otherwise have its restored stdout silently replace a pidfd of ours that took the free
#: number meanwhile, and our later close() of "our pidfd" would close its stdout.
LOWEST: Final = 3


def generation() -> int:
    """The process's fork generation: descriptors tracked in another one are already closed."""
    return _generation


def step() -> threading.Lock:
    """The lock to hold for one step on descriptors: no fork falls in its middle.

    ``with _fds.step(): ...``; the step must not block. (The lock itself, not a generator
    context manager: this is on every spawn's path.)
    """
    return _lock


def track(fd: int, closer: Callable[[], None] | None = None) -> int:
    """Note ``fd`` as ours (call within :func:`step`, right where it was opened or received).

    Returns:
        The number to use from now on: a plain descriptor (no ``closer``) that got one of the
        standard numbers 0-2 is moved above them (see :func:`above_stdio`).
    """
    if fd < LOWEST and closer is None:
        fd = above_stdio(fd)
    _tracked[fd] = closer
    return fd


def above_stdio(fd: int) -> int:
    """Move ``fd`` to a number of at least :data:`LOWEST`; returns the new one.

    ``fd`` itself is closed. Out of descriptors, ``fd`` is returned unmoved: a low number is
    better than none.
    """
    moved = _linux.copy_above_stdio(fd)
    if moved is None:
        return fd
    os.close(fd)
    return moved


def above_stdio_object(obj: _Owner, wrap: Callable[[int], _Owner]) -> _Owner:
    """``obj`` (an epoll, a socket: it owns its descriptor), or ``wrap(copy)`` if it got 0-2.

    ``obj`` is closed when replaced; out of descriptors, it is kept as it is.
    """
    if obj.fileno() >= LOWEST:
        return obj
    moved = _linux.copy_above_stdio(obj.fileno())
    if moved is None:
        return obj
    obj.close()
    return wrap(moved)


def untrack(fd: int) -> None:
    """Stop tracking ``fd``, which the caller closes or has handed over (within :func:`step`)."""
    _tracked.pop(fd, None)


def close(fd: int, born: int) -> None:
    """Close the tracked ``fd`` opened in fork generation ``born`` (nothing if from another)."""
    with _lock:
        if born != _generation or fd not in _tracked:
            # The parent's (closed at the fork), or closed already: the number may be reused.
            return
        del _tracked[fd]
        os.close(fd)


def close_with(fd: int, born: int, closer: Callable[[], None]) -> None:
    """Close the tracked ``fd`` through its object's ``closer`` (nothing if from another fork)."""
    with _lock:
        if born != _generation:
            return
        _tracked.pop(fd, None)
        closer()


def snapshot() -> frozenset[int]:
    """The descriptors tracked now (the all scope tells our pidfds from other code's)."""
    with _lock:
        return frozenset(_tracked)


# --- a reserve for when descriptors run out ---------------------------------------------------

#: Descriptors kept open for the moments the process has run out of them: freed for the
#: duration of one short step (a pidfd and a /proc read, to tell a child from a process that
#: took its pid), then taken again. Not tracked: a forked child keeps them as its reserve.
RESERVE_SIZE: Final = 2
_reserve: list[int] = []
_reserve_lock = threading.Lock()


def fill_reserve() -> None:
    """Open the reserve (best effort: out of descriptors already, it stays short)."""
    with _reserve_lock:
        while len(_reserve) < RESERVE_SIZE:
            try:
                _reserve.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return


@contextlib.contextmanager
def reserve_freed() -> Iterator[bool]:
    """Free the reserve for one short step; yields whether there was any to free."""
    with _reserve_lock:
        freed = bool(_reserve)
        while _reserve:
            os.close(_reserve.pop())
        try:
            yield freed
        finally:
            while len(_reserve) < RESERVE_SIZE:
                try:
                    _reserve.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
                except OSError:
                    break


def count() -> int:
    """How many descriptors are tracked (for tests and the benchmarks)."""
    with _lock:
        return len(_tracked)


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _generation
    # The forking thread took the lock in _before_fork; in the child it is simply replaced.
    _lock = threading.Lock()
    _generation += 1
    tracked = list(_tracked.items())
    _tracked.clear()
    for fd, closer in tracked:
        try:
            if closer is None:
                os.close(fd)
            else:
                closer()
        except OSError:
            pass


# Registered first of all our hooks (this module is imported before any other of ours that
# holds descriptors), so the child's later hooks find the descriptors already closed.
os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)
