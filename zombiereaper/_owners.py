"""Owners: who else may wait for a child, and how to reap it through their machinery.

A child is reaped by exactly one waitpid. When other code can also wait for it (a Popen, a
multiprocessing Process), the reaping must go through that code's own bookkeeping, or the
other waiter sees ECHILD and invents a status: Popen says 0 (bpo-15756), multiprocessing says
None forever. Each owner below knows one kind of waiter:

- PopenOwner: a ``subprocess.Popen``; reaps under Popen's own lock, through ``popen.wait()``.
- ProcessOwner: a ``multiprocessing.Process``; writes the exit code into the Process before
  reaping, or, for forkserver workers (not our children at all), reads it from the sentinel.
- PidOwner: a bare pid that nobody else waits for; reaps it directly.

Every owner answers the same three questions for the engine and the Child: how to notice the
exit (``open_notifier``), how to read and reap it (``read_exit``), and how to signal the child
without ever reaching a process that was given its pid after it was reaped (``send_signal``).
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._backends import BackendName, ChildNotifier, Notifier, open_notifier, pidfd
from ._backends.sentinel import SentinelNotifier
from ._status import ExitStatus, decode_wait_status

if TYPE_CHECKING:
    import multiprocessing.process
    import subprocess
    from collections.abc import Callable


class Running:
    """The marker for "the child has not exited yet"."""

    def __repr__(self) -> str:
        return "RUNNING"


RUNNING: Final = Running()

#: How long to wait for another waiter that has reaped a child to store its status: the gap
#: between its waitpid returning and its assignment is a few bytecodes.
_OWNER_STORE_TIMEOUT: Final = 1.0

#: How long a forkserver worker's status is left for its owner's join() to read first. The
#: status sits in the sentinel pipe and can be read once: a second, concurrent reader gets EOF
#: and multiprocessing then stores 255. An owner blocked in join() reads it within this time.
_FORKSERVER_OWNER_FIRST: Final = 0.02

Outcome = ExitStatus | Running | None
"""What read_exit finds: the status, RUNNING, or None when a stranger took the status."""


class Owner(Protocol):
    """How a child is noticed, reaped and signalled; see the module docstring."""

    @property
    def pid(self) -> int:
        """The child's pid."""
        ...

    @property
    def args(self) -> Any:
        """What the child runs, for display."""
        ...

    @property
    def notifier(self) -> Notifier | None:
        """What tells the engine that the child may have exited, once opened."""
        ...

    def open_notifier(self, backend: BackendName) -> Notifier | None:
        """Start noticing the exit; None when the owner already has the status.

        Raises:
            ChildProcessError: The pid is not a child this owner can account for.
        """
        ...

    def read_exit(self) -> Outcome:
        """Reap the child if it has exited, through the owner's machinery."""
        ...

    def send_signal(self, sig: int) -> None:
        """Signal the child, which has not been settled yet (the Child's lock is held)."""
        ...


# --- subprocess.Popen ------------------------------------------------------------------------


class PopenOwner:
    """A child started by ``subprocess.Popen``, whose ``wait()`` the application may call too."""

    def __init__(self, popen: subprocess.Popen[Any]) -> None:
        self.popen = popen
        self.notifier: ChildNotifier | None = None

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self.popen.pid

    @property
    def args(self) -> Any:
        """The command, as Popen got it."""
        return self.popen.args

    def open_notifier(self, backend: BackendName) -> ChildNotifier | None:
        """Watch the child; None if its Popen has already reaped it."""
        if self.popen.returncode is None:
            try:
                self.notifier = open_notifier(self.pid, backend)
            except ChildProcessError:
                pass  # reaped by popen.poll()/wait() in another thread since the check
        return self.notifier

    def read_exit(self) -> Outcome:
        """Read the exit, then reap it through Popen's own locking."""
        popen = self.popen
        notifier = self.notifier
        if notifier is None or popen.returncode is not None:
            # Reaped by its Popen already: a peek by pid (no pidfd at hand) could otherwise
            # land on another child that was given the pid since.
            return _status_from_popen(popen)
        if not notifier.can_peek:
            returncode = popen.poll()
            return (
                RUNNING if returncode is None else ExitStatus.from_returncode(self.pid, returncode)
            )
        try:
            raw = notifier.peek()
        except ChildProcessError:
            # Its Popen reaped it first (or a stranger's waitpid(-1) did).
            return _status_from_popen(popen)
        if raw is None:
            return RUNNING
        # Read before reaping (WNOWAIT), the record keeps the core-dump bit, which Popen drops.
        # Reaping under Popen's lock keeps a concurrent popen.wait() from seeing ECHILD, which
        # it would report as 0. The child is a zombie now, so this returns at once.
        popen.wait()
        return decode_wait_status(self.pid, raw)

    def send_signal(self, sig: int) -> None:
        """Signal the child while its Popen cannot reap it, or through its pidfd."""
        notifier = self.notifier
        assert notifier is not None
        if notifier.fileno is not None:
            # A verified pidfd names exactly this process, reaped or not.
            notifier.send_signal(sig)
            return
        lock = getattr(self.popen, "_waitpid_lock", None)
        if lock is None:
            self.popen.send_signal(sig)
            return
        if lock.acquire(blocking=False):
            try:
                if self.popen.returncode is None:
                    notifier.send_signal(sig)
            finally:
                lock.release()
            return
        # Another thread sits in popen.wait() and may reap the child at any moment.
        pid = self.pid
        send_signal_if_still_ours(pid, sig, lambda fd: _still_our_child(pid, fd))


def _status_from_popen(popen: subprocess.Popen[Any]) -> ExitStatus | None:
    """The status that the Popen's own wait recorded, or None when a stranger took it."""
    lock = getattr(popen, "_waitpid_lock", None)
    if lock is None:
        returncode = popen.returncode
    else:
        # Popen stores returncode under this lock right after its waitpid: holding the lock
        # means a wait in progress in another thread has finished.
        with lock:
            returncode = popen.returncode
    return None if returncode is None else ExitStatus.from_returncode(popen.pid, returncode)


# --- multiprocessing.Process -----------------------------------------------------------------


class ProcessOwner:
    """A ``multiprocessing.Process`` worker, whose ``join()`` the application may call too."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        pid = process.pid
        assert pid is not None
        self._pid = pid
        self.notifier: ChildNotifier | SentinelNotifier | None = None

    @property
    def pid(self) -> int:
        """The worker's pid."""
        return self._pid

    @property
    def args(self) -> Any:
        """The worker's name."""
        return self.process.name

    def open_notifier(self, backend: BackendName) -> Notifier | None:
        """Watch the worker by pid if it is our child, or else by its sentinel."""
        if self._returncode() is not None:
            return None
        try:
            self.notifier = open_notifier(self._pid, backend)
        except ChildProcessError:
            if self._returncode() is None:
                # Not our child: a forkserver worker. Its sentinel turns readable once the
                # fork server has reaped it and written its status there.
                self.notifier = SentinelNotifier(self._pid, self.process.sentinel)
        return self.notifier

    def read_exit(self) -> Outcome:
        """Read the exit and store it in the Process before reaping, or let it read its own."""
        notifier = self.notifier
        if notifier is None:
            return self._status_from_process()
        if isinstance(notifier, SentinelNotifier):
            if not notifier.is_ready():
                return RUNNING
            code = _wait_for_owner(self._returncode, _FORKSERVER_OWNER_FIRST)
            if code is not None:
                return ExitStatus.from_returncode(self._pid, code)
            return self._status_from_process()
        if not notifier.can_peek:
            code = self.process.exitcode
            return RUNNING if code is None else ExitStatus.from_returncode(self._pid, code)
        return self._read_own_child(notifier)

    def _read_own_child(self, notifier: ChildNotifier) -> Outcome:
        if self._returncode() is not None:
            return self._status_from_process()  # joined already: its pid may be reused
        try:
            raw = notifier.peek()
        except ChildProcessError:
            return self._status_from_process()
        if raw is None:
            return RUNNING
        status = decode_wait_status(self._pid, raw)
        store_exit_in_process(self.process, status)
        try:
            notifier.reap()
        except ChildProcessError:
            pass  # its join() reaped it in between: the status is the same
        return status

    def send_signal(self, sig: int) -> None:
        """Signal the worker only while it provably has not been reaped."""
        notifier = self.notifier
        assert notifier is not None
        if isinstance(notifier, SentinelNotifier):
            sentinel = notifier
            send_signal_if_still_ours(self._pid, sig, lambda _fd: not sentinel.is_ready())
            return
        if notifier.fileno is not None:
            notifier.send_signal(sig)
            return
        # Its join() in another thread may reap it at any moment.
        pid = self._pid
        send_signal_if_still_ours(pid, sig, lambda fd: _still_our_child(pid, fd))

    def _returncode(self) -> int | None:
        popen = getattr(self.process, "_popen", None)
        return None if popen is None else getattr(popen, "returncode", None)

    def _status_from_process(self) -> ExitStatus | None:
        # exitcode polls the Process's own machinery (waitpid, or the forkserver's pipe).
        code = _wait_for_owner(lambda: self.process.exitcode, _OWNER_STORE_TIMEOUT)
        return None if code is None else ExitStatus.from_returncode(self._pid, code)


def store_exit_in_process(process: Any, status: ExitStatus) -> None:
    """Give a multiprocessing Process its exit code before its child is reaped.

    multiprocessing has no lock: a join() racing our reap would see ECHILD and keep exitcode
    None forever. With the code stored first, its poll() answers without calling waitpid.
    """
    popen = getattr(process, "_popen", None)
    if popen is not None and getattr(popen, "returncode", 0) is None:
        popen.returncode = status.returncode


# --- a bare pid --------------------------------------------------------------------------------


class PidOwner:
    """A direct child known only by its pid: nobody else waits for it."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.notifier: ChildNotifier | None = None

    @property
    def pid(self) -> int:
        """The child's pid."""
        return self._pid

    @property
    def args(self) -> Any:
        """Nothing is known of the command."""
        return None

    def open_notifier(self, backend: BackendName) -> ChildNotifier:
        """Watch the pid, which must be an unreaped child of ours."""
        self.notifier = open_notifier(self._pid, backend)
        return self.notifier

    def read_exit(self) -> Outcome:
        """Reap the child directly."""
        notifier = self.notifier
        if notifier is None:
            return None
        try:
            raw = notifier.reap()
        except ChildProcessError:
            return None  # somebody else's waitpid took it
        return RUNNING if raw is None else decode_wait_status(self._pid, raw)

    def send_signal(self, sig: int) -> None:
        """Signal the child: only the engine reaps it, under the lock the caller holds."""
        assert self.notifier is not None
        self.notifier.send_signal(sig)


# --- signalling safely -------------------------------------------------------------------------


def _still_our_child(pid: int, fd: int | None) -> bool:
    """Whether ``pid`` (behind the pidfd ``fd``, if given) is still an unreaped child of ours.

    Without a pidfd, a child that has exited counts as not ours any more: it is about to be
    reaped, and signalling a zombie would do nothing anyway.
    """
    try:
        if fd is not None:
            os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            return True
        if not hasattr(os, "waitid"):
            return True  # nothing better to ask on this system
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    except ChildProcessError:
        return False


def send_signal_if_still_ours(pid: int, sig: int, still_ours: Callable[[int | None], bool]) -> None:
    """Signal ``pid`` while another waiter may reap it, without reaching a stranger.

    ``still_ours(fd)`` is asked after a pidfd is opened: True means the process we meant had
    not been reaped then, so the pidfd names it and signalling through it is safe.
    """
    if pidfd.is_available():
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                if still_ours(fd):
                    signal.pidfd_send_signal(fd, sig)
            except ProcessLookupError:
                pass
            finally:
                os.close(fd)
            return
    # No pidfd here (macOS, old kernels, no descriptors left): check, then signal. The window
    # left is the child being reaped and its pid handed to a new process between the two calls.
    if still_ours(None):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_for_owner(read: Callable[[], int | None], timeout: float) -> int | None:
    value = read()
    deadline = time.monotonic() + timeout
    while value is None and time.monotonic() < deadline:
        time.sleep(0.001)
        value = read()
    return value
