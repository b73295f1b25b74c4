"""The portable backend: SIGCHLD wakeups and a timer, then a non-blocking check of each pid.

Serves macOS, kernels without pidfd, and children whose pidfd could not be opened (EMFILE).
It never calls waitpid(-1): each owned pid is checked on its own, so a sweep costs O(n) in
the number of children watched this way (dotnet/corefx #26291 shows why that matters).
"""

from __future__ import annotations

import os

from .._status import wait_status_from_waitid

HAS_WAITID = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


class SigchldNotifier:
    """Watches one child by its pid, checked on every sweep."""

    __slots__ = ("_pid",)

    def __init__(self, pid: int) -> None:
        self._pid = pid

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self._pid

    @property
    def fileno(self) -> int | None:
        """Always None: this child is checked on every sweep."""
        return None

    @property
    def can_peek(self) -> bool:
        """Whether peek() works: it needs waitid with WNOWAIT, which macOS lacks."""
        return HAS_WAITID

    def peek(self) -> int | None:
        """The child's raw wait status if it has exited, leaving it to be reaped.

        Only where :attr:`can_peek` is True.
        """
        result = os.waitid(os.P_PID, self._pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if result is None:
            return None
        return wait_status_from_waitid(result.si_code, result.si_status)

    def reap(self) -> int | None:
        """Reap the child if it has exited."""
        pid, status = os.waitpid(self._pid, os.WNOHANG)
        if pid == 0:
            return None
        return status

    def send_signal(self, sig: int) -> None:
        """Signal the pid; the caller holds the reap lock, so the pid is still this child's."""
        os.kill(self._pid, sig)

    def close(self) -> None:
        """Nothing to release."""


def open_notifier(pid: int) -> SigchldNotifier:
    """Watch ``pid`` through sweeps, after checking that it is an unreaped child of ours.

    Raises:
        ChildProcessError: ``pid`` is not an unreaped child of this process (checked where
            waitid exists).
    """
    notifier = SigchldNotifier(pid)
    if HAS_WAITID:
        notifier.peek()
    return notifier
