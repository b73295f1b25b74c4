"""The pidfd backend (Linux 5.4+): a descriptor per child that becomes readable when it exits.

Cost per exit is O(1) however many children are alive, signals go through the descriptor so
they can never reach a recycled pid, and nothing depends on SIGCHLD or the main thread.
"""

from __future__ import annotations

import functools
import os
import select
import signal

from .._status import wait_status_from_waitid

_PEEK_FLAGS = os.WEXITED | os.WNOHANG | getattr(os, "WNOWAIT", 0)


@functools.cache
def is_available() -> bool:
    """Probe once whether pidfd_open, waitid(P_PIDFD) and epoll work here."""
    needed = (
        hasattr(os, "pidfd_open")
        and hasattr(os, "P_PIDFD")
        and hasattr(os, "waitid")
        and hasattr(signal, "pidfd_send_signal")
        and hasattr(select, "epoll")
    )
    if not needed:
        return False
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError:
        # ENOSYS on kernels before 5.3, EPERM under some seccomp profiles.
        return False
    try:
        # Linux 5.3 has pidfd_open but not waitid(P_PIDFD) (5.4): that gives EINVAL. On our
        # own pidfd a working waitid answers ECHILD: we are not our own child.
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


class PidfdNotifier:
    """Watches one child through its pidfd.

    The engine may lend the pidfd to the relay (zombiereaper._relay) and take it back once
    the child has exited. While it is away, :attr:`fileno` is None and the child is read,
    reaped and signalled by pid, as the sigchld backend does; the callers' rules (the reap
    lock, the owner's own lock) are what keep the pid this child's meanwhile.
    """

    __slots__ = ("_fd", "_lent_as", "_pid")

    def __init__(self, pid: int, fd: int) -> None:
        self._pid = pid
        self._fd = fd
        self._lent_as: int | None = None

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self._pid

    @property
    def fileno(self) -> int | None:
        """The pidfd, readable once the child has exited; None while it is away."""
        return self._fd if self._fd >= 0 else None

    @property
    def lent_as(self) -> int | None:
        """The engine's token for the pidfd while the relay holds it."""
        return self._lent_as

    def lend(self, token: int) -> int:
        """Give up the pidfd (to be sent to the relay): return it; the caller now owns it."""
        fd, self._fd, self._lent_as = self._fd, -1, token
        return fd

    def take_back(self, fd: int) -> None:
        """Own the pidfd again, as the relay returned it (the same process, another number)."""
        self._fd, self._lent_as = fd, None

    def lose(self) -> None:
        """The lent pidfd is gone for good (the relay died or refused it): go on by pid."""
        self._lent_as = None

    @property
    def can_peek(self) -> bool:
        """Always True: waitid(P_PIDFD, WNOWAIT) reads the status without reaping."""
        return True

    def peek(self) -> int | None:
        """The child's raw wait status if it has exited, leaving it to be reaped."""
        if self._fd < 0:
            return _wait(self._pid, _PEEK_FLAGS, os.P_PID)
        return _wait(self._fd, _PEEK_FLAGS)

    def reap(self) -> int | None:
        """Reap the child if it has exited."""
        if self._fd < 0:
            return _wait(self._pid, os.WEXITED | os.WNOHANG, os.P_PID)
        return _wait(self._fd, os.WEXITED | os.WNOHANG)

    def send_signal(self, sig: int) -> None:
        """Signal exactly this child through its pidfd (by pid while the pidfd is away)."""
        if self._fd < 0:
            os.kill(self._pid, sig)
            return
        signal.pidfd_send_signal(self._fd, sig)

    def close(self) -> None:
        """Close the pidfd (one that is away is the engine's to forget)."""
        self._lent_as = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _wait(ident: int, options: int, idtype: int | None = None) -> int | None:
    """Wait on a pidfd, or on a pid with ``idtype=os.P_PID``; return the raw status."""
    result = os.waitid(os.P_PIDFD if idtype is None else idtype, ident, options)
    if result is None:
        return None
    return wait_status_from_waitid(result.si_code, result.si_status)


def open_notifier(pid: int) -> PidfdNotifier:
    """Open a pidfd for ``pid`` and check that it names a child of ours not yet reaped.

    The check is what makes the pidfd trustworthy: had the child been reaped and its pid
    reused before the pidfd was opened, the pidfd would name a stranger, and waitid on it
    answers ECHILD.

    Raises:
        ChildProcessError: ``pid`` is not an unreaped child of this process.
        OSError: EMFILE/ENFILE when descriptors have run out (the caller falls back).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ChildProcessError(f"no process has pid {pid}") from None
    try:
        _wait(fd, _PEEK_FLAGS)
    except BaseException:
        os.close(fd)
        raise
    return PidfdNotifier(pid, fd)
